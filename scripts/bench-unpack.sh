#!/usr/bin/env bash
# Benchmarks unpacking and running, in one run:
#   - unpack of a one-layer gzip image of a tree (default: the CPython install) into an empty
#     directory: `gantry unpack` vs `umoci unpack` (goal: gantry ≥ 3× faster);
#   - the overhead of running a command in an image whose rootfs is already cached:
#     `gantry run IMAGE -- /bin/true` (rootfs cached, overlay or copy prepared, bundle written,
#     runtime started, container deleted) beside a bare `runc run` of a prepared bundle.
# Prints a markdown table of medians of REPEAT runs (default 3). Run as root (umoci unpack and
# runc need it).
#
#   scripts/bench-unpack.sh [TREE]
set -euo pipefail
cd "$(dirname "$0")/.."
TREE=${1:-$(python3 -c 'import sys; print(sys.base_prefix)')}
REPEAT=${REPEAT:-3}
for t in umoci runc /usr/bin/time busybox; do
  command -v "$t" >/dev/null || { echo "bench-unpack.sh: $t is missing" >&2; exit 1; }
done
cargo build --release --locked -p gantry >&2
G=$PWD/target/release/gantry
# On tmpfs by default, which compares the unpackers' own work (BENCH_DIR=/var/tmp measures a
# disk, see BENCHMARKS.md for how much ext4's state then matters); needs about
# 2 × REPEAT × the tree's size of free space.
W=$(mktemp -d "${BENCH_DIR:-/dev/shm}/gantry-bench-unpack.XXXXXX")
trap 'rm -rf "$W"' EXIT
export GANTRY_HOME=$W/home

"$G" -q layer --dir "/usr/local=$TREE" --preserve mode --info "$W/tree.json" >/dev/null
"$G" -q image --platform linux/amd64 --layer "$W/tree.json" -o "$W/image" -t t >/dev/null
entries=$(find "$TREE" | wc -l)
size=$(du -sm "$TREE" | cut -f1)

secs() { /usr/bin/time -f "%e" -o "$W/t" "$@" > /dev/null 2>"$W/err" || { cat "$W/err" >&2; exit 1; }; cat "$W/t"; }
median() { sort -n | sed -n "$(( (REPEAT + 1) / 2 ))p"; }
# Every round unpacks into a new directory and nothing is deleted until the end: on ext4,
# creating files right after a large tree was deleted is slow (the inode allocator's
# recently-deleted check), which would measure the cleanup rather than the unpackers. Dirty
# pages are flushed before each round, outside the timing.
gantry_unpack=$(for i in $(seq "$REPEAT"); do sync; secs "$G" -q unpack "oci:$W/image:t" "$W/rootfs$i"; done | median)
umoci_unpack=$(for i in $(seq "$REPEAT"); do sync; secs umoci unpack --image "$W/image:t" "$W/bundle$i"; done | median)

# A busybox image for the run overhead.
bb=$(command -v busybox)
"$G" -q layer --file "/bin/busybox=$bb" --symlink /bin/true=busybox --symlink /bin/sh=busybox \
  --empty-dir /tmp --info "$W/bb.json" >/dev/null
"$G" -q image --platform linux/amd64 --layer "$W/bb.json" --env PATH=/bin -o "$W/bb" -t t >/dev/null
"$G" -q --runtime runc run "oci:$W/bb:t" -- /bin/true   # warms the rootfs cache
gantry_run=$(for _ in $(seq "$REPEAT"); do secs "$G" -q --runtime runc run "oci:$W/bb:t" -- /bin/true; done | median)
rm -rf "$W/rb"; umoci unpack --image "$W/bb:t" "$W/rb" >/dev/null
python3 - "$W/rb/config.json" <<'PY'
import json, sys
p = sys.argv[1]; c = json.load(open(p))
c["process"]["terminal"] = False; c["process"]["args"] = ["/bin/true"]
json.dump(c, open(p, "w"))
PY
n=0
runc_run=$(for _ in $(seq "$REPEAT"); do n=$((n + 1)); secs runc run -b "$W/rb" "bench-$$-$n"; done | median)

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
cat <<EOT
| work ($size MB, $entries entries, one gzip layer) | wall (s) |
|---|---:|
| gantry unpack | $gantry_unpack |
| umoci unpack | $umoci_unpack |
| gantry run -- /bin/true (rootfs cached) | $gantry_run |
| runc run of a prepared bundle | $runc_run |

| measure | value | goal |
|---|---:|---|
| umoci unpack / gantry unpack | $(ratio "$umoci_unpack" "$gantry_unpack") | ≥ 3 |
| gantry run overhead over bare runc (s) | $(python3 -c "print(f'{$gantry_run - $runc_run:.2f}')") | (stated) |
EOT
