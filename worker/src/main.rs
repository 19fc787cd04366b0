//! `docfleet-worker`: loads config, starts tracing, consumes until SIGTERM/SIGINT, drains.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use docfleet_shared::settings::{self, WorkerSettings};

// Parsers allocate and free many small objects from several threads at once; glibc's
// allocator spent a fifth of parse time in malloc/free (perf), mimalloc far less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "docfleet queue consumer: parse or classify one file per message"
)]
struct Cli {
    /// Optional TOML configuration file; DOCFLEET__… variables override it.
    #[arg(long, env = "DOCFLEET_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Exit 0 if a local URL answers 2xx (container healthcheck).
    Probe {
        /// e.g. http://127.0.0.1:9091/readyz
        url: String,
    },
    /// Internal: parse one file from stdin under resource limits (the worker runs this).
    #[command(hide = true)]
    Engine {
        #[arg(long)]
        memory_mb: u64,
        #[arg(long)]
        cpu_secs: u64,
        #[arg(long)]
        max_processes: Option<u64>,
        #[arg(long)]
        as_nobody: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        // The parser child runs before any runtime exists: its resource limits must not meet
        // the runtime's threads.
        Some(Command::Engine {
            memory_mb,
            cpu_secs,
            max_processes,
            as_nobody,
        }) => {
            let confinement = docfleet_worker::sandbox::Confinement {
                max_processes: *max_processes,
                as_nobody: *as_nobody,
            };
            return docfleet_worker::isolation::serve_child(*memory_mb, *cpu_secs, confinement);
        }
        Some(Command::Probe { url }) => {
            return if docfleet_shared::probe::http_ok(url) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        None => {}
    }
    // Before any thread starts, as setting the environment must be.
    docfleet_worker::embedding::one_thread_per_inference();
    // Before the runtime: the configuration says how many threads it gets.
    let settings: WorkerSettings =
        match settings::load_for_binary("docfleet-worker", cli.config.as_deref()) {
            Ok(s) => s,
            Err(code) => return code,
        };
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.runtime_threads)
        .enable_all()
        .build()
    {
        // `serve` runs as a task, not in `block_on` on this thread: the consume loop spawns a
        // task per delivery, and a spawn from outside the runtime is a hand-off between
        // threads (a wake-up and a context switch) where a spawn from inside is a queue push.
        Ok(runtime) => runtime.block_on(async {
            match tokio::spawn(serve(settings)).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("docfleet-worker: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
        Err(e) => {
            eprintln!("docfleet-worker: could not start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: WorkerSettings) -> ExitCode {
    let code = match docfleet_worker::run(settings, docfleet_shared::shutdown::signal()).await {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "Worker failed.");
            eprintln!("docfleet-worker: {e}");
            1
        }
    };
    // A parser thread stuck past its item's deadline was abandoned; the runtime would wait for
    // it on the way out, so leave without waiting: every outcome is already recorded.
    std::process::exit(code)
}
