//! `X-Forwarded-For` / `Forwarded` / `X-Forwarded-Proto` parsing behind a trusted proxy.
#![no_main]

use hookbridge::ingress::client::{client_ip, forwarded_https};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = http::HeaderValue::from_bytes(data) else { return };
    let mut h = http::HeaderMap::new();
    h.insert("x-forwarded-for", v.clone());
    h.insert("forwarded", v.clone());
    h.insert("x-forwarded-proto", v);
    let proxies = ["127.0.0.0/8".parse().expect("net"), "::1/128".parse().expect("net")];
    let peer = "127.0.0.1".parse().expect("ip");
    let _ = client_ip(peer, &h, &proxies);
    let _ = forwarded_https(peer, &h, &proxies);
    h.remove("x-forwarded-for");
    let _ = client_ip(peer, &h, &proxies);
});
