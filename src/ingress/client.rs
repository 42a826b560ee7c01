//! Who is asking: the client address, and whether the request came over TLS. Forwarding headers
//! are believed only when the TCP peer is a configured trusted proxy, and then only as far as the
//! chain of trusted proxies goes: walking `X-Forwarded-For` from the right, the first address
//! that is not a trusted proxy is the client (anything to its left could be forged by it).

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// An IPv4-mapped IPv6 address (::ffff:a.b.c.d, as a dual-stack socket reports IPv4 peers)
/// is treated as the IPv4 address, so IPv4 rules match it.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    let ip = canonical(ip);
    proxies.iter().any(|n| n.contains(&ip))
}

/// The client address for allowlists, rate limits and the audit log.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet]) -> IpAddr {
    if !trusted(peer, proxies) {
        return canonical(peer);
    }
    let chain = forwarded_chain(headers);
    let mut client = peer;
    for hop in chain.iter().rev() {
        match hop {
            Some(ip) => {
                client = *ip;
                if !trusted(*ip, proxies) {
                    break;
                }
            }
            // An unparsable hop ends what can be believed; the last good hop stands.
            None => break,
        }
    }
    canonical(client)
}

/// Whether the original request used HTTPS, as a trusted proxy reports it.
pub fn forwarded_https(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet]) -> bool {
    if !trusted(peer, proxies) {
        return false;
    }
    if let Some(v) = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        // The proxy closest to us appends last.
        return v
            .rsplit(',')
            .next()
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    }
    headers
        .get_all(http::header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .next_back()
        .is_some_and(|elem| {
            elem.split(';').any(|kv| {
                kv.trim().split_once('=').is_some_and(|(k, v)| {
                    k.eq_ignore_ascii_case("proto")
                        && v.trim_matches('"').eq_ignore_ascii_case("https")
                })
            })
        })
}

/// The forwarding chain, client first: `X-Forwarded-For` if present, else RFC 7239 `Forwarded`.
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let xff: Vec<Option<IpAddr>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
        .map(|s| parse_addr(s.trim()))
        .collect();
    if !xff.is_empty() {
        return xff;
    }
    headers
        .get_all(http::header::FORWARDED)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
        .filter_map(|elem| {
            elem.split(';').find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                k.eq_ignore_ascii_case("for")
                    .then(|| parse_addr(v.trim().trim_matches('"')))
            })
        })
        .collect()
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:443`.
fn parse_addr(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.rsplit_once(':').and_then(|(host, _)| host.parse().ok())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn hdr(k: &'static str, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(k, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn headers_from_untrusted_peers_are_ignored() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let h = hdr("x-forwarded-for", "10.1.1.1");
        assert_eq!(client_ip(peer, &h, &nets(&["10.0.0.0/8"])), peer);
        let mapped: IpAddr = "::ffff:203.0.113.9".parse().unwrap();
        assert_eq!(client_ip(mapped, &h, &[]), peer);
        assert!(!forwarded_https(
            peer,
            &hdr("x-forwarded-proto", "https"),
            &nets(&["10.0.0.0/8"])
        ));
    }

    #[test]
    fn walks_the_chain_from_the_right() {
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let proxies = nets(&["10.0.0.0/8"]);
        // The client forged the first entry; the rightmost untrusted one is the real client.
        let h = hdr("x-forwarded-for", "1.1.1.1, 198.51.100.7, 10.0.0.5");
        assert_eq!(
            client_ip(peer, &h, &proxies),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let h = hdr(
            "forwarded",
            "for=\"[2001:db8::7]:4711\";proto=https, for=10.0.0.5",
        );
        assert_eq!(
            client_ip(peer, &h, &proxies),
            "2001:db8::7".parse::<IpAddr>().unwrap()
        );
        let h = hdr("x-forwarded-for", "garbage, 10.0.0.9");
        assert_eq!(
            client_ip(peer, &h, &proxies),
            "10.0.0.9".parse::<IpAddr>().unwrap()
        );
        assert!(forwarded_https(
            peer,
            &hdr("x-forwarded-proto", "http, https"),
            &proxies
        ));
        assert!(!forwarded_https(
            peer,
            &hdr("x-forwarded-proto", "https, http"),
            &proxies
        ));
        assert!(forwarded_https(
            peer,
            &hdr("forwarded", "for=1.2.3.4;proto=https"),
            &proxies
        ));
    }

    #[test]
    fn mapped_ipv4_peers_match_ipv4_rules() {
        let peer: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        let h = hdr("x-forwarded-for", "198.51.100.7");
        assert_eq!(
            client_ip(peer, &h, &nets(&["10.0.0.0/8"])),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
    }
}
