#!/usr/bin/env bash
# Runs gantry's fuzz targets (fuzz/, its own cargo project) under AFL++ through cargo-afl, on
# stable Rust. Installs cargo-afl from crates.io when it is missing and builds its AFL++ once
# per toolchain. Not part of the test suite or CI. See FUZZING.md.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s each, every target)
#
# Findings and queues go to fuzz/out/<target>/ (not committed); each target resumes from its
# previous queue. At the end one line per target gives executions, run time, crashes and hangs
# (AFL++ counts them over every session of that output directory, resumed ones included); the
# exit status is 1 when anything crashed or hung. Reproduce a finding with
#   fuzz/target/release/replay TARGET fuzz/out/TARGET/default/crashes/id:...
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${1:-60}
shift || true
all=(tar_layer tar_archive tar_unpack oci_json reference www_authenticate docker_manifest)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

if ! cargo afl --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-afl" >&2
  cargo install --locked cargo-afl
fi
# Builds AFL++ and its LLVM runtime for this rustc; says so and fails when already built.
cargo afl config --build >/dev/null 2>&1 || true
cargo afl build --release

[ -d seeds ] || ./target/release/gen_seeds seeds

export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_AUTORESUME=1
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_SKIP_CRASHES=1
summary=()
status=0
for t in "${targets[@]}"; do
  [ -f "seeds/$t/$(ls "seeds/$t" | head -n1)" ] || { echo "fuzz.sh: no target $t" >&2; exit 2; }
  out="out/$t"
  mkdir -p "$out"
  echo "fuzz.sh: $t for ${secs}s" >&2
  GANTRY_FUZZ_SCRATCH="$PWD/$out/scratch" \
    cargo afl fuzz -i "seeds/$t" -o "$out" -V "$secs" -t 5000 -m none \
    "target/release/$t" >"$out/afl.log" 2>&1 || {
      echo "fuzz.sh: afl-fuzz failed for $t, see fuzz/$out/afl.log" >&2
      tail -n 20 "$out/afl.log" >&2
      exit 1
    }
  stats="$out/default/fuzzer_stats"
  get() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
  crashes=$(get saved_crashes)
  hangs=$(get saved_hangs)
  line="$t: $(get execs_done) execs in $(get run_time) s ($(get execs_per_sec)/s), $(get corpus_count) in corpus, edges $(get edges_found)/$(get total_edges), $crashes crashes, $hangs hangs"
  summary+=("$line")
  echo "fuzz.sh: $line" >&2
  if [ "${crashes:-0}" != 0 ] || [ "${hangs:-0}" != 0 ]; then
    status=1
  fi
done
printf '%s\n' "${summary[@]}"
exit $status
