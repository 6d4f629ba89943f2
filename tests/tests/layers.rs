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

/// The std modules the core's (non-test) source must not name: I/O,
/// clocks, threads, processes, the environment.
const STD_FORBIDDEN: &[&str] = &["fs", "net", "thread", "time", "process", "io", "env", "os"];

/// Words the core's (non-test) source must not contain.
const CORE_FORBIDDEN: &[&str] = &["Instant", "SystemTime", "tokio", "unsafe"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// A file compiled only for tests: `tests.rs`, or under a `tests` folder
/// of a crate's source (`#[cfg(test)] mod tests;`).
fn is_test_file(f: &Path) -> bool {
    let parts: Vec<_> = f.components().map(|c| c.as_os_str()).collect();
    let below_src = match parts.iter().rposition(|c| *c == "src") {
        Some(i) => &parts[i + 1..],
        None => &parts[..],
    };
    f.file_name().is_some_and(|n| n == "tests.rs")
        || below_src[..below_src.len().saturating_sub(1)]
            .iter()
            .any(|c| *c == "tests")
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
/// (line number, code); a `use` statement over several lines is joined
/// into its first. A `#[cfg(test)]` item is skipped whole: the attribute
/// with an item on its own line, or the item after it (its other
/// attributes and doc comments, then to where its brackets close).
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let strip = |line: &str| -> String { without_comment(line).to_string() };
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut lines = text.lines().enumerate();
    let mut open_use = false;
    while let Some((n, line)) = lines.next() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("#[cfg(test)]") {
            let mut item = strip(rest);
            // Attributes and doc comments before the item.
            while item.trim().is_empty() || item.trim_start().starts_with("#[") {
                match lines.next() {
                    Some((_, l)) if l.trim_start().starts_with("///") => {}
                    Some((_, l)) => item = strip(l),
                    None => return out,
                }
            }
            let mut depth: i64 = 0;
            let mut first = true;
            loop {
                depth += bracket_depth(&item);
                let t = item.trim_end();
                // A one-line field or arm ends at its comma; anything else
                // where its brackets close, at a `;` or a `}`.
                if depth <= 0
                    && (t.ends_with(';') || t.ends_with('}') || (first && t.ends_with(',')))
                {
                    break;
                }
                first = false;
                match lines.next() {
                    Some((_, l)) => item = strip(l),
                    None => return out,
                }
            }
            continue;
        }
        let code = strip(line);
        if open_use {
            let last = out.last_mut().expect("an open use statement");
            last.1.push(' ');
            last.1.push_str(code.trim());
            open_use = !code.contains(';');
            continue;
        }
        let c = code.trim_start();
        let is_use = ["use ", "pub use ", "pub(crate) use ", "pub(super) use "]
            .iter()
            .any(|p| c.starts_with(p));
        open_use = is_use && !c.contains(';');
        out.push((n + 1, code));
    }
    out
}

/// `line` without its `//` comment (a `//` inside a string literal stays).
fn without_comment(line: &str) -> &str {
    let b = line.as_bytes();
    let mut in_str = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if in_str => i += 1,
            b'"' => in_str = !in_str,
            b'/' if !in_str && b.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
        i += 1;
    }
    line
}

/// How much `code` opens brackets (`{ ( [`) less what it closes, string
/// and char literals left out.
fn bracket_depth(code: &str) -> i64 {
    let c: Vec<char> = code.chars().collect();
    let (mut depth, mut i, mut in_str) = (0, 0, false);
    while i < c.len() {
        match c[i] {
            '\\' if in_str => i += 1,
            '"' => in_str = !in_str,
            // A char literal: 'x' or '\x' (a lifetime has no closing quote).
            '\'' if !in_str && c.get(i + 2) == Some(&'\'') => i += 2,
            '\'' if !in_str && c.get(i + 1) == Some(&'\\') => {
                while i + 1 < c.len() && c[i + 1] != '\'' {
                    i += 1;
                }
                i += 1;
            }
            '{' | '(' | '[' if !in_str => depth += 1,
            '}' | ')' | ']' if !in_str => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    depth
}

/// The items of a `{ .. }` group that starts `rest` (after the `{`): the
/// first path segment of each.
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item = String::new();
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                heads.push(std::mem::take(&mut item));
                continue;
            }
            _ => {}
        }
        if depth == 0 || !item.contains("::") {
            item.push(c);
        }
    }
    heads.push(item);
    heads
        .iter()
        .map(|i| {
            let i = i.trim();
            if i.starts_with('*') {
                "*".to_string()
            } else {
                word(i)
            }
        })
        .filter(|w| !w.is_empty())
        .collect()
}

fn word(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// What follows a path prefix that names the crate root: its modules
/// (`*` for a glob of the root).
fn root_items(rest: &str) -> Vec<String> {
    if let Some(group) = rest.strip_prefix('{') {
        group_heads(group)
    } else if rest.starts_with('*') {
        vec!["*".to_string()]
    } else {
        vec![word(rest)]
    }
}

/// The top-level modules a line of module `path` (its components below
/// the crate root) refers to.
fn referenced(path: &[String], code: &str) -> Vec<String> {
    let mut found = Vec::new();
    // `crate::x`, `use crate::{x, y::z}`, `crate::*`.
    for (i, _) in code.match_indices("crate::") {
        if i > 0 {
            let before = code.as_bytes()[i - 1];
            if before.is_ascii_alphanumeric() || before == b'_' || before == b'$' {
                continue; // `paxos_crate::`, `$crate::`
            }
        }
        found.extend(root_items(&code[i + "crate::".len()..]));
    }
    // `super::super::x` chains (and groups, globs) that reach the crate root.
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
            found.extend(root_items(rest));
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
        if path.first().is_some_and(|p| p == "bin" || p == "lib") || is_test_file(&f) {
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

/// The dependencies a manifest's `[dependencies]` declares (plain,
/// `[dependencies.name]` and target-specific tables).
fn dependencies(manifest: &str) -> Vec<String> {
    let mut section = String::new();
    let mut deps = Vec::new();
    for line in manifest.lines() {
        let t = line.split('#').next().unwrap_or("").trim();
        if t.starts_with('[') {
            section = t
                .trim_matches(|c| c == '[' || c == ']')
                .replace(' ', "")
                .to_string();
            if let Some(name) = section
                .strip_prefix("dependencies.")
                .or_else(|| section.split_once(".dependencies.").map(|(_, n)| n))
            {
                deps.push(name.to_string());
            }
        } else if (section == "dependencies" || section.ends_with(".dependencies"))
            && let Some((name, spec)) = t.split_once('=')
        {
            // `alias = { package = "real" }` depends on `real`.
            let package = spec
                .split_once("package")
                .and_then(|(_, p)| p.split('"').nth(1))
                .map(str::to_string);
            deps.push(
                package
                    .unwrap_or_else(|| name.trim().split('.').next().expect("a name").to_string()),
            );
        } else if section.starts_with("dependencies.")
            && let Some(("package", p)) = t.split_once('=').map(|(k, v)| (k.trim(), v))
        {
            // `[dependencies.alias]` with `package = "real"`.
            if let Some(real) = p.split('"').nth(1) {
                deps.pop();
                deps.push(real.to_string());
            }
        }
    }
    deps
}

/// What a line of the core names that it must not: a std module that does
/// I/O, keeps time or spawns (also inside `std::{..}` groups), a clock
/// type, tokio, or unsafe code.
fn core_forbidden(code: &str) -> Vec<&'static str> {
    let mut found = Vec::new();
    for (i, _) in code.match_indices("std::") {
        let rest = &code[i + "std::".len()..];
        let heads = match rest.strip_prefix('{') {
            Some(group) => group_heads(group),
            None => vec![word(rest)],
        };
        for h in heads {
            if let Some(m) = STD_FORBIDDEN.iter().find(|m| **m == h) {
                found.push(*m);
            }
        }
    }
    for w in CORE_FORBIDDEN {
        let hit = code.match_indices(w).any(|(i, _)| {
            let before = code[..i].chars().next_back();
            let after = code[i + w.len()..].chars().next();
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
        });
        if hit {
            found.push(*w);
        }
    }
    found
}

#[test]
fn the_core_crate_depends_on_no_io_and_names_no_clock_or_socket() {
    let core = root().join("engine/core");
    let manifest =
        std::fs::read_to_string(core.join("Cargo.toml")).expect("engine/core/Cargo.toml");
    let deps = dependencies(&manifest);
    assert!(!deps.is_empty(), "the manifest parser found no dependency");
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
        if is_test_file(f) {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("readable");
        for (n, code) in code_lines(&text) {
            for w in core_forbidden(&code) {
                found.push(format!("{}:{n}: `{w}`: {}", f.display(), code.trim()));
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
        code_lines(&lib)
            .iter()
            .any(|(_, c)| c.trim() == "#![forbid(unsafe_code)]"),
        "the core forbids unsafe code"
    );
}

/// The top-level modules of `engine/src` that may use tokio (and the
/// binaries): the runtime and what runs on it.
const TOKIO_MODULES: &[&str] = &["runtime", "transport", "client", "embedded"];

#[test]
fn only_the_runtime_and_what_runs_on_it_use_tokio() {
    let src = root().join("engine/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let top = rel
            .iter()
            .next()
            .expect("a component")
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "bin" || top == "lib" || TOKIO_MODULES.contains(&top.as_str()) || is_test_file(f)
        {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("readable");
        for (n, code) in code_lines(&text) {
            if code.contains("tokio") {
                found.push(format!("{}:{n}: {}", rel.display(), code.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "tokio outside {TOKIO_MODULES:?}:\n{}",
        found.join("\n")
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
    // Over several lines, as rustfmt writes a long group; a glob of the
    // crate root through `super`.
    let c = crossings_in(
        "storage/mod.rs",
        &p(&["storage"]),
        "use crate::{\n    core::Slot,\n    runtime::NodeConfig,\n};\n",
    );
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(
        c[0].contains("`runtime`") && c[0].starts_with("storage/mod.rs:1:"),
        "{c:?}"
    );
    for glob in [
        "use super::*;",
        "use super::{runtime, kv};",
        "use crate::*;",
    ] {
        let c = crossings_in("storage/mod.rs", &p(&["storage"]), glob);
        assert!(!c.is_empty(), "{glob}");
    }
    // A test-only item of any shape is skipped, and only it.
    let text = "#[cfg(test)] use crate::runtime::A;\nuse crate::sim::B;\n#[cfg(test)]\nconst X: [u8; 2] = [\n    1,\n    2,\n];\nuse crate::kv::C;\n#[cfg(test)]\n/// doc\nfn f() {}\nuse crate::client::D;\n";
    let c = crossings_in("storage/mod.rs", &p(&["storage"]), text);
    let to: Vec<&str> = c
        .iter()
        .map(|x| x.split('`').nth(3).unwrap_or(""))
        .collect();
    assert_eq!(to, vec!["sim", "kv", "client"], "{c:?}");
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
pub fn after() -> crate::core::Ballot { crate::core::Ballot::ZERO }
";
    let c = crossings_in("transport/wire.rs", &p(&["transport", "wire"]), text);
    assert!(c.is_empty(), "{c:?}");
    // Brackets and `//` inside literals of a test-only item do not move
    // where it ends; a where clause does not end it early.
    let tricky = "#[cfg(test)]\nconst OPEN: char = '{';\nuse crate::sim::A;\n#[cfg(test)]\nconst URL: &str = \"http://x\";\nuse crate::kv::B;\n#[cfg(test)]\nfn f<T>(x: T) -> T\nwhere\n    T: Clone,\n{\n    crate::runtime::g(x)\n}\n";
    let c = crossings_in("transport/wire.rs", &p(&["transport", "wire"]), tricky);
    let to: Vec<&str> = c
        .iter()
        .map(|x| x.split('`').nth(3).unwrap_or(""))
        .collect();
    assert_eq!(to, vec!["sim", "kv"], "{c:?}");
    // Code after a skipped test item is still read.
    let c = crossings_in(
        "transport/wire.rs",
        &p(&["transport", "wire"]),
        &format!("{text}use crate::sim::Sim;\n"),
    );
    assert_eq!(c.len(), 1, "{c:?}");
}

#[test]
fn the_core_check_catches_a_clock_a_socket_and_a_dependency() {
    let line = |t: &str| code_lines(t)[0].1.clone();
    assert_eq!(
        core_forbidden(&line("let t = std::time::Instant::now(); // a clock")),
        vec!["time", "Instant"]
    );
    assert_eq!(
        core_forbidden(&line("use std::{fs, thread, time::Duration};")),
        vec!["fs", "thread", "time"]
    );
    assert_eq!(
        core_forbidden(&line("let s = unsafe { x.get_unchecked(1) };")),
        vec!["unsafe"]
    );
    assert!(core_forbidden(&line("#![forbid(unsafe_code)]")).is_empty());
    assert!(core_forbidden(&line("use std::collections::BTreeMap;")).is_empty());
    let manifest = "[dependencies]\nbytes.workspace = true\n[dependencies.tokio]\nversion = \"1\"\n[target.'cfg(unix)'.dependencies]\nlibc = \"0.2\"\n[dev-dependencies]\nproptest = \"1\"\n";
    assert_eq!(dependencies(manifest), vec!["bytes", "tokio", "libc"]);
    let aliased = "[dependencies] # the core's\nbytes = { package = \"tokio\", version = \"1\" }\n[dependencies.net]\npackage = \"mio\"\n";
    assert_eq!(dependencies(aliased), vec!["tokio", "mio"]);
    assert_eq!(
        core_forbidden(&line("use std::os::unix::net::UnixStream;")),
        vec!["os"]
    );
}

// ---- size rules: a newcomer finds code by concern, not in one big file ----

/// Most lines a source file holds before its `#[cfg(test)]` module.
const SOURCE_LINES_MAX: usize = 800;

/// Most fields of a struct in the drivers (runtime, simulator, client,
/// embedded, the gate's workload, load generator): more means concerns to
/// group. Test harnesses (`tests/src`) are not drivers.
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

/// Lines of `text` before its test module (a column-0 `#[cfg(test)]`
/// followed by `mod`).
fn non_test_lines(text: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    (0..lines.len())
        .find(|&i| {
            lines[i] == "#[cfg(test)]"
                && lines
                    .get(i + 1)
                    .is_some_and(|l| l.starts_with("mod ") && l.contains('{'))
        })
        .unwrap_or(lines.len())
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
        .filter(|f| !is_test_file(f))
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
    files.push(root.join("engine/src/gate.rs"));
    let mut over = Vec::new();
    for f in files.iter().filter(|f| !is_test_file(f)) {
        let text = std::fs::read_to_string(f).expect("readable");
        let code: Vec<&str> = text.lines().take(non_test_lines(&text)).collect();
        for (name, n) in struct_fields(&code.join("\n")) {
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
    assert!(is_test_file(Path::new(
        "/w/engine/core/src/tests/proposer.rs"
    )));
    assert!(is_test_file(Path::new("/w/engine/core/src/tests.rs")));
    assert!(!is_test_file(Path::new("/w/tests/src/lib.rs")));
    assert!(!is_test_file(Path::new("/w/tests/src/bin/soak/main.rs")));
    let big = "fn x() {}\n".repeat(SOURCE_LINES_MAX + 1) + "#[cfg(test)]\nmod tests {}\n";
    assert_eq!(non_test_lines(&big), SOURCE_LINES_MAX + 1);
    // A test-only import early on does not end the count.
    let early = format!("#[cfg(test)]\nuse x::Y;\n#[cfg(test)]\nmod tests;\n{big}");
    assert_eq!(non_test_lines(&early), SOURCE_LINES_MAX + 5);
    let fields: String = (0..13).map(|i| format!("    pub f{i}: u32,\n")).collect();
    let text = format!(
        "pub(super) struct Wide {{\n{fields}}}\n\nstruct Narrow {{\n    a: u8,\n    /// b\n    b: Vec<(u8, u8)>,\n}}\n"
    );
    assert_eq!(
        struct_fields(&text),
        vec![("Wide".to_string(), 13), ("Narrow".to_string(), 2)]
    );
}
