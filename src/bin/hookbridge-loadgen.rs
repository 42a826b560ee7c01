//! `hookbridge-loadgen`: the load generator and broker/HTTP ceilings used by `bench/run.sh`.
//!
//! - `run`: pre-signs N distinct ~1 KB Cobo-style events for a scheme, then sends them closed-loop
//!   (C connections as fast as they go) or open-loop (a fixed rate; latency is measured from each
//!   request's scheduled time, so a stalled server cannot hide its queueing: no coordinated
//!   omission). Prints req/s, statuses and latency percentiles, writes the HDR percentile
//!   distribution (`.hgrm`), an SVG plot and a JSON summary, and can count what reached the broker.
//! - `ceiling-kafka`, `ceiling-rabbitmq`: a bare client publishing the same messages the way
//!   hookbridge does (rdkafka acks=all idempotent; lapin confirms pipelined over channels).
//! - `http-ceiling`: a minimal warp server answering 200, for the HTTP ceiling.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::Engine as _;
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use hmac::Mac as _;
use sha2::Digest as _;

#[derive(Parser)]
#[command(about = "Load generator and broker/HTTP ceilings for hookbridge benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send pre-signed webhooks and measure.
    Run(RunArgs),
    /// Bare rdkafka producer (idempotent, acks=all), same messages and key as hookbridge.
    CeilingKafka {
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 50_000)]
        messages: usize,
        #[arg(long, default_value_t = 256)]
        in_flight: usize,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Bare lapin publisher with confirms, pipelined over channels, persistent + mandatory.
    CeilingRabbitmq {
        #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        url: String,
        #[arg(long)]
        exchange: String,
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        #[arg(long, default_value_t = 256)]
        in_flight: usize,
        #[arg(long, default_value_t = 4)]
        channels: usize,
        #[arg(long)]
        out: Option<PathBuf>,
        /// Publish at this fixed rate (per second) and report confirm latency percentiles.
        #[arg(long)]
        rate: Option<u64>,
    },
    /// Cobo WaaS 2.0 (Ed25519) verifications per second on `threads` threads, for the
    /// verification ceiling.
    VerifyCeiling {
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long, default_value_t = 3)]
        secs: u64,
    },
    /// Declare a durable topic exchange and a durable queue bound to it with `#` (bench setup).
    AmqpBind {
        #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        url: String,
        #[arg(long)]
        exchange: String,
        #[arg(long)]
        queue: String,
        /// Delete the queue instead.
        #[arg(long)]
        delete: bool,
    },
    /// A minimal warp server answering 200 to POST /hooks/<any> after reading the body.
    HttpCeiling {
        #[arg(long, default_value = "127.0.0.1:8099")]
        listen: SocketAddr,
    },
}

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Scheme {
    CoboWaas2,
    StandardWebhooks,
    RsaSha256,
    HmacSha256,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Target, e.g. http://127.0.0.1:8080/hooks/cobo
    #[arg(long)]
    url: String,
    #[arg(long, value_enum, default_value = "cobo-waas2")]
    scheme: Scheme,
    /// Distinct events to pre-sign (each sent once).
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Open loop: requests per second (omit for closed loop).
    #[arg(long)]
    rate: Option<u64>,
    /// Stop after this many seconds even if events remain.
    #[arg(long, default_value_t = 60)]
    max_secs: u64,
    /// Prefix for event IDs (unique per run).
    #[arg(long, default_value = "lg")]
    id_prefix: String,
    /// Write <out>.hgrm, <out>.svg and <out>.json.
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress bar (for scripts).
    #[arg(long)]
    quiet: bool,
    /// Runtime threads for the generator. One keeps it off the server's second core on a
    /// 2-core box and drove a minimal warp server to 182 k req/s there (docs/benchmarks.md).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// After the run, count distinct keys on this Kafka topic (brokers,topic).
    #[arg(long)]
    check_kafka: Option<String>,
    /// After the run, count distinct message ids in this RabbitMQ queue (url,queue).
    #[arg(long)]
    check_rabbitmq: Option<String>,
}

// Keys and secrets matching bench/*.toml (benchmark-only, published test material).
const COBO_TEST_SEED: &str = "0281d349927d3b4342129aa4d86bd0ed70163feb7b8d06fecc25c667974b6297";
const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const HMAC_SECRET: &str = "bench-hmac-secret";

struct Signed {
    body: Bytes,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// A realistic ~1 KB Cobo WaaS 2.0 webhook.
fn cobo_body(id: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","url":"https://example.com/hooks/cobo","created_timestamp":1701396866000,"type":"wallets.transaction.succeeded","data":{{"data_type":"Transaction","transaction_id":"{id}-tx","wallet_id":"f47ac10b-58cc-4372-a567-0e02b2c3d479","type":"Deposit","status":"Success","chain_id":"ETH","token_id":"ETH_USDT","asset_id":"USDT","source":{{"source_type":"External","addresses":["0x9414933Ff7777bb28cA22D15c178596A6e58d957"]}},"destination":{{"destination_type":"Address","account_output":{{"address":"0x2f8BdfEa7B1A5d2B4b1f2e1b6A8dD0C1d3e4F5a6","amount":"1250.000000"}}}},"result":{{"result_type":"Transaction"}},"fee":{{"fee_type":"EVM_EIP_1559","token_id":"ETH","fee_used":"0.000421"}},"initiator":"api","confirmed_num":12,"confirming_threshold":12,"transaction_hash":"0x7f1a49a302bece956da7e0a3e9a77f0fb33ccc368ef2fa4dacac5c96d7d5f542","block_info":{{"block_number":19112233,"block_hash":"0x52dc95dbf0f409e290e38481b8b624ba2748ee08de6141be067ab80f5daf9b92"}},"created_timestamp":1701396800000,"updated_timestamp":1701396866000}}}}"#
    )
}

fn hv(s: &str) -> anyhow::Result<http::HeaderValue> {
    Ok(http::HeaderValue::from_str(s)?)
}

struct Signer {
    scheme: Scheme,
    ed: ed25519_dalek::SigningKey,
    rsa: Option<rsa::pkcs1v15::SigningKey<sha2::Sha256>>,
    std_key: Vec<u8>,
}

impl Signer {
    fn new(scheme: Scheme) -> anyhow::Result<Self> {
        let seed: [u8; 32] = hex::decode(COBO_TEST_SEED)?
            .try_into()
            .map_err(|_| anyhow::anyhow!("seed length"))?;
        let rsa = if matches!(scheme, Scheme::RsaSha256) {
            use rsa::pkcs8::DecodePrivateKey as _;
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/keys/rsa-private.pem");
            let pem = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            Some(rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(
                rsa::RsaPrivateKey::from_pkcs8_pem(&pem)?,
            ))
        } else {
            None
        };
        let std_key = base64::engine::general_purpose::STANDARD
            .decode(STANDARD_SECRET.trim_start_matches("whsec_"))?;
        Ok(Self {
            scheme,
            ed: ed25519_dalek::SigningKey::from_bytes(&seed),
            rsa,
            std_key,
        })
    }

    fn sign(&self, id: &str) -> anyhow::Result<Signed> {
        let body = cobo_body(id);
        let mut headers = vec![(http::header::CONTENT_TYPE, hv("application/json")?)];
        match self.scheme {
            Scheme::CoboWaas2 => {
                use ed25519_dalek::Signer as _;
                let ts = now_ms().to_string();
                let d = sha2::Sha256::digest(sha2::Sha256::digest(
                    [body.as_bytes(), b"|", ts.as_bytes()].concat(),
                ));
                headers.push((http::HeaderName::from_static("biz-timestamp"), hv(&ts)?));
                headers.push((
                    http::HeaderName::from_static("biz-resp-signature"),
                    hv(&hex::encode(self.ed.sign(&d).to_bytes()))?,
                ));
            }
            Scheme::StandardWebhooks => {
                let ts = (now_ms() / 1000).to_string();
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.std_key)?;
                mac.update(format!("{id}.{ts}.").as_bytes());
                mac.update(body.as_bytes());
                let sig =
                    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
                headers.push((http::HeaderName::from_static("webhook-id"), hv(id)?));
                headers.push((http::HeaderName::from_static("webhook-timestamp"), hv(&ts)?));
                headers.push((
                    http::HeaderName::from_static("webhook-signature"),
                    hv(&format!("v1,{sig}"))?,
                ));
            }
            Scheme::HmacSha256 => {
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HMAC_SECRET.as_bytes())?;
                mac.update(body.as_bytes());
                let sig = hex::encode(mac.finalize().into_bytes());
                headers.push((
                    http::HeaderName::from_static("x-signature-256"),
                    hv(&format!("sha256={sig}"))?,
                ));
            }
            Scheme::RsaSha256 => {
                use rsa::signature::{SignatureEncoding as _, Signer as _};
                let key = self.rsa.as_ref().context("rsa key")?;
                let sig = key.sign(body.as_bytes()).to_bytes();
                headers.push((
                    http::HeaderName::from_static("x-signature"),
                    hv(&base64::engine::general_purpose::STANDARD.encode(sig))?,
                ));
            }
        }
        Ok(Signed {
            body: Bytes::from(body),
            headers,
        })
    }
}

impl Signed {
    /// The whole HTTP/1.1 request, serialized once before the run.
    fn wire(&self, path: &str, host: &str) -> Bytes {
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

/// One keep-alive HTTP/1.1 connection speaking only what this tool needs: a pre-serialized
/// request out, a `content-length` response parsed with httparse back. The generator shares the
/// cores with the server it measures, so it spends as little as it can per request (as wrk does);
/// a full client (hyper's) cost it about as much CPU as the server's own HTTP layer.
struct Conn {
    tcp: tokio::net::TcpStream,
    buf: bytes::BytesMut,
}

impl Conn {
    async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(Self {
            tcp,
            buf: bytes::BytesMut::with_capacity(4096),
        })
    }

    /// Sends one request and reads its response: the status, and whether the server is closing
    /// the connection.
    async fn send(&mut self, wire: &[u8]) -> anyhow::Result<(u16, bool)> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        self.tcp.write_all(wire).await?;
        self.buf.clear();
        let (status, close, end) = loop {
            if self.tcp.read_buf(&mut self.buf).await? == 0 {
                anyhow::bail!("connection closed before a complete response");
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            let httparse::Status::Complete(head) = resp.parse(&self.buf)? else {
                continue;
            };
            let mut length = None;
            let mut close = false;
            for h in resp.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    length = Some(std::str::from_utf8(h.value)?.trim().parse::<usize>()?);
                } else if h.name.eq_ignore_ascii_case("connection") {
                    close = h.value.eq_ignore_ascii_case(b"close");
                }
            }
            let length = length.context("response without content-length")?;
            break (resp.code.context("status")?, close, head + length);
        };
        while self.buf.len() < end {
            if self.tcp.read_buf(&mut self.buf).await? == 0 {
                anyhow::bail!("connection closed inside the response body");
            }
        }
        anyhow::ensure!(self.buf.len() == end, "bytes after the response");
        Ok((status, close))
    }
}

/// This process's CPU time (user + system) so far, for the generator's own cost per request.
fn own_cpu() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the parenthesized command name; utime and stime are 14 and 15.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    // CLK_TCK is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

/// One worker's results, merged after the run (no shared counters on the request path).
struct Tally {
    hist: Histogram<u64>,
    statuses: std::collections::BTreeMap<u16, u64>,
    errors: u64,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            hist: histogram()?,
            statuses: std::collections::BTreeMap::new(),
            errors: 0,
        })
    }

    fn record(&mut self, status: Option<u16>, micros: u64) {
        self.hist.saturating_record(micros);
        match status {
            Some(s) => *self.statuses.entry(s).or_default() += 1,
            None => self.errors += 1,
        }
    }

    fn merge(&mut self, other: Self) -> anyhow::Result<()> {
        self.hist.add(other.hist)?;
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        self.errors += other.errors;
        Ok(())
    }
}

/// Open loop: request `i` is due at `started + i × interval`; waits until then and returns that
/// time, so latency is measured from the schedule, not from when the request finally went out.
/// Closed loop (no interval): now.
async fn due(started: Instant, interval: Option<Duration>, i: usize) -> Instant {
    match interval {
        Some(iv) => {
            let due = started + iv.mul_f64(i as f64);
            tokio::time::sleep_until(due.into()).await;
            due
        }
        None => Instant::now(),
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    // Microseconds, 1 µs .. 60 s, 3 significant figures.
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let uri: http::Uri = args.url.parse()?;
    let authority = uri.authority().context("url needs host:port")?.clone();
    let addr: SocketAddr = tokio::net::lookup_host(authority.as_str())
        .await?
        .next()
        .context("resolve")?;
    let host = authority.to_string();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());

    let signer = Signer::new(args.scheme)?;
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
    let events: Arc<Vec<Bytes>> = Arc::new(events.iter().map(|e| e.wire(path, &host)).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(args.events as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} {per_sec} {msg}",
            )?
            .progress_chars("=> "),
        );
        b
    };
    let deadline = Instant::now() + Duration::from_secs(args.max_secs);
    let cpu_before = own_cpu();
    let started = Instant::now();
    // Open loop: a schedule shared by the workers; request i is due at start + i/rate.
    let interval = args
        .rate
        .map(|r| Duration::from_secs_f64(1.0 / r.max(1) as f64));

    let mut workers = Vec::new();
    for _ in 0..args.connections {
        let (events, next, bar) = (Arc::clone(&events), Arc::clone(&next), bar.clone());
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::new()?;
            let mut conn = Conn::open(addr).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= events.len() || Instant::now() >= deadline {
                    break;
                }
                let due = due(started, interval, i).await;
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
                let micros = u64::try_from(due.elapsed().as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1);
                tally.record(status, micros);
                bar.inc(1);
            }
            anyhow::Ok(tally)
        }));
    }
    let mut tally = Tally::new()?;
    for w in workers {
        tally.merge(w.await??)?;
    }
    let elapsed = started.elapsed();
    let cpu = own_cpu().saturating_sub(cpu_before);
    bar.finish_and_clear();

    let hist = &tally.hist;
    let statuses = &tally.statuses;
    let ok: u64 = statuses
        .iter()
        .filter(|(s, _)| (200..300).contains(*s))
        .map(|(_, n)| n)
        .sum();
    let total = hist.len();
    let non_2xx = total - ok - tally.errors;
    let rps = total as f64 / elapsed.as_secs_f64();
    let pct = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let loadgen_us = cpu.as_secs_f64() * 1e6 / total.max(1) as f64;
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
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(0.999),
        hist.max() as f64 / 1000.0
    );

    let mut delivered = None;
    if let Some(spec) = &args.check_kafka {
        let (brokers, topic) = spec
            .split_once(',')
            .context("--check-kafka brokers,topic")?;
        let n = count_kafka(brokers, topic, &args.id_prefix, ok as usize).await?;
        println!("delivery: {n} distinct keys on Kafka topic {topic} for {ok} 2xx");
        delivered = Some(n);
    }
    if let Some(spec) = &args.check_rabbitmq {
        let (url, queue) = spec.split_once(',').context("--check-rabbitmq url,queue")?;
        let n = count_rabbitmq(url, queue, &args.id_prefix, ok as usize).await?;
        println!("delivery: {n} distinct message ids in RabbitMQ queue {queue} for {ok} 2xx");
        delivered = Some(n);
    }

    if let Some(out) = &args.out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(out.with_extension("hgrm"), hgrm(hist))?;
        std::fs::write(
            out.with_extension("svg"),
            svg(
                hist,
                &format!("{:?}, {} conns", args.scheme, args.connections),
            ),
        )?;
        let summary = serde_json::json!({
            "scheme": format!("{:?}", args.scheme), "connections": args.connections, "rate": args.rate,
            "requests": total, "ok": ok, "seconds": elapsed.as_secs_f64(), "rps": rps,
            "p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99), "p999_ms": pct(0.999),
            "max_ms": hist.max() as f64 / 1000.0, "delivered": delivered,
            "loadgen_cpu_us_per_req": loadgen_us,
            "statuses": statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
        });
        std::fs::write(
            out.with_extension("json"),
            serde_json::to_vec_pretty(&summary)?,
        )?;
    }
    if let Some(n) = delivered
        && n != ok as usize
    {
        anyhow::bail!("delivery check failed: {n} on the broker, {ok} acknowledged");
    }
    Ok(())
}

/// HdrHistogram's percentile-distribution text (`.hgrm`), values in milliseconds.
fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 {
            format!("{:.2}", 1.0 / (1.0 - q))
        } else {
            "inf".into()
        };
        out.push_str(&format!(
            "{:12.3} {:14.12} {:10} {:>14}\n",
            v.value_iterated_to() as f64 / 1000.0,
            q,
            v.count_since_last_iteration(),
            inv
        ));
    }
    out.push_str(&format!(
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]\n",
        h.mean() / 1000.0,
        h.stdev() / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    ));
    out
}

/// Latency by percentile on a log scale (the usual HDR plot), as a small standalone SVG.
fn svg(h: &Histogram<u64>, title: &str) -> String {
    let (w, ht, pad) = (720.0, 360.0, 50.0);
    let max_ms = (h.max() as f64 / 1000.0).max(0.001);
    let x_of = |q: f64| pad + ((1.0 / (1.0 - q.min(0.99999))).log10() / 5.0) * (w - 2.0 * pad);
    let y_of = |ms: f64| ht - pad - (ms / max_ms) * (ht - 2.0 * pad);
    let points: Vec<String> = h
        .iter_quantiles(5)
        .filter(|v| v.quantile_iterated_to() < 1.0)
        .map(|v| {
            format!(
                "{:.1},{:.1}",
                x_of(v.quantile_iterated_to()),
                y_of(v.value_iterated_to() as f64 / 1000.0)
            )
        })
        .collect();
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{ht}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/><text x="{pad}" y="20" font-size="13">{title}: latency by percentile (max {max_ms:.2} ms)</text><line x1="{pad}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{y0}" stroke="black"/>"#,
        y0 = ht - pad,
        x1 = w - pad
    );
    for (q, label) in [
        (0.0, "0%"),
        (0.9, "90%"),
        (0.99, "99%"),
        (0.999, "99.9%"),
        (0.9999, "99.99%"),
    ] {
        let x = x_of(q);
        s.push_str(&format!(
            r#"<text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"#,
            ht - pad + 15.0
        ));
    }
    for frac in [0.0, 0.5, 1.0] {
        let ms = max_ms * frac;
        s.push_str(&format!(
            r#"<text x="{}" y="{:.1}" text-anchor="end">{ms:.2} ms</text>"#,
            pad - 4.0,
            y_of(ms) + 4.0
        ));
    }
    s.push_str(&format!(
        r#"<polyline fill="none" stroke="steelblue" stroke-width="2" points="{}"/></svg>"#,
        points.join(" ")
    ));
    s
}

/// Distinct keys of this run (by ID prefix) on a topic other runs may share.
async fn count_kafka(
    brokers: &str,
    topic: &str,
    prefix: &str,
    want: usize,
) -> anyhow::Result<usize> {
    let (brokers, topic, prefix) = (brokers.to_owned(), topic.to_owned(), format!("{prefix}-"));
    tokio::task::spawn_blocking(move || {
        use rdkafka::Message as _;
        use rdkafka::consumer::{BaseConsumer, Consumer as _};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("loadgen-{}", uuid::Uuid::new_v4()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()?;
        consumer.subscribe(&[&topic])?;
        let mut keys = std::collections::HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut idle = Instant::now();
        while Instant::now() < deadline
            && !(keys.len() >= want && idle.elapsed() > Duration::from_secs(3))
        {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                if let Some(k) = m.key().filter(|k| k.starts_with(prefix.as_bytes())) {
                    keys.insert(k.to_vec());
                }
                idle = Instant::now();
            }
        }
        anyhow::Ok(keys.len())
    })
    .await?
}

/// Distinct message ids of this run (by ID prefix) in a queue other runs may share.
async fn count_rabbitmq(
    url: &str,
    queue: &str,
    prefix: &str,
    want: usize,
) -> anyhow::Result<usize> {
    let prefix = format!("{prefix}-");
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let mut ids = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut idle = Instant::now();
    while Instant::now() < deadline
        && !(ids.len() >= want && idle.elapsed() > Duration::from_secs(3))
    {
        match ch
            .basic_get(
                queue.into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await?
        {
            Some(m) => {
                let id = m
                    .delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                if id.starts_with(&prefix) {
                    ids.insert(id);
                }
                idle = Instant::now();
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    conn.close(200, "done".into()).await?;
    Ok(ids.len())
}

/// The messages a bare-client ceiling publishes: the same ~1 KB bodies as `run`, distinct IDs.
fn ceiling_messages(n: usize) -> Vec<(String, Vec<u8>)> {
    let run = uuid::Uuid::new_v4().simple();
    (0..n)
        .map(|i| {
            let id = format!("ceiling-{run}-{i}");
            let body = cobo_body(&id).into_bytes();
            (id, body)
        })
        .collect()
}

/// Prints and records a ceiling run; `cpu` is this client's own CPU time during it, so the
/// report can set the client's and the broker's cost per message beside hookbridge's.
fn ceiling_report(
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

async fn ceiling_kafka(
    brokers: &str,
    topic: &str,
    n: usize,
    in_flight: usize,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("partitioner", "murmur2_random")
        .create()?;
    let bodies = ceiling_messages(n);
    let started = Instant::now();
    let cpu_before = own_cpu();
    let results: Vec<bool> = futures_util::stream::iter(bodies.iter())
        .map(|(id, body)| {
            let producer = producer.clone();
            async move {
                let headers = rdkafka::message::OwnedHeaders::new()
                    .insert(rdkafka::message::Header {
                        key: "ce_id",
                        value: Some(id.as_str()),
                    })
                    .insert(rdkafka::message::Header {
                        key: "content-type",
                        value: Some("application/cloudevents+json"),
                    });
                let rec = FutureRecord::to(topic)
                    .key(id.as_str())
                    .payload(body.as_slice())
                    .headers(headers);
                producer.send(rec, Duration::from_secs(5)).await.is_ok()
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let ok = results.iter().filter(|r| **r).count();
    ceiling_report(
        "kafka bare rdkafka (acks=all, idempotent)",
        ok,
        started.elapsed(),
        own_cpu().saturating_sub(cpu_before),
        out,
    )
}

async fn ceiling_rabbitmq(
    url: &str,
    exchange: &str,
    n: usize,
    in_flight: usize,
    channels: usize,
    out: Option<&Path>,
    rate: Option<u64>,
) -> anyhow::Result<()> {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let mut chans = Vec::new();
    for _ in 0..channels.max(1) {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        chans.push(ch);
    }
    // A durable queue bound to the exchange, so every message is routed and persisted (an
    // unroutable publish is returned without being stored, which would fake a ceiling).
    let queue = format!("{exchange}-ceiling-{}", uuid::Uuid::new_v4().simple());
    amqp_bind(url, exchange, &queue, false).await?;
    let bodies = ceiling_messages(n);
    let counter = AtomicUsize::new(0);
    let hist = std::sync::Mutex::new(histogram()?);
    let interval = rate.map(|r| Duration::from_secs_f64(1.0 / r.max(1) as f64));
    let started = Instant::now();
    let cpu_before = own_cpu();
    let results: Vec<bool> = futures_util::stream::iter(bodies.iter().enumerate())
        .map(|(i, (id, body))| {
            let ch = &chans[counter.fetch_add(1, Ordering::Relaxed) % chans.len()];
            let hist = &hist;
            async move {
                // Fixed rate: latency from the scheduled send time to the confirm.
                let due = due(started, interval, i).await;
                let props = lapin::BasicProperties::default()
                    .with_message_id(id.as_str().into())
                    .with_delivery_mode(2)
                    .with_content_type("application/cloudevents+json".into());
                let Ok(confirm) = ch
                    .basic_publish(
                        exchange.into(),
                        "cobo.wallets.transaction.succeeded".into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        body,
                        props,
                    )
                    .await
                else {
                    return false;
                };
                let acked = matches!(confirm.await, Ok(lapin::Confirmation::Ack(None)));
                if let Ok(mut h) = hist.lock() {
                    h.saturating_record(
                        u64::try_from(due.elapsed().as_micros())
                            .unwrap_or(u64::MAX)
                            .max(1),
                    );
                }
                acked
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let ok = results.iter().filter(|r| **r).count();
    let (elapsed, cpu) = (started.elapsed(), own_cpu().saturating_sub(cpu_before));
    amqp_bind(url, exchange, &queue, true).await?;
    if let (Some(r), Ok(h)) = (rate, hist.lock()) {
        let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
        println!(
            "rabbitmq bare lapin at {r}/s: confirm latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            h.max() as f64 / 1000.0
        );
    }
    ceiling_report(
        &format!("rabbitmq bare lapin ({in_flight} in flight, {channels} channels)"),
        ok,
        elapsed,
        cpu,
        out,
    )
}

async fn http_ceiling(listen: SocketAddr) -> anyhow::Result<()> {
    use warp::Filter as _;
    // The ceiling server reads the whole body like any receiver must; content_length_limit
    // caps it, which is all this minimal server needs.
    #[allow(clippy::disallowed_methods)]
    let body = warp::body::content_length_limit(1 << 20).and(warp::body::bytes());
    let route = warp::post()
        .and(warp::path!("hooks" / String))
        .and(body)
        .map(|_name: String, _body: Bytes| {
            warp::reply::json(&serde_json::json!({ "status": "accepted" }))
        });
    eprintln!("http ceiling server on {listen}");
    warp::serve(route).run(listen).await;
    Ok(())
}

fn verify_ceiling(threads: usize, secs: u64) -> anyhow::Result<()> {
    let source = {
        let text = "[sources.c]\nverify = { scheme = \"cobo-waas2\", public_keys = [\"f06a7074b7892a39139b6317509f9d0e01ae234cf17fc7bfa9db3d5957f931be\"] }\n";
        Arc::new(
            hookbridge::config::load(text, &|_| None)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .sources
                .remove(0),
        )
    };
    let signer = Signer::new(Scheme::CoboWaas2)?;
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

async fn amqp_bind(url: &str, exchange: &str, queue: &str, delete: bool) -> anyhow::Result<()> {
    use lapin::options::{
        ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    };
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    if delete {
        ch.queue_delete(queue.into(), QueueDeleteOptions::default())
            .await?;
    } else {
        ch.exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await?;
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions::durable(),
            lapin::types::FieldTable::default(),
        )
        .await?;
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await?;
    }
    conn.close(200, "done".into()).await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = match &cli.command {
        Command::Run(args) if args.threads <= 1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?,
        _ => tokio::runtime::Runtime::new()?,
    };
    rt.block_on(async move {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::CeilingKafka {
                brokers,
                topic,
                messages,
                in_flight,
                out,
            } => ceiling_kafka(&brokers, &topic, messages, in_flight, out.as_deref()).await,
            Command::CeilingRabbitmq {
                url,
                exchange,
                messages,
                in_flight,
                channels,
                out,
                rate,
            } => {
                ceiling_rabbitmq(
                    &url,
                    &exchange,
                    messages,
                    in_flight,
                    channels,
                    out.as_deref(),
                    rate,
                )
                .await
            }
            Command::HttpCeiling { listen } => http_ceiling(listen).await,
            Command::VerifyCeiling { threads, secs } => verify_ceiling(threads, secs),
            Command::AmqpBind {
                url,
                exchange,
                queue,
                delete,
            } => amqp_bind(&url, &exchange, &queue, delete).await,
        }
    })
}
