#!/usr/bin/env bash
# Benchmarks the registry-backed remote cache on a loopback distribution registry (Debian's
# docker-registry): the 10-layer project of bench-project.sh over a tree (default: the CPython
# install), built
#   - cold in store A with `--cache-to` (every layer built and written to the cache repository;
#     the registry is emptied before each run);
#   - then in an empty store B with `--cache-from --shallow` (every layer a remote hit:
#     manifests and HEADs only, no layer bytes fetched; a shallow layout, as for a build that
#     is pushed), a fresh store each run.
# Prints a markdown table of medians (REPEAT_COLD runs of the cold build, default 1; REPEAT runs
# of the remote-cache build, default 3), the bytes the registry sent during B's build (from its
# access log) and the speedup.
#
#   scripts/bench-remote-cache.sh [TREE]
#   GANTRY_BIN=path/to/gantry scripts/bench-remote-cache.sh   # a given binary, no cargo build
set -euo pipefail
cd "$(dirname "$0")/.."
TREE=${1:-$(python3 -c 'import sys; print(sys.base_prefix)')}
REPEAT=${REPEAT:-3}
REPEAT_COLD=${REPEAT_COLD:-1}
for t in docker-registry python3 /usr/bin/time curl; do
  command -v "$t" >/dev/null || { echo "bench-remote-cache.sh: $t is missing" >&2; exit 1; }
done
if [ -n "${GANTRY_BIN:-}" ]; then G=$GANTRY_BIN; else
  cargo build --release --locked -p gantry >&2
  G=$PWD/target/release/gantry
fi
W=$(mktemp -d /var/tmp/gantry-bench-remote-cache.XXXXXX)
REG_PID=
cleanup() { [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
HOST=127.0.0.1:$PORT
CACHE=$HOST/bench/cache
. scripts/lib/registry.sh

# The project of bench-project.sh (same generation): a copy of the tree, its top two levels
# spread over 10 balanced layers.
mkdir -p "$W/project"
cp -a "$TREE" "$W/project/tree"
python3 scripts/lib/split_tree.py "$W/project/tree" "$W/project/gantry.toml"
echo "tree: $TREE ($(du -sh "$TREE" | cut -f1), $(find "$TREE" | wc -l) entries); 10 layers; $(nproc) CPUs" >&2
# Inputs older than the stat cache's 2 s racy window, as in a real checkout.
sleep 2.1

# Runs one build (stdout to $W/out); prints its wall time. A build that fails stops the bench;
# remote-cache warnings are shown.
secs() {
  /usr/bin/time -f "%e" -o "$W/t" "$@" > "$W/out" 2> "$W/err" || { cat "$W/err" >&2; exit 1; }
  grep -i "remote cache" "$W/err" >&2 || true
  cat "$W/t"
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
# gantry in store A or B.
A=(env GANTRY_HOME="$W/home-a" "$G" -q --insecure-registry "$HOST")
B=(env GANTRY_HOME="$W/home-b" "$G" -q --insecure-registry "$HOST")
# Bytes of 200 responses to GETs in the registry's access log after line $1.
bytes_sent_since() {
  sleep 0.3   # the registry logs a request just after answering it
  tail -n +"$(( $1 + 1 ))" "$W/registry.log" | python3 -c '
import re, sys
total = 0
for l in sys.stdin:
    m = re.search(r"\"GET (\S+) HTTP/[0-9.]+\" 200 (\d+)", l)
    if m:
        total += int(m.group(2))
print(total)'
}

# Cold, in store A, writing the cache; every run starts from an empty registry.
: > "$W/cold"
for _ in $(seq "$REPEAT_COLD"); do
  start_registry
  rm -rf "$W/home-a" "$W/project/gantry-out"
  secs "${A[@]}" build --json -C "$W/project" --cache-to "$CACHE" >> "$W/cold"
done
cold=$(median < "$W/cold")
LAYER_BYTES=$(python3 -c 'import json, sys; print(sum(l["size"] for l in json.load(open(sys.argv[1]))["layers"]))' "$W/out")

# From the cache, in an empty store B each time.
: > "$W/remote"; : > "$W/fetched"
for _ in $(seq "$REPEAT"); do
  rm -rf "$W/home-b" "$W/project/gantry-out"
  lines=$(wc -l < "$W/registry.log")
  secs "${B[@]}" build --json -C "$W/project" --cache-from "$CACHE" --shallow >> "$W/remote"
  bytes_sent_since "$lines" >> "$W/fetched"
  python3 - "$W/out" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))["cache"]
if c.get("remoteHits") != 10 or c.get("misses") != 0:
    sys.exit(f"bench-remote-cache.sh: expected 10 remote hits and no misses, got {c}")
PY
done
remote=$(median < "$W/remote")
fetched=$(median < "$W/fetched")

ratio() { python3 -c "print(f'{$1 / $2:.1f}')"; }
cat <<EOF
| work (10 layers, $((LAYER_BYTES / 1000000)) MB of layers) | value |
|---|---:|
| cold build with --cache-to, empty store and registry (s) | $cold |
| build with --cache-from, empty store (s) | $remote |
| bytes fetched from the registry during that build | $fetched (layers: $LAYER_BYTES) |
| cold / remote-cache build | $(ratio "$cold" "$remote")× |
EOF
