#!/usr/bin/env bash
# Benchmarks gantry against skopeo on a loopback distribution registry (Debian's
# docker-registry), in one run:
#   - push of a fresh ~700 MB image (7 incompressible 100 MB gzip layers) from an OCI layout,
#     `gantry push oci:…` vs `skopeo copy oci:… docker://…` (goal: gantry ≥ 1.5× faster);
#   - re-push of the same image, nothing new (goal: ≤ 0.2 s);
#   - pull by digest into an OCI layout, `gantry pull` vs `skopeo copy docker://… oci:…`;
#   - building a project on that image as a registry base: bytes fetched by a complete build
#     (`gantry build`: every base layer, once), by a shallow one (`gantry build --shallow`) and
#     by build-and-push (`gantry push` to the base's registry) (goal for the last two:
#     manifest + config only).
# Every push goes to a freshly emptied registry, so nothing is skipped or mounted.
# Prints a markdown table of medians of REPEAT runs (default 3) and the ratios.
#
#   scripts/bench-registry.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT=${REPEAT:-3}
LAYERS=${LAYERS:-7}
for t in docker-registry skopeo python3 /usr/bin/time curl; do
  command -v "$t" >/dev/null || { echo "bench-registry.sh: $t is missing" >&2; exit 1; }
done
cargo build --release --locked -p gantry >&2
G=$PWD/target/release/gantry
W=$(mktemp -d /var/tmp/gantry-bench-registry.XXXXXX)
REG_PID=
cleanup() { [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
export GANTRY_HOME=$W/home

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
HOST=127.0.0.1:$PORT
. scripts/lib/registry.sh
start_registry

# The image: LAYERS layers of 100 MB of random bytes each, built by gantry into a layout.
args=()
for i in $(seq "$LAYERS"); do
  head -c 100000000 /dev/urandom > "$W/blob$i"
  "$G" -q layer --file "/data/blob$i=$W/blob$i" --info "$W/l$i.json" >/dev/null
  args+=(--layer "$W/l$i.json")
done
"$G" -q image --platform linux/amd64 "${args[@]}" -o "$W/image" -t v1 >/dev/null
SIZE=$(du -sb "$W/image" | cut -f1)
echo "image: $LAYERS layers, $((SIZE / 1000000)) MB in the layout; $(nproc) CPUs" >&2

secs() { /usr/bin/time -f "%e" -o "$W/t" "$@" > /dev/null 2>"$W/err" || { cat "$W/err" >&2; exit 1; }; cat "$W/t"; }
median() { sort -n | sed -n "$(( (REPEAT + 1) / 2 ))p"; }
REPO=$HOST/bench/app
# Every push starts from an empty registry (storage wiped and the server restarted), so
# neither tool can skip or mount a blob. Loops run in this shell, not in $(…), so the
# registry's pid stays known to the cleanup trap.
: > "$W/gantry_push"; : > "$W/skopeo_push"
for _ in $(seq "$REPEAT"); do
  start_registry
  secs "$G" -q --insecure-registry "$HOST" push "oci:$W/image:v1" "$REPO:v1" >> "$W/gantry_push"
  start_registry
  secs skopeo copy -q --dest-tls-verify=false --preserve-digests "oci:$W/image:v1" "docker://$REPO:v1" >> "$W/skopeo_push"
done
gantry_push=$(median < "$W/gantry_push")
skopeo_push=$(median < "$W/skopeo_push")
start_registry
DIGEST=$("$G" -q --insecure-registry "$HOST" push "oci:$W/image:v1" "$REPO:v1" | sed 's/.*@//')
repush=$(for _ in $(seq "$REPEAT"); do secs "$G" -q --insecure-registry "$HOST" push "oci:$W/image:v1" "$REPO:v1"; done | median)
gantry_pull=$(for _ in $(seq "$REPEAT"); do
  rm -rf "$W/pulled" "$W/pull-home"
  GANTRY_HOME=$W/pull-home secs "$G" -q --insecure-registry "$HOST" pull "$REPO@$DIGEST" -o "oci:$W/pulled:v1"
done | median)
skopeo_pull=$(for _ in $(seq "$REPEAT"); do
  rm -rf "$W/pulled"
  secs skopeo copy -q --src-tls-verify=false --preserve-digests "docker://$REPO@$DIGEST" "oci:$W/pulled:v1"
done | median)

# Building on the image as a registry base, in an empty store: count the bytes the registry sent.
mkdir -p "$W/project/src"
echo app > "$W/project/src/app.txt"
cat > "$W/project/gantry.toml" <<EOF
[settings]
insecure-registries = ["$HOST"]

[pull.base]
repository = "$REPO"
digest = "$DIGEST"

[layer.app]
files = { "/app.txt" = "src/app.txt" }

[image.out]
base = "base"
platform = "linux/amd64"
layers = ["app"]
tags = ["$HOST/bench/out:v1"]
EOF
# Bytes the registry sent while `gantry ARGS…` ran in the project, with an empty store.
fetched_by() {
  local lines
  lines=$(wc -l < "$W/registry.log")
  rm -rf "$W/project-home" "$W/project/gantry-out"
  GANTRY_HOME=$W/project-home "$G" -q --insecure-registry "$HOST" "$@" -C "$W/project" >/dev/null
  tail -n +"$((lines + 1))" "$W/registry.log" | python3 -c '
import re, sys
total = 0
for l in sys.stdin:
    m = re.search(r"\"GET (\S+) HTTP/[0-9.]+\" 200 (\d+)", l)
    if m:
        total += int(m.group(2))
print(total)'
}
fetched_complete=$(fetched_by build)
fetched_shallow=$(fetched_by build --shallow)
fetched_push=$(fetched_by push)
manifest_config=$(python3 - "$W/image" <<'PY'
import json, os, sys
d = sys.argv[1]
idx = json.load(open(os.path.join(d, "index.json")))
m = idx["manifests"][0]
man = json.load(open(os.path.join(d, "blobs", "sha256", m["digest"].split(":")[1])))
print(m["size"] + man["config"]["size"])
PY
)

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
cat <<EOF
| work ($LAYERS × 100 MB layers, $((SIZE / 1000000)) MB) | wall (s) |
|---|---:|
| gantry push (empty registry) | $gantry_push |
| skopeo copy oci: → docker:// (empty registry) | $skopeo_push |
| gantry push, nothing new | $repush |
| gantry pull by digest → oci: (empty store) | $gantry_pull |
| skopeo copy docker://…@digest → oci: | $skopeo_pull |

| measure | value | goal |
|---|---:|---|
| skopeo push / gantry push | $(ratio "$skopeo_push" "$gantry_push") | ≥ 1.5 |
| re-push (s) | $repush | ≤ 0.2 |
| skopeo pull / gantry pull | $(ratio "$skopeo_pull" "$gantry_pull") | (context) |
| bytes fetched: complete build on the base (\`gantry build\`) | $fetched_complete | every base layer once ($SIZE bytes in the layout) |
| bytes fetched: shallow build (\`gantry build --shallow\`) | $fetched_shallow | manifest + config = $manifest_config |
| bytes fetched: build and push (\`gantry push\`) | $fetched_push | manifest + config = $manifest_config |
EOF
