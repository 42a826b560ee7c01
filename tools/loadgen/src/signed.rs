//! The requests `run` sends: distinct ~1.2 KB Cobo-style events, signed for one scheme with the
//! keys `bench/*.toml` trust (through hookbridge-testkit), serialized once before the run.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::ValueEnum;
use hookbridge_testkit::{CoboWaas2, HmacSha256, RsaSha256, StandardV1, bench};

/// The schemes `run --scheme` signs with; the name (as `Debug` prints it) heads `run`'s output
/// and its JSON summary.
#[derive(Clone, Copy, ValueEnum, Debug)]
pub enum Scheme {
    CoboWaas2,
    StandardWebhooks,
    RsaSha256,
    HmacSha256,
}

/// One event: its body and the headers sent with it.
pub struct Signed {
    pub body: Bytes,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// A scheme's signer, keyed as the matching source in `bench/*.toml`.
pub enum Signer {
    CoboWaas2(CoboWaas2),
    StandardWebhooks(StandardV1),
    HmacSha256(HmacSha256),
    RsaSha256(RsaSha256),
}

impl Signer {
    pub fn new(scheme: Scheme) -> Self {
        match scheme {
            Scheme::CoboWaas2 => Self::CoboWaas2(bench::cobo_waas2()),
            Scheme::StandardWebhooks => Self::StandardWebhooks(bench::standard_webhooks()),
            Scheme::HmacSha256 => Self::HmacSha256(bench::hmac_sha256()),
            Scheme::RsaSha256 => Self::RsaSha256(bench::rsa_sha256()),
        }
    }

    /// The event with ID `id`, signed now.
    pub fn sign(&self, id: &str) -> anyhow::Result<Signed> {
        let body = hookbridge_testkit::cobo_body(id);
        let signature = match self {
            Self::CoboWaas2(s) => s.sign(body.as_bytes(), &now_ms().to_string()),
            Self::StandardWebhooks(s) => {
                let secs = u64::try_from(now_ms() / 1000)?;
                s.sign(id, secs, body.as_bytes())
            }
            Self::HmacSha256(s) => s.sign(body.as_bytes()),
            Self::RsaSha256(s) => s.sign(body.as_bytes()),
        };
        let mut headers = vec![(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        )];
        for (name, value) in signature {
            headers.push((
                http::HeaderName::from_bytes(name.as_bytes())?,
                http::HeaderValue::from_str(&value)?,
            ));
        }
        Ok(Signed {
            body: Bytes::from(body),
            headers,
        })
    }
}

impl Signed {
    /// The whole HTTP/1.1 request, serialized once before the run.
    pub fn wire(&self, path: &str, host: &str) -> Bytes {
        let mut out = Vec::with_capacity(self.body.len() + 512);
        out.extend_from_slice(format!("POST {path} HTTP/1.1\r\nhost: {host}\r\n").as_bytes());
        for (k, v) in &self.headers {
            out.extend_from_slice(k.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("content-length: {}\r\n\r\n", self.body.len()).as_bytes());
        out.extend_from_slice(&self.body);
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    /// Every `run --scheme` request is accepted by the matching source of the bench config, and
    /// its wire form is one complete HTTP/1.1 request carrying that body.
    #[test]
    fn each_scheme_verifies_under_the_bench_config() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let text = std::fs::read_to_string(format!("{root}/bench/hookbridge-file.toml"))
            .unwrap()
            .replace("\"bench/keys/", &format!("\"{root}/bench/keys/"));
        let sources = hookbridge::config::load(&text, &|name| {
            (name == "BENCH_DIR").then(|| "/nonexistent".to_owned())
        })
        .unwrap_or_else(|e| panic!("{e}"))
        .sources;
        for (scheme, source) in [
            (Scheme::CoboWaas2, "cobo"),
            (Scheme::StandardWebhooks, "standard"),
            (Scheme::HmacSha256, "hmac"),
            (Scheme::RsaSha256, "rsa"),
        ] {
            let signed = Signer::new(scheme).sign("lg-1").unwrap();
            let source = sources.iter().find(|s| s.name == source).unwrap();
            let mut headers = http::HeaderMap::new();
            for (k, v) in &signed.headers {
                headers.append(k.clone(), v.clone());
            }
            let incoming = hookbridge::verify::IncomingWebhook {
                headers,
                body: signed.body.clone(),
            };
            if let Err(e) = source.verifier.verify(incoming, SystemTime::now()) {
                panic!("{scheme:?}: {e}");
            }

            let wire = signed.wire("/hooks/x", "127.0.0.1:8081");
            let mut parsed = [httparse::EMPTY_HEADER; 16];
            let mut req = httparse::Request::new(&mut parsed);
            let httparse::Status::Complete(head) = req.parse(&wire).unwrap() else {
                panic!("{scheme:?}: incomplete request");
            };
            assert_eq!((req.method, req.path), (Some("POST"), Some("/hooks/x")));
            assert_eq!(&wire[head..], &signed.body[..], "{scheme:?}");
        }
    }
}
