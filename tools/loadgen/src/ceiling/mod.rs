//! The ceilings `bench/run.sh` sets beside hookbridge's numbers: what a bare Kafka or RabbitMQ
//! client publishes on this machine the way hookbridge does, what a minimal HTTP server answers,
//! and how many Ed25519 verifications the cores do.

use std::path::Path;
use std::time::Duration;

pub mod file;
pub mod http;
pub mod kafka;
pub mod rabbitmq;
pub mod verify;

/// The messages a bare-client ceiling publishes: the same ~1 KB bodies as `run`, distinct IDs.
fn messages(n: usize) -> Vec<(String, Vec<u8>)> {
    let run = uuid::Uuid::new_v4().simple();
    (0..n)
        .map(|i| {
            let id = format!("ceiling-{run}-{i}");
            let body = hookbridge_testkit::cobo_body(&id).into_bytes();
            (id, body)
        })
        .collect()
}

/// Prints and records a ceiling run; `cpu` is this client's own CPU time during it, so the
/// report can set the client's and the broker's cost per message beside hookbridge's.
fn report(
    name: &str,
    n: usize,
    elapsed: Duration,
    cpu: Duration,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let rate = n as f64 / elapsed.as_secs_f64();
    let client_us = cpu.as_secs_f64() * 1e6 / n.max(1) as f64;
    println!(
        "{name}: {n} confirmed publishes in {elapsed:.2?} = {rate:.0}/s; client CPU {client_us:.1} µs/msg"
    );
    if let Some(out) = out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(
            out,
            serde_json::to_vec_pretty(&serde_json::json!({
                "name": name, "messages": n, "seconds": elapsed.as_secs_f64(), "rate": rate,
                "client_cpu_us_per_msg": client_us,
            }))?,
        )?;
    }
    Ok(())
}
