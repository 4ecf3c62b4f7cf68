#!/usr/bin/env bash
# Fuzzes every decoder of bytes that arrive from a peer, from disk or from
# a person (fuzz/fuzz_targets: messages, commits, membership logs,
# envelopes, device boxes, keyrings, welcomes, codes, invites and keys)
# with libFuzzer, through cargo fuzz on the stable toolchain
# (RUSTC_BOOTSTRAP=1 lets it pass the flags it needs).
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS per target: 10 by default (the smoke run of the test command);
# every target unless some are named. FUZZ_SANITIZER=address builds with
# AddressSanitizer (slower; the default, none, still checks every panic,
# overflow and assertion). Corpora grow in $FUZZ_CORPUS (default
# ~/.cache/persist-fuzz), seeded from the golden vectors; a crash is saved
# under fuzz/artifacts/<target>/ and fails the run: turn it into a
# regression test, then fix it.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/persist-target}"
export RUSTC_BOOTSTRAP=1
seconds="${1:-10}"
[ $# -gt 0 ] && shift
sanitizer="${FUZZ_SANITIZER:-none}"
corpus="${FUZZ_CORPUS:-$HOME/.cache/persist-fuzz}"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: building cargo-fuzz from crates.io; a few minutes on 2 cores"
  cargo install cargo-fuzz --version 0.13.2 --locked
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi
python3 scripts/fuzz-seeds.py tests/vectors/protocol-v2.txt "$corpus"
cargo fuzz build --sanitizer "$sanitizer"

for target in "${targets[@]}"; do
  mkdir -p "$corpus/$target"
  log=$(mktemp)
  if ! cargo fuzz run --sanitizer "$sanitizer" "$target" "$corpus/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz: $target FAILED (the input is under fuzz/artifacts/$target/)"
    exit 1
  fi
  runs=$(grep -o 'number_of_executed_units: *[0-9]*' "$log" | awk '{ print $2 }')
  features=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | awk '{ print $2 }')
  echo "fuzz: $target ok: ${runs:-?} inputs in ${seconds} s, ${features:-?} coverage features, corpus $(ls "$corpus/$target" | wc -l)"
  rm -f "$log"
done
