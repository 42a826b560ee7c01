//! The forwarding chain (`X-Forwarded-For` / `Forwarded`) and `X-Forwarded-Proto`, behind a
//! trusted proxy, over raw header bytes: never a panic, and never the proxy as the client.
#![no_main]

use hookbridge::ingress::client::{Client, ForwardedHeader, Proxies, client, forwarded_https};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Up to three field lines, split at 0xff (a byte no header name or value needs here).
    let mut h = http::HeaderMap::new();
    for part in data.split(|b| *b == 0xff).take(3) {
        let Ok(v) = http::HeaderValue::from_bytes(part) else { return };
        h.append("x-forwarded-for", v.clone());
        h.append("forwarded", v.clone());
        h.append("x-forwarded-proto", v);
    }
    let peer = "127.0.0.1".parse().expect("ip");
    for header in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded] {
        let proxies = Proxies {
            trusted: vec!["127.0.0.0/8".parse().expect("net"), "::1/128".parse().expect("net")],
            header,
        };
        if let Client::Addr(ip) = client(peer, &h, &proxies) {
            assert!(
                !proxies.trusted.iter().any(|n| n.contains(&ip)),
                "a trusted proxy was taken for the client"
            );
        }
        let _ = forwarded_https(peer, &h, &proxies);
    }
});
