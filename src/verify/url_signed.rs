//! Schemes that sign the public URL the provider was given, with the request: Square
//! (HMAC-SHA256 over URL and body) and Twilio (HMAC-SHA1 over URL and the sorted form
//! parameters). The URL is configured (`url`), not read from the request: behind a proxy or load
//! balancer hookbridge cannot know what the provider called, and a `Host` header is the sender's
//! to choose.

use ::hmac::Hmac;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::HeaderMap;
use sha1::Sha1;

use super::hmac::Secrets;
use super::{Checked, VerifyError, header};

/// The configured public URL: absolute, `http` or `https`, with a host.
fn public_url(url: &str) -> Result<http::Uri, Vec<String>> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| vec!["url: not a valid absolute URL".to_owned()])?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => Ok(uri),
        _ => Err(vec![
            "url: must be the absolute http(s) URL the provider posts to, e.g. \"https://hooks.example.com/hooks/twilio\"".to_owned(),
        ]),
    }
}

/// Square: `X-Square-HmacSha256-Signature`, base64 HMAC-SHA256 of the subscription's
/// notification URL followed by the body, keyed with its signature key.
pub struct Square {
    url: String,
    secrets: Secrets,
}

pub(super) const SQUARE_HEADER: &str = "x-square-hmacsha256-signature";

impl Square {
    /// # Errors
    /// When the URL is not an absolute http(s) URL or a secret is empty.
    pub fn new(url: &str, secrets: Vec<Vec<u8>>) -> Result<Self, Vec<String>> {
        let mut errors = public_url(url).err().unwrap_or_default();
        let secrets = Secrets::new(secrets).map_err(|e| errors.extend(e)).ok();
        match secrets {
            Some(secrets) if errors.is_empty() => Ok(Self {
                // Signed exactly as Square was given it.
                url: url.to_owned(),
                secrets,
            }),
            _ => Err(errors),
        }
    }

    pub fn key_count(&self) -> usize {
        self.secrets.len()
    }

    pub(super) fn check(&self, headers: &HeaderMap, body: &[u8]) -> Result<Checked, VerifyError> {
        let raw = header(headers, SQUARE_HEADER)?;
        let sig =
            B64.decode(raw)
                .ok()
                .filter(|s| s.len() == 32)
                .ok_or(VerifyError::MalformedHeader {
                    header: SQUARE_HEADER,
                    reason: "not a base64 HMAC-SHA256",
                })?;
        let key = self
            .secrets
            .find_match(&[self.url.as_bytes(), body], &[sig])
            .ok_or(VerifyError::BadSignature)?;
        Ok(Checked {
            key: Some(key.to_owned()),
            signature: Some(raw.to_owned()),
            ..Checked::default()
        })
    }
}

/// Twilio: `X-Twilio-Signature`, base64 HMAC-SHA1 keyed with the account's auth token, over the
/// URL Twilio was given followed by every form parameter of the body as name and value, sorted by
/// name then value (twilio's SDKs' `RequestValidator`). Like the SDKs, the URL is tried as
/// configured and with its port toggled (the default port added when absent, removed when
/// present), since Twilio's signing and the SDKs' URL handling differ on it.
///
/// Form-encoded bodies only: for JSON bodies Twilio signs a URL carrying `bodySHA256` in its
/// query string, which differs per request; such a request does not verify (401).
pub struct Twilio {
    urls: Vec<String>,
    secrets: Secrets,
}

pub(super) const TWILIO_HEADER: &str = "x-twilio-signature";

impl Twilio {
    /// # Errors
    /// When the URL is not an absolute http(s) URL or a secret is empty.
    pub fn new(url: &str, secrets: Vec<Vec<u8>>) -> Result<Self, Vec<String>> {
        let uri = public_url(url);
        let mut errors = uri.as_ref().err().cloned().unwrap_or_default();
        let secrets = Secrets::new(secrets).map_err(|e| errors.extend(e)).ok();
        match (uri, secrets) {
            (Ok(uri), Some(secrets)) if errors.is_empty() => {
                let mut urls = vec![url.to_owned()];
                urls.extend(port_toggled(&uri).filter(|u| u != url));
                Ok(Self { urls, secrets })
            }
            _ => Err(errors),
        }
    }

    pub fn key_count(&self) -> usize {
        self.secrets.len()
    }

    pub(super) fn check(&self, headers: &HeaderMap, body: &[u8]) -> Result<Checked, VerifyError> {
        let raw = header(headers, TWILIO_HEADER)?;
        // Decoded and length-checked before the body is parsed: a bogus header costs nothing.
        let sig =
            B64.decode(raw)
                .ok()
                .filter(|s| s.len() == 20)
                .ok_or(VerifyError::MalformedHeader {
                    header: TWILIO_HEADER,
                    reason: "not a base64 HMAC-SHA1",
                })?;
        let mut params: Vec<(String, String)> = form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        // The SDKs sort by name, then by value, and sign each distinct pair once.
        params.sort();
        params.dedup();
        let signed: Vec<u8> = params
            .iter()
            .flat_map(|(k, v)| [k.as_bytes(), v.as_bytes()])
            .flatten()
            .copied()
            .collect();
        let key = self
            .urls
            .iter()
            .find_map(|url| {
                self.secrets.find_match_with::<Hmac<Sha1>>(
                    &[url.as_bytes(), &signed],
                    std::slice::from_ref(&sig),
                )
            })
            .ok_or(VerifyError::BadSignature)?;
        Ok(Checked {
            key: Some(key.to_owned()),
            signature: Some(raw.to_owned()),
            ..Checked::default()
        })
    }
}

/// The URL with its port toggled: the scheme's default port added when none is written, the
/// written port removed otherwise.
fn port_toggled(uri: &http::Uri) -> Option<String> {
    let scheme = uri.scheme_str()?;
    let authority = uri.authority()?;
    let host_part = match authority.as_str().rsplit_once('@') {
        Some((userinfo, _)) => format!("{userinfo}@{}", authority.host()),
        None => authority.host().to_owned(),
    };
    let port = match authority.port_u16() {
        Some(_) => String::new(),
        None if scheme == "https" => ":443".to_owned(),
        None => ":80".to_owned(),
    };
    let rest = uri
        .path_and_query()
        .map_or("", http::uri::PathAndQuery::as_str);
    Some(format!("{scheme}://{host_part}{port}{rest}"))
}
