#!/usr/bin/env bash
# scripts/crashloop.sh [ROUNDS|--seconds S] [--seed S] [-v] ... - kill -9
# the cowfs daemon at random moments in a loop and check that everything
# fsync promised survives (test/crashloop.py; its docstring says what is
# checked).  Short by default (20 rounds, as in the pytest suite); long by
# hand:
#
#   scripts/crashloop.sh --seconds 3600 --seed 42 -v
#   COWFS_BIN=build-asan/cowfs scripts/crashloop.sh 200
#
# Needs a built cowfs (COWFS_BIN, default build/cowfs) and FUSE.  The last
# line printed is "crashloop: N rounds, B bytes verified in F files, ...".
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
bin=${COWFS_BIN:-$top/build/cowfs}
args=()
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then
	args+=(--rounds "$1")
	shift
fi
exec /usr/bin/python3 "$top/test/crashloop.py" --bin "$bin" "${args[@]}" "$@"
