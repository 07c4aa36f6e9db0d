#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS] [LIBFUZZER ARGS...] - build the libFuzzer target
# (test/fuzz/fuzz_load.c) in build-fuzz/ with clang, ASan and UBSan, and run
# it for SECONDS (default 60) on the seed corpus test/fuzz/corpus, keeping
# new inputs in build-fuzz/corpus.  Exits nonzero when the fuzzer finds a
# crash, leak, timeout or out-of-memory (its reproducer is left in
# build-fuzz/, named crash-*, leak-*, timeout-* or oom-*).
#
# Rerun one input:  build-fuzz/test/fuzz/fuzz_load build-fuzz/crash-...
# New seeds from real stores:  test/fuzz/make-corpus.sh (needs FUSE).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
secs=${1:-60}
[ $# -gt 0 ] && shift
dir=build-fuzz

if [ ! -f "$dir/build.ninja" ]; then
	CC=${FUZZ_CC:-clang} CFLAGS="-fsanitize=fuzzer-no-link" \
		meson setup "$dir" -Dfuzz=true -Db_sanitize=address,undefined \
		-Db_lundef=false -Dbuildtype=debugoptimized >/dev/null
fi
ninja -C "$dir" test/fuzz/fuzz_load >/dev/null

mkdir -p "$dir/corpus"
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:abort_on_error=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
cd "$dir"
./test/fuzz/fuzz_load -max_total_time="$secs" -timeout=20 \
	-rss_limit_mb=2048 -max_len=262144 -print_final_stats=1 \
	"$@" corpus "$top/test/fuzz/corpus"
