//! README's procedures, run as a user types them: the shell blocks of
//! "Running a cluster" are read out of README.md and run by bash, with
//! only the binaries' directory changed (`make build`'s target/release
//! becomes the test build's directory, already built by `make test`).

use std::path::{Path, PathBuf};
use std::process::Command;

use system_tests::*;

/// The ```sh blocks of the README section headed `heading`, in order.
fn shell_blocks(readme: &str, heading: &str) -> Vec<String> {
    let start = readme
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("README has no section {heading:?}"));
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(open) = rest.find("```sh\n") {
        let body = &rest[open + 6..];
        let close = body.find("```").expect("an unclosed block");
        blocks.push(body[..close].to_string());
        rest = &body[close + 3..];
    }
    blocks
}

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    std::fs::read_to_string(path).expect("README.md")
}

#[test]
fn running_a_cluster_works_as_the_readme_says() {
    let blocks = shell_blocks(&readme(), "Running a cluster");
    assert!(blocks.len() >= 2, "the cluster block and the kv block");
    let bin: PathBuf = replica_binary().parent().expect("target dir").to_path_buf();
    assert!(bin.join("kv").exists(), "kv is built with the replica");
    // The replicas' pids are printed however the script ends.
    let mut script =
        String::from("trap 'echo \"PIDS $(jobs -p | tr \"\\n\" \" \")\"' EXIT\nset -e\n");
    for block in &blocks[..2] {
        for line in block.lines() {
            if line.trim_start().starts_with("make build") {
                continue;
            }
            script.push_str(&line.replace("./target/release/", &format!("{}/", bin.display())));
            script.push('\n');
        }
    }
    let dir = std::env::temp_dir().join(format!("readme-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a directory");
    // The example's logs and ports: a machine where a README cluster runs
    // (or its logs were left) cannot run it again as written. Say so;
    // never remove someone's logs.
    for i in 1..=3 {
        let log = format!("/dev/shm/paxos-7-{i}.nvm");
        assert!(
            !Path::new(&log).exists(),
            "{log} exists: a cluster from README's example runs or ran here; stop it and remove /dev/shm/paxos-7-*.nvm to run this test"
        );
        let port = 7100 + i;
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is taken: stop what listens there (README's example uses 7101-7103)"
        );
    }
    // Into files, not pipes: the replicas it leaves running hold them.
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    let status = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&dir)
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .status()
        .expect("bash");
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    // Stop the replicas the script left running, whatever happened.
    if let Some(pids) = stdout.lines().find_map(|l| l.strip_prefix("PIDS ")) {
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").arg(pid).status();
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    // The logs this run made (none existed before it).
    for i in 1..=3 {
        let _ = std::fs::remove_file(format!("/dev/shm/paxos-7-{i}.nvm"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        status.success(),
        "the README's commands failed:\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // What README says they print.
    assert!(stdout.starts_with("OK\nworld\nworld\n"), "{stdout}");
    let bench = stdout
        .lines()
        .find(|l| l.starts_with("outstanding 256:"))
        .unwrap_or_else(|| panic!("no bench line: {stdout}"));
    assert!(bench.ends_with(" 0 errors"), "{bench}");
    assert!(stdout.contains("OK\ngot the lock\n"), "{stdout}");
    let json = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line: {stdout}"));
    let v: serde_json::Value = serde_json::from_str(json).expect("kv --json");
    assert_eq!(
        (&v["status"], &v["value"], &v["value_base64"]),
        (&"ok".into(), &"world".into(), &"d29ybGQ=".into()),
        "{json}"
    );
}
