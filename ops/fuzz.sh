#!/usr/bin/env bash
# Fuzzes the wire codec (chat-proto) with AFL++ through cargo-afl, on the stable toolchain.
#
#   ops/fuzz.sh [--seconds N] [--execs N] [--target T]...
#
#   --seconds N   fuzz each target for N seconds (default 60)
#   --execs N     instead, fuzz each target for about N executions (afl-fuzz -E)
#   --target T    only this target (may be repeated); default: every target in fuzz/corpus/
#
# Installs cargo-afl (the version fuzz/Cargo.lock pins for the afl crate) and protoc if missing,
# builds the targets into target/fuzz/, then runs the targets one after another, each on one
# core, seeded from fuzz/corpus/<target>/ (and fuzz/dict/<target>.dict if there is one).
# Outputs go to target/fuzz/out/<target>/ (FUZZ_OUT overrides target/fuzz/out), replaced on
# each run. Prints executions, speed, corpus size, crashes and hangs per target, and exits 1 if
# any target found a crash or a hang (or could not run). docs/fuzzing.md explains more.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

seconds=60
execs=""
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --execs) execs="$2"; shift 2 ;;
    --target) targets+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "fuzz: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ ${#targets[@]} -eq 0 ]; then
  for d in fuzz/corpus/*/; do targets+=("$(basename "$d")"); done
fi
for t in "${targets[@]}"; do
  [ -d "fuzz/corpus/$t" ] || { echo "fuzz: no target $t (no fuzz/corpus/$t/)" >&2; exit 2; }
done

# cargo-afl, the version of the afl crate in fuzz/Cargo.lock (installing it builds AFL++ too).
afl_version=$(awk '/^name = "afl"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' fuzz/Cargo.lock)
if [ "$(cargo afl --version 2>/dev/null | awk '{print $2}')" != "$afl_version" ]; then
  echo "fuzz: installing cargo-afl $afl_version (builds AFL++; a few minutes)"
  cargo install cargo-afl --locked --version "$afl_version"
fi
# AFL++ and its runtime are built per rustc version: build them again after a toolchain update.
if cargo afl fuzz -h 2>&1 | grep -q 'config --build'; then
  echo "fuzz: building AFL++ for this rustc"
  cargo afl config --build --force
fi
if ! command -v protoc >/dev/null 2>&1; then
  echo "fuzz: installing protobuf-compiler (chat-proto's build script runs protoc)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    protobuf-compiler >/dev/null
fi

# Its own target directory: the instrumented build never touches the workspace's target/debug.
export CARGO_TARGET_DIR="$root/target/fuzz"
cargo afl build --release --locked --features afl --manifest-path fuzz/Cargo.toml
bin="$CARGO_TARGET_DIR/release"
out="${FUZZ_OUT:-$root/target/fuzz/out}"
mkdir -p "$out"

# Non-interactive, in a container: no UI, no CPU governor or core-dump checks, no core pinning
# (other work shares the machine; one afl-fuzz uses one core).
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1
if [ -n "$execs" ]; then limit=(-E "$execs"); else limit=(-V "$seconds"); fi

stat_of() { awk -v k="$1" -F' *: *' '$1 == k { print $2 }' "$2"; }
failed=0
summary=()
for t in "${targets[@]}"; do
  dict=()
  [ -f "fuzz/dict/$t.dict" ] && dict=(-x "fuzz/dict/$t.dict")
  rm -rf "${out:?}/$t"
  if [ -n "$execs" ]; then what="about $execs executions"; else what="$seconds s"; fi
  echo "fuzz: $t ($what), output in $out/$t"
  start=$(date +%s)
  # -t: an input that takes over 500 ms is a hang (a decode takes microseconds).
  if ! cargo afl fuzz "${limit[@]}" -t 500 "${dict[@]}" -i "fuzz/corpus/$t" -o "$out/$t" \
      -- "$bin/$t" >"$out/$t.log" 2>&1; then
    echo "fuzz: afl-fuzz failed on $t; the end of $out/$t.log:" >&2
    tail -n 20 "$out/$t.log" >&2
    failed=1
    summary+=("$(printf '%-24s %s' "$t" 'afl-fuzz failed')")
    continue
  fi
  wall=$(($(date +%s) - start))
  s="$out/$t/default/fuzzer_stats"
  crashes=$(stat_of saved_crashes "$s")
  hangs=$(stat_of saved_hangs "$s")
  summary+=("$(printf '%-24s %12s %10s %8s %8s %8s %6s' "$t" "$(stat_of execs_done "$s")" \
    "$(stat_of execs_per_sec "$s")" "$(stat_of corpus_count "$s")" "$crashes" "$hangs" "$wall")")
  if [ "$crashes" != 0 ] || [ "$hangs" != 0 ]; then
    failed=1
    echo "fuzz: $t found $crashes crash(es) and $hangs hang(s):" >&2
    ls "$out/$t/default/crashes" "$out/$t/default/hangs" 2>/dev/null | grep -v README >&2 || true
    echo "fuzz: reproduce one with: $bin/$t < FILE (see docs/fuzzing.md)" >&2
  fi
done

echo
printf '%-24s %12s %10s %8s %8s %8s %6s\n' target execs execs/s corpus crashes hangs wall_s
printf '%s\n' "${summary[@]}"
if [ "$failed" != 0 ]; then
  echo "fuzz: FAILED" >&2
  exit 1
fi
echo "fuzz: ok"
