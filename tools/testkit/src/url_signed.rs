//! Providers that sign the public URL they were given: Square (HMAC-SHA256 of URL and body,
//! base64) and Twilio (HMAC-SHA1 of URL and the sorted form parameters, base64).

use hmac::Mac as _;

use crate::{Headers, b64, pair};

/// A Square signer: `X-Square-HmacSha256-Signature: <base64 HMAC-SHA256 of url + body>`.
pub struct Square {
    url: String,
    key: Vec<u8>,
}

impl Square {
    /// From the subscription's notification URL and its signature key.
    #[must_use]
    pub fn new(notification_url: &str, signature_key: &str) -> Self {
        Self {
            url: notification_url.to_owned(),
            key: signature_key.as_bytes().to_vec(),
        }
    }

    /// The header for `body`.
    #[must_use]
    pub fn sign(&self, body: &[u8]) -> Headers {
        let mac = crate::hmac_schemes::hmac_sha256(&self.key, &[self.url.as_bytes(), body]);
        vec![pair("X-Square-HmacSha256-Signature", b64(&mac))]
    }
}

/// A Twilio signer, as twilio's SDKs compute `X-Twilio-Signature`: the URL, then each form
/// parameter's name and value, sorted by name then value (each distinct pair once), HMAC-SHA1
/// with the auth token, base64.
pub struct Twilio {
    url: String,
    token: Vec<u8>,
}

impl Twilio {
    /// From the URL Twilio posts to (as configured in Twilio) and the account's auth token.
    #[must_use]
    pub fn new(url: &str, auth_token: &str) -> Self {
        Self {
            url: url.to_owned(),
            token: auth_token.as_bytes().to_vec(),
        }
    }

    /// The signature over `params` (name, value pairs).
    #[must_use]
    pub fn signature(&self, params: &[(&str, &str)]) -> String {
        let mut sorted = params.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(&self.token).expect("any key");
        mac.update(self.url.as_bytes());
        for (k, v) in sorted {
            mac.update(k.as_bytes());
            mac.update(v.as_bytes());
        }
        b64(&mac.finalize().into_bytes())
    }

    /// The form body Twilio would post for `params`, and its header.
    #[must_use]
    pub fn sign_form(&self, params: &[(&str, &str)]) -> (Headers, String) {
        let body = params
            .iter()
            .fold(
                form_urlencoded::Serializer::new(String::new()),
                |mut s, (k, v)| {
                    s.append_pair(k, v);
                    s
                },
            )
            .finish();
        (
            vec![
                pair("X-Twilio-Signature", self.signature(params)),
                pair("Content-Type", "application/x-www-form-urlencoded"),
            ],
            body,
        )
    }
}
