//! The top frames of a flame graph (`flamegraph.svg` as pprof/inferno
//! write it): self time per function, from each frame's width minus its
//! children's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Frame {
    pub name: String,
    /// Samples in the function itself, % of all.
    pub self_pct: f64,
    /// Samples with the function on the stack (its widest frame), %.
    pub total_pct: f64,
}

struct Rect {
    name: String,
    y: f64,
    x: f64,
    w: f64,
}

fn attr(s: &str, name: &str) -> Option<f64> {
    let i = s.find(&format!(" {name}=\""))? + name.len() + 3;
    let end = s[i..].find('"')? + i;
    s[i..end].trim_end_matches('%').parse().ok()
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Parses the frames of an inferno SVG; `n` functions with the most self time.
pub fn top_frames(svg: &str, n: usize) -> Vec<Frame> {
    let mut rects = Vec::new();
    for part in svg.split("<g>").skip(1) {
        let Some(t0) = part.find("<title>") else {
            continue;
        };
        let Some(t1) = part.find("</title>") else {
            continue;
        };
        let title = unescape(&part[t0 + 7..t1]);
        // "name (123 samples, 4.56%)"
        let name = match title.rfind(" (") {
            Some(i) => title[..i].to_string(),
            None => title.clone(),
        };
        let Some(r) = part.find("<rect") else {
            continue;
        };
        let rect = &part[r..part[r..].find("/>").map_or(part.len(), |e| r + e)];
        let (x, w) = match (attr(rect, "fg:x"), attr(rect, "fg:w")) {
            (Some(x), Some(w)) => (x, w),
            _ => match (attr(rect, "x"), attr(rect, "width")) {
                (Some(x), Some(w)) => (x, w),
                _ => continue,
            },
        };
        let Some(y) = attr(rect, "y") else { continue };
        rects.push(Rect { name, y, x, w });
    }
    let Some(total) = rects
        .iter()
        .map(|r| r.w)
        .max_by(|a, b| a.total_cmp(b))
        .filter(|t| *t > 0.0)
    else {
        return Vec::new();
    };
    // Depth by row; the root row is the widest (inferno may draw it at the
    // top or the bottom).
    let mut ys: Vec<f64> = rects.iter().map(|r| r.y).collect();
    ys.sort_by(|a, b| a.total_cmp(b));
    ys.dedup();
    let root_y = rects.iter().find(|r| r.w == total).map_or(ys[0], |r| r.y);
    let root_at_bottom = root_y == *ys.last().expect("rows");
    let depth = |y: f64| {
        let i = ys.iter().position(|v| *v == y).expect("a row");
        if root_at_bottom { ys.len() - 1 - i } else { i }
    };
    let mut by_depth: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, r) in rects.iter().enumerate() {
        by_depth.entry(depth(r.y)).or_default().push(i);
    }
    let mut selfs: BTreeMap<&str, f64> = BTreeMap::new();
    let mut totals: BTreeMap<&str, f64> = BTreeMap::new();
    for r in &rects {
        let d = depth(r.y);
        let children: f64 = by_depth
            .get(&(d + 1))
            .map(|v| {
                v.iter()
                    .map(|j| &rects[*j])
                    .filter(|c| c.x >= r.x - 1e-9 && c.x < r.x + r.w - 1e-9)
                    .map(|c| c.w)
                    .sum()
            })
            .unwrap_or(0.0);
        *selfs.entry(&r.name).or_default() += (r.w - children).max(0.0);
        let t = totals.entry(&r.name).or_default();
        *t = t.max(r.w);
    }
    let mut frames: Vec<Frame> = selfs
        .into_iter()
        .filter(|(name, _)| *name != "all")
        .map(|(name, s)| Frame {
            name: name.to_string(),
            self_pct: 100.0 * s / total,
            total_pct: 100.0 * totals[name] / total,
        })
        .collect();
    frames.sort_by(|a, b| b.self_pct.total_cmp(&a.self_pct));
    frames.truncate(n);
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_time_is_width_minus_children() {
        // all(100) -> main(100) -> { work(60) -> flush(50), idle(30) }
        let g = |name: &str, y: u32, x: u32, w: u32| {
            format!(
                "<g><title>{name} ({w} samples, {w}%)</title><rect x=\"{x}%\" y=\"{y}\" width=\"{w}%\" height=\"15\" fg:x=\"{x}\" fg:w=\"{w}\"/></g>"
            )
        };
        let svg = [
            g("all", 100, 0, 100),
            g("main", 84, 0, 100),
            g("work", 68, 0, 60),
            g("idle", 68, 60, 30),
            g("flush &amp; fence", 52, 0, 50),
        ]
        .concat();
        let top = top_frames(&svg, 3);
        assert_eq!(top[0].name, "flush & fence");
        assert!((top[0].self_pct - 50.0).abs() < 1e-9);
        assert_eq!(top[1].name, "idle");
        assert!((top[1].self_pct - 30.0).abs() < 1e-9);
        // main: 100 - (60 + 30) = 10; work: 60 - 50 = 10.
        assert!((top[2].self_pct - 10.0).abs() < 1e-9);
    }
}
