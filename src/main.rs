use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hookbridge::{app::App, config, probe, shutdown, telemetry};

/// Verified webhook ingress: signature-checked, normalized to CloudEvents, durable before 2xx.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        value_enum,
        default_value = "text",
        env = "HOOKBRIDGE_LOG_FORMAT",
        global = true
    )]
    log_format: telemetry::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve {
        #[arg(long, short, env = "HOOKBRIDGE_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file: print every error, or a summary of sources and sinks.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Sign a realistic test event for a source, the way its provider would, post it to a
    /// running hookbridge, and print the status and body of the answer (exit 0 on 2xx).
    Send {
        #[arg(long, short)]
        config: PathBuf,
        /// The source to send to (`[sources.<name>]`).
        #[arg(long, short)]
        source: String,
        /// Sign this file's bytes instead of the scheme's sample (Twilio: a form body).
        #[arg(long)]
        body: Option<PathBuf>,
        /// Post here instead of http://<server.listen>/hooks/<source>.
        #[arg(long)]
        url: Option<String>,
        /// Change one signed byte after signing: the answer should be 401.
        #[arg(long)]
        tamper: bool,
        /// Cobo WaaS 2.0 and Standard Webhooks v1a: an Ed25519 seed (hex); Cobo WaaS 1.0: a
        /// secp256k1 key (hex); rsa-sha256: a PEM file. Default for Cobo: the published test keys.
        #[arg(long)]
        private_key: Option<String>,
    },
    /// Check a captured request offline against a source: which headers were read, which keys
    /// were tried (labels only), the timestamp against the window, the event that would be
    /// published, and hints for the usual mistakes.
    ///
    /// Exit status: 0 verified; 1 bad signature; 3 missing header; 4 malformed signature or
    /// timestamp header; 5 timestamp outside the replay window; 6 verified but the event ID or
    /// type is unusable; 64 malformed capture or --now; 66 unreadable capture file; 78 config
    /// error or unknown source.
    Verify {
        /// The config file the service runs with.
        #[arg(long, short)]
        config: PathBuf,
        /// The source to check against (`[sources.<name>]`).
        #[arg(long, short)]
        source: String,
        /// A raw HTTP/1.1 request: request line, headers, a blank line, the body (CRLF or LF
        /// line endings; the body by Content-Length, else to the end of the file; not chunked).
        #[arg(long, short)]
        request: PathBuf,
        /// The time to check the replay window against: Unix seconds or RFC 3339 (default now).
        #[arg(long)]
        now: Option<String>,
        /// Print the report as one JSON object instead (errors without a report stay on stderr).
        #[arg(long)]
        json: bool,
    },
    /// Inspect or move what a stopped instance's spool holds (refused while an instance runs).
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
    /// Probe a running instance for a container healthcheck: exit 0 when `/readyz` (or
    /// `--path`) answers 200, 1 when it answers anything else, 69 when nothing answers.
    #[command(alias = "probe")]
    Health {
        /// The instance's address: `host:port` of its admin (or loopback main) listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// The whole URL instead of `--addr` and `--path`: `http://host:port/path`.
        #[arg(long, conflicts_with_all = ["addr", "path"])]
        url: Option<String>,
        /// `/readyz` (every sink connected or the spool standing in) or `/healthz` (alive).
        #[arg(long, default_value = "/readyz")]
        path: String,
        /// Longest the whole probe may take, e.g. `2s` or `500ms`.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

/// Which spool file: the one the config names, or `--spool`.
#[derive(clap::Args)]
struct SpoolAt {
    /// The instance's config (its `[spool] path`; needed to publish).
    #[arg(long, short, env = "HOOKBRIDGE_CONFIG")]
    config: Option<PathBuf>,
    /// The spool file itself (for commands that publish, overrides the config's path).
    #[arg(long)]
    spool: Option<PathBuf>,
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// Per sink: events queued, their bytes, the oldest, dead letters, quarantined records.
    Stats {
        #[command(flatten)]
        at: SpoolAt,
    },
    /// One line per queued event: sink, key, event ID, type, source, time received.
    List {
        #[command(flatten)]
        at: SpoolAt,
    },
    /// Every queued event as its CloudEvent (original ID), one JSON object per line, on stdout.
    Export {
        #[command(flatten)]
        at: SpoolAt,
    },
    /// Publish queued events to a configured sink, removing each once it confirmed (exit 69
    /// when any is left).
    Drain {
        #[command(flatten)]
        at: SpoolAt,
        /// The sink to publish to (`[sinks.<name>]` in the config).
        #[arg(long)]
        to_sink: String,
        /// Only the events queued for this sink.
        #[arg(long)]
        from: Option<String>,
    },
    /// Dead letters: events a sink refused for good, kept with the reason.
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
    },
}

#[derive(Subcommand)]
enum DeadCommand {
    /// One line per dead letter: sink, key, time, event ID, type, source, reason.
    List {
        #[command(flatten)]
        at: SpoolAt,
    },
    /// Publish dead letters to their sink again, removing each once the broker confirmed it
    /// (exit 69 when any is left).
    Replay {
        #[command(flatten)]
        at: SpoolAt,
        /// Only this sink's dead letters.
        #[arg(long)]
        sink: Option<String>,
    },
}

// glibc malloc/free took about 12 % of the server's CPU under load (perf, bench/): mimalloc's
// thread-local free lists suit a request-per-task server.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// EX_CONFIG from sysexits.h: the configuration is wrong.
const EXIT_CONFIG: u8 = 78;
/// `health`: the instance answered, but not 200 (Docker reads any non-zero as unhealthy).
const EXIT_NOT_READY: u8 = 1;
/// EX_USAGE from sysexits.h: `health` was given an address or URL it cannot use.
const EXIT_USAGE: u8 = 64;
/// EX_UNAVAILABLE from sysexits.h: `health` or `send` got no HTTP answer at all.
const EXIT_UNREACHABLE: u8 = 69;

fn main() -> ExitCode {
    // mimalloc asks for transparent huge pages on its arenas (MADV_HUGEPAGE), so one touched byte
    // makes 2 MB resident: 125 MB peak RSS instead of 66 MB with 1000 connections (bench/). Off
    // for the process, which also spares it khugepaged's compaction stalls. Best effort: a
    // kernel without THP refuses, and nothing depends on it.
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("transparent huge pages stay on: {e}");
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Spool { command } => spool(command),
        Command::Health {
            addr,
            url,
            path,
            timeout,
        } => health(&addr, url.as_deref(), &path, timeout),
        Command::CheckConfig { config } => match config::load_file(&config) {
            Ok(cfg) => {
                print!("{}", config::summary(&cfg));
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprint!("{}: {errors}", config.display());
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Verify {
            config,
            source,
            request,
            now,
            json,
        } => verify(
            &hookbridge::diagnose::VerifyArgs {
                config,
                source,
                request,
                now,
            },
            json,
        ),
        Command::Send {
            config,
            source,
            body,
            url,
            tamper,
            private_key,
        } => send(&hookbridge::send::SendArgs {
            config,
            source,
            body,
            url,
            tamper,
            private_key,
        }),
        Command::Serve { config } => run_service(&config, cli.log_format),
    }
}

/// `hookbridge serve`: load the config (every error, exit 78), open the logs, run until a
/// signal.
fn run_service(config: &std::path::Path, log_format: telemetry::LogFormat) -> ExitCode {
    let cfg = match config::load_file(config) {
        Ok(cfg) => cfg,
        Err(errors) => {
            eprint!("{}: {errors}", config.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Held until the end of this function: dropping it flushes the log writers.
    let _log_writers = match telemetry::init(log_format, &cfg.audit) {
        Ok(guards) => guards,
        Err(e) => {
            eprintln!("cannot open the audit log: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match tokio::runtime::Runtime::new() {
        Ok(rt) => match rt.block_on(serve(cfg, config)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "hookbridge stopped");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `hookbridge spool …`: see `hookbridge::spool::cli` for the exit codes.
fn spool(command: SpoolCommand) -> ExitCode {
    use hookbridge::spool::cli::{self, CliError};
    let result = match command {
        SpoolCommand::Stats { at } => {
            spool_path(&at).and_then(|(path, _)| cli::stats(&path, &mut std::io::stdout().lock()))
        }
        SpoolCommand::List { at } => {
            spool_path(&at).and_then(|(path, _)| cli::list(&path, &mut std::io::stdout().lock()))
        }
        SpoolCommand::Export { at } => spool_path(&at).and_then(|(path, _)| {
            let (n, skipped) = cli::export(&path, &mut std::io::stdout().lock())?;
            eprintln!("{n} event(s) exported, {skipped} unreadable record(s) skipped");
            Ok(())
        }),
        SpoolCommand::Drain { at, to_sink, from } => spool_path(&at).and_then(|(path, cfg)| {
            let cfg =
                cfg.ok_or_else(|| CliError::Usage("drain publishes: it needs --config".into()))?;
            with_sinks(&cfg, |sinks| async move {
                cli::drain(
                    &path,
                    &sinks,
                    &to_sink,
                    from.as_deref(),
                    &mut std::io::stdout(),
                )
                .await
            })
        }),
        SpoolCommand::Dead {
            command: DeadCommand::List { at },
        } => spool_path(&at)
            .and_then(|(path, _)| cli::dead_list(&path, &mut std::io::stdout().lock()).map(drop)),
        SpoolCommand::Dead {
            command: DeadCommand::Replay { at, sink },
        } => spool_path(&at).and_then(|(path, cfg)| {
            let cfg =
                cfg.ok_or_else(|| CliError::Usage("replay publishes: it needs --config".into()))?;
            with_sinks(&cfg, |sinks| async move {
                cli::dead_replay(&path, &sinks, sink.as_deref(), &mut std::io::stdout()).await
            })
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spool: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Starts the config's sinks, runs `work` with them, closes them, and reports what moved.
fn with_sinks<F, Fut>(cfg: &config::Config, work: F) -> Result<(), hookbridge::spool::cli::CliError>
where
    F: FnOnce(hookbridge::sink::Sinks) -> Fut,
    Fut: std::future::Future<
            Output = Result<hookbridge::spool::cli::Moved, hookbridge::spool::cli::CliError>,
        >,
{
    use hookbridge::spool::cli::CliError;
    let rt = tokio::runtime::Runtime::new()
        .map_err(|e| CliError::Failed(format!("cannot start the runtime: {e}")))?;
    rt.block_on(async {
        let sinks = hookbridge::sink::Sinks::start(&cfg.sinks, &cfg.sources)
            .await
            .map_err(|e| CliError::Failed(format!("{e:#}")))?;
        let moved = work(sinks.clone()).await;
        for (_, s) in sinks.iter() {
            s.close().await;
        }
        let moved = moved?;
        eprintln!("{} published, {} left", moved.published, moved.left);
        if moved.left > 0 {
            return Err(CliError::Failed(format!(
                "{} event(s) left in the spool",
                moved.left
            )));
        }
        Ok(())
    })
}

/// The spool file a command works on, and the config when one was given.
fn spool_path(
    at: &SpoolAt,
) -> Result<(PathBuf, Option<config::Config>), hookbridge::spool::cli::CliError> {
    use hookbridge::spool::cli::CliError;
    let cfg = match &at.config {
        Some(path) => Some(
            config::load_file(path)
                .map_err(|errors| CliError::Usage(format!("{}: {errors}", path.display())))?,
        ),
        None => None,
    };
    let path = match (&at.spool, &cfg) {
        (Some(p), _) => p.clone(),
        (None, Some(cfg)) => match &cfg.spool {
            Some(s) => s.path.clone(),
            None => {
                return Err(CliError::Usage(
                    "the config has no spool ([spool] enabled = false)".into(),
                ));
            }
        },
        (None, None) => return Err(CliError::Usage("give --config or --spool".into())),
    };
    Ok((path, cfg))
}

/// `hookbridge send`: 0 when the answer is 2xx, 1 for any other answer, 78 for a config that
/// does not validate or cannot be signed with, 69 (EX_UNAVAILABLE) when nothing answers.
fn send(args: &hookbridge::send::SendArgs) -> ExitCode {
    let signed = match hookbridge::send::prepare(args, &|name| std::env::var(name).ok()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for note in &signed.notes {
        eprintln!("note: {note}");
    }
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(hookbridge::send::post(&signed)));
    match answer {
        Ok((status, body)) => {
            println!("{status} {}", String::from_utf8_lossy(&body));
            if status.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(EXIT_UNREACHABLE)
        }
    }
}

/// `hookbridge verify`: the report on stdout, or why there is none on stderr; the exit status
/// says which outcome (see `hookbridge::diagnose`'s `EXIT_*`).
fn verify(args: &hookbridge::diagnose::VerifyArgs, json: bool) -> ExitCode {
    match hookbridge::diagnose::run(args, &|name| std::env::var(name).ok()) {
        Ok(report) => {
            if json {
                println!("{}", report.json);
            } else {
                print!("{}", report.text);
            }
            ExitCode::from(report.exit)
        }
        Err(failure) => {
            eprintln!("verify: {}", failure.message);
            ExitCode::from(failure.exit)
        }
    }
}

/// Probes an instance and prints one line: on stdout when ready, on stderr otherwise.
fn health(addr: &str, url: Option<&str>, path: &str, timeout: std::time::Duration) -> ExitCode {
    let target = match url {
        Some(url) => probe::Target::from_url(url, path),
        None => probe::Target::new(addr, path),
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            eprintln!("health: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let outcome = probe::probe(&target, timeout);
    let line = outcome.line(&target);
    match outcome {
        probe::Outcome::Ready => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        probe::Outcome::NotReady(_) => {
            eprintln!("{line}");
            ExitCode::from(EXIT_NOT_READY)
        }
        probe::Outcome::Unreachable(_) => {
            eprintln!("{line}");
            ExitCode::from(EXIT_UNREACHABLE)
        }
    }
}

async fn serve(cfg: config::Config, path: &std::path::Path) -> anyhow::Result<()> {
    // The recorder's upkeep (histogram buckets) runs on the app's housekeeping tick.
    let metrics = hookbridge::metrics::install()?;
    let app = App::build(cfg, Some(metrics))
        .await?
        .reload_from(path.to_owned());
    app.run(shutdown::signal()).await;
    Ok(())
}
