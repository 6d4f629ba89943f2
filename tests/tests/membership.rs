//! RSL's configuration walk ABC → BCD → CDE → ADE with five replica
//! processes, done as README's "Membership change" tells a user: spares
//! listed in every file, a new replica started with `join = true` and
//! `--bootstrap`, `replica --config FILE --change IDS`, a removed replica
//! exiting by itself, and a removed replica added back by restarting it
//! with `join = true` on its old log. All of it under a write load whose
//! history must stay linearizable.
//!
//! Then two more: a joined replica restarted with `join = true` still in
//! its file exits when removed, and a replica whose log is lost comes back
//! as a new replica.
//!
//! After each step: every member of the new configuration runs, has it in
//! force and has applied every acknowledged write; the removed replica has
//! exited. Issue 21 saw the joiner of step 2 retire ~2 s after the change
//! (it took the history it caught up through for its own removal) and the
//! replica added back in step 3 depart before any change was asked: both
//! are checked here, with thousands of slots between steps and catch-up
//! slowed, and again with catch-up forced through checkpoint transfer.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use engine::transport::net::Network;
use system_tests::{ProcCluster, Workload, replica_binary};

/// The walk's load: clients writing and reading until stopped, and the
/// distance between steps.
struct Load {
    w: Workload,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(c: &ProcCluster, workers: u64) -> Load {
        let w = Workload::new();
        let tasks = w.spawn(c, workers, u64::MAX).await;
        Load { w, tasks }
    }

    fn slot(&self) -> u64 {
        self.w.slot()
    }

    /// Waits until `slots` more slots were acknowledged (the distance
    /// between two steps of the walk), or 60 s.
    async fn advance(&self, slots: u64) {
        let target = self.slot() + slots;
        let end = Instant::now() + Duration::from_secs(60);
        while self.slot() < target {
            assert!(
                Instant::now() < end,
                "the load reached slot {} of {target}",
                self.slot()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop_and_check(self, c: &ProcCluster) {
        self.w.stop();
        for t in self.tasks {
            t.await.unwrap();
        }
        assert!(self.w.acked_puts.load(Ordering::SeqCst) > 100);
        self.w.check(c).await;
    }
}

/// `replica --config <file of replica `via`> --change IDS`, as README says;
/// returns its stdout. Panics unless it succeeds.
fn change(c: &ProcCluster, via: usize, ids: &str) -> String {
    let out = Command::new(replica_binary())
        .arg("--config")
        .arg(c.config_path(via))
        .arg("--change")
        .arg(ids)
        .output()
        .expect("replica --change");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "replica --change {ids} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Waits until replica `i`'s status names a leader, as README says:
/// `replica --config <its file> --status --json`, its own entry.
async fn follows_a_leader(c: &ProcCluster, i: usize) {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let out = Command::new(replica_binary())
            .arg("--config")
            .arg(c.config_path(i))
            .arg("--status")
            .arg("--json")
            .output()
            .expect("replica --status");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let leader = serde_json::from_str::<serde_json::Value>(&stdout)
            .ok()
            .and_then(|v| {
                v.as_array()?
                    .iter()
                    .find(|r| r["id"] == i as u64 + 1)
                    .map(|r| r["leader"].is_u64())
            });
        if leader == Some(true) {
            return;
        }
        assert!(
            Instant::now() < end,
            "replica {} heard no leader: {stdout}\n{}",
            i + 1,
            c.log(i)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until replica `i` exits by itself, saying why.
async fn exits(c: &mut ProcCluster, i: usize) {
    let end = Instant::now() + Duration::from_secs(15);
    while c.alive(i) {
        assert!(
            Instant::now() < end,
            "removed replica {} still runs:\n{}",
            i + 1,
            c.log(i)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        c.log(i).contains("removed from the configuration: exiting"),
        "{}",
        c.log(i)
    );
}

/// Every member of `members` (ids) runs, reports `epoch` with exactly
/// those voters in force, is neither departing nor retired, and has
/// applied every slot acknowledged so far; and keeps doing so for 3 s
/// (issue 21's joiner retired ~2 s after the change).
async fn in_force(c: &mut ProcCluster, load: &Load, epoch: u64, members: &[u32]) {
    let target = load.slot() + 1;
    let end = Instant::now() + Duration::from_secs(20);
    let settled = Instant::now() + Duration::from_secs(3);
    loop {
        let mut pending = Vec::new();
        for id in members {
            let i = *id as usize - 1;
            assert!(
                c.alive(i),
                "member {id} of epoch {epoch} exited:\n{}",
                c.log(i)
            );
            match engine::client::fetch_status(
                &Network::Tcp,
                c.cluster,
                &c.addresses[i],
                Duration::from_secs(2),
            )
            .await
            {
                Ok(s) => {
                    assert!(!s.retired && !s.departing, "member {id}: {s:?}");
                    if s.epoch != epoch || s.voters != members || s.applied < target {
                        pending.push(format!(
                            "{id}: epoch {} voters {:?} applied {} of {target}",
                            s.epoch, s.voters, s.applied
                        ));
                    }
                }
                Err(e) => pending.push(format!("{id}: {e}")),
            }
        }
        if pending.is_empty() && Instant::now() >= settled {
            return;
        }
        assert!(
            Instant::now() < end,
            "epoch {epoch} {members:?} not in force and caught up: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The walk. `gap`: slots acknowledged between steps.
async fn walk(name: &str, cluster: u64, gap: u64, tune: impl FnOnce(&mut ProcCluster)) {
    let mut c = ProcCluster::new(name, cluster, 5);
    c.spares[3] = true;
    c.spares[4] = true;
    tune(&mut c);
    for i in 0..3 {
        c.start(i, true);
    }
    c.leader(Duration::from_secs(5)).await;
    let load = Load::start(&c, 4).await;
    load.advance(gap).await;

    // ABC -> BCD: D starts with join = true and --bootstrap (its log is
    // new), then the change; A exits by itself.
    c.start(3, true);
    let out = change(&c, 1, "2,3,4");
    assert_eq!(out.trim(), "configuration epoch 1: members 2,3,4");
    exits(&mut c, 0).await;
    in_force(&mut c, &load, 1, &[2, 3, 4]).await;
    load.advance(gap).await;

    // BCD -> CDE: E joins after thousands of slots and the change above,
    // which it catches up through; B exits.
    c.start(4, true);
    let out = change(&c, 2, "3,4,5");
    assert_eq!(out.trim(), "configuration epoch 2: members 3,4,5");
    exits(&mut c, 1).await;
    in_force(&mut c, &load, 2, &[3, 4, 5]).await;
    load.advance(gap).await;

    // CDE -> ADE: A, removed in the first step, is restarted on its old
    // log with join = true (no --bootstrap), as README says; C exits.
    c.join[0] = Some(true);
    c.start(0, false);
    let out = change(&c, 3, "1,4,5");
    assert_eq!(out.trim(), "configuration epoch 3: members 1,4,5");
    exits(&mut c, 2).await;
    in_force(&mut c, &load, 3, &[1, 4, 5]).await;
    load.advance(gap / 4).await;

    // ADE -> ABE, two more procedures of README: D, added long ago and
    // restarted with its file unchanged (`join = true`), exits when the
    // change below removes it; B lost its log, so it comes back as a new
    // replica (`join = true`, `--bootstrap` on an empty log), not under
    // its old one, and catches up through the history that listed it.
    assert!(c.terminate(3).success());
    c.start(3, false);
    // As README says: a replica restarted with `join = true` takes a
    // removal chosen before it first hears a leader for history (it waits
    // to be added back), so the change that removes it waits until its
    // status shows the leader.
    follows_a_leader(&c, 3).await;
    std::fs::remove_file(c.dir.join("replica-2.nvm")).expect("B's log");
    let _ = std::fs::remove_dir_all(c.checkpoint_dir(1));
    c.join[1] = Some(true);
    c.start(1, true);
    let out = change(&c, 0, "1,2,5");
    assert_eq!(out.trim(), "configuration epoch 4: members 1,2,5");
    exits(&mut c, 3).await;
    in_force(&mut c, &load, 4, &[1, 2, 5]).await;
    load.advance(gap / 4).await;
    load.stop_and_check(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsl_walk_abc_bcd_cde_ade_as_readme_says_under_load() {
    // Catch-up slowed to 8 slots an answer: a joiner spends long between
    // the history it replays and the change that adds it.
    walk("walk", 41, 2_500, |c| {
        c.protocol_extra = "catchup_slots_max = 8".into();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsl_walk_with_catch_up_through_checkpoint_transfer() {
    // Members keep 150 applied slots in memory and checkpoint every 100:
    // a joiner 2,500 slots behind must install a checkpoint.
    walk("walk-ckpt", 42, 2_500, |c| {
        c.log_retained_slots_max = Some(150);
    })
    .await;
}
