#!/usr/bin/env bash
# Benchmarks `gantry build` on a 10-layer project over a tree (default: the CPython install):
# the cold build, the no-op rebuild (goal: ≤ 0.3 s), a rebuild after one file changed, and
# the same image built with umoci the way image-oci-umoci does it (unpack, copy, repack per
# layer). Prints a markdown table with medians of REPEAT runs (default 5; umoci runs once).
#
#   scripts/bench-project.sh [TREE]
set -euo pipefail
cd "$(dirname "$0")/.."
TREE=${1:-$(python3 -c 'import sys; print(sys.base_prefix)')}
REPEAT=${REPEAT:-5}
for t in umoci python3 /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "bench-project.sh: $t is missing" >&2; exit 1; }
done
cargo build --release --locked -p gantry >&2
G=$PWD/target/release/gantry
W=$(mktemp -d /var/tmp/gantry-bench-project.XXXXXX)
trap 'rm -rf "$W"' EXIT
export GANTRY_HOME=$W/home

# A copy of the tree, so one file can be changed; spread its top two levels over 10 layers.
cp -a "$TREE" "$W/tree"
python3 scripts/lib/split_tree.py "$W/tree" "$W/gantry.toml" "$W/groups"
echo "tree: $TREE ($(du -sh "$TREE" | cut -f1), $(find "$TREE" | wc -l) entries); 10 layers; $(nproc) CPUs" >&2
# Inputs older than the stat cache's 2 s racy window, as in a real checkout.
sleep 2.1

secs() { /usr/bin/time -f "%e" -o "$W/t" "$@" > /dev/null; cat "$W/t"; }
median() { sort -n | sed -n "$(( (REPEAT + 1) / 2 ))p"; }

cold=$(for _ in $(seq "$REPEAT"); do rm -rf "$GANTRY_HOME" "$W/gantry-out"; secs "$G" -q build -C "$W"; done | median)
sleep 2.1   # let the fresh blobs age past the racy window once, as any later build would
secs "$G" -q build -C "$W" > /dev/null
noop=$(for _ in $(seq "$REPEAT"); do secs "$G" -q build -C "$W"; done | median)
one=$(for i in $(seq "$REPEAT"); do
  f=$(find "$W/tree/lib" -name '*.py' | sort | head -1)
  echo "# change $i" >> "$f"
  secs "$G" -q build -C "$W"
done | median)

# umoci, per layer: unpack the previous image, copy this layer's part of the tree, repack.
umoci_run() {
  rm -rf "$W/umoci" "$W/bundle"
  umoci init --layout "$W/umoci" && umoci new --image "$W/umoci:t"
  while read -r rels; do
    rm -rf "$W/bundle"
    umoci unpack --image "$W/umoci:t" "$W/bundle" > /dev/null
    for r in $rels; do
      mkdir -p "$W/bundle/rootfs/usr/local/$(dirname "$r")"
      cp -a "$W/tree/$r" "$W/bundle/rootfs/usr/local/$r"
    done
    umoci repack --image "$W/umoci:t" "$W/bundle" > /dev/null
  done < "$W/groups"
}
export -f umoci_run; export W
umoci=$(secs bash -c umoci_run)

echo "| work (10 layers) | wall (s) |"
echo "|---|---:|"
echo "| gantry build, cold (empty store) | $cold |"
echo "| gantry build, no-op rebuild | $noop |"
echo "| gantry build, one .py file changed | $one |"
echo "| umoci: unpack + copy + repack per layer | $umoci |"
