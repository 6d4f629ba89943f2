//! `kv`: a command-line client of the replicated key-value store, for
//! people and for scripts.
//!
//! ```text
//! kv --cluster 7 --replicas 127.0.0.1:7101,127.0.0.1:7102 put KEY VALUE
//! kv ... get KEY                  (through the log: linearizable)
//! kv ... fast-get KEY             (the connected replica's local state)
//! kv ... delete KEY
//! kv ... cas KEY EXPECTED NEW     (or: cas --absent KEY NEW)
//! kv ... bench --outstanding 256 --seconds 5 --value-bytes 64
//! ```
//! The exit status says what happened (see [`Exit`]); `--json` prints one
//! JSON object per invocation for machines. Each invocation is one client
//! session, ended when it exits (unless an outcome is unknown). The full
//! load generator is `loadgen`; `bench` is a quick check.

/// mimalloc, not glibc's malloc, which gives freed pages back to the
/// kernel and faults them in again (experiments/RESULTS.md, issue 26).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use engine::client::{Client, ClientError, ClientOptions, Response};
use engine::core::ClusterId;
use engine::kv::{KvOp, KvResult};
use engine::transport::net::Network;

const EXIT_HELP: &str = "\
Exit status:
  0  success (put, delete and cas done; get printed the value)
  1  the answer is no: get, fast-get or delete of a missing key (\"not found\"
     on stderr), or a cas whose expected value did not match (\"mismatch\")
  2  usage: a bad command line or an unreadable TLS file
  3  unreachable: no replica answered, or every one refused this client;
     every address is named with why. Nothing was submitted. (A wrong
     --cluster or an untrusted replica certificate is reported at once; a
     replica that refuses this client's certificate looks unreachable, so
     only after --timeout.)
  4  timed out: the outcome is unknown (the command may or may not have
     executed, or may still: a proposal the cluster took can be chosen
     after kv gave up); also when the replicas no longer remember this
     command's session (\"session expired\")
  5  refused: the cluster answered that it did not execute the command (no
     leader, overloaded, invalid)
  6  server error: an answer kv cannot read (or kv's client failed)

With --json, stdout holds one object (except for a command line the
argument parser rejects, reported on stderr only): {\"status\": S, ...} where S is ok, not_found,
mismatch, unreachable, timeout, refused, server_error or usage; a value is
\"value\" (when it is UTF-8; null for a missing key) and always
\"value_base64\"; a failed cas's value is \"current\"; \"slot\" is the
slot the command executed in (for fast-get: the replica's apply point);
\"error\" says why it failed. bench prints its own line, not JSON.";

#[derive(Parser)]
#[command(
    name = "kv",
    about = "A client of the replicated key-value store.",
    after_long_help = EXIT_HELP
)]
struct Args {
    /// The cluster id (must match the replicas').
    #[arg(long)]
    cluster: u64,
    /// Comma-separated replica addresses (any one suffices; the others are
    /// learned from it).
    #[arg(long, value_delimiter = ',', required = true)]
    replicas: Vec<String>,
    /// Give up after this long in all (connecting included); the exit
    /// status says whether the command may have executed.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0, value_parser = seconds)]
    timeout: f64,
    /// How long one attempt waits for an answer before trying another
    /// replica.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0, value_parser = seconds)]
    attempt_timeout: f64,
    /// Print one JSON object on stdout instead of text (see below).
    #[arg(long)]
    json: bool,
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

fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 86_400.0 => Ok(x),
        _ => Err(format!("{s:?} is not a number of seconds in (0, 86400]")),
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Sets KEY to VALUE.
    Put { key: String, value: String },
    /// Prints KEY's value, read through the log (linearizable).
    Get { key: String },
    /// Prints KEY's value from the state of the replica kv connects to
    /// first (RSL's fast read: not through the log, possibly stale).
    FastGet { key: String },
    /// Deletes KEY.
    Delete { key: String },
    /// Sets KEY to NEW if its value is EXPECTED (`cas KEY EXPECTED NEW`),
    /// or if it is absent (`cas --absent KEY NEW`).
    Cas {
        /// The swap happens only if KEY is absent (then give KEY NEW).
        #[arg(long)]
        absent: bool,
        key: String,
        /// EXPECTED NEW, or NEW with --absent.
        #[arg(num_args = 1..=2, required = true)]
        values: Vec<String>,
    },
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

/// The exit statuses (documented in `--help`: scripts depend on them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exit {
    Ok = 0,
    No = 1,
    Usage = 2,
    Unreachable = 3,
    Timeout = 4,
    Refused = 5,
    ServerError = 6,
}

impl Exit {
    fn status(self) -> &'static str {
        match self {
            Exit::Ok => "ok",
            Exit::No => "no",
            Exit::Usage => "usage",
            Exit::Unreachable => "unreachable",
            Exit::Timeout => "timeout",
            Exit::Refused => "refused",
            Exit::ServerError => "server_error",
        }
    }
}

/// What one invocation ends with: its status, and what it prints.
struct Outcome {
    exit: Exit,
    /// The JSON `status` (finer than the exit status: `not_found`,
    /// `mismatch`).
    status: &'static str,
    slot: Option<u64>,
    /// The value read, or a cas's current value (`Some(None)`: absent).
    value: Option<Option<Bytes>>,
    /// For people: the line on stdout (`OK`, a value).
    out: Option<Bytes>,
    /// For people: the line on stderr.
    err: Option<String>,
}

impl Outcome {
    fn new(exit: Exit) -> Outcome {
        Outcome {
            exit,
            status: exit.status(),
            slot: None,
            value: None,
            out: None,
            err: None,
        }
    }

    fn ok(slot: u64, out: Bytes) -> Outcome {
        Outcome {
            slot: Some(slot),
            out: Some(out),
            ..Outcome::new(Exit::Ok)
        }
    }

    fn failed(exit: Exit, why: String) -> Outcome {
        Outcome {
            err: Some(why),
            ..Outcome::new(exit)
        }
    }

    fn print(&self, json: bool) -> ExitCode {
        if json {
            let mut o = serde_json::Map::new();
            o.insert("status".into(), self.status.into());
            if let Some(slot) = self.slot {
                o.insert("slot".into(), slot.into());
            }
            let key = if self.status == "mismatch" {
                "current"
            } else {
                "value"
            };
            match &self.value {
                Some(Some(v)) => {
                    if let Ok(text) = std::str::from_utf8(v) {
                        o.insert(key.into(), text.into());
                    }
                    let b64 = base64::engine::general_purpose::STANDARD.encode(v);
                    o.insert(format!("{key}_base64"), b64.into());
                }
                Some(None) => {
                    o.insert(key.into(), serde_json::Value::Null);
                }
                None => {}
            }
            if let Some(e) = &self.err {
                o.insert("error".into(), e.clone().into());
            }
            println!("{}", serde_json::Value::Object(o));
        } else {
            if let Some(out) = &self.out {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(out);
                let _ = stdout.write_all(b"\n");
            }
            if let Some(e) = &self.err {
                eprintln!("{e}");
            }
        }
        ExitCode::from(self.exit as u8)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let json = args.json;
    let start = Instant::now();
    let timeout = Duration::from_secs_f64(args.timeout);
    let op = match operation(&args.cmd) {
        Ok(op) => op,
        Err(why) => return Outcome::failed(Exit::Usage, format!("kv: {why}")).print(json),
    };
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
                Err(e) => return Outcome::failed(Exit::Usage, format!("kv: TLS: {e}")).print(json),
            }
        }
        _ => Network::Tcp,
    };
    let options_attempt = Duration::from_secs_f64(args.attempt_timeout).min(timeout);
    let options = ClientOptions {
        attempt_timeout: options_attempt,
        deadline: timeout,
        ..ClientOptions::default()
    };
    let client = match Client::connect(
        network,
        ClusterId(args.cluster),
        args.replicas.clone(),
        options,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => return failure(e).print(json),
    };
    let Some(op) = op else {
        let Cmd::Bench {
            outstanding,
            seconds,
            value_bytes,
            keys,
        } = args.cmd
        else {
            unreachable!("only bench has no single operation")
        };
        let client = Arc::new(client);
        bench(client.clone(), outstanding, seconds, value_bytes, keys).await;
        if let Some(c) = Arc::into_inner(client) {
            c.close().await;
        }
        return ExitCode::SUCCESS;
    };
    let deadline = start + timeout;
    let result = match &args.cmd {
        Cmd::FastGet { .. } => {
            // A fast read has no deadline of its own beyond the client's.
            match tokio::time::timeout_at(deadline.into(), client.fast_read(op.encode())).await {
                Ok(r) => r,
                Err(_) => Err(ClientError::Timeout),
            }
        }
        _ => client.call_until(op.encode(), deadline).await,
    };
    let outcome = match result {
        Ok(resp) => answer(&op, &resp),
        Err(e) => failure(e),
    };
    // Ends the session unless an outcome is unknown (the client knows),
    // within the deadline (with a moment for an answer that came last).
    let now = Instant::now();
    let close_by = (now + options_attempt).min(deadline.max(now + Duration::from_millis(200)));
    client.close_until(close_by).await;
    outcome.print(json)
}

/// The single operation a command line asks for (`None`: bench).
fn operation(cmd: &Cmd) -> Result<Option<KvOp>, String> {
    let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    Ok(Some(match cmd {
        Cmd::Put { key, value } => KvOp::Put {
            key: b(key),
            value: b(value),
        },
        Cmd::Get { key } | Cmd::FastGet { key } => KvOp::Get { key: b(key) },
        Cmd::Delete { key } => KvOp::Delete { key: b(key) },
        Cmd::Cas {
            absent,
            key,
            values,
        } => match (absent, values.as_slice()) {
            (false, [expected, new]) => KvOp::Cas {
                key: b(key),
                expected: Some(b(expected)),
                new: b(new),
            },
            (true, [new]) => KvOp::Cas {
                key: b(key),
                expected: None,
                new: b(new),
            },
            (false, _) => return Err("cas takes KEY EXPECTED NEW (or --absent KEY NEW)".into()),
            (true, _) => return Err("cas --absent takes KEY NEW".into()),
        },
        Cmd::Bench { .. } => return Ok(None),
    }))
}

/// What the store answered.
fn answer(op: &KvOp, resp: &Response) -> Outcome {
    let slot = resp.slot.0;
    let result = match KvResult::decode(&resp.payload) {
        Ok(r) => r,
        Err(e) => {
            return Outcome::failed(Exit::ServerError, format!("kv: undecodable answer: {e}"));
        }
    };
    let key = String::from_utf8_lossy(op.key()).into_owned();
    let not_found = || Outcome {
        status: "not_found",
        slot: Some(slot),
        // A get's answer is "no value": `"value": null`.
        value: op.is_read().then_some(None),
        err: Some(format!("not found: {key}")),
        ..Outcome::new(Exit::No)
    };
    match (op, result) {
        (KvOp::Put { .. }, KvResult::Done)
        | (KvOp::Delete { .. }, KvResult::Deleted(true))
        | (KvOp::Cas { .. }, KvResult::Cas(Ok(()))) => Outcome::ok(slot, Bytes::from_static(b"OK")),
        (KvOp::Get { .. }, KvResult::Value(Some(v))) => Outcome {
            value: Some(Some(v.clone())),
            ..Outcome::ok(slot, v)
        },
        (KvOp::Get { .. }, KvResult::Value(None))
        | (KvOp::Delete { .. }, KvResult::Deleted(false)) => not_found(),
        (KvOp::Cas { .. }, KvResult::Cas(Err(current))) => {
            let why = match &current {
                Some(v) => format!(
                    "mismatch: {key} is {:?}",
                    String::from_utf8_lossy(v).into_owned()
                ),
                None => format!("mismatch: {key} is absent"),
            };
            Outcome {
                status: "mismatch",
                slot: Some(slot),
                value: Some(current),
                err: Some(why),
                ..Outcome::new(Exit::No)
            }
        }
        (_, KvResult::Invalid(why)) => {
            Outcome::failed(Exit::Refused, format!("kv: the store refused it: {why}"))
        }
        (_, other) => Outcome::failed(
            Exit::ServerError,
            format!("kv: an answer that does not fit the operation: {other:?}"),
        ),
    }
}

/// Why the call failed, as an exit status.
fn failure(e: ClientError) -> Outcome {
    let exit = match &e {
        ClientError::Unreachable(_) => Exit::Unreachable,
        ClientError::Timeout | ClientError::SessionExpired => Exit::Timeout,
        ClientError::NotLeader { .. }
        | ClientError::Busy
        | ClientError::Invalid(_)
        | ClientError::Stale { .. } => Exit::Refused,
        ClientError::Closed(_) => Exit::ServerError,
    };
    let why = match &e {
        ClientError::NotLeader { .. } => {
            "kv: no leader accepted the command (an election, or no quorum): not executed".into()
        }
        ClientError::Busy => "kv: the cluster is overloaded (busy): not executed".into(),
        ClientError::SessionExpired => {
            "kv: the session moved past the command: its outcome is unknown".into()
        }
        e => format!("kv: {e}"),
    };
    Outcome::failed(exit, why)
}

async fn bench(
    client: Arc<Client>,
    outstanding: usize,
    seconds: f64,
    value_bytes: usize,
    keys: u64,
) {
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
