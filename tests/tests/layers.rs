//! The layer rules, checked on the source (`make test` runs this file).
//!
//! - The protocol core (`engine/core`, the `paxos-core` crate) depends on no
//!   crate outside a short list (none of them does I/O), has no unsafe code,
//!   and its source names no clock, file, socket, thread or process.
//! - Each top-level module of `engine/src` imports (`crate::x`, `super::`
//!   chains that reach the crate root, `use crate::{x, ..}`) only the
//!   modules its row of [`ALLOWED`] lists. Comments and `#[cfg(test)]`
//!   items are not read: a test may reach anything.
//!
//! A crossing is named with its file and line, and the fix is to move the
//! code to the layer it belongs to, not to widen the table: a new row or
//! entry is a design decision and goes with a line in ARCHITECTURE.md.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What each top-level module of `engine/src` may import, besides itself
/// and `core` (the protocol crate, below everything). Order: lowest first.
const ALLOWED: &[(&str, &[&str])] = &[
    // The lab's recorder (stages, spans, marks): a base layer like
    // `tracing`, usable by every layer but the core.
    ("instrumentation", &[]),
    ("storage", &[]),
    ("state_machine", &[]),
    ("kv", &["state_machine"]),
    ("checkpoint", &["state_machine"]),
    // The simulator drives the core with storage backends and the state
    // machine; it never touches tokio, sockets or the wire.
    ("sim", &["storage", "state_machine", "kv", "checkpoint"]),
    ("transport", &["instrumentation"]),
    (
        "runtime",
        &[
            "instrumentation",
            "storage",
            "state_machine",
            "checkpoint",
            "transport",
        ],
    ),
    // The client speaks the wire and reads the runtime's report types.
    (
        "client",
        &["instrumentation", "state_machine", "transport", "runtime"],
    ),
    (
        "embedded",
        &[
            "instrumentation",
            "storage",
            "state_machine",
            "kv",
            "checkpoint",
            "transport",
            "runtime",
            "client",
        ],
    ),
    // The gate's workload: lockstep replicas through the wire codec.
    (
        "gate",
        &[
            "instrumentation",
            "storage",
            "state_machine",
            "kv",
            "sim",
            "transport",
        ],
    ),
    (
        "fuzz",
        &[
            "instrumentation",
            "storage",
            "state_machine",
            "kv",
            "checkpoint",
            "sim",
            "transport",
            "runtime",
        ],
    ),
];

/// The crates the core may depend on: none of them does I/O, reads a
/// clock or spawns.
const CORE_DEPENDENCIES: &[&str] = &["bytes", "thiserror", "rand_core", "rand_xoshiro"];

/// Names the core's (non-test) source must not contain.
const CORE_FORBIDDEN: &[&str] = &[
    "std::fs",
    "std::net",
    "std::thread",
    "std::time",
    "std::process",
    "std::io",
    "std::env",
    "Instant",
    "SystemTime",
    "tokio",
    "unsafe ",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("a directory entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
}

/// The lines of `text` that are compiled outside tests, comments cut
/// (line number, code). A `#[cfg(test)]` item at the start of a line is
/// skipped whole: a `mod x { .. }` to its closing brace in column 0, any
/// other item to its first line that ends it.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            let indent = line.len() - line.trim_start().len();
            // Skip the item: its attributes, then a one-line item (ending
            // in `;` or `,`) or everything to the brace that closes it at
            // its indent.
            let mut first = true;
            for (_, l) in lines.by_ref() {
                let t = l.trim();
                if t.starts_with("#[") {
                    continue;
                }
                let at = l.len() - l.trim_start().len();
                if (first && (t.ends_with(';') || t.ends_with(',')))
                    || (!first && at == indent && t.starts_with('}'))
                {
                    break;
                }
                first = false;
            }
            continue;
        }
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        out.push((n + 1, code.to_string()));
    }
    out
}

/// The top-level modules a line of module `path` (its components below
/// the crate root) refers to.
fn referenced(path: &[String], code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let word = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    // `crate::x` and `use crate::{x, y::z}`.
    for (i, _) in code.match_indices("crate::") {
        if i > 0 {
            let before = code.as_bytes()[i - 1];
            if before.is_ascii_alphanumeric() || before == b'_' || before == b'$' {
                continue; // `paxos_crate::`, `$crate::`
            }
        }
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.push(word(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 || !item.contains("::") {
                    item.push(c);
                }
            }
            found.push(word(item.trim()));
        } else {
            found.push(word(rest));
        }
    }
    // `super::super::x` chains that reach the crate root.
    for (i, _) in code.match_indices("super::") {
        if i >= "super::".len() && code[..i].ends_with("super::") {
            continue; // counted from the chain's first `super::`
        }
        let mut rest = &code[i..];
        let mut up = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            up += 1;
            rest = r;
        }
        // Fewer steps stay inside the file's own top-level module.
        if up == path.len() {
            found.push(word(rest));
        }
    }
    found.retain(|m| !m.is_empty() && m != "self");
    found
}

/// Every crossing in the engine's source under `src`: (file, line, from, to).
fn crossings(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut out = Vec::new();
    for f in files {
        let rel = f.strip_prefix(src).expect("under src");
        let mut path: Vec<String> = rel
            .iter()
            .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        if path.first().is_some_and(|p| p == "bin" || p == "lib") {
            continue; // binaries and the crate root sit above every layer
        }
        if path.last().is_some_and(|p| p == "mod") {
            path.pop();
        }
        let text = std::fs::read_to_string(&f).expect("readable source");
        out.extend(crossings_in(&rel.display().to_string(), &path, &text));
    }
    out
}

fn crossings_in(file: &str, path: &[String], text: &str) -> Vec<String> {
    let me = path[0].as_str();
    let allowed = ALLOWED
        .iter()
        .find(|(m, _)| *m == me)
        .unwrap_or_else(|| {
            panic!("{file}: top-level module `{me}` has no row in the layer table (tests/tests/layers.rs)")
        })
        .1;
    let mut out = Vec::new();
    for (n, code) in code_lines(text) {
        for to in referenced(path, &code) {
            if to != me && to != "core" && !allowed.contains(&to.as_str()) {
                out.push(format!(
                    "{file}:{n}: `{me}` imports `{to}`, which its layer may not: {}",
                    code.trim()
                ));
            }
        }
    }
    out
}

#[test]
fn engine_modules_import_only_the_layers_below_them() {
    let src = root().join("engine/src");
    let c = crossings(&src);
    assert!(
        c.is_empty(),
        "layer crossings ({}):\n{}",
        c.len(),
        c.join("\n")
    );
    // Every top-level module has a row, and every row a module.
    let mut modules = BTreeSet::new();
    for e in std::fs::read_dir(&src).expect("engine/src") {
        let p = e.expect("entry").path();
        let name = p.file_stem().expect("a name").to_string_lossy().to_string();
        if name != "lib" && name != "bin" {
            modules.insert(name);
        }
    }
    let rows: BTreeSet<String> = ALLOWED.iter().map(|(m, _)| m.to_string()).collect();
    assert_eq!(modules, rows, "the layer table and engine/src's modules");
}

#[test]
fn the_core_crate_depends_on_no_io_and_names_no_clock_or_socket() {
    let core = root().join("engine/core");
    let manifest =
        std::fs::read_to_string(core.join("Cargo.toml")).expect("engine/core/Cargo.toml");
    let mut section = String::new();
    let mut deps = Vec::new();
    for line in manifest.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.to_string();
        } else if (section == "[dependencies]" || section.starts_with("[target."))
            && let Some((name, _)) = t.split_once('=')
        {
            deps.push(name.trim().split('.').next().expect("a name").to_string());
        }
    }
    let extra: Vec<&String> = deps
        .iter()
        .filter(|d| !CORE_DEPENDENCIES.contains(&d.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "engine/core depends on {extra:?}: the protocol core takes only {CORE_DEPENDENCIES:?}"
    );
    let mut files = Vec::new();
    rust_files(&core.join("src"), &mut files);
    let mut found = Vec::new();
    for f in &files {
        if f.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("readable");
        for (n, code) in code_lines(&text) {
            for w in CORE_FORBIDDEN {
                if code.contains(w) {
                    found.push(format!("{}:{n}: `{w}`: {}", f.display(), code.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "the core does I/O or reads a clock:\n{}",
        found.join("\n")
    );
    let lib = std::fs::read_to_string(core.join("src/lib.rs")).expect("lib.rs");
    assert!(
        lib.contains("#![forbid(unsafe_code)]"),
        "the core forbids unsafe code"
    );
}

// The checker can fail: planted crossings are found, allowed and test-only
// references are not.

fn p(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

#[test]
fn a_planted_crossing_is_caught_in_every_spelling() {
    let planted = [
        "use crate::runtime::NodeConfig;",
        "use crate::{kv::KvStore, runtime::start};",
        "let x = crate::transport::wire::encode(1);",
        "use super::super::runtime::Event;",
    ];
    for code in planted {
        let c = crossings_in("storage/wal/mod.rs", &p(&["storage", "wal"]), code);
        assert_eq!(
            c.len(),
            1 + usize::from(code.contains("kv::")),
            "{code}: {c:?}"
        );
        assert!(c[c.len() - 1].contains("`storage` imports"), "{c:?}");
    }
    // The grouped import names both modules.
    let c = crossings_in(
        "storage/mod.rs",
        &p(&["storage"]),
        "use crate::{kv::KvStore, runtime::start};",
    );
    assert!(
        c.iter().any(|x| x.contains("`kv`")) && c.iter().any(|x| x.contains("`runtime`")),
        "{c:?}"
    );
}

#[test]
fn allowed_commented_and_test_only_references_pass() {
    let text = "\
use crate::core::Slot;
use crate::instrumentation::Mark;
use super::net::Network;
// use crate::runtime::Event;
/// See [`crate::runtime::start`].
let s = \"x\"; // crate::sim::Sim

#[cfg(test)]
mod tests {
    use crate::runtime::Event;
    use crate::sim::Sim;
}

#[cfg(test)]
fn helper() -> crate::kv::KvStore {
    crate::kv::KvStore::new()
}

#[cfg(test)]
use crate::kv::KvOp;
pub fn after() -> crate::core::Ballot { todo!() }
";
    let c = crossings_in("transport/wire.rs", &p(&["transport", "wire"]), text);
    assert!(c.is_empty(), "{c:?}");
    // Code after a skipped test item is still read.
    let c = crossings_in(
        "transport/wire.rs",
        &p(&["transport", "wire"]),
        &format!("{text}use crate::sim::Sim;\n"),
    );
    assert_eq!(c.len(), 1, "{c:?}");
}

#[test]
fn the_core_check_catches_a_clock() {
    let lines = code_lines("let t = std::time::Instant::now(); // a clock\n");
    assert!(CORE_FORBIDDEN.iter().any(|w| lines[0].1.contains(w)));
}

// ---- size rules: a newcomer finds code by concern, not in one big file ----

/// Most lines a source file holds before its `#[cfg(test)]` module.
const SOURCE_LINES_MAX: usize = 800;

/// Most fields of a struct in the drivers (runtime, simulator, client,
/// embedded, load generator): more means concerns to group.
const DRIVER_FIELDS_MAX: usize = 12;

/// Flat records, not objects with behaviour: settings read from files and
/// flags, and reports written as JSON. Their fields are their format.
const FLAT_RECORDS: &[&str] = &[
    "NodeConfig",
    "ProtocolSection",
    "StatusReport",
    "NodeStatus",
    "SimConfig",
    "FaultPlan",
    "SimStats",
    "ClusterSpec",
    "LoadSpec",
];

/// Lines of `text` before its first column-0 `#[cfg(test)]`.
fn non_test_lines(text: &str) -> usize {
    text.lines()
        .take_while(|l| !l.starts_with("#[cfg(test)]"))
        .count()
}

/// Each struct of `text` with its field count (named fields at one indent
/// below the struct).
fn struct_fields(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        let t = l.trim_start();
        let indent = l.len() - t.len();
        let head = t
            .strip_prefix("pub(crate) ")
            .or_else(|| t.strip_prefix("pub(super) "))
            .or_else(|| t.strip_prefix("pub "))
            .unwrap_or(t);
        if let Some(rest) = head.strip_prefix("struct ")
            && t.ends_with('{')
        {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let mut n = 0;
            let mut j = i + 1;
            let close = format!("{}}}", " ".repeat(indent));
            while j < lines.len() && !lines[j].starts_with(&close) {
                let f = lines[j];
                let ft = f.trim_start();
                let fi = f.len() - ft.len();
                let ft = ft
                    .strip_prefix("pub(crate) ")
                    .or_else(|| ft.strip_prefix("pub(super) "))
                    .or_else(|| ft.strip_prefix("pub "))
                    .unwrap_or(ft);
                if fi == indent + 4
                    && ft.split_once(':').is_some_and(|(a, _)| {
                        !a.is_empty() && a.chars().all(|c| c.is_alphanumeric() || c == '_')
                    })
                {
                    n += 1;
                }
                j += 1;
            }
            out.push((name, n));
            i = j;
        }
        i += 1;
    }
    out
}

#[test]
fn no_source_file_is_over_800_lines_before_its_tests() {
    let root = root();
    let mut files = Vec::new();
    for dir in [
        "engine/src",
        "engine/core/src",
        "loadgen/src",
        "analysis/src",
        "tests/src",
    ] {
        rust_files(&root.join(dir), &mut files);
    }
    let over: Vec<String> = files
        .iter()
        .filter(|f| f.file_name().is_none_or(|n| n != "tests.rs"))
        .filter_map(|f| {
            let n = non_test_lines(&std::fs::read_to_string(f).expect("readable"));
            (n > SOURCE_LINES_MAX).then(|| format!("{}: {n} lines", f.display()))
        })
        .collect();
    assert!(
        over.is_empty(),
        "split by concern (at most {SOURCE_LINES_MAX} lines before the tests):\n{}",
        over.join("\n")
    );
}

#[test]
fn no_driver_struct_has_more_than_12_fields() {
    let root = root();
    let mut files = Vec::new();
    for dir in [
        "engine/src/runtime",
        "engine/src/sim",
        "engine/src/client",
        "loadgen/src",
    ] {
        rust_files(&root.join(dir), &mut files);
    }
    files.push(root.join("engine/src/embedded.rs"));
    let mut over = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("readable");
        for (name, n) in struct_fields(&text[..text.find("\n#[cfg(test)]").unwrap_or(text.len())]) {
            if n > DRIVER_FIELDS_MAX && !FLAT_RECORDS.contains(&name.as_str()) {
                over.push(format!("{}: {name} has {n} fields", f.display()));
            }
        }
    }
    assert!(
        over.is_empty(),
        "group a driver's state by concern (at most {DRIVER_FIELDS_MAX} fields):\n{}",
        over.join("\n")
    );
}

#[test]
fn the_size_checks_can_fail() {
    let big = "fn x() {}\n".repeat(SOURCE_LINES_MAX + 1) + "#[cfg(test)]\nmod tests {}\n";
    assert_eq!(non_test_lines(&big), SOURCE_LINES_MAX + 1);
    let fields: String = (0..13).map(|i| format!("    pub f{i}: u32,\n")).collect();
    let text = format!(
        "pub(super) struct Wide {{\n{fields}}}\n\nstruct Narrow {{\n    a: u8,\n    /// b\n    b: Vec<(u8, u8)>,\n}}\n"
    );
    assert_eq!(
        struct_fields(&text),
        vec![("Wide".to_string(), 13), ("Narrow".to_string(), 2)]
    );
}
