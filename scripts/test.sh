#!/usr/bin/env bash
# scripts/test.sh - the one test command: install what is missing, build,
# run the C unit tests (meson test) and the pytest integration suite.
#
#   scripts/test.sh [PYTEST ARGS...]
#
# By default runs the suite twice: a normal build in build/ with libfuse
# 3.17 built here (scripts/fetch-libfuse.sh; FUSE passthrough), then an
# AddressSanitizer+UBSan build in build-asan/ with the system's libfuse.
# The normal pass then runs the core data tests once more without the
# kernel's writeback cache.
#   COWFS_QUICK=1      normal build only
#   COWFS_SANITIZE=1   sanitizer build only
#   COWFS_BUILD=DIR    build directory of the normal build (default build)
#   COWFS_FUZZ_SECONDS=N  how long the loader is fuzzed at the end (60;
#                      0: not at all; never with COWFS_QUICK=1)
#   COWFS_MODEL_EXAMPLES, COWFS_CRASHLOOP_ROUNDS, COWFS_KILL_ROUNDS
#                      random rounds of the model and crash tests (25/40,
#                      20, 6); the sanitizer pass uses the *_ASAN variants
#                      (10, 8, 3): it is 3-4x slower per round
# Everything the suite mounts is unmounted on any exit; exits nonzero on any
# failure.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
# shellcheck source=scripts/lib.sh
. "$top/scripts/lib.sh"

py=/usr/bin/python3
quick=${COWFS_QUICK:-0}
sanitize=${COWFS_SANITIZE:-0}

work=$(mktemp -d /tmp/cowfs-test.XXXXXX)
chmod 755 "$work"
harness_trap "$work" 'rm -rf -- "$work"'

cowfs_install_deps

# The core data tests once more with -o nowriteback_cache (conftest.py
# reads COWFS_TEST_WRITEBACK): the suite's mounts use the kernel's
# writeback cache by default, and the synchronous write path must stay
# right too.  Fewer random examples: the main pass has the long runs.
NOWB_TESTS="test/test_ops.py test/test_model.py test/test_clone.py
test/test_clone_model.py test/test_enospc.py"

# run_suite NAME BUILDDIR [meson args...]  (called in an || list, so no
# set -e inside: every step checks its own status)
run_suite() {
	local name=$1 dir=$2 rc=0
	shift 2
	echo "=== $name: build ($dir)"
	cowfs_build "$dir" "$@" || return 1
	scripts/check-layers.sh "$dir" || rc=1
	echo "=== $name: unit tests"
	meson test -C "$dir" --print-errorlogs || rc=1
	echo "=== $name: integration tests"
	mkdir -p "$work/$name/mnt" || return 1
	chmod 755 "$work/$name" "$work/$name/mnt"
	COWFS_BIN="$top/$dir/cowfs" COWFS_MNT_ROOT="$work/$name/mnt" \
		"$py" -m pytest -q -p no:cacheprovider \
		--basetemp="$work/$name/tmp" "${pytest_args[@]}" test/ || rc=1
	if [ "$name" = normal ] && [ ${#pytest_args[@]} -eq 0 ]; then
		echo "=== $name: core data tests without the writeback cache"
		# shellcheck disable=SC2086
		COWFS_TEST_WRITEBACK=0 COWFS_MODEL_EXAMPLES=10 \
		COWFS_BIN="$top/$dir/cowfs" COWFS_MNT_ROOT="$work/$name/mnt" \
			"$py" -m pytest -q -p no:cacheprovider \
			--basetemp="$work/$name/tmp-nowb" $NOWB_TESTS || rc=1
	fi
	# Whatever a crashed test left mounted.
	if ! harness_cleanup_under "$work/$name"; then
		echo "$name: the suite left mounts behind" >&2
		rc=1
	fi
	return "$rc"
}

# Both libfuse paths run the whole suite: the normal pass with libfuse
# 3.17 built here (FUSE passthrough), the sanitizer pass with the system's
# (Debian 12: 3.14, no passthrough). Offline, the normal pass falls back
# to the system's.
normal_fuse=bundled
if ! scripts/fetch-libfuse.sh; then
	echo "test.sh: no bundled libfuse; the normal pass uses the system's" >&2
	normal_fuse=system
fi

pytest_args=("$@")
status=0
if [ "$sanitize" != 1 ]; then
	run_suite normal "${COWFS_BUILD:-build}" -Dlibfuse="$normal_fuse" ||
		status=1
fi
if [ "$quick" != 1 ] || [ "$sanitize" = 1 ]; then
	export ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:detect_leaks=1:strict_string_checks=1:check_initialization_order=1"
	export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
	# The sanitizer build is slower: fewer random examples.
	# the sanitizer pass runs every test, with fewer random rounds: the
	# normal pass covers the long random runs, this one the memory checks
	export COWFS_MODEL_EXAMPLES=${COWFS_MODEL_EXAMPLES_ASAN:-10}
	export COWFS_CRASHLOOP_ROUNDS=${COWFS_CRASHLOOP_ROUNDS_ASAN:-8}
	export COWFS_KILL_ROUNDS=${COWFS_KILL_ROUNDS_ASAN:-3}
	run_suite sanitize build-asan -Dlibfuse=system \
		-Db_sanitize=address,undefined -Db_lundef=false || status=1
fi
# The metadata loader under libFuzzer (clang, ASan+UBSan) for a short
# while; scripts/fuzz.sh SECONDS runs it for longer by hand.
if [ "$quick" != 1 ] && [ "${COWFS_FUZZ_SECONDS:-60}" -gt 0 ]; then
	echo "=== fuzz: the metadata loader, ${COWFS_FUZZ_SECONDS:-60} s"
	scripts/fuzz.sh "${COWFS_FUZZ_SECONDS:-60}" >"$work/fuzz.log" 2>&1 || {
		tail -n 40 "$work/fuzz.log" >&2
		echo "fuzz: FAILED (reproducer in build-fuzz/)" >&2
		status=1
	}
	grep -E '^(Done|stat::number_of_executed_units)' "$work/fuzz.log" || true
fi
if [ "$status" -ne 0 ]; then
	echo "scripts/test.sh: FAILED" >&2
else
	echo "scripts/test.sh: all suites passed"
fi
exit "$status"
