//! The comparison's verdict on real runs (issue 25): recorded `make ab`
//! runs of `smoke` (fixtures/ab, see its README), two pairs each:
//!
//! - `flush`: the head had a 40 µs busy-wait planted in every NVM group
//!   commit; the verdict must name `nvm.flush`;
//! - `apply`: the head had a 30 µs busy-wait planted in every slot's
//!   apply; the verdict must name `leader.apply`;
//! - `same`: base and head were the same code; the verdict must say that
//!   nothing moved.
//!
//! Each test also shows the checker can fail the other way: the planted
//! runs are not "nothing moved", and the same runs name no cause.

use std::path::{Path, PathBuf};
use std::process::Command;

use analysis::compare::{Comparison, compare, compare_pairs};
use analysis::figures::Figures;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ab")
}

/// A run directory from a fixture: its summary and latency log as they
/// are, its stage events unpacked (`gzip`, in every Debian base).
fn run_dir(case: &str, run: &str) -> PathBuf {
    let src = fixtures().join(case).join(run);
    let dst = std::env::temp_dir().join(format!("analysis-ab-{}-{case}-{run}", std::process::id()));
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["summary.json", "latency.hdr"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(src.join("stages.csv.gz"))
        .output()
        .expect("gzip");
    assert!(out.status.success(), "gzip -dc {}", src.display());
    std::fs::write(dst.join("stages.csv"), out.stdout).unwrap();
    dst
}

fn figures(case: &str, run: &str) -> Figures {
    let dir = run_dir(case, run);
    let f = analysis::analyse(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        f.sampled_commands > 100,
        "{case}/{run}: {}",
        f.sampled_commands
    );
    f
}

/// The verdict of `make ab` on a case: base-1, head-1, base-2, head-2.
fn ab(case: &str) -> Comparison {
    let base = [figures(case, "base-1"), figures(case, "base-2")];
    let head = [figures(case, "head-1"), figures(case, "head-2")];
    let c = compare_pairs(&[(&base[0], &head[0]), (&base[1], &head[1])]);
    println!("{case}: {}", c.sentence);
    c
}

#[test]
fn a_delay_planted_in_the_nvm_flush_is_named() {
    let c = ab("flush");
    assert_eq!(
        c.cause.as_deref(),
        Some("stage:nvm.flush:p50"),
        "{}",
        c.sentence
    );
    assert!(c.sentence.contains("`nvm.flush` p50"), "{}", c.sentence);
    assert!(c.sentence.contains("per flush"), "{}", c.sentence);
    // The time it adds is the planted 40 µs, within a few.
    let d = c.get("stage:nvm.flush:p50").unwrap();
    assert!((d.abs_change() - 40.0).abs() < 5.0, "{d:?}");
    // Not the persist stages that contain the flush, nor anything else.
    assert!(!c.sentence.contains("`leader.persist`"), "{}", c.sentence);
    assert!(!c.sentence.contains("no stage moved"), "{}", c.sentence);
}

#[test]
fn a_delay_planted_in_the_apply_is_named() {
    let c = ab("apply");
    assert_eq!(
        c.cause.as_deref(),
        Some("stage:leader.apply:p50"),
        "{}",
        c.sentence
    );
    assert!(c.sentence.contains("`leader.apply` p50"), "{}", c.sentence);
    let d = c.get("stage:leader.apply:p50").unwrap();
    assert!((d.abs_change() - 30.0).abs() < 10.0, "{d:?}");
    assert!(
        !c.sentence
            .starts_with("2 pairs back to back. Nothing moved"),
        "{}",
        c.sentence
    );
}

#[test]
fn the_same_code_twice_is_nothing_moved() {
    let c = ab("same");
    assert!(
        c.sentence
            .starts_with("2 pairs back to back. Nothing moved beyond noise end to end"),
        "{}",
        c.sentence
    );
    assert!(
        c.sentence.contains("no stage moved beyond its own noise"),
        "{}",
        c.sentence
    );
    assert_eq!(c.cause, None, "{}", c.sentence);
    assert!(!c.sentence.contains("slowest 1.5%"), "{}", c.sentence);
}

/// One pair alone (what `make compare A=... B=...` does) still names the
/// planted flush: it is far beyond any noise.
#[test]
fn one_pair_names_the_flush_too() {
    let a = figures("flush", "base-1");
    let b = figures("flush", "head-1");
    let c = compare(&a, &b);
    println!("{}", c.sentence);
    assert_eq!(
        c.cause.as_deref(),
        Some("stage:nvm.flush:p50"),
        "{}",
        c.sentence
    );
}

/// A run compared with itself: every change is zero, nothing is named.
#[test]
fn a_run_against_itself_is_nothing_moved() {
    let a = figures("same", "base-1");
    let c = compare(&a, &a);
    assert!(
        c.sentence
            .starts_with("Nothing moved beyond noise end to end"),
        "{}",
        c.sentence
    );
    assert_eq!(c.cause, None);
    assert!(c.regressions().is_empty());
}
