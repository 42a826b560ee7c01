//! RSA-SHA256 (PKCS#1 v1.5) over the raw body, base64 in one header, as Wise and other gateways
//! sign.

use crate::{Headers, b64, pair};

/// An RSA-SHA256 signer.
pub struct RsaSha256 {
    header: String,
    key: rsa::pkcs1v15::SigningKey<sha2::Sha256>,
}

impl RsaSha256 {
    /// From a PKCS#8 PEM private key, sending the signature in `header`.
    #[must_use]
    pub fn from_pkcs8_pem(header: &str, pem: &str) -> Self {
        use rsa::pkcs8::DecodePrivateKey as _;
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(pem).expect("an RSA private key, PKCS#8 PEM");
        Self {
            header: header.to_owned(),
            key: rsa::pkcs1v15::SigningKey::new(key),
        }
    }

    /// From a parsed private key, sending the signature in `header`.
    #[must_use]
    pub fn new(header: &str, key: rsa::RsaPrivateKey) -> Self {
        Self {
            header: header.to_owned(),
            key: rsa::pkcs1v15::SigningKey::new(key),
        }
    }

    /// The header for `body`.
    #[must_use]
    pub fn sign(&self, body: &[u8]) -> Headers {
        use rsa::signature::{SignatureEncoding as _, Signer as _};
        vec![pair(&self.header, b64(&self.key.sign(body).to_bytes()))]
    }
}
