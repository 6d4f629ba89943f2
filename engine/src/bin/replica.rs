//! `replica`: one replica of a cluster, serving the KV store.
//!
//! ```text
//! replica --config replica.toml [--bootstrap]
//! ```
//! Logs go to stderr, filtered by `RUST_LOG` (default `info`). SIGTERM or
//! SIGINT stops it cleanly (what it wrote is synced). Exit codes: 0 after a
//! clean stop, 1 when storage fails (the replica stopped to stay safe),
//! 2 for a bad configuration or a log it cannot open.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use engine::kv::KvStore;
use engine::runtime::file::{CONFIG_HELP, EXAMPLE, ReplicaFile};
use engine::runtime::{self, NodeError};
use engine::transport::net::Network;

#[derive(Parser, Debug)]
#[command(
    name = "replica",
    about = "One replica of a Multi-Paxos replicated key-value store.",
    long_about = "One replica of a Multi-Paxos replicated key-value store: it elects a leader with \
                  its peers, replicates commands with pipelining and batching, persists them to \
                  its log (nvm, wal or mem) and serves clients on the same port as its peers.",
    after_long_help = CONFIG_HELP
)]
struct Args {
    /// The replica's TOML configuration (see below for every setting).
    #[arg(
        short,
        long,
        value_name = "FILE",
        required_unless_present = "example_config"
    )]
    config: Option<PathBuf>,

    /// Create this replica's log: for a brand-new replica only. Refuses to
    /// overwrite an existing log; without it, a missing log is an error (a
    /// replica that lost its disk must not rejoin under its old identity).
    #[arg(long)]
    bootstrap: bool,

    /// Print a complete example configuration and exit.
    #[arg(long)]
    example_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.example_config {
        print!("{EXAMPLE}");
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let path = args.config.expect("clap requires --config");
    let shown = path.display().to_string();
    let file = match ReplicaFile::load(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("replica: {e}");
            return ExitCode::from(2);
        }
    };
    let (cfg, spec) = match file.resolve(&shown) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("replica: {e}");
            return ExitCode::from(2);
        }
    };
    let mut builder = if file.worker_threads == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(file.worker_threads);
        b
    };
    let rt = builder
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    rt.block_on(run(cfg, spec, args.bootstrap))
}

async fn run(cfg: runtime::NodeConfig, spec: runtime::StorageSpec, bootstrap: bool) -> ExitCode {
    let (cluster, id) = (cfg.core.cluster, cfg.core.id);
    let opened = match runtime::open_storage(&spec, cluster, id, bootstrap) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("replica: {e}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(
        cluster = cluster.0,
        replica = %id,
        storage = spec.name(),
        listen = %cfg.listen,
        entries = opened.state.entries.len(),
        promised = %opened.state.promised,
        "starting"
    );
    let node = match runtime::start(
        cfg,
        Network::Tcp,
        opened.storage,
        opened.state,
        KvStore::new(),
        opened.sync_thread,
    )
    .await
    {
        Ok(n) => n,
        Err(e) => {
            eprintln!("replica: {e}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(listen = %node.listen_addr(), "serving");
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("replica: cannot handle SIGTERM: {e}");
            return ExitCode::from(2);
        }
    };
    let stop = tokio::select! {
        _ = term.recv() => true,
        _ = tokio::signal::ctrl_c() => true,
        () = wait_for_end(&node) => false,
    };
    let result = if stop {
        tracing::info!("stopping");
        node.shutdown().await
    } else {
        node.join().await
    };
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e @ NodeError::Storage(_)) => {
            eprintln!("replica: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("replica: {e}");
            ExitCode::from(2)
        }
    }
}

/// Resolves when the node stops on its own (a storage failure).
async fn wait_for_end(node: &runtime::NodeHandle) {
    loop {
        if node.status().stopped {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
