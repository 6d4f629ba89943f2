//! `kv` driven as a script drives it: one process per command, its exit
//! status and output read back, against replica processes that are
//! killed, stopped and misaddressed meanwhile; sessions of exited `kv`
//! processes do not pile up in checkpoints; and `replica --chrome-trace`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use engine::client::ClientOptions;
use engine::kv::{KvOp, KvResult};
use system_tests::*;

/// What one `kv` invocation did.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
    took: Duration,
}

impl Out {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("kv --json printed no JSON ({e}): {self:?}"))
    }
}

fn kv_at(cluster: u64, replicas: &str, args: &[&str]) -> Out {
    let start = Instant::now();
    let out = Command::new(kv_binary())
        .args(["--cluster", &cluster.to_string(), "--replicas", replicas])
        .args(args)
        .output()
        .expect("running kv");
    Out {
        code: out.status.code().expect("kv exited, not killed"),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: start.elapsed(),
    }
}

fn kv(c: &ProcCluster, args: &[&str]) -> Out {
    kv_at(c.cluster.0, &c.addresses.join(","), args)
}

/// Asserts exit status and stdout, printing everything when they differ.
#[track_caller]
fn expect(out: &Out, code: i32, stdout: &[u8]) {
    assert!(
        out.code == code && out.stdout == stdout,
        "expected status {code} and stdout {:?}, got {out:?} (stdout {:?})",
        String::from_utf8_lossy(stdout),
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_answers_a_script_with_distinct_exit_statuses_and_exact_values() {
    let mut c = ProcCluster::new("kv-cli", 41, 3);
    c.start_all();
    let leader = c.leader(Duration::from_secs(10)).await;

    // Success, and values printed as they are.
    expect(&kv(&c, &["put", "k", "v"]), 0, b"OK\n");
    expect(&kv(&c, &["get", "k"]), 0, b"v\n");
    expect(&kv(&c, &["fast-get", "k"]), 0, b"v\n");
    expect(&kv(&c, &["put", "n", "(none)"]), 0, b"OK\n");
    expect(&kv(&c, &["get", "n"]), 0, b"(none)\n");
    expect(&kv(&c, &["put", "e", ""]), 0, b"OK\n");
    expect(&kv(&c, &["get", "e"]), 0, b"\n");

    // A missing key: its own status, nothing on stdout.
    let missing = kv(&c, &["get", "missing"]);
    expect(&missing, 1, b"");
    assert!(missing.stderr.contains("not found: missing"), "{missing:?}");
    expect(&kv(&c, &["fast-get", "missing"]), 1, b"");
    expect(&kv(&c, &["delete", "k"]), 0, b"OK\n");
    expect(&kv(&c, &["delete", "k"]), 1, b"");
    expect(&kv(&c, &["get", "k"]), 1, b"");

    // Compare-and-swap, from absent and from a value; a failed one says
    // what it found.
    expect(&kv(&c, &["cas", "--absent", "c", "one"]), 0, b"OK\n");
    let again = kv(&c, &["cas", "--absent", "c", "uno"]);
    expect(&again, 1, b"");
    assert!(again.stderr.contains("mismatch: c is \"one\""), "{again:?}");
    expect(&kv(&c, &["cas", "c", "one", "two"]), 0, b"OK\n");
    let stale = kv(&c, &["cas", "c", "one", "three"]);
    expect(&stale, 1, b"");
    expect(&kv(&c, &["get", "c"]), 0, b"two\n");
    let absent = kv(&c, &["cas", "nothing", "x", "y"]);
    expect(&absent, 1, b"");
    assert!(absent.stderr.contains("nothing is absent"), "{absent:?}");

    // JSON for machines, parsed: values exact (UTF-8 and base64), slots.
    let text = "héllo ✓ \"quoted\"\n\ttab";
    expect(&kv(&c, &["put", "u", text]), 0, b"OK\n");
    let j = kv(&c, &["--json", "get", "u"]);
    assert_eq!(j.code, 0, "{j:?}");
    let v = j.json();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["value"], text);
    let b64 = base64::engine::general_purpose::STANDARD
        .decode(v["value_base64"].as_str().expect("value_base64"))
        .expect("base64");
    assert_eq!(b64, text.as_bytes());
    assert!(v["slot"].as_u64().expect("slot") > 0, "{v}");
    let e = kv(&c, &["--json", "get", "e"]).json();
    assert_eq!((&e["status"], &e["value"]), (&"ok".into(), &"".into()));
    let m = kv(&c, &["--json", "get", "missing"]);
    assert_eq!(m.code, 1);
    let m = m.json();
    assert_eq!(
        (&m["status"], &m["value"]),
        (&"not_found".into(), &serde_json::Value::Null)
    );
    let cas = kv(&c, &["--json", "cas", "c", "one", "three"]);
    assert_eq!(cas.code, 1);
    let cas = cas.json();
    assert_eq!(cas["status"], "mismatch");
    assert_eq!(cas["current"], "two");
    let cas = kv(&c, &["--json", "cas", "--absent", "c", "x"]).json();
    assert_eq!(
        (&cas["status"], &cas["current"]),
        (&"mismatch".into(), &"two".into())
    );
    let put = kv(&c, &["--json", "put", "j", "1"]);
    assert_eq!(put.code, 0);
    assert_eq!(put.json()["status"], "ok");

    // Usage errors: status 2, whatever the cluster.
    for args in [
        &["put", "only-a-key"][..],
        &["cas", "c", "a", "b", "c"],
        &["cas", "--absent", "c", "a", "b"],
        &["cas", "c", "a"],
        &["--timeout", "0", "get", "k"],
        &["--attempt-timeout", "x", "get", "k"],
        &["frobnicate", "k"],
    ] {
        let u = kv(&c, args);
        assert_eq!(u.code, 2, "{args:?}: {u:?}");
    }

    // The wrong cluster: refused by every replica, each named, at once.
    let wrong = kv_at(999, &c.addresses.join(","), &["put", "k", "v"]);
    assert_eq!(wrong.code, 3, "{wrong:?}");
    for a in &c.addresses {
        assert!(
            wrong.stderr.contains(a.as_str()),
            "{a} not named: {wrong:?}"
        );
    }
    assert!(wrong.took < Duration::from_secs(5), "{wrong:?}");
    let wrong = kv_at(999, &c.addresses.join(","), &["--json", "get", "k"]);
    assert_eq!(wrong.code, 3);
    assert_eq!(wrong.json()["status"], "unreachable");

    // A follower down: the cluster still serves every command.
    let follower = (leader + 1) % 3;
    c.kill(follower);
    expect(&kv(&c, &["put", "down", "1"]), 0, b"OK\n");
    expect(&kv(&c, &["get", "down"]), 0, b"1\n");
    expect(&kv(&c, &["cas", "down", "1", "2"]), 0, b"OK\n");
    // Listed first, the dead replica only costs the client a connect.
    let mut order = vec![c.addresses[follower].clone()];
    order.extend(
        c.addresses
            .iter()
            .filter(|a| **a != c.addresses[follower])
            .cloned(),
    );
    expect(&kv_at(41, &order.join(","), &["get", "down"]), 0, b"2\n");

    // Every replica down: unreachable, every address named, within the
    // timeout asked for.
    for i in 0..3 {
        c.kill(i);
    }
    let down = kv(&c, &["--timeout", "2", "put", "k", "v"]);
    assert_eq!(down.code, 3, "{down:?}");
    for a in &c.addresses {
        assert!(down.stderr.contains(a.as_str()), "{a} not named: {down:?}");
    }
    assert!(
        down.took >= Duration::from_secs(2) && down.took < Duration::from_secs(5),
        "{down:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_the_cluster_cannot_commit_times_out_with_an_unknown_outcome() {
    let mut c = ProcCluster::new("kv-timeout", 42, 3);
    // A leader that keeps leading 3 s without its followers: long enough
    // to take the command, propose it and never hear back.
    c.election_ticks = Some(300);
    c.start_all();
    let leader = c.leader(Duration::from_secs(20)).await;
    expect(&kv(&c, &["put", "x", "0"]), 0, b"OK\n");
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for f in &followers {
        c.signal(*f, libc::SIGSTOP);
    }
    let t = kv(
        &c,
        &[
            "--timeout",
            "1.5",
            "--attempt-timeout",
            "0.4",
            "--json",
            "put",
            "x",
            "1",
        ],
    );
    for f in &followers {
        c.signal(*f, libc::SIGCONT);
    }
    assert_eq!(t.code, 4, "{t:?}");
    let j = t.json();
    assert_eq!(j["status"], "timeout");
    assert!(
        j["error"].as_str().unwrap().contains("may or may not"),
        "{j}"
    );
    // It was proposed: once the followers are back, it is chosen. The
    // outcome really was unknown, not "not executed".
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let g = kv(&c, &["get", "x"]);
        if g.code == 0 && g.stdout == b"1\n" {
            break;
        }
        assert!(
            Instant::now() < end,
            "the timed-out put never took effect: {g:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Bytes of the newest checkpoint in `dir`.
fn newest_checkpoint_bytes(dir: &Path) -> u64 {
    let newest = std::fs::read_dir(dir)
        .expect("checkpoint directory")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ckpt"))
        .max_by_key(|e| e.file_name())
        .expect("a checkpoint");
    newest.metadata().expect("metadata").len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_exited_kv_processes_do_not_pile_up_and_a_live_client_stays_exactly_once() {
    const INVOCATIONS: usize = 5_000;
    const PARALLEL: usize = 6;
    let mut c = ProcCluster::new("kv-sessions", 43, 3);
    c.start_all();
    let leader = c.leader(Duration::from_secs(10)).await;

    // A live client counts with compare-and-swap meanwhile: a command
    // executed twice answers "mismatch", one lost leaves a gap.
    let live = c
        .client(ClientOptions {
            attempt_timeout: Duration::from_millis(300),
            deadline: Duration::from_secs(20),
            ..ClientOptions::default()
        })
        .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counting = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            let key = Bytes::from_static(b"counter");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let op = KvOp::Cas {
                    key: key.clone(),
                    expected: (n > 0).then(|| Bytes::from(n.to_string())),
                    new: Bytes::from((n + 1).to_string()),
                };
                let r = live.call(op.encode()).await.expect("the live client's cas");
                assert_eq!(
                    KvResult::decode(&r.payload).unwrap(),
                    KvResult::Cas(Ok(())),
                    "cas {n} -> {}: executed twice or lost",
                    n + 1
                );
                n += 1;
            }
            live.close().await;
            n
        })
    };

    // Many short-lived kv processes over three keys; the leader is stopped
    // for a while in the middle (retries, a new leader).
    let addresses = c.addresses.join(",");
    let started = Instant::now();
    let workers: Vec<_> = (0..PARALLEL)
        .map(|w| {
            let addresses = addresses.clone();
            std::thread::spawn(move || {
                for i in (w..INVOCATIONS).step_by(PARALLEL) {
                    let key = format!("key{}", i % 3);
                    let out = kv_at(43, &addresses, &["put", &key, &i.to_string()]);
                    assert_eq!(out.code, 0, "invocation {i}: {out:?}");
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.signal(leader, libc::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.signal(leader, libc::SIGCONT);
    for w in workers {
        w.join().expect("a kv worker");
    }
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let counted = counting.await.expect("the live client");
    let r = kv(&c, &["get", "counter"]);
    expect(&r, 0, format!("{counted}\n").as_bytes());

    // Checkpoints after the churn: every replica's holds the three keys,
    // the counter and what tombstones live, not a session per process.
    for i in 0..3 {
        let _ = kv(&c, &["put", "flush", &i.to_string()]);
    }
    let status = fetch_status_json(&c).await;
    let mut closed_total = 0;
    for s in &status {
        let sessions = s["sessions"].as_u64().unwrap();
        let closed = s["closed_sessions"].as_u64().unwrap();
        closed_total = closed_total.max(s["sessions_closed"].as_u64().unwrap());
        // At most: the leader probe's, and one per worker whose close
        // went unanswered while the leader was stopped.
        assert!(
            sessions <= 1 + PARALLEL as u64,
            "{sessions} sessions left: {s}"
        );
        assert!(closed <= 4096, "{closed} tombstones: {s}");
    }
    assert!(
        closed_total >= INVOCATIONS as u64,
        "only {closed_total} sessions closed"
    );
    // Data: 4 small keys. Sessions: 2 at most. Tombstones: 16 bytes each,
    // at most 4,096 (64 KiB). Before sessions were closed, the same run
    // left ~46 bytes per invocation (230 KB here) and growing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..3 {
        let bytes = newest_checkpoint_bytes(&c.checkpoint_dir(i));
        assert!(
            bytes <= 4096 * 16 + 8 * 1024,
            "replica {}: a {bytes}-byte checkpoint",
            i + 1
        );
        eprintln!("replica {}: checkpoint {bytes} bytes", i + 1);
    }
    eprintln!(
        "{INVOCATIONS} kv invocations in {took:?} ({:?} each, {PARALLEL} at a time); the live client counted to {counted}; status: {}",
        took / INVOCATIONS as u32,
        status
            .iter()
            .map(|s| format!(
                "{}: sessions {} tombstones {} closed {} dups {}",
                s["id"],
                s["sessions"],
                s["closed_sessions"],
                s["sessions_closed"],
                s["duplicates_answered"]
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

/// Every replica's status report, as JSON.
async fn fetch_status_json(c: &ProcCluster) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for a in &c.addresses {
        let r = engine::client::fetch_status(
            &engine::transport::net::Network::Tcp,
            c.cluster,
            a,
            Duration::from_secs(2),
        )
        .await
        .expect("a status report");
        out.push(serde_json::to_value(&r).expect("a report serializes"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_chrome_trace_records_elections_and_checkpoints() {
    let mut c = ProcCluster::new("chrome-trace", 44, 3);
    let traces: Vec<_> = (0..3)
        .map(|i| c.dir.join(format!("replica-{}.trace.json", i + 1)))
        .collect();
    for (i, t) in traces.iter().enumerate() {
        c.replica_args[i] = vec!["--chrome-trace".into(), t.display().to_string()];
    }
    c.start_all();
    c.leader(Duration::from_secs(10)).await;
    let client = c.client(ClientOptions::default()).await;
    // Past `every_slots` (100): a checkpoint on every replica.
    for i in 0..300 {
        call_until_ok(&client, put(&format!("k{}", i % 10), "v")).await;
    }
    client.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        assert!(c.terminate(i).success());
    }
    let mut names = std::collections::BTreeMap::<String, usize>::new();
    for t in &traces {
        let bytes = std::fs::read(t).expect("the trace file");
        let events: Vec<serde_json::Value> =
            serde_json::from_slice(&bytes).expect("a complete Chrome JSON trace");
        for e in &events {
            if let Some(n) = e["name"].as_str() {
                *names
                    .entry(format!("{} {}", e["ph"].as_str().unwrap_or("?"), n))
                    .or_default() += 1;
            }
        }
    }
    for want in [
        "b election",
        "e election",
        "b checkpoint",
        "e checkpoint",
        "b checkpoint.freeze",
        "b checkpoint.serialize",
    ] {
        assert!(names.contains_key(want), "no {want:?} in {names:?}");
    }
    // Events too: a role change.
    assert!(names.keys().any(|k| k.starts_with("i ")), "{names:?}");
}
