//! Parsers for values that several sections share: names, IP networks, rates and event
//! locators. Each records its errors at the path it is given.

use std::num::NonZeroU32;

use http::HeaderName;
use ipnet::IpNet;

use super::problems::Scope;
use super::raw::{RawLocator, RawRate};
use crate::normalize::locator::Locator;
use crate::plan::Rate;

/// Sink and source names: a source's becomes its URL path, so only URL-safe lower case.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// CIDR blocks or single addresses (`/32`, `/128` implied), IPv4 and IPv6.
pub fn parse_nets(scope: &mut Scope<'_>, raw: &[String]) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        let s = s.trim();
        match s.parse::<IpNet>() {
            Ok(n) => out.push(n),
            Err(_) => match s.parse::<std::net::IpAddr>() {
                Ok(ip) => out.push(IpNet::from(ip)),
                Err(_) => scope.item(i).error_here("not an IP address or CIDR block"),
            },
        }
    }
    out
}

pub fn parse_rate(scope: &mut Scope<'_>, raw: RawRate) -> Option<Rate> {
    let Some(per_second) = NonZeroU32::new(raw.per_second) else {
        scope.error("per_second", "must be greater than 0");
        return None;
    };
    let burst = match raw.burst {
        None => per_second,
        Some(b) => match NonZeroU32::new(b) {
            Some(b) => b,
            None => {
                scope.error("burst", "must be greater than 0");
                return None;
            }
        },
    };
    Some(Rate { per_second, burst })
}

pub fn parse_locators(scope: &mut Scope<'_>, raw: &[RawLocator]) -> Vec<Locator> {
    let mut out = Vec::new();
    for (i, l) in raw.iter().enumerate() {
        let bad_pointer = |p: &str| !p.starts_with('/');
        match l {
            RawLocator::One(s) => {
                if let Some(h) = s.strip_prefix("header:") {
                    match HeaderName::from_bytes(h.trim().as_bytes()) {
                        Ok(h) => out.push(Locator::Header(h)),
                        Err(_) => scope
                            .item(i)
                            .error_here(format!("{h:?} is not a valid header name")),
                    }
                } else if bad_pointer(s) {
                    scope.item(i).error_here(
                        "expected a JSON pointer starting with '/' or \"header:<name>\"",
                    );
                } else {
                    out.push(Locator::Body(s.clone()));
                }
            }
            RawLocator::Joined(ps) => {
                if ps.is_empty() || ps.iter().any(|p| bad_pointer(p)) {
                    scope
                        .item(i)
                        .error_here("a joined locator is a non-empty list of JSON pointers");
                } else {
                    out.push(Locator::Joined(ps.clone()));
                }
            }
        }
    }
    out
}
