//! `verify-ceiling`: Cobo WaaS 2.0 (Ed25519) verifications per second through hookbridge's own
//! verifier, on a number of threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::signed::{Scheme, Signer};

pub fn run(threads: usize, secs: u64) -> anyhow::Result<()> {
    let source = {
        let text = format!(
            "[sources.c]\nverify = {{ scheme = \"cobo-waas2\", public_keys = [\"{}\"] }}\n",
            hookbridge_testkit::keys::COBO_TEST_PUBKEY_HEX
        );
        Arc::new(
            hookbridge::config::load(&text, &|_| None)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .sources
                .remove(0),
        )
    };
    let signer = Signer::new(Scheme::CoboWaas2);
    let ev = Arc::new(signer.sign("verify-ceiling")?);
    let count = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let (source, ev, count) = (Arc::clone(&source), Arc::clone(&ev), Arc::clone(&count));
            std::thread::spawn(move || {
                let mut headers = http::HeaderMap::new();
                for (k, v) in &ev.headers {
                    headers.insert(k.clone(), v.clone());
                }
                while Instant::now() < until {
                    let incoming = hookbridge::verify::IncomingWebhook {
                        headers: headers.clone(),
                        body: ev.body.clone(),
                    };
                    if source.verifier.verify(incoming, SystemTime::now()).is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("verify thread panicked"))?;
    }
    let n = count.load(Ordering::Relaxed);
    println!(
        "verify ceiling: cobo-waas2 {:.0} verifications/s on {threads} thread(s) ({:.1} µs each per thread)",
        n as f64 / secs as f64,
        (secs as f64 * 1e6 * threads as f64) / n.max(1) as f64
    );
    Ok(())
}
