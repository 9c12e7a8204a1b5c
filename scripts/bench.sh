#!/usr/bin/env bash
# Benchmarks gantry's layer builds against the usual pipelines on the same tree, in the same
# run: tar|gzip -6, tar|pigz -6 -p2, tar|zstd -3 -T2 and umoci repack. Prints the median wall
# time of REPEAT rounds (default 3), peak RSS and output size of each, and gantry's ratios.
#
#   scripts/bench.sh [TREE]        # default TREE: the CPython install
#
# The page cache is warmed first, so times compare CPU work, not cold reads. gantry fsyncs its
# blob (crash safety); the shell pipelines do not, which favours them slightly.
set -euo pipefail
cd "$(dirname "$0")/.."
TREE=${1:-$(python3 -c 'import sys; print(sys.base_prefix)')}
REPEAT=${REPEAT:-3}
for t in pigz zstd umoci gzip /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "bench.sh: $t is missing (apt-get install pigz zstd umoci time)" >&2; exit 1; }
done
cargo build --release --locked -p gantry >&2
G=$PWD/target/release/gantry
W=$(mktemp -d /var/tmp/gantry-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT

echo "tree: $TREE ($(du -sh "$TREE" | cut -f1), $(find "$TREE" | wc -l) entries); $(nproc) CPUs; REPEAT=$REPEAT" >&2
tar -C "$TREE" -cf - . | cat > /dev/null   # warm the page cache (GNU tar skips reads to /dev/null)

# measure NAME SETUP CMD: runs SETUP (untimed) then CMD, REPEAT times; records median wall,
# max RSS and the size of $W/out.
declare -A WALL RSS SIZE
measure() {
  local name=$1 setup=$2 cmd=$3 times=() rss=0
  for _ in $(seq "$REPEAT"); do
    rm -rf "$W/out" "$W/home"
    bash -c "$setup"
    /usr/bin/time -f "%e %M" -o "$W/time" bash -c "$cmd"
    read -r wall kb < "$W/time"
    times+=("$wall")
    (( kb > rss )) && rss=$kb
  done
  WALL[$name]=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(( (REPEAT + 1) / 2 ))p")
  RSS[$name]=$(( rss / 1024 ))
  SIZE[$name]=$(du -sb "$W/out" | cut -f1)
  printf '%-28s %8.2f s %6d MiB %12d bytes\n' "$name" "${WALL[$name]}" "${RSS[$name]}" "${SIZE[$name]}" >&2
}

gantry_layer() { # ARGS → a layer into a fresh store, the blob exported to $W/out
  echo "GANTRY_HOME=$W/home $G -q layer --dir /tree=$TREE $* -o $W/out --info $W/out.json > /dev/null"
}
measure "gantry gzip (level 6)" true "$(gantry_layer --compression gzip)"
measure "gantry gzip --level 4" true "$(gantry_layer --compression gzip --level 4)"
measure "gantry zstd (level 3)" true "$(gantry_layer --compression zstd)"
measure "tar | gzip -6" true "tar -C $TREE -cf - . | gzip -6 > $W/out"
measure "tar | pigz -6 -p2" true "tar -C $TREE -cf - . | pigz -6 -p2 > $W/out"
measure "tar | zstd -3 -T2" true "tar -C $TREE -cf - . | zstd -3 -T2 -q > $W/out"
# umoci repack of a bundle whose rootfs holds the tree (unpack and copy are not timed).
umoci_setup="rm -rf $W/layout $W/bundle && umoci init --layout $W/layout && umoci new --image $W/layout:t \
  && umoci unpack --image $W/layout:t $W/bundle >/dev/null && cp -a $TREE/. $W/bundle/rootfs/"
measure "umoci repack (gzip)" "$umoci_setup" "umoci repack --image $W/layout:t $W/bundle >/dev/null && mkdir $W/out \
  && find $W/layout/blobs -type f -size +1M -exec mv {} $W/out/ \;"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo
echo "| work | wall (s) | peak RSS (MiB) | output (bytes) |"
echo "|---|---:|---:|---:|"
for k in "gantry gzip (level 6)" "gantry gzip --level 4" "tar | gzip -6" "tar | pigz -6 -p2" "umoci repack (gzip)" \
         "gantry zstd (level 3)" "tar | zstd -3 -T2"; do
  printf '| %s | %.2f | %d | %d |\n' "$k" "${WALL[$k]}" "${RSS[$k]}" "${SIZE[$k]}"
done
echo
echo "| ratio | value | goal |"
echo "|---|---:|---|"
echo "| gantry gzip / tar\|pigz -6 -p2 | $(ratio "${WALL[gantry gzip (level 6)]}" "${WALL[tar | pigz -6 -p2]}") | ≤ 0.4 |"
echo "| gantry gzip --level 4 / tar\|pigz -6 -p2 | $(ratio "${WALL[gantry gzip --level 4]}" "${WALL[tar | pigz -6 -p2]}") | (context) |"
echo "| gantry gzip / tar\|gzip -6 | $(ratio "${WALL[gantry gzip (level 6)]}" "${WALL[tar | gzip -6]}") | |"
echo "| umoci repack / gantry gzip | $(ratio "${WALL[umoci repack (gzip)]}" "${WALL[gantry gzip (level 6)]}") | ≥ 4 |"
echo "| gantry zstd / tar\|zstd -3 -T2 | $(ratio "${WALL[gantry zstd (level 3)]}" "${WALL[tar | zstd -3 -T2]}") | ≤ 1.0 |"
echo "| gantry peak RSS (MiB) | $(( ${RSS[gantry gzip (level 6)]} > ${RSS[gantry zstd (level 3)]} ? ${RSS[gantry gzip (level 6)]} : ${RSS[gantry zstd (level 3)]} )) | ≤ 100 |"
