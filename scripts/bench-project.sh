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
python3 - "$W/tree" "$W/gantry.toml" "$W/groups" <<'PY'
import os, sys
tree, out, groups_file = sys.argv[1:]
def size(rel):
    p = os.path.join(tree, rel)
    if os.path.islink(p) or not os.path.isdir(p):
        return os.lstat(p).st_size
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(p) for f in fs)
# Split any directory bigger than a twentieth of the tree into its entries, so 10 layers can
# be balanced.
limit = size(".") / 20
entries, todo = [], sorted(os.listdir(tree))
while todo:
    rel = todo.pop(0)
    p = os.path.join(tree, rel)
    if os.path.isdir(p) and not os.path.islink(p) and size(rel) > limit:
        todo.extend(os.path.join(rel, c) for c in sorted(os.listdir(p)))
    else:
        entries.append(rel)
# Balance by size: largest first onto the lightest group.
groups = [[0, []] for _ in range(10)]
for rel in sorted(entries, key=size, reverse=True):
    g = min(groups, key=lambda g: g[0])
    g[0] += size(rel)
    g[1].append(rel)
with open(out, "w") as f, open(groups_file, "w") as gf:
    for i, (_, rels) in enumerate(groups):
        f.write(f"[layer.l{i}]\n")
        dirs = [r for r in rels if os.path.isdir(os.path.join(tree, r)) and not os.path.islink(os.path.join(tree, r))]
        files = [r for r in rels if r not in dirs and not os.path.islink(os.path.join(tree, r))]
        links = [r for r in rels if os.path.islink(os.path.join(tree, r))]
        if dirs:
            f.write("dirs = { " + ", ".join(f'"/usr/local/{r}" = "tree/{r}"' for r in sorted(dirs)) + " }\n")
        if files:
            f.write("files = { " + ", ".join(f'"/usr/local/{r}" = "tree/{r}"' for r in sorted(files)) + " }\n")
        if links:
            f.write("symlinks = { " + ", ".join(f'"/usr/local/{r}" = "{os.readlink(os.path.join(tree, r))}"' for r in sorted(links)) + " }\n")
        f.write("\n")
        gf.write(" ".join(rels) + "\n")
    f.write("[image.python]\nplatform = \"linux/amd64\"\nlayers = [" + ", ".join(f'"l{i}"' for i in range(10)) + "]\n")
PY
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
