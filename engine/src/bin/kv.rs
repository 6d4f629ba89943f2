//! `kv`: a command-line client of the replicated key-value store.
//!
//! ```text
//! kv --cluster 7 --replicas 127.0.0.1:7101,127.0.0.1:7102 put KEY VALUE
//! kv ... get KEY            (through the log: linearizable)
//! kv ... fast-get KEY       (the connected replica's local state)
//! kv ... delete KEY
//! kv ... bench --outstanding 256 --seconds 5 --value-bytes 64
//! ```
//! The full load generator is `loadgen`; `bench` is a quick check.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use engine::client::{Client, ClientOptions};
use engine::core::ClusterId;
use engine::kv::{KvOp, KvResult};
use engine::transport::net::Network;

#[derive(Parser)]
#[command(name = "kv", about = "A client of the replicated key-value store.")]
struct Args {
    /// The cluster id (must match the replicas').
    #[arg(long)]
    cluster: u64,
    /// Comma-separated replica addresses (any one suffices).
    #[arg(long, value_delimiter = ',', required = true)]
    replicas: Vec<String>,
    /// Mutual TLS: this client's certificate chain (PEM); with --tls-key
    /// and at least one --tls-ca or --tls-pin.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// This client's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// A CA the replicas' certificates chain to (repeatable).
    #[arg(long)]
    tls_ca: Vec<std::path::PathBuf>,
    /// A trusted replica certificate's SHA-256 fingerprint (repeatable).
    #[arg(long)]
    tls_pin: Vec<String>,
    /// The name the replicas' certificates carry (default: the host of
    /// each address).
    #[arg(long)]
    tls_server_name: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Sets KEY to VALUE.
    Put { key: String, value: String },
    /// Reads KEY through the log (linearizable).
    Get { key: String },
    /// Reads KEY from the connected replica's state (session-consistent).
    FastGet { key: String },
    /// Deletes KEY.
    Delete { key: String },
    /// Closed-loop puts: prints ops/s and latency quantiles.
    Bench {
        /// Commands in flight at once.
        #[arg(long, default_value_t = 1)]
        outstanding: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 64)]
        value_bytes: usize,
        /// Distinct keys written.
        #[arg(long, default_value_t = 1000)]
        keys: u64,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run(args))
}

async fn run(args: Args) -> std::process::ExitCode {
    let network = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let settings = engine::transport::tls::TlsSettings {
                cert: cert.clone(),
                key: key.clone(),
                ca: args.tls_ca.clone(),
                pinned_sha256: args.tls_pin.clone(),
                server_name: args.tls_server_name.clone(),
            };
            match settings.load() {
                Ok(tls) => Network::Tls(Arc::new(tls)),
                Err(e) => {
                    eprintln!("kv: TLS: {e}");
                    return std::process::ExitCode::from(2);
                }
            }
        }
        _ => Network::Tcp,
    };
    let client = match Client::connect(
        network,
        ClusterId(args.cluster),
        args.replicas.clone(),
        ClientOptions::default(),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kv: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    let single = |op: KvOp| op.encode();
    let r = match args.cmd {
        Cmd::Put { key, value } => {
            client
                .call(single(KvOp::Put {
                    key: b(&key),
                    value: b(&value),
                }))
                .await
        }
        Cmd::Get { key } => client.call(single(KvOp::Get { key: b(&key) })).await,
        Cmd::FastGet { key } => client.fast_read(single(KvOp::Get { key: b(&key) })).await,
        Cmd::Delete { key } => client.call(single(KvOp::Delete { key: b(&key) })).await,
        Cmd::Bench {
            outstanding,
            seconds,
            value_bytes,
            keys,
        } => {
            bench(client, outstanding, seconds, value_bytes, keys).await;
            return std::process::ExitCode::SUCCESS;
        }
    };
    match r {
        Ok(resp) => {
            match KvResult::decode(&resp.payload) {
                Ok(KvResult::Value(Some(v))) => println!("{}", String::from_utf8_lossy(&v)),
                Ok(KvResult::Value(None)) => println!("(none)"),
                Ok(other) => println!("{other:?}"),
                Err(e) => println!("undecodable result: {e}"),
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kv: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn bench(client: Client, outstanding: usize, seconds: f64, value_bytes: usize, keys: u64) {
    let client = Arc::new(client);
    let value = Bytes::from(vec![b'v'; value_bytes]);
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let warm = Instant::now() + Duration::from_secs_f64(seconds / 5.0);
    let mut tasks = Vec::new();
    for w in 0..outstanding {
        let (client, value) = (client.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = w as u64;
            let mut errors = 0u64;
            while Instant::now() < end {
                let key = Bytes::from(format!("key{}", i % keys));
                i += outstanding as u64;
                let t = Instant::now();
                match client
                    .call(
                        KvOp::Put {
                            key,
                            value: value.clone(),
                        }
                        .encode(),
                    )
                    .await
                {
                    Ok(_) if t > warm => lat.push(t.elapsed().as_nanos() as u64),
                    Ok(_) => {}
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("bench task");
        lat.extend(l);
        errors += e;
    }
    lat.sort_unstable();
    let measured = seconds * 0.8;
    let q = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "outstanding {outstanding}: {:.0} ops/s, p50 {:.0} µs, p99 {:.0} µs, p999 {:.0} µs, max {:.0} µs, {} ops, {errors} errors",
        lat.len() as f64 / measured,
        q(0.5),
        q(0.99),
        q(0.999),
        q(1.0),
        lat.len()
    );
}
