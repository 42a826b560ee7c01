use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hookbridge::{app::App, config, shutdown, telemetry};

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
}

// glibc malloc/free took about 12 % of the server's CPU under load (perf, bench/): mimalloc's
// thread-local free lists suit a request-per-task server.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// EX_CONFIG from sysexits.h: the configuration is wrong.
const EXIT_CONFIG: u8 = 78;

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
        Command::Serve { config } => {
            let cfg = match config::load_file(&config) {
                Ok(cfg) => cfg,
                Err(errors) => {
                    eprint!("{}: {errors}", config.display());
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            // Held until the end of this arm: dropping it flushes the log writers.
            let _log_writers = match telemetry::init(cli.log_format, &cfg.audit) {
                Ok(guards) => guards,
                Err(e) => {
                    eprintln!("cannot open the audit log: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            match tokio::runtime::Runtime::new() {
                Ok(rt) => match rt.block_on(serve(cfg)) {
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
    }
}

async fn serve(cfg: config::Config) -> anyhow::Result<()> {
    // The recorder's upkeep (histogram buckets) runs on the app's housekeeping tick.
    let metrics = hookbridge::metrics::install()?;
    let app = App::build(cfg, Some(metrics)).await?;
    app.run(shutdown::signal()).await;
    Ok(())
}
