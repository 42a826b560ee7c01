//! `hookbridge send`: signs a realistic test event the way a source's provider would and posts
//! it to a running hookbridge, for the person checking an install or a rotated secret. It reads
//! the source's scheme and secrets from the same config file the service runs with, so what it
//! proves is that *this* configuration accepts *this* provider's signatures; `--tamper` changes
//! one signed byte after signing, to show the refusal.
//!
//! Signing is `hookbridge-testkit`'s, the signers the tests use (one implementation per
//! provider, each checked against the providers' vectors), not a second copy. Keys with no
//! secret in the config: Cobo WaaS 2.0 signs with cobo-cli's published test key, WaaS 1.0 with
//! hookbridge's own test key, unless `--private-key` names another; RSA needs `--private-key`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use hookbridge_testkit as kit;
use http_body_util::{BodyExt as _, Full};

use crate::config::{self, RawVerify, SecretEncoding};

/// What to send, from the command line.
#[derive(Debug, Clone)]
pub struct SendArgs {
    pub config: PathBuf,
    pub source: String,
    /// The body to sign instead of the scheme's sample (form-encoded for Twilio).
    pub body: Option<PathBuf>,
    /// Where to post; default `http://<server.listen>/hooks/<source>` (a wildcard address
    /// reached through 127.0.0.1).
    pub url: Option<String>,
    /// Change one signed byte after signing.
    pub tamper: bool,
    /// Cobo WaaS 2.0 / Standard Webhooks `v1a`: an Ed25519 seed in hex; Cobo WaaS 1.0: a
    /// secp256k1 scalar in hex; RSA: a PEM file (PKCS#8 or PKCS#1).
    pub private_key: Option<String>,
}

/// A signed request, ready to post.
#[derive(Debug)]
pub struct Signed {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Something the caller should know (a key the source does not trust).
    pub notes: Vec<String>,
}

/// Loads the config (it must validate), signs the sample (or `--body`) for the source's scheme,
/// and tampers if asked.
///
/// # Errors
/// A config that does not validate, an unknown source, an unusable key or body file, or
/// `--tamper` on a scheme that verifies nothing.
pub fn prepare(args: &SendArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Signed> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read {}", args.config.display()))?;
    let cfg = config::load(&text, env).map_err(|e| anyhow!("{}: {e}", args.config.display()))?;
    if !cfg.sources.iter().any(|s| s.name == args.source) {
        let names: Vec<&str> = cfg.sources.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "no source {:?} in {} (configured: {})",
            args.source,
            args.config.display(),
            names.join(", ")
        );
    }
    let verify = config::source_verify(&text, env, &args.source)?;
    let url = args.url.clone().unwrap_or_else(|| {
        let mut listen = cfg.server.listen;
        if listen.ip().is_unspecified() {
            listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{listen}/hooks/{}", args.source)
    });
    let body = match &args.body {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?)
        }
        None => None,
    };
    let mut signed = sign(&verify, body, args.private_key.as_deref(), now())?;
    signed.url = url;
    if args.tamper {
        tamper(&verify, &mut signed)?;
    }
    Ok(signed)
}

/// Posts `signed` and returns the status and body of the answer.
///
/// # Errors
/// When the URL is unusable or the request fails (connection refused, 30 s without an answer).
pub async fn post(signed: &Signed) -> anyhow::Result<(http::StatusCode, Bytes)> {
    let mut req = http::Request::post(&signed.url);
    for (name, value) in &signed.headers {
        req = req.header(name.as_str(), value.as_str());
    }
    let req = req
        .body(Full::new(Bytes::from(signed.body.clone())))
        .with_context(|| format!("cannot make a request to {:?}", signed.url))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| anyhow!("no answer from {} within 30 s", signed.url))?
        .with_context(|| format!("cannot post to {}", signed.url))?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// A fresh ID for the sample events, so each send is a new event, not a duplicate.
fn fresh_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

fn pair(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_owned(), value.into())
}

/// The headers and body the source's provider would send. `body` replaces the sample.
///
/// Long on purpose: one arm per scheme, each the provider's realistic sample body next to its
/// signer, so that adding a provider is adding one arm; split, the one table would be spread
/// over as many functions.
fn sign(
    verify: &RawVerify,
    body: Option<Vec<u8>>,
    private_key: Option<&str>,
    now: Duration,
) -> anyhow::Result<Signed> {
    let (secs, ms) = (now.as_secs(), now.as_millis());
    let id = fresh_id();
    let sample = |json: String| body.clone().unwrap_or_else(|| json.into_bytes());
    let mut notes = Vec::new();
    let (mut headers, body) = match verify {
        RawVerify::CoboWaas2 { public_keys } => {
            let seed = private_key.unwrap_or(kit::keys::COBO_TEST_SEED_HEX);
            let signer = kit::CoboWaas2::new(&ed25519_seed(seed)?);
            note_untrusted(&mut notes, &signer.public_key_hex(), public_keys);
            let body = sample(kit::cobo_body(&id));
            (signer.sign(&body, &ms.to_string()), body)
        }
        RawVerify::CoboWaas1 { public_keys } => {
            let signer = match private_key {
                Some(k) => kit::CoboWaas1::new(&secp256k1_scalar(k)?),
                None => kit::CoboWaas1::test_key(),
            };
            note_untrusted(&mut notes, &signer.public_key_hex(), public_keys);
            let body = sample(format!(
                r#"{{"id":"{id}","coin":"ETH","display_code":"ETH","address":"0x2f8BdfEa7B1A5d2B4b1f2e1b6A8dD0C1d3e4F5a6","side":"deposit","amount":"1000000000000000","decimal":18,"request_id":"","status":"success","confirmed_num":12,"confirming_threshold":12,"created_time":{ms},"last_time":{ms},"type":"external"}}"#
            ));
            (signer.sign(&body, &ms.to_string()), body)
        }
        RawVerify::RsaSha256 { header, .. } => {
            let path = private_key.ok_or_else(|| {
                anyhow!("rsa-sha256 has no published test key: pass --private-key FILE (a PEM private key whose public half the source lists)")
            })?;
            let signer = kit::RsaSha256::new(header, rsa_key(path)?);
            let body = sample(format!(
                r#"{{"data":{{"resource":{{"id":{},"type":"transfer"}},"current_state":"outgoing_payment_sent","previous_state":"processing"}},"subscription_id":"{id}","event_type":"transfers#state-change","schema_version":"2.0.0","sent_at":"{}"}}"#,
                secs % 100_000_000,
                humantime::format_rfc3339_seconds(
                    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
                )
            ));
            (signer.sign(&body), body)
        }
        RawVerify::HmacSha256 {
            header,
            encoding,
            prefix,
            secrets,
            secret_encoding,
        } => {
            let secret = hmac_secret(first(secrets)?, *secret_encoding)?;
            let encoding = match encoding {
                crate::verify::Encoding::Hex => kit::Encoding::Hex,
                crate::verify::Encoding::Base64 => kit::Encoding::Base64,
            };
            let signer =
                kit::HmacSha256::new(header, prefix.as_deref().unwrap_or(""), encoding, &secret);
            let body = sample(generic_event(&id, secs));
            (signer.sign(&body), body)
        }
        RawVerify::SharedSecret { header, secrets } => {
            let body = sample(generic_event(&id, secs));
            (vec![pair(header, first(secrets)?)], body)
        }
        RawVerify::StandardWebhooks {
            secrets,
            public_keys,
        } => {
            let body = sample(format!(
                r#"{{"type":"invoice.paid","timestamp":"{}","data":{{"invoice_id":"in_{}","amount":4200,"currency":"EUR"}}}}"#,
                humantime::format_rfc3339_seconds(
                    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
                ),
                id.replace('-', "")
            ));
            let msg_id = format!("msg_{}", id.replace('-', ""));
            let headers = match (secrets.first(), private_key) {
                (_, Some(seed)) => {
                    let signer = kit::StandardV1a::new(&ed25519_seed(seed)?);
                    note_untrusted(&mut notes, &signer.public_key(), public_keys);
                    signer.sign(&msg_id, secs, &body)
                }
                (Some(secret), None) => kit::StandardV1::new(secret).sign(&msg_id, secs, &body),
                (None, None) => bail!(
                    "this source lists only v1a public keys: pass --private-key with the Ed25519 seed (hex)"
                ),
            };
            (headers, body)
        }
        RawVerify::Stripe { secrets } => {
            let body = sample(format!(
                r#"{{"id":"evt_{}","object":"event","api_version":"2024-06-20","created":{secs},"type":"payment_intent.succeeded","livemode":false,"data":{{"object":{{"id":"pi_{}","object":"payment_intent","amount":2000,"currency":"usd","status":"succeeded"}}}}}}"#,
                id.replace('-', ""),
                &id[..8]
            ));
            (kit::Stripe::new(first(secrets)?).sign(secs, &body), body)
        }
        RawVerify::Slack { secrets } => {
            let body = sample(format!(
                r#"{{"token":"XXYYZZ","team_id":"T0001","api_app_id":"A0001","event":{{"type":"app_mention","user":"U0001","text":"<@U0002> hello","ts":"{secs}.000100","channel":"C0001"}},"type":"event_callback","event_id":"Ev{}","event_time":{secs}}}"#,
                id.replace('-', "")[..10].to_uppercase()
            ));
            (kit::Slack::new(first(secrets)?).sign(secs, &body), body)
        }
        RawVerify::Zoom { secrets } => {
            let body = sample(format!(
                r#"{{"event":"meeting.started","event_ts":{ms},"payload":{{"account_id":"AAAAAABBBB","object":{{"id":"{}","uuid":"{id}","topic":"hookbridge send","start_time":"{}"}}}}}}"#,
                secs % 10_000_000_000,
                humantime::format_rfc3339_seconds(
                    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
                )
            ));
            (kit::Zoom::new(first(secrets)?).sign(secs, &body), body)
        }
        RawVerify::GitHub { secrets } => {
            let body = sample(format!(
                r#"{{"ref":"refs/heads/main","before":"0000000000000000000000000000000000000000","after":"{}","repository":{{"full_name":"example/hookbridge"}},"pusher":{{"name":"oncall"}}}}"#,
                &format!("{}{}", id.replace('-', ""), "00000000")[..40]
            ));
            let mut headers = kit::HmacSha256::github(first(secrets)?).sign(&body);
            headers.push(pair("X-GitHub-Event", "push"));
            headers.push(pair("X-GitHub-Delivery", id.clone()));
            (headers, body)
        }
        RawVerify::Shopify { secrets } => {
            let body = sample(format!(
                r#"{{"id":{},"email":"jon@example.com","created_at":"{}","total_price":"42.00","currency":"EUR"}}"#,
                u64::from_str_radix(&id.replace('-', "")[..12], 16).unwrap_or(1),
                humantime::format_rfc3339_seconds(
                    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
                )
            ));
            let mut headers = kit::HmacSha256::shopify(first(secrets)?).sign(&body);
            headers.push(pair("X-Shopify-Topic", "orders/create"));
            headers.push(pair("X-Shopify-Webhook-Id", id.clone()));
            (headers, body)
        }
        RawVerify::Twilio { url, secrets } => {
            let signer = kit::Twilio::new(url, first(secrets)?);
            return Ok(Signed {
                url: String::new(),
                headers: twilio_headers(&signer, body.as_deref(), &id),
                body: body.unwrap_or_else(|| twilio_sample(&signer, &id).1.into_bytes()),
                notes,
            });
        }
        RawVerify::Square { url, secrets } => {
            let body = sample(format!(
                r#"{{"merchant_id":"6SSW7HV8K2ST5","type":"payment.updated","event_id":"{id}","created_at":"{}","data":{{"type":"payment","id":"{}","object":{{"payment":{{"status":"COMPLETED","amount_money":{{"amount":4200,"currency":"USD"}}}}}}}}}}"#,
                humantime::format_rfc3339_seconds(
                    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
                ),
                &id[..8]
            ));
            (kit::Square::new(url, first(secrets)?).sign(&body), body)
        }
        RawVerify::Paddle { secrets } => {
            let body = sample(format!(
                r#"{{"event_id":"evt_{}","event_type":"transaction.completed","occurred_at":"{}","notification_id":"ntf_{}","data":{{"id":"txn_{}","status":"completed","currency_code":"USD"}}}}"#,
                id.replace('-', ""),
                humantime::format_rfc3339_seconds(
                    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
                ),
                &id[..8],
                &id[24..]
            ));
            (kit::Paddle::new(first(secrets)?).sign(secs, &body), body)
        }
        RawVerify::None { .. } => (Vec::new(), sample(generic_event(&id, secs))),
    };
    headers.push(pair(JSON.0, JSON.1));
    Ok(Signed {
        url: String::new(),
        headers,
        body,
        notes,
    })
}

/// Twilio's headers: over `body` (a form body, its parameters signed) or over the sample.
fn twilio_headers(signer: &kit::Twilio, body: Option<&[u8]>, id: &str) -> Vec<(String, String)> {
    match body {
        Some(body) => {
            let params: Vec<(String, String)> = form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let params: Vec<(&str, &str)> = params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            vec![
                pair("X-Twilio-Signature", signer.signature(&params)),
                pair("Content-Type", "application/x-www-form-urlencoded"),
            ]
        }
        None => twilio_sample(signer, id).0,
    }
}

/// An incoming SMS, as Twilio posts it.
fn twilio_sample(signer: &kit::Twilio, id: &str) -> (Vec<(String, String)>, String) {
    let sid = format!("SM{}", id.replace('-', ""));
    signer.sign_form(&[
        ("MessageSid", sid.as_str()),
        ("SmsSid", sid.as_str()),
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("From", "+14158675309"),
        ("To", "+18005551212"),
        ("Body", "hookbridge send: hello"),
        ("NumMedia", "0"),
    ])
}

fn generic_event(id: &str, secs: u64) -> String {
    format!(
        r#"{{"id":"{id}","type":"hookbridge.test","created":{secs},"data":{{"sent_by":"hookbridge send"}}}}"#
    )
}

/// The first configured secret: the one a provider signs with after a rotation is listed by
/// operators first, and any listed one verifies.
fn first(secrets: &[String]) -> anyhow::Result<&str> {
    secrets
        .first()
        .map(String::as_str)
        .ok_or_else(|| anyhow!("the source lists no secret to sign with"))
}

fn hmac_secret(secret: &str, encoding: SecretEncoding) -> anyhow::Result<Vec<u8>> {
    // Never echo the secret: it is the config's.
    encoding
        .decode(secret)
        .ok_or_else(|| anyhow!("the secret does not decode as its secret_encoding"))
}

fn ed25519_seed(hex_seed: &str) -> anyhow::Result<String> {
    match hex::decode(hex_seed.trim()) {
        Ok(b) if b.len() == 32 => Ok(hex_seed.trim().to_owned()),
        _ => bail!("--private-key: expected an Ed25519 seed, 64 hex characters"),
    }
}

fn secp256k1_scalar(hex_scalar: &str) -> anyhow::Result<String> {
    match hex::decode(hex_scalar.trim()) {
        Ok(b) if k256::ecdsa::SigningKey::from_slice(&b).is_ok() => {
            Ok(hex_scalar.trim().to_owned())
        }
        _ => bail!("--private-key: expected a secp256k1 private key, 64 hex characters"),
    }
}

fn rsa_key(path: &str) -> anyhow::Result<rsa::RsaPrivateKey> {
    use rsa::pkcs1::DecodeRsaPrivateKey as _;
    use rsa::pkcs8::DecodePrivateKey as _;
    let pem = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    rsa::RsaPrivateKey::from_pkcs8_pem(&pem)
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(&pem))
        .map_err(|_| anyhow!("{path}: not an RSA private key in PEM (PKCS#8 or PKCS#1)"))
}

/// Says so when the source does not list the key being signed with (by value; named keys such
/// as `prod` are Cobo's and never ours).
fn note_untrusted(notes: &mut Vec<String>, public: &str, trusted: &[String]) {
    if !trusted
        .iter()
        .any(|k| k.trim().eq_ignore_ascii_case(public))
    {
        notes.push(format!(
            "the source does not list the public key signed with ({public}): expect 401"
        ));
    }
}

/// Changes one byte the signature covers: the body's middle byte, or for `shared-secret`
/// (which covers no body) the token.
fn tamper(verify: &RawVerify, signed: &mut Signed) -> anyhow::Result<()> {
    match verify {
        RawVerify::None { .. } => {
            bail!("scheme \"none\" verifies nothing: a tampered request would be accepted too")
        }
        RawVerify::SharedSecret { header, .. } => {
            if let Some((_, token)) = signed.headers.iter_mut().find(|(k, _)| k == header) {
                token.push('x');
            }
        }
        _ if signed.body.is_empty() => bail!("--tamper needs a body to change"),
        _ => {
            let i = signed.body.len() / 2;
            signed.body[i] = if signed.body[i] == b'0' { b'1' } else { b'0' };
        }
    }
    Ok(())
}
