//! `run`: pre-signs N distinct events for a scheme, then sends them closed-loop (C connections as
//! fast as they go) or open-loop (a fixed rate; latency is measured from each request's scheduled
//! time, so a stalled server cannot hide its queueing: no coordinated omission). Prints req/s,
//! statuses and latency percentiles, writes the HDR percentile distribution (`.hgrm`), an SVG plot
//! and a JSON summary, and can count what reached the broker.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;

use crate::conn::Conn;
use crate::measure::{Tally, due, interval, micros_since, own_cpu};
use crate::signed::{Scheme, Signed, Signer};
use crate::{delivery, plot};

// The field docs are the `--help` text, written for a terminal.
#[allow(rustdoc::invalid_html_tags)]
#[derive(clap::Args)]
pub struct RunArgs {
    /// Target, e.g. http://127.0.0.1:8080/hooks/cobo
    #[arg(long)]
    pub url: String,
    #[arg(long, value_enum, default_value = "cobo-waas2")]
    pub scheme: Scheme,
    /// Distinct events to pre-sign (each sent once).
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Open loop: requests per second (omit for closed loop).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Stop after this many seconds even if events remain.
    #[arg(long, default_value_t = 60)]
    pub max_secs: u64,
    /// Prefix for event IDs (unique per run).
    #[arg(long, default_value = "lg")]
    pub id_prefix: String,
    /// Write <out>.hgrm, <out>.svg and <out>.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bar (for scripts).
    #[arg(long)]
    pub quiet: bool,
    /// Runtime threads for the generator. One keeps it off the server's second core on a
    /// 2-core box and drove a minimal warp server to 182 k req/s there (docs/benchmarks.md).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// After the run, count distinct keys on this Kafka topic (brokers,topic).
    #[arg(long)]
    pub check_kafka: Option<String>,
    /// After the run, count distinct message ids in this RabbitMQ queue (url,queue).
    #[arg(long)]
    pub check_rabbitmq: Option<String>,
}

/// When each request is due and when the run stops, shared by the workers.
#[derive(Clone, Copy)]
struct Schedule {
    started: Instant,
    /// Open loop: request i is due at `started + i × interval`; closed loop: none.
    interval: Option<Duration>,
    deadline: Instant,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let uri: http::Uri = args.url.parse()?;
    let authority = uri.authority().context("url needs host:port")?.clone();
    let addr: SocketAddr = tokio::net::lookup_host(authority.as_str())
        .await?
        .next()
        .context("resolve")?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let events = presign(&args, path, authority.as_str())?;
    let bar = progress_bar(&args)?;
    let deadline = Instant::now() + Duration::from_secs(args.max_secs);
    let cpu_before = own_cpu();
    let started = Instant::now();
    let schedule = Schedule {
        started,
        interval: interval(args.rate),
        deadline,
    };
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..args.connections)
        .map(|_| {
            let (events, next) = (Arc::clone(&events), Arc::clone(&next));
            tokio::spawn(worker(addr, events, next, bar.clone(), schedule))
        })
        .collect();
    let mut tally = Tally::new()?;
    for w in workers {
        tally.merge(w.await??)?;
    }
    let summary = Summary::new(
        &tally,
        started.elapsed(),
        own_cpu().saturating_sub(cpu_before),
    );
    bar.finish_and_clear();
    summary.print(&args, &tally);
    let delivered = check_delivery(&args, summary.ok).await?;
    if let Some(out) = &args.out {
        write_files(out, &args, &tally, &summary, delivered)?;
    }
    if let Some(n) = delivered
        && n != summary.ok as usize
    {
        anyhow::bail!(
            "delivery check failed: {n} on the broker, {} acknowledged",
            summary.ok
        );
    }
    Ok(())
}

/// Signs every event before the clock starts and serializes each request once.
fn presign(args: &RunArgs, path: &str, host: &str) -> anyhow::Result<Arc<Vec<Bytes>>> {
    let signer = Signer::new(args.scheme);
    let sign_started = Instant::now();
    let events: Vec<Signed> = (0..args.events)
        .map(|i| signer.sign(&format!("{}-{i}", args.id_prefix)))
        .collect::<anyhow::Result<_>>()?;
    eprintln!(
        "pre-signed {} {:?} events ({} bytes each) in {:.1?}",
        events.len(),
        args.scheme,
        events.first().map_or(0, |e| e.body.len()),
        sign_started.elapsed()
    );
    Ok(Arc::new(
        events.iter().map(|e| e.wire(path, host)).collect(),
    ))
}

fn progress_bar(args: &RunArgs) -> anyhow::Result<indicatif::ProgressBar> {
    if args.quiet {
        return Ok(indicatif::ProgressBar::hidden());
    }
    let b = indicatif::ProgressBar::new(args.events as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} {per_sec} {msg}",
        )?
        .progress_chars("=> "),
    );
    Ok(b)
}

/// One connection: sends the next unsent event until none is left or the time is up.
async fn worker(
    addr: SocketAddr,
    events: Arc<Vec<Bytes>>,
    next: Arc<AtomicUsize>,
    bar: indicatif::ProgressBar,
    schedule: Schedule,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    let mut conn = Conn::open(addr).await?;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= events.len() || Instant::now() >= schedule.deadline {
            break;
        }
        let due = due(schedule.started, schedule.interval, i).await;
        let status = match conn.send(&events[i]).await {
            Ok((status, close)) => {
                if close {
                    conn = Conn::open(addr).await?;
                }
                Some(status)
            }
            Err(_) => {
                // Reconnect for the next request.
                conn = Conn::open(addr).await?;
                None
            }
        };
        tally.record(status, micros_since(due));
        bar.inc(1);
    }
    Ok(tally)
}

/// The run's totals, as printed and as written to the JSON summary.
struct Summary {
    total: u64,
    ok: u64,
    elapsed: Duration,
    rps: f64,
    /// The generator's own CPU per request.
    loadgen_us: f64,
}

impl Summary {
    fn new(tally: &Tally, elapsed: Duration, cpu: Duration) -> Self {
        let ok: u64 = tally
            .statuses
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, n)| n)
            .sum();
        let total = tally.hist.len();
        Self {
            total,
            ok,
            elapsed,
            rps: total as f64 / elapsed.as_secs_f64(),
            loadgen_us: cpu.as_secs_f64() * 1e6 / total.max(1) as f64,
        }
    }

    fn print(&self, args: &RunArgs, tally: &Tally) {
        let Self {
            total,
            ok,
            elapsed,
            rps,
            loadgen_us,
        } = self;
        let (hist, statuses) = (&tally.hist, &tally.statuses);
        let non_2xx = total - ok - tally.errors;
        println!(
            "{:?} {} connections{}: {total} requests in {:.2?} = {rps:.0} req/s; 2xx {ok}, other {non_2xx}, errors {}; statuses {statuses:?}; load generator CPU {loadgen_us:.1} µs/req",
            args.scheme,
            args.connections,
            args.rate
                .map(|r| format!(", open loop at {r}/s"))
                .unwrap_or_default(),
            elapsed,
            tally.errors,
        );
        println!(
            "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            pct(hist, 0.5),
            pct(hist, 0.9),
            pct(hist, 0.99),
            pct(hist, 0.999),
            hist.max() as f64 / 1000.0
        );
    }
}

/// The latency at quantile `q`, in milliseconds.
fn pct(hist: &Histogram<u64>, q: f64) -> f64 {
    hist.value_at_quantile(q) as f64 / 1000.0
}

/// `--check-kafka` / `--check-rabbitmq`: how many of this run's events reached the broker.
async fn check_delivery(args: &RunArgs, ok: u64) -> anyhow::Result<Option<usize>> {
    let mut delivered = None;
    if let Some(spec) = &args.check_kafka {
        let (brokers, topic) = spec
            .split_once(',')
            .context("--check-kafka brokers,topic")?;
        let n = delivery::count_kafka(brokers, topic, &args.id_prefix, ok as usize).await?;
        println!("delivery: {n} distinct keys on Kafka topic {topic} for {ok} 2xx");
        delivered = Some(n);
    }
    if let Some(spec) = &args.check_rabbitmq {
        let (url, queue) = spec.split_once(',').context("--check-rabbitmq url,queue")?;
        let n = delivery::count_rabbitmq(url, queue, &args.id_prefix, ok as usize).await?;
        println!("delivery: {n} distinct message ids in RabbitMQ queue {queue} for {ok} 2xx");
        delivered = Some(n);
    }
    Ok(delivered)
}

/// `--out`: `<out>.hgrm`, `<out>.svg` and `<out>.json`.
fn write_files(
    out: &Path,
    args: &RunArgs,
    tally: &Tally,
    summary: &Summary,
    delivered: Option<usize>,
) -> anyhow::Result<()> {
    let hist = &tally.hist;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out.with_extension("hgrm"), plot::hgrm(hist))?;
    std::fs::write(
        out.with_extension("svg"),
        plot::svg(
            hist,
            &format!("{:?}, {} conns", args.scheme, args.connections),
        ),
    )?;
    let json = serde_json::json!({
        "scheme": format!("{:?}", args.scheme), "connections": args.connections, "rate": args.rate,
        "requests": summary.total, "ok": summary.ok, "seconds": summary.elapsed.as_secs_f64(), "rps": summary.rps,
        "p50_ms": pct(hist, 0.5), "p90_ms": pct(hist, 0.9), "p99_ms": pct(hist, 0.99), "p999_ms": pct(hist, 0.999),
        "max_ms": hist.max() as f64 / 1000.0, "delivered": delivered,
        "loadgen_cpu_us_per_req": summary.loadgen_us,
        "statuses": tally.statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
    });
    std::fs::write(
        out.with_extension("json"),
        serde_json::to_vec_pretty(&json)?,
    )?;
    Ok(())
}
