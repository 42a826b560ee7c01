//! Who is asking: the client address, and whether the request came over TLS.
//!
//! Forwarding headers are believed only when the TCP peer is a configured trusted proxy, and
//! only the one header the operator names (`server.forwarded_header`: `X-Forwarded-For` or
//! RFC 7239 `Forwarded`; the other is ignored, so a client cannot supply it to a proxy that
//! writes only the named one). The chain is read from the raw header bytes, hop by hop from the
//! right (each proxy appends the address it received the request from):
//! - a trusted proxy's address: keep walking left;
//! - any other address: that is the client (anything to its left was written by it);
//! - a hop that does not parse (non-UTF-8 bytes, garbage, `unknown`, an obfuscated name), a
//!   missing header, or a chain of trusted proxies only: the client is [`Client::Unknown`].
//!
//! An unknown client is denied by every allowlist, has its own rate bucket, and is audited as
//! `unknown`. The proxy that forwarded a chain is never itself taken for the client.

use std::net::{IpAddr, Ipv6Addr};

use http::HeaderMap;
use ipnet::IpNet;

/// Which forwarding header the trusted proxies set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (client, proxy1, proxy2…) and `X-Forwarded-Proto`.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=…;proto=…, for=…`.
    Forwarded,
}

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct Proxies {
    pub trusted: Vec<IpNet>,
    pub header: ForwardedHeader,
}

/// Who a request is attributed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    Addr(IpAddr),
    /// Behind a trusted proxy whose forwarding chain could not be read to an untrusted hop.
    Unknown,
}

impl Client {
    /// The address, for allowlists: an unknown client matches none.
    pub fn addr(self) -> Option<IpAddr> {
        match self {
            Self::Addr(ip) => Some(ip),
            Self::Unknown => None,
        }
    }
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Addr(ip) => ip.fmt(f),
            Self::Unknown => f.write_str("unknown"),
        }
    }
}

/// What a per-client rate bucket is keyed by: IPv4 addresses whole, IPv6 addresses by their
/// prefix (a /64 is one subscriber, who can rotate the rest freely), unknown clients together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateKey {
    Addr(IpAddr),
    Unknown,
}

impl RateKey {
    pub fn of(client: Client, ipv6_prefix: u8) -> Self {
        match client {
            Client::Addr(IpAddr::V6(v6)) => {
                let bits = u32::from(ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                Self::Addr(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)))
            }
            Client::Addr(v4) => Self::Addr(v4),
            Client::Unknown => Self::Unknown,
        }
    }
}

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

/// The client for allowlists, rate limits and the audit log.
pub fn client(peer: IpAddr, headers: &HeaderMap, proxies: &Proxies) -> Client {
    if !trusted(peer, &proxies.trusted) {
        return Client::Addr(canonical(peer));
    }
    let chain = chain(headers, proxies.header);
    for hop in chain.iter().rev() {
        match hop {
            Some(ip) if trusted(*ip, &proxies.trusted) => {}
            Some(ip) => return Client::Addr(canonical(*ip)),
            None => return Client::Unknown,
        }
    }
    // No header, or nothing but trusted proxies: nobody outside said who they are.
    Client::Unknown
}

/// Whether the original request used HTTPS, as the nearest trusted proxy reports it in the
/// named header family (`X-Forwarded-Proto`, or `proto=` of the last `Forwarded` element).
pub fn forwarded_https(peer: IpAddr, headers: &HeaderMap, proxies: &Proxies) -> bool {
    if !trusted(peer, &proxies.trusted) {
        return false;
    }
    let last = match proxies.header {
        ForwardedHeader::XForwardedFor => elements(headers, "x-forwarded-proto")
            .last()
            .map(|e| trim(e)),
        ForwardedHeader::Forwarded => elements(headers, "forwarded")
            .last()
            .and_then(|e| param(e, b"proto")),
    };
    last.is_some_and(|p| p.eq_ignore_ascii_case(b"https"))
}

/// The comma-separated elements of every field line of `name`, in order, as raw bytes.
fn elements<'h>(headers: &'h HeaderMap, name: &'static str) -> Vec<&'h [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .collect()
}

fn trim(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

/// The value of `key=` in one `Forwarded` element (`for=…;proto=…`), unquoted.
fn param<'e>(element: &'e [u8], key: &[u8]) -> Option<&'e [u8]> {
    element.split(|b| *b == b';').find_map(|pair| {
        let pair = trim(pair);
        let eq = pair.iter().position(|b| *b == b'=')?;
        let (k, v) = (&pair[..eq], &pair[eq + 1..]);
        k.eq_ignore_ascii_case(key).then(|| {
            let v = trim(v);
            v.strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(v)
        })
    })
}

/// The forwarding chain in the named header, client first; `None` for a hop that does not
/// parse as an address.
fn chain(headers: &HeaderMap, header: ForwardedHeader) -> Vec<Option<IpAddr>> {
    match header {
        ForwardedHeader::XForwardedFor => elements(headers, "x-forwarded-for")
            .into_iter()
            .map(|e| parse_addr(trim(e)))
            .collect(),
        ForwardedHeader::Forwarded => elements(headers, "forwarded")
            .into_iter()
            .map(|e| param(e, b"for").and_then(parse_addr))
            .collect(),
    }
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:443`, from raw bytes (anything that
/// is not ASCII is no address).
fn parse_addr(raw: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(raw).ok()?;
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    s.rsplit_once(':').and_then(|(host, _)| host.parse().ok())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn proxies(s: &[&str], header: ForwardedHeader) -> Proxies {
        Proxies {
            trusted: s.iter().map(|n| n.parse().unwrap()).collect(),
            header,
        }
    }

    fn hdr(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> Client {
        Client::Addr(s.parse().unwrap())
    }

    const XFF: ForwardedHeader = ForwardedHeader::XForwardedFor;
    const FWD: ForwardedHeader = ForwardedHeader::Forwarded;

    #[test]
    fn headers_from_untrusted_peers_are_ignored() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let h = hdr(&[("x-forwarded-for", b"10.1.1.1")]);
        let p = proxies(&["10.0.0.0/8"], XFF);
        assert_eq!(client(peer, &h, &p), ip("203.0.113.9"));
        let mapped: IpAddr = "::ffff:203.0.113.9".parse().unwrap();
        assert_eq!(client(mapped, &h, &Proxies::default()), ip("203.0.113.9"));
        let proto = hdr(&[("x-forwarded-proto", b"https")]);
        assert!(!forwarded_https(peer, &proto, &p));
    }

    #[test]
    fn walks_the_chain_from_the_right() {
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let p = proxies(&["10.0.0.0/8"], XFF);
        // The client forged the first entry; the rightmost untrusted one is the real client.
        let h = hdr(&[("x-forwarded-for", b"1.1.1.1, 198.51.100.7, 10.0.0.5")]);
        assert_eq!(client(peer, &h, &p), ip("198.51.100.7"));
        // Several field lines are one list, in order.
        let h = hdr(&[
            ("x-forwarded-for", b"1.1.1.1"),
            ("x-forwarded-for", b"198.51.100.8, 10.0.0.5"),
        ]);
        assert_eq!(client(peer, &h, &p), ip("198.51.100.8"));
        let f = proxies(&["10.0.0.0/8"], FWD);
        let h = hdr(&[(
            "forwarded",
            b"for=\"[2001:db8::7]:4711\";proto=https, for=10.0.0.5",
        )]);
        assert_eq!(client(peer, &h, &f), ip("2001:db8::7"));
        assert!(forwarded_https(
            peer,
            &hdr(&[("x-forwarded-proto", b"http, https")]),
            &p
        ));
        assert!(!forwarded_https(
            peer,
            &hdr(&[("x-forwarded-proto", b"https, http")]),
            &p
        ));
        assert!(forwarded_https(
            peer,
            &hdr(&[("forwarded", b"for=1.2.3.4;proto=https")]),
            &f
        ));
    }

    #[test]
    fn an_unreadable_hop_makes_the_client_unknown_never_the_proxy() {
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let p = proxies(&["127.0.0.1/32"], XFF);
        // Non-UTF-8 bytes the client sent, then the address the proxy appended: that address.
        let h = hdr(&[("x-forwarded-for", b"\xff, 203.0.113.9")]);
        assert_eq!(client(peer, &h, &p), ip("203.0.113.9"));
        // An unreadable hop where the client's address should be: unknown, not the proxy.
        for v in [
            &b"203.0.113.9, bogus"[..],
            b"203.0.113.9, \xff",
            b"",
            b"203.0.113.9,",
            b"unknown",
        ] {
            let h = hdr(&[("x-forwarded-for", v)]);
            assert_eq!(client(peer, &h, &p), Client::Unknown, "{v:?}");
        }
        // No header at all, or only trusted hops: unknown.
        assert_eq!(client(peer, &HeaderMap::new(), &p), Client::Unknown);
        let h = hdr(&[("x-forwarded-for", b"127.0.0.1")]);
        assert_eq!(client(peer, &h, &p), Client::Unknown);
        // Forwarded: obfuscated and unknown identifiers, elements without `for`.
        let f = proxies(&["127.0.0.1/32"], FWD);
        for v in [
            &b"for=_hidden"[..],
            b"for=unknown",
            b"proto=https",
            b"for=\"\xff\"",
        ] {
            let h = hdr(&[("forwarded", v)]);
            assert_eq!(client(peer, &h, &f), Client::Unknown, "{v:?}");
        }
    }

    #[test]
    fn only_the_named_header_is_read() {
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let both = hdr(&[
            ("x-forwarded-for", b"198.51.100.1"),
            ("forwarded", b"for=198.51.100.2"),
        ]);
        assert_eq!(
            client(peer, &both, &proxies(&["127.0.0.1/32"], XFF)),
            ip("198.51.100.1")
        );
        assert_eq!(
            client(peer, &both, &proxies(&["127.0.0.1/32"], FWD)),
            ip("198.51.100.2")
        );
        // A proxy that writes only `Forwarded`: a client-supplied X-Forwarded-For is ignored.
        let h = hdr(&[("x-forwarded-for", b"10.9.9.9")]);
        assert_eq!(
            client(peer, &h, &proxies(&["127.0.0.1/32"], FWD)),
            Client::Unknown
        );
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_prefix() {
        let a = ip("2001:db8:1:2:aaaa::1");
        let b = ip("2001:db8:1:2:bbbb::2");
        let other = ip("2001:db8:1:3::1");
        assert_eq!(RateKey::of(a, 64), RateKey::of(b, 64));
        assert_ne!(RateKey::of(a, 64), RateKey::of(other, 64));
        assert_ne!(RateKey::of(a, 128), RateKey::of(b, 128));
        assert_eq!(RateKey::of(a, 0), RateKey::of(other, 0));
        assert_eq!(
            RateKey::of(ip("192.0.2.1"), 64),
            RateKey::Addr("192.0.2.1".parse().unwrap())
        );
        assert_eq!(RateKey::of(Client::Unknown, 64), RateKey::Unknown);
    }

    #[test]
    fn mapped_ipv4_peers_match_ipv4_rules() {
        let peer: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        let h = hdr(&[("x-forwarded-for", b"198.51.100.7")]);
        assert_eq!(
            client(peer, &h, &proxies(&["10.0.0.0/8"], XFF)),
            ip("198.51.100.7")
        );
    }
}
