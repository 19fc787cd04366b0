//! `docfleet-dispatcher`: loads config, starts tracing, serves until SIGTERM/SIGINT, drains.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use docfleet_shared::settings::{self, DispatcherSettings};

#[derive(Parser)]
#[command(version, about = "docfleet HTTP API and batch expansion")]
struct Cli {
    /// Optional TOML configuration file; DOCFLEET__… variables override it.
    #[arg(long, env = "DOCFLEET_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Rebuild a batch's counters from its items' states (after a Redis failover lost writes).
    Recount {
        /// The batch id (`bjb-…`).
        #[arg(long)]
        batch: String,
    },
    /// Exit 0 if a local URL answers 2xx (container healthcheck).
    Probe {
        /// e.g. http://127.0.0.1:8080/readyz
        url: String,
    },
    /// List the dead-letter queue's messages, one JSON line each (they stay parked), or with
    /// `--replay` publish them back to the queues they died in.
    DeadLetters {
        /// Publish them back instead of listing them.
        #[arg(long)]
        replay: bool,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Create an API key for a project and print it.
    CreateKey {
        /// Project the key belongs to ([A-Za-z0-9_-], at most 64).
        #[arg(long, required_unless_present = "operator")]
        project: Option<String>,
        /// An operator key instead: the operator routes (re-runs, redeliveries, keys) and no
        /// project's records. Listed and revoked as the keys of project `@operator`.
        #[arg(long, conflicts_with = "project")]
        operator: bool,
        /// The key stops working after this many days.
        #[arg(long)]
        expires_in_days: Option<u64>,
    },
    /// List a project's keys: digest prefix, creation time, expiry (keys are stored as digests
    /// only, so they cannot be shown again).
    ListKeys {
        /// The project.
        #[arg(long)]
        project: String,
    },
    /// Rotate a key: print its successor and let the old one work for `--overlap-secs` more
    /// (never longer than it had), so clients move over before it stops.
    RotateKey {
        /// The project.
        #[arg(long)]
        project: String,
        /// The key (`dfk_…`) or at least 12 characters of its digest.
        key: String,
        /// How long the old key keeps working (default a day).
        #[arg(long, default_value_t = 86_400)]
        overlap_secs: u64,
        /// The successor stops working after this many days.
        #[arg(long)]
        expires_in_days: Option<u64>,
    },
    /// Revoke a key, given itself or its digest prefix from `list-keys`; refused everywhere
    /// within a second.
    RevokeKey {
        /// The project.
        #[arg(long)]
        project: String,
        /// The key (`dfk_…`) or at least 12 characters of its digest.
        key: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Probe { url }) = &cli.command {
        return if docfleet_shared::probe::http_ok(url) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let settings: DispatcherSettings =
        match settings::load_for_binary("docfleet-dispatcher", cli.config.as_deref()) {
            Ok(s) => s,
            Err(code) => return code,
        };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("docfleet-dispatcher: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command.unwrap_or(Command::Serve), settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "Dispatcher failed.");
            eprintln!("docfleet-dispatcher: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn redis_and_keys(
    settings: &DispatcherSettings,
) -> anyhow::Result<(redis::aio::ConnectionManager, docfleet_shared::keys::Keys)> {
    let con = docfleet_shared::services::connect_redis(&settings.redis.url).await?;
    Ok((
        con,
        docfleet_shared::keys::Keys::new(settings.redis.key_prefix.clone()),
    ))
}

async fn run(command: Command, settings: DispatcherSettings) -> anyhow::Result<()> {
    match command {
        Command::CreateKey {
            project,
            operator,
            expires_in_days,
        } => {
            let (mut con, keys) = redis_and_keys(&settings).await?;
            let ttl = expires_in_days.map(|d| d.saturating_mul(86_400));
            let key = match project {
                _ if operator => {
                    docfleet_dispatcher::auth::create_operator_key(&mut con, &keys, ttl).await?
                }
                Some(p) if docfleet_dispatcher::auth::valid_project_id(&p) => {
                    docfleet_dispatcher::auth::create_key(&mut con, &keys, &p, ttl).await?
                }
                _ => anyhow::bail!("--project must be 1-64 characters of [A-Za-z0-9_-]"),
            };
            println!("{key}");
            Ok(())
        }
        Command::ListKeys { project } => {
            let (mut con, keys) = redis_and_keys(&settings).await?;
            for k in docfleet_dispatcher::auth::list_keys(&mut con, &keys, &project).await? {
                println!("{k}");
            }
            Ok(())
        }
        Command::RotateKey {
            project,
            key,
            overlap_secs,
            expires_in_days,
        } => {
            let (mut con, keys) = redis_and_keys(&settings).await?;
            let rotated = docfleet_dispatcher::auth::rotate_key(
                &mut con,
                &keys,
                &project,
                &key,
                overlap_secs,
                expires_in_days.map(|d| d.saturating_mul(86_400)),
            )
            .await?;
            let Some(r) = rotated else {
                anyhow::bail!("no single key of project {project} matches {key:?}");
            };
            println!("{}", r.key);
            eprintln!("the old key works for {} s more", r.old_expires_in_secs);
            Ok(())
        }
        Command::RevokeKey { project, key } => {
            let (mut con, keys) = redis_and_keys(&settings).await?;
            let n = docfleet_dispatcher::auth::revoke_key(&mut con, &keys, &project, &key).await?;
            if n == 0 {
                anyhow::bail!("no key of project {project} matches {key:?}");
            }
            println!("revoked {n}");
            Ok(())
        }
        Command::Recount { batch } => {
            let (mut con, keys) = redis_and_keys(&settings).await?;
            let scripts = docfleet_shared::scripts::Scripts::new(keys);
            let t = scripts.recount(&mut con, &batch).await?;
            println!(
                "{batch}: pending {} processing {} completed {} failed {} skipped {} cancelled {}",
                t[0], t[1], t[2], t[3], t[4], t[5]
            );
            Ok(())
        }
        Command::DeadLetters { replay, limit } => {
            let topology = docfleet_shared::topology::Topology::for_broker(&settings.broker);
            let broker = &settings.broker;
            if replay {
                let n = docfleet_dispatcher::dead_letters::replay(broker, &topology, limit).await?;
                println!("replayed {n}");
            } else {
                for m in docfleet_dispatcher::dead_letters::list(broker, &topology, limit).await? {
                    println!("{m}");
                }
            }
            Ok(())
        }
        Command::Probe { .. } => Ok(()),
        Command::Serve => {
            let listener = tokio::net::TcpListener::bind(&settings.listen).await?;
            docfleet_dispatcher::run(settings, listener, docfleet_shared::shutdown::signal())
                .await?;
            Ok(())
        }
    }
}
