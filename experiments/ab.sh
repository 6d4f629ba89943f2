#!/usr/bin/env bash
# make ab BASE=<git rev> NAME=<experiment> [PAIRS=2] [SET='field=value ...']
#
# A/B of two builds on one machine in one sitting: builds BASE in a git
# worktree (target/ab/base), sharing the working tree's dependency builds,
# so only the workspace's own crates compile; builds the working tree
# (uncommitted changes included); runs
# experiments/NAME.toml (the working tree's, for both) base, head, head,
# base, ... PAIRS pairs; then `analysis ab` gives one verdict from the
# pairs (noise from the spread between them as well as within each run),
# with compare.md, compare.json and plots in
# experiments/results/NAME/ab-STAMP/.
#
# The lab build's command comes from the Makefile (LAB_BUILD), so both
# builds are the one `make experiment` runs.
set -euo pipefail

die() {
  echo "make ab: $*" >&2
  exit 2
}

base_rev=${1:-}
name=${2:-}
pairs=${3:-2}
set_fields=${4:-}
[ -n "$base_rev" ] && [ -n "$name" ] ||
  die "usage: make ab BASE=<git rev> NAME=<experiment> [PAIRS=2] [SET='field=value ...']"
[[ "$pairs" =~ ^[1-9][0-9]*$ ]] || die "PAIRS must be a positive number, not '$pairs'"
[ -n "${LAB_BUILD:-}" ] || die "LAB_BUILD is not set: run it as make ab"

root=$(git rev-parse --show-toplevel)
cd "$root"
spec=experiments/$name.toml
[ -f "$spec" ] || die "no $spec (experiments: $(ls experiments/*.toml | xargs -n1 basename | sed 's/\.toml$//' | tr '\n' ' '))"
base_sha=$(git rev-parse --verify --quiet "$base_rev^{commit}") ||
  die "'$base_rev' is not a git revision here"
base_short=$(git rev-parse --short "$base_sha")
head_short=$(git rev-parse --short HEAD)
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  head_label="$head_short+changes"
else
  head_label="$head_short"
fi
stamp=$(date -u +%Y%m%d-%H%M%S)
ab=$root/target/ab
mkdir -p "$ab"
set_args=()
read -r -a fields <<<"$set_fields"
for s in "${fields[@]}"; do set_args+=(--set "$s"); done
if [ "$pairs" = 1 ]; then
  echo "make ab: PAIRS=1 gives each figure only its runs' own noise (nothing on how runs of one build differ): use 2 or more to decide" >&2
fi

# The two builds, one after the other (never two builds at once), each
# copied out of its target directory.
#
# Cargo names a workspace crate's artifacts by its path relative to the
# workspace, so the base's engine built into target/ would overwrite the
# head's, and cargo's mtime check could then take one for the other. The
# base gets a target directory of its own, target/ab/target, seeded once
# with hard links to target/release's dependency artifacts (no copy, no
# rebuild of tokio and the rest) but not the workspace's crates. Its
# source is one worktree, target/ab/base, moved to each base revision by
# `git checkout`, which gives the files it changes a new mtime: cargo
# rebuilds exactly what the revision changed.
bins="replica loadgen"
# The head first: on a fresh clone it builds the dependencies the base then
# shares.
echo "make ab: building head $head_label (the working tree)"
(CARGO_TARGET_DIR=$root/target $LAB_BUILD) || die "the working tree does not build"
head_bin=$ab/bin-head
mkdir -p "$head_bin"
for b in $bins; do
  cp -f "$root/target/release/$b" "$head_bin/$b" || die "the working tree built no $b"
done
src=$ab/base
base_target=$ab/target
git worktree prune
if [ ! -e "$src/.git" ]; then
  echo "make ab: a worktree for the base in $src"
  git worktree add --detach --force "$src" "$base_sha" >/dev/null
else
  git -C "$src" checkout --quiet --detach --force "$base_sha"
fi
# The workspace's crates and binaries: never shared (their artifacts
# would be the head's). Everything else in deps/ is a registry crate's.
workspace_crates='^(lib)?(engine|loadgen|analysis|system[-_]tests|replica|kv|paxos[-_]tool|sim|gate|soak)([-_.]|$)'
if [ ! -e "$base_target/.seeded" ] && [ -d "$root/target/release/deps" ]; then
  rm -rf "$base_target"
  echo "make ab: sharing target/release's dependency builds with the base (hard links)"
  mkdir -p "$base_target/release"
  for d in deps build .fingerprint; do
    if [ -d "$root/target/release/$d" ]; then
      cp -al "$root/target/release/$d" "$base_target/release/$d"
      for f in "$base_target/release/$d"/*; do
        if [[ "$(basename "$f")" =~ $workspace_crates ]]; then rm -rf "$f"; fi
      done
    fi
  done
  touch "$base_target/.seeded"
fi
echo "make ab: building base $base_short (its own crates; dependencies shared)"
(cd "$src" && CARGO_TARGET_DIR=$base_target $LAB_BUILD) ||
  die "the base revision $base_short does not build with: $LAB_BUILD"
base_bin=$ab/bin-base
mkdir -p "$base_bin"
for b in $bins; do
  cp -f "$base_target/release/$b" "$base_bin/$b" || die "the base revision $base_short built no $b"
done
if cmp -s "$base_bin/loadgen" "$head_bin/loadgen" && cmp -s "$base_bin/replica" "$head_bin/replica"; then
  echo "make ab: base and head built identical binaries"
fi

# Interleaved and counterbalanced: base, head, head, base, base, head, ...
# A machine that drifts over the minutes (this one does) would otherwise
# favour whichever side runs first in every pair.
base_runs=()
head_runs=()
for i in $(seq 1 "$pairs"); do
  if [ $((i % 2)) = 1 ]; then order="base head"; else order="head base"; fi
  for side in $order; do
    if [ "$side" = base ]; then bin=$base_bin; label=$base_short; else bin=$head_bin; label=$head_label; fi
    id=ab-$stamp-$side-$i
    echo "make ab: pair $i/$pairs, $side ($label)"
    "$bin/loadgen" run "$spec" --run-id "$id" "${set_args[@]}" ||
      die "the $side run failed (pair $i); its output is above"
    dir=experiments/results/$name/$id
    [ -f "$dir/summary.json" ] || die "the $side run wrote no $dir/summary.json"
    if [ "$side" = base ]; then base_runs+=("$dir"); else head_runs+=("$dir"); fi
  done
done

out=experiments/results/$name/ab-$stamp
echo "make ab: base $base_short vs head $head_label, $name, $pairs pairs"
./target/debug/analysis ab --base "${base_runs[@]}" --head "${head_runs[@]}" --out "$out"
