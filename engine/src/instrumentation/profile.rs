//! Sampling profiles (pprof, feature `profiling`): one guard per process,
//! written at the end as a flamegraph (`X.svg`), the folded stacks beside it
//! (`X.folded`, one `thread;frame;frame;... count` line per distinct stack:
//! the input of inferno, speedscope and `grep`), and the hottest frames
//! (`X.top.md`) so that a report can name them without anyone opening the SVG.
//!
//! Inlined frames carry short names (`eq`, `atomic_add`), so `X.top.md` also
//! charges every sample to the innermost frame of this project's own code
//! (`engine/src`, `loadgen/src`, `analysis/src`): the line to look at.
//! The tables are built without pprof (and tested in every build); only
//! [`Profiler`] needs the `profiling` feature.
//!
//! Samples that land in libc, libgcc, pthread or the vDSO are dropped (pprof
//! cannot unwind from them safely): time in system calls and in the kernel
//! is not in these profiles. `perf record -e cpu-clock -p PID` shows it.

use std::collections::HashMap;
use std::fmt::Write as _;

/// Rows of each table in `X.top.md`.
pub const TOP_FRAMES: usize = 25;

/// Source directories that are this project's code.
const PROJECT_DIRS: [&str; 4] = [
    "engine/core/src/",
    "engine/src/",
    "loadgen/src/",
    "analysis/src/",
];

/// pprof sampling of this whole process (every thread) at 999 Hz.
#[cfg(feature = "profiling")]
pub struct Profiler(pprof::ProfilerGuard<'static>);

/// One frame of a sampled stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub name: String,
    /// `dir/file.rs:line`, or empty without debug information.
    pub at: String,
    /// Whether the frame is in one of [`PROJECT_DIRS`].
    pub project: bool,
}

impl Frame {
    pub fn new(name: String, file: &str, line: u32) -> Frame {
        let project = PROJECT_DIRS.iter().find_map(|d| file.find(d));
        let at = match project {
            // From the crate directory on: `engine/src/kv.rs:120`.
            Some(i) => format!("{}:{line}", &file[i..]),
            None => match file.rsplit('/').take(2).collect::<Vec<_>>().as_slice() {
                [f, d] if *f != "Unknown" => format!("{d}/{f}:{line}"),
                _ => String::new(),
            },
        };
        Frame {
            name,
            at,
            project: project.is_some(),
        }
    }
}

/// A distinct stack (root first) and how many samples ended in it.
#[derive(Clone, Debug)]
pub struct Stack {
    pub thread: String,
    pub frames: Vec<Frame>,
    pub samples: u64,
}

#[cfg(feature = "profiling")]
impl Profiler {
    pub fn start() -> Result<Profiler, String> {
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(999)
            .blocklist(&["libc", "libgcc", "pthread", "vdso"])
            .build()
            .map_err(|e| format!("cannot start the profiler: {e}"))?;
        Ok(Profiler(guard))
    }

    /// Writes `svg`, and `svg` with the extensions `folded` and `top.md`.
    pub fn finish(self, svg: &std::path::Path) -> Result<(), String> {
        let report = self
            .0
            .report()
            .build()
            .map_err(|e| format!("profile report: {e}"))?;
        let f = std::fs::File::create(svg)
            .map_err(|e| format!("cannot create {}: {e}", svg.display()))?;
        report
            .flamegraph(f)
            .map_err(|e| format!("flamegraph: {e}"))?;
        let stacks: Vec<Stack> = report
            .data
            .iter()
            .map(|(frames, &n)| Stack {
                thread: frames.thread_name_or_id(),
                // pprof lists the innermost frame first.
                frames: frames
                    .frames
                    .iter()
                    .rev()
                    .flat_map(|inlined| inlined.iter().rev())
                    .map(|s| Frame::new(s.name(), &s.filename(), s.lineno()))
                    .collect(),
                samples: n.max(0) as u64,
            })
            .collect();
        write(&svg.with_extension("folded"), &folded(&stacks))?;
        write(&svg.with_extension("top.md"), &top(&stacks, TOP_FRAMES))
    }
}

#[cfg(feature = "profiling")]
fn write(path: &std::path::Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Folded stacks, heaviest first (ties by text, so the file is deterministic).
pub fn folded(stacks: &[Stack]) -> String {
    let mut lines: Vec<(String, u64)> = stacks
        .iter()
        .map(|s| {
            let names =
                std::iter::once(s.thread.as_str()).chain(s.frames.iter().map(|f| f.name.as_str()));
            let text: Vec<String> = names.map(|n| n.replace([' ', ';', '\n'], "_")).collect();
            (text.join(";"), s.samples)
        })
        .collect();
    lines.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut out = String::new();
    for (stack, n) in lines {
        let _ = writeln!(out, "{stack} {n}");
    }
    out
}

/// Three Markdown tables of the `rows` hottest entries: self samples by the
/// innermost frame (`self`), self samples charged to the innermost project
/// frame (`project`), and inclusive samples of project functions, counted
/// once per stack even when recursive (`inclusive`).
pub fn top(stacks: &[Stack], rows: usize) -> String {
    let total: u64 = stacks.iter().map(|s| s.samples).sum();
    let mut own: HashMap<(String, String), u64> = HashMap::new();
    let mut charged: HashMap<(String, String), u64> = HashMap::new();
    let mut all: HashMap<(String, String), u64> = HashMap::new();
    for s in stacks {
        if let Some(leaf) = s.frames.last() {
            *own.entry((leaf.name.clone(), leaf.at.clone())).or_default() += s.samples;
        }
        let p = s.frames.iter().rev().find(|f| f.project);
        let key = p.map_or_else(
            || ("(no project frame)".to_string(), String::new()),
            |f| (f.name.clone(), f.at.clone()),
        );
        *charged.entry(key).or_default() += s.samples;
        // Inclusive by function (name and file, not line), once per stack.
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for f in s.frames.iter().filter(|f| f.project) {
            let file = f.at.rsplit_once(':').map_or("", |(file, _)| file);
            if !seen.contains(&(f.name.as_str(), file)) {
                seen.push((&f.name, file));
                *all.entry((f.name.clone(), file.to_string())).or_default() += s.samples;
            }
        }
    }
    let mut out = format!("{total} samples\n");
    for (title, counts) in [("self", own), ("project", charged), ("inclusive", all)] {
        let mut v: Vec<((String, String), u64)> = counts.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let _ = write!(
            out,
            "\n| {title} % | samples | frame | at |\n|---:|---:|---|---|\n"
        );
        for ((name, at), n) in v.into_iter().take(rows) {
            let pct = 100.0 * n as f64 / total.max(1) as f64;
            let _ = writeln!(out, "| {pct:.1} | {n} | `{}` | {at} |", short(&name));
        }
    }
    out
}

/// A frame name without generic arguments, at most 100 characters: enough
/// to find it in the flamegraph.
fn short(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut depth = 0usize;
    for c in name.chars() {
        match c {
            '<' => depth += 1,
            '>' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    let out = out.replace('|', "\\|");
    if out.chars().count() > 100 {
        out.chars().take(99).chain(['…']).collect()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(thread: &str, frames: &[(&str, &str)], samples: u64) -> Stack {
        Stack {
            thread: thread.into(),
            frames: frames
                .iter()
                .map(|(n, file)| Frame::new(n.to_string(), file, 7))
                .collect(),
            samples,
        }
    }

    #[test]
    fn self_project_and_inclusive_counts_add_up() {
        let kv = "/w/engine/src/kv.rs";
        let lib = "/rustc/x/library/core/src/cmp.rs";
        let stacks = vec![
            stack("main", &[("run", kv), ("apply", kv), ("eq", lib)], 3),
            stack("main", &[("run", kv), ("apply", kv)], 1),
            stack(
                "worker",
                &[("poll", lib), ("apply", kv), ("run", kv), ("apply", kv)],
                2,
            ),
        ];
        let t = top(&stacks, 10);
        assert!(t.starts_with("6 samples\n"), "{t}");
        // self: eq 3, apply 1 + 2.
        assert!(t.contains("| 50.0 | 3 | `eq` | src/cmp.rs:7 |"), "{t}");
        assert!(
            t.contains("| 50.0 | 3 | `apply` | engine/src/kv.rs:7 |"),
            "{t}"
        );
        // project: every sample lands on apply, the innermost project frame.
        let project = t.split("| project").nth(1).unwrap();
        assert!(
            project.contains("| 100.0 | 6 | `apply` | engine/src/kv.rs:7 |"),
            "{t}"
        );
        // inclusive: project functions only, once per stack; threads are not frames.
        let inclusive = t.split("| inclusive").nth(1).unwrap();
        assert!(
            inclusive.contains("| 100.0 | 6 | `run` | engine/src/kv.rs |"),
            "{t}"
        );
        assert!(!inclusive.contains("`poll`"), "{t}");
        assert!(!t.contains("`main`"), "{t}");
        assert_eq!(
            folded(&stacks),
            "main;run;apply;eq 3\nworker;poll;apply;run;apply 2\nmain;run;apply 1\n"
        );
    }

    /// Closures and async bodies share names (`{async_fn#0}`): inclusive
    /// counts tell them apart by file, and count each once per stack.
    #[test]
    fn inclusive_counts_keep_same_named_frames_of_other_files_apart() {
        let rt = "/w/engine/src/runtime/mod.rs";
        let client = "/w/engine/src/client.rs";
        let stacks = vec![stack(
            "main",
            &[
                ("{async_fn#0}", rt),
                ("{async_fn#0}", client),
                ("{async_fn#0}", rt),
            ],
            4,
        )];
        let inclusive = top(&stacks, 10)
            .split("| inclusive")
            .nth(1)
            .unwrap()
            .to_string();
        assert!(
            inclusive.contains("| 100.0 | 4 | `{async_fn#0}` | engine/src/runtime/mod.rs |"),
            "{inclusive}"
        );
        assert!(
            inclusive.contains("| 100.0 | 4 | `{async_fn#0}` | engine/src/client.rs |"),
            "{inclusive}"
        );
    }

    #[test]
    fn names_lose_generics_and_stay_short() {
        assert_eq!(
            short("hashbrown::map::HashMap<K,V,S>::insert"),
            "hashbrown::map::HashMap::insert"
        );
        assert_eq!(short(&"x".repeat(300)).chars().count(), 100);
    }
}
