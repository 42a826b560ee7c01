//! Event ID/type extraction and CloudEvent assembly on arbitrary bodies: the envelope is always
//! valid JSON, and when the body went into `data` it parses to the same value as the body alone.
#![no_main]

use std::sync::OnceLock;
use std::time::SystemTime;

use hookbridge::normalize::Envelope;
use hookbridge::plan::SourceSpec;
use hookbridge::verify::IncomingWebhook;
use libfuzzer_sys::fuzz_target;

fn source() -> &'static SourceSpec {
    static S: OnceLock<SourceSpec> = OnceLock::new();
    S.get_or_init(|| {
        let text = r#"
[sources.n]
verify = { scheme = "none", accept_unsigned_requests = true }
event_id = [["/id", "/status"], "/event_id", "header:x-id"]
unsigned_headers = ["x-id"]
event_type = ["/type", "/a/b/0"]
"#;
        hookbridge::config::load(text, &|_| None).expect("fuzz config").sources.remove(0)
    })
}

fuzz_target!(|body: &[u8]| {
    let src = source();
    let incoming = IncomingWebhook {
        headers: http::HeaderMap::new(),
        body: bytes::Bytes::copy_from_slice(body),
    };
    let Ok(verified) = src.verifier.verify(incoming, SystemTime::now()) else { return };
    if let Ok(env) = Envelope::build(verified, src, SystemTime::now()) {
        let parsed: serde_json::Value = serde_json::from_slice(env.json()).expect("envelope is JSON");
        assert_eq!(parsed["specversion"], "1.0");
        if let Some(data) = parsed.get("data") {
            let alone: serde_json::Value = serde_json::from_slice(body).expect("spliced body is JSON");
            assert_eq!(&alone, data);
        }
    }
});
