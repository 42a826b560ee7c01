//! Where an event ID or type is found in a request: a body pointer, joined pointers, or a
//! header (signed by the scheme, or accepted unsigned explicitly).

use std::fmt;

use http::HeaderName;

/// Where to find an event ID or type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locator {
    /// A JSON pointer into the body.
    Body(String),
    /// Several JSON pointers whose values are joined with `:`.
    Joined(Vec<String>),
    /// A request header that the source's scheme signs.
    Header(HeaderName),
    /// A request header the scheme does **not** sign, listed in the source's `unsigned_headers`:
    /// whoever saw the request can resend it with another value, so events say so
    /// (`hbunverified`).
    UnsignedHeader(HeaderName),
}

impl Locator {
    /// The body pointers this locator reads (none for a header).
    pub fn pointers(&self) -> &[String] {
        match self {
            Self::Body(p) => std::slice::from_ref(p),
            Self::Joined(ps) => ps,
            Self::Header(_) | Self::UnsignedHeader(_) => &[],
        }
    }

    /// Whether the value comes from a header the signature does not cover.
    pub fn is_unsigned(&self) -> bool {
        matches!(self, Self::UnsignedHeader(_))
    }
}

impl fmt::Display for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Body(p) => write!(f, "body:{p}"),
            Self::Joined(ps) => write!(f, "body:{}", ps.join("+")),
            Self::Header(h) | Self::UnsignedHeader(h) => write!(f, "header:{h}"),
        }
    }
}
