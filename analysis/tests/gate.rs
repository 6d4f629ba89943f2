//! The gate catches a planted slowdown: one extra allocation and copy of
//! every command at the leader (`Config::planted_slowdown`), behind a
//! test-only switch. The baseline is taken here, from the same build, so
//! the test holds whatever the committed baseline says.

use std::path::PathBuf;
use std::process::{Command, Output};

fn gate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gate"))
        .args(args)
        .output()
        .expect("the gate runs")
}

struct Tmp(PathBuf);

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_planted_slowdown_fails_the_gate_and_a_clean_build_passes() {
    let base = Tmp(std::env::temp_dir().join(format!("gate-test-{}.json", std::process::id())));
    let b = base.0.to_str().unwrap();
    let common = [
        "--skip-ratios",
        "--skip-runtime",
        "--commands",
        "4096",
        "--baseline",
        b,
    ];
    // A baseline is every figure: save refuses to skip one.
    let refused = gate(&[&["save"][..], &common[..]].concat());
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("runtime_instructions"));
    // The baseline with every figure (the runtime path runs twice under
    // callgrind, some seconds); the checks below skip the runtime path,
    // and its figure in the baseline is then left out, not failed.
    let saved = gate(&[
        "save",
        "--skip-ratios",
        "--commands",
        "4096",
        "--baseline",
        b,
    ]);
    assert!(
        saved.status.success(),
        "{}",
        String::from_utf8_lossy(&saved.stderr)
    );
    // The same build again: the figures repeat (instructions to within
    // 0.005%: memcpy's path depends on where ASLR puts the buffers).
    let clean = gate(&[&["check"][..], &common[..]].concat());
    let out = String::from_utf8_lossy(&clean.stdout);
    assert!(
        clean.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    assert!(out.contains("gate: PASS"), "{out}");
    assert!(out.contains("instructions"), "{out}");
    for line in out
        .lines()
        .filter(|l| l.starts_with("instructions") || l.starts_with("allocations"))
    {
        assert!(
            line.contains("+0.00%") || line.contains("-0.00%"),
            "not repeatable: {line}"
        );
    }
    // The planted slowdown: exit 1, naming what regressed.
    let planted = gate(&[&["check", "--plant-slowdown"][..], &common[..]].concat());
    let out = String::from_utf8_lossy(&planted.stdout);
    assert_eq!(planted.status.code(), Some(1), "{out}");
    assert!(out.contains("gate: FAIL"), "{out}");
    assert!(out.contains("allocations"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("instructions") && l.contains("FAIL")),
        "the extra copy shows in the instruction count too: {out}"
    );
}

#[test]
fn a_missing_baseline_is_a_clear_error() {
    let o = gate(&[
        "check",
        "--skip-ratios",
        "--baseline",
        "/nonexistent/gate.json",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("make gate-baseline"), "{err}");
}

/// The runtime path's workload answers every put `Done` and reads the
/// written value back from every key it checks (the gate counts its
/// instructions under callgrind; here it runs natively).
#[test]
fn the_runtime_path_answers_every_command() {
    let o = gate(&["runtime", "--commands", "640"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        r#"{"answered":640,"read_back":50}"#
    );
}
