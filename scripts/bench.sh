#!/usr/bin/env bash
# scripts/bench.sh - benchmark cowfs side by side with the host filesystem,
# fuse-overlayfs and (where it mounts) kernel overlayfs.
#
#   scripts/bench.sh [--quick] [--out FILE] [--reps N] [--cowfs PATH]
#                    [--systems LIST] [--workloads LIST] [--keep]
#                    [--timeout SECS]
#
# Runs as root, non-interactively.  Every repetition runs each workload on
# each system in turn (interleaved, system order rotated per repetition,
# each on a fresh store / mount / directory), then prints one markdown
# table per workload: median seconds, MiB/s where it applies, ratio to the
# host and to fuse-overlayfs, and the raw runs.
#
# Workloads (--workloads, comma-separated; default all but scale):
#   io     a. sequential write of IO_SIZE (dd bs=1M conv=fsync from a
#             pregenerated random file held in the page cache)
#          b. cold read (sync + drop_caches first) and hot read (second read)
#   meta   c. create META_FILES files of 100 bytes, stat all (cold), delete
#   build  d. tar x of /usr/include, tar x of the project (cowfs source
#             tree), meson setup, ninja
#   clone  e. copies and clones of a gen-tree.sh tree (30 000 files, 1 GiB):
#             cp -a / cowfs clone / btrfs reflink copy / fuse-overlayfs cp -a,
#             4 KiB write+fsync into the 256 MiB file of the copy, cp of a
#             1 GiB file, clone by reference from the host tree, cold read
#             of the trees (tar cf - | cat); time and space growth.
#             `cowfs clone` rows only if `cowfs help clone` succeeds;
#             `mount --origin` rows only if `cowfs help mount` mentions it.
#   mem    f. (issue 8) daemon memory and saved metadata, cowfs only: a
#             store of MEM_FILES small files (cp -a into the mount) and
#             MEM_CLONES clones of them (1 000 000 inodes); daemon VmRSS per
#             inode after the clones, right after a remount and after
#             `find MNT`; STORE/cowfs.meta per inode after unmount; growth of
#             cowfs.meta per inode when a C30_FILES-file tree is cloned
#             (and the clone's time); VmRSS per inode of clones by reference
#             of BYREF_DIRS (/usr, /usr/include)
#   space  g. (issue 8) host space of small files, cowfs against the host:
#             du of STORE/objects after `cowfs detach` of a clone by
#             reference of a SPACE_FILES-file tree (1-20 KiB files), after
#             cp -a of the tree into the mount and after cp -a inside the
#             mount (copy_file_range), each against du of a host cp -a;
#             cowfs's own df/du/status figures beside du; the store growth
#             of a 4 KiB write into a clone of a SPACE_BIG file
#   speed  i. (issue 10) the rows of the issue 10 targets that io, meta
#             and clone do not have; every system starts from the same
#             inputs (a tree of TREE_FILES small files, a git repository of
#             GIT_SRC, the project, a SHARED_SIZE file): host cp -a's them,
#             cowfs cp -a's them into the mount and clones them, the
#             overlays have them as their lower layer.  fio 4 KiB random
#             read and write IOPS (psync, one job, FIO_SIZE file, FIO_SECS
#             s); cold and warm stat (find -printf %s) and ls -lR of the
#             tree; rm -rf of it; git status (first run after the copy,
#             cold, warm; must be clean); meson setup + ninja in the copy;
#             FW_WRITES first 4 KiB write+fsync into distinct untouched
#             blocks of a cloned file, then the same offsets again
#             (median ms of each).  The report ends with a table of every
#             issue 10 figure, its target, and whether cowfs meets it.
#   scale  h. (issue 8) 10 000 000 inodes: SCALE_FILES small files and
#             SCALE_CLONES clones; time to build, unmount (final
#             checkpoint), mount, `find MNT | wc -l`, clone the whole
#             store's tree once more; RSS.  Minutes and GBs: not in the
#             default list, run it with --workloads scale.
# Systems (--systems; default all that work here): host, cowfs,
#   fuse-overlayfs, overlayfs.  The clone workload adds btrfs (a sparse
#   loop-mounted image) when mkfs.btrfs is installed.
#
# Options:
#   --quick          smoke run: 64 MiB instead of 1 GiB, 1000 files, a
#                    1000-file tree, /usr/include/linux as the tarball,
#                    an unoptimised build, 1 repetition; about a minute.
#                    mem: 2000 files + 19 clones, /usr/include and
#                    /usr/include/linux; space: 1000 files; scale: 2000
#                    files + 9 clones; speed: 64 MiB fio file for 3 s,
#                    /usr/include/linux as the repository, a 16 MiB
#                    shared file, 50 first writes
#   --out FILE       also write the report to FILE
#   --reps N         repetitions (default $BENCH_REPS or 3; 1 with --quick)
#   --cowfs PATH     the cowfs binary (default $COWFS_BIN, else
#                    TOP/build/cowfs, else /tmp/bbuild/cowfs)
#   --keep           keep the work directory
#   --timeout SECS   limit for one timed step (default 900; 30 quick); a
#                    FUSE step that runs over it counts as a hang: the
#                    connection is aborted and the daemon killed
#
# Environment: BENCH_REPS, BENCH_DIR (parent of the work directory
# cowfs-bench.XXXX; default /var/tmp), COWFS_BIN, BENCH_COWFS_OPTS (extra
# -o options for every cowfs mount), BENCH_IO_SIZE, BENCH_META_FILES,
# BENCH_TREE_FILES, BENCH_TREE_SIZE, BENCH_BIGFILE_SIZE, BENCH_UNPACK_SRC
# (directory to tar for the unpack step), BENCH_PROJECT_SRC (meson project
# to unpack and build; default this checkout), BENCH_MEM_FILES,
# BENCH_MEM_CLONES, BENCH_C30_FILES, BENCH_BYREF_DIRS (space-separated),
# BENCH_SPACE_FILES, BENCH_SPACE_BIG, BENCH_SCALE_FILES, BENCH_SCALE_CLONES,
# BENCH_FIO_SIZE, BENCH_FIO_SECS, BENCH_GIT_SRC (directory committed as the
# git repository; default the unpack directory), BENCH_SHARED_SIZE,
# BENCH_FW_WRITES.
#
# Everything mounted under the work directory is unmounted, loop devices
# are detached and the work directory is removed on exit, failure, or
# Ctrl-C.  Space is measured with du --block-size=1 of the backing store
# (cowfs store dir, overlay upper dir, btrfs image file, host dir) after
# fsync of the touched files and a global sync.
set -uo pipefail
export LC_ALL=C

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=${0##*/}

usage() {
	sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$0" >&2
	exit "${1:-2}"
}
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- options
QUICK=0
OUT=""
REPS=""
KEEP=0
STEP_TIMEOUT=""
SYSTEMS_ARG=""
WORKLOADS_ARG="io,meta,build,clone,speed,mem,space"
COWFS=${COWFS_BIN:-}
while [ $# -gt 0 ]; do
	case $1 in
	--quick) QUICK=1; shift ;;
	--out) OUT=$2; shift 2 ;;
	--out=*) OUT=${1#*=}; shift ;;
	--reps) REPS=$2; shift 2 ;;
	--reps=*) REPS=${1#*=}; shift ;;
	--cowfs) COWFS=$2; shift 2 ;;
	--cowfs=*) COWFS=${1#*=}; shift ;;
	--systems) SYSTEMS_ARG=$2; shift 2 ;;
	--systems=*) SYSTEMS_ARG=${1#*=}; shift ;;
	--workloads) WORKLOADS_ARG=$2; shift 2 ;;
	--workloads=*) WORKLOADS_ARG=${1#*=}; shift ;;
	--keep) KEEP=1; shift ;;
	--timeout) STEP_TIMEOUT=$2; shift 2 ;;
	--timeout=*) STEP_TIMEOUT=${1#*=}; shift ;;
	-h | --help) usage 0 ;;
	*) log "unknown argument: $1"; usage ;;
	esac
done

[ "$(id -u)" -eq 0 ] || die "must run as root (mounts, drop_caches, loop devices)"

if [ -z "$REPS" ]; then
	if [ "$QUICK" = 1 ]; then REPS=1; else REPS=${BENCH_REPS:-3}; fi
fi
case $REPS in '' | *[!0-9]* | 0) die "bad repetition count '$REPS'" ;; esac

if [ "$QUICK" = 1 ]; then
	IO_SIZE=${BENCH_IO_SIZE:-64M}
	META_FILES=${BENCH_META_FILES:-1000}
	TREE_FILES=${BENCH_TREE_FILES:-1000}
	TREE_SIZE=${BENCH_TREE_SIZE:-64M}
	BIGFILE_SIZE=${BENCH_BIGFILE_SIZE:-64M}
	UNPACK_SRC=${BENCH_UNPACK_SRC:-/usr/include/linux}
	MESON_ARGS=(-Dbuildtype=plain -Dwerror=false)
	STEP_TIMEOUT=${STEP_TIMEOUT:-30}
	BTRFS_IMG_SIZE=2G
	MEM_FILES=${BENCH_MEM_FILES:-2000}
	MEM_CLONES=${BENCH_MEM_CLONES:-19}
	C30_FILES=${BENCH_C30_FILES:-1000}
	BYREF_DIRS=${BENCH_BYREF_DIRS:-/usr/include /usr/include/linux}
	SPACE_FILES=${BENCH_SPACE_FILES:-1000}
	SPACE_BIG=${BENCH_SPACE_BIG:-16M}
	SCALE_FILES=${BENCH_SCALE_FILES:-2000}
	SCALE_CLONES=${BENCH_SCALE_CLONES:-9}
	FIO_SIZE=${BENCH_FIO_SIZE:-64M}
	FIO_SECS=${BENCH_FIO_SECS:-3}
	SHARED_SIZE=${BENCH_SHARED_SIZE:-16M}
	FW_WRITES=${BENCH_FW_WRITES:-50}
else
	IO_SIZE=${BENCH_IO_SIZE:-1G}
	META_FILES=${BENCH_META_FILES:-10000}
	TREE_FILES=${BENCH_TREE_FILES:-30000}
	TREE_SIZE=${BENCH_TREE_SIZE:-1G}
	BIGFILE_SIZE=${BENCH_BIGFILE_SIZE:-1G}
	UNPACK_SRC=${BENCH_UNPACK_SRC:-/usr/include}
	MESON_ARGS=(-Dwerror=false)
	STEP_TIMEOUT=${STEP_TIMEOUT:-900}
	BTRFS_IMG_SIZE=8G
	MEM_FILES=${BENCH_MEM_FILES:-50000}
	MEM_CLONES=${BENCH_MEM_CLONES:-19}
	C30_FILES=${BENCH_C30_FILES:-30000}
	BYREF_DIRS=${BENCH_BYREF_DIRS:-/usr /usr/include}
	SPACE_FILES=${BENCH_SPACE_FILES:-20000}
	SPACE_BIG=${BENCH_SPACE_BIG:-256M}
	SCALE_FILES=${BENCH_SCALE_FILES:-100000}
	SCALE_CLONES=${BENCH_SCALE_CLONES:-99}
	FIO_SIZE=${BENCH_FIO_SIZE:-512M}
	FIO_SECS=${BENCH_FIO_SECS:-10}
	SHARED_SIZE=${BENCH_SHARED_SIZE:-256M}
	FW_WRITES=${BENCH_FW_WRITES:-200}
fi
PROJECT_SRC=${BENCH_PROJECT_SRC:-$TOP}
GIT_SRC=${BENCH_GIT_SRC:-$UNPACK_SRC}

to_bytes() {
	local s=$1 n m=1
	case $s in
	*[kK]) m=1024; n=${s%?} ;;
	*[mM]) m=$((1024 * 1024)); n=${s%?} ;;
	*[gG]) m=$((1024 * 1024 * 1024)); n=${s%?} ;;
	*) n=$s ;;
	esac
	case $n in '' | *[!0-9]*) die "bad size '$s'" ;; esac
	echo $((n * m))
}
IO_BYTES=$(to_bytes "$IO_SIZE")
BIGFILE_BYTES=$(to_bytes "$BIGFILE_SIZE")
SPACE_BIG_BYTES=$(to_bytes "$SPACE_BIG")
FIO_BYTES=$(to_bytes "$FIO_SIZE")
SHARED_BYTES=$(to_bytes "$SHARED_SIZE")
for n in "$MEM_FILES" "$MEM_CLONES" "$C30_FILES" "$SPACE_FILES" "$SCALE_FILES" "$SCALE_CLONES" \
	"$TREE_FILES" "$FIO_SECS" "$FW_WRITES"; do
	case $n in '' | *[!0-9]* | 0) die "bad file or clone count '$n'" ;; esac
done

if [ -z "$COWFS" ]; then
	for c in "$TOP/build/cowfs" /tmp/bbuild/cowfs; do
		[ -x "$c" ] && { COWFS=$c; break; }
	done
fi
[ -n "$COWFS" ] && [ -x "$COWFS" ] ||
	die "no cowfs binary (build it, then pass --cowfs PATH or COWFS_BIN)"
COWFS=$(realpath -- "$COWFS")

IFS=, read -r -a WORKLOADS <<<"$WORKLOADS_ARG"
for w in "${WORKLOADS[@]}"; do
	case $w in io | meta | build | clone | speed | mem | space | scale) ;; *) die "unknown workload '$w'" ;; esac
done
has_workload() {
	local w
	for w in "${WORKLOADS[@]}"; do [ "$w" = "$1" ] && return 0; done
	return 1
}

for t in timeout dd tar find du sync python3 fusermount3; do
	command -v "$t" >/dev/null || die "$t not found"
done
if has_workload speed; then
	for t in fio git meson ninja; do
		command -v "$t" >/dev/null || die "$t not found (the speed workload needs it; scripts/lib.sh installs it)"
	done
fi

# ---------------------------------------------------------------- work dir
PARENT=${BENCH_DIR:-/var/tmp}
mkdir -p -- "$PARENT" || die "cannot create $PARENT"
W=$(mktemp -d "$PARENT/cowfs-bench.XXXX") || die "mktemp in $PARENT failed"
W=$(realpath -- "$W")
mkdir -p "$W/logs"
RES=$W/results.tsv
FAILS=$W/failures.md
NOTES=$W/notes.md
: >"$RES"
: >"$FAILS"
FIGS=$W/figures.tsv	# issue 8 figures: group, name, rep, value, unit, target
: >"$FIGS"
: >"$NOTES"
CUR_PID=""
STEP_NO=0

# ---------------------------------------------------------------- cleanup
mounts_under() {	# mount points at or under $1, deepest first: "mnt<TAB>fstype<TAB>dev"
	local dir=$1 _a _b dev _r m _rest fstype info
	# read whole, then split: read(1) straight from mountinfo seeks back
	# after each line, and a mount gone meanwhile shifts the next line
	# (scripts/lib.sh, harness_all_mounts)
	info=$(</proc/self/mountinfo) || return 1
	while read -r _a _b dev _r m _rest; do
		m=$(printf '%b' "$m")
		fstype=${_rest#* - }
		fstype=${fstype%% *}
		case $m in
		"$dir" | "$dir"/*) printf '%s\t%s\t%s\n' "$m" "$fstype" "$dev" ;;
		esac
	done <<<"$info" | sort -r
}

is_mounted() {
	local want=$1 m
	while IFS=$'\t' read -r m _; do
		[ "$m" = "$want" ] && return 0
	done < <(mounts_under "$want")
	return 1
}

fuse_abort() {	# fuse_abort DEV(major:minor)
	local minor=${1#*:}
	[ -d /sys/fs/fuse/connections ] || return 0
	if [ ! -e "/sys/fs/fuse/connections/$minor" ]; then
		mount -t fusectl fusectl /sys/fs/fuse/connections 2>/dev/null || true
	fi
	[ -w "/sys/fs/fuse/connections/$minor/abort" ] &&
		echo 1 >"/sys/fs/fuse/connections/$minor/abort" 2>/dev/null
	return 0
}

force_umount() {	# force_umount MNT FSTYPE DEV
	local m=$1 fstype=$2 dev=$3
	case $fstype in
	fuse.cowfs)
		timeout 60 "$COWFS" umount "$m" >/dev/null 2>&1 ;;
	fuse*)
		timeout 30 fusermount3 -u "$m" >/dev/null 2>&1 ;;
	*)
		timeout 60 umount "$m" >/dev/null 2>&1 ;;
	esac
	is_mounted "$m" || return 0
	force_umount_now "$m" "$fstype" "$dev"
}

# No polite attempt: abort a FUSE connection (a hung daemon never answers),
# then detach lazily.
force_umount_now() {
	local m=$1 fstype=$2 dev=$3
	case $fstype in
	fuse*)
		fuse_abort "$dev"
		timeout 10 fusermount3 -u -z "$m" >/dev/null 2>&1 ;;
	esac
	is_mounted "$m" && umount -l "$m" >/dev/null 2>&1
	! is_mounted "$m"
}

# PIDs of cowfs daemons serving STORE (matched on their exact arguments).
daemon_pids() {
	local store=$1 p args
	for p in /proc/[0-9]*; do
		args=$({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null)
		case " $args" in
		*" mount "*" $store "*) printf '%s\n' "${p#/proc/}" ;;
		esac
	done
}
DAEMON_PIDS=()
kill_daemons() {	# kill -KILL our daemons that are still alive after 10 s
	local p
	for p in "${DAEMON_PIDS[@]}"; do
		for _ in $(seq 1 100); do
			kill -0 "$p" 2>/dev/null || break
			sleep 0.1
		done
		kill -0 "$p" 2>/dev/null || continue
		log "killing cowfs daemon $p (did not exit)"
		kill -KILL "$p" 2>/dev/null
	done
	DAEMON_PIDS=()
}

detach_loops() {
	local dev back
	command -v losetup >/dev/null || return 0
	while read -r dev back; do
		case $back in
		"$W"/*) losetup -d "$dev" 2>/dev/null || log "cannot detach $dev" ;;
		esac
	done < <(losetup -n -l -O NAME,BACK-FILE 2>/dev/null)
}

cleanup_all() {
	local m fstype dev left=0 try
	for try in 1 2 3; do
		while IFS=$'\t' read -r m fstype dev; do
			log "cleanup: unmounting $m ($fstype)"
			force_umount "$m" "$fstype" "$dev" || log "cleanup: $m still mounted"
		done < <(mounts_under "$W")
		[ -z "$(mounts_under "$W")" ] && break
		sleep "$try"
	done
	kill_daemons
	detach_loops
	[ -n "$(mounts_under "$W")" ] && left=1
	if [ "$KEEP" = 1 ]; then
		log "work directory kept: $W"
	elif [ "$left" = 1 ]; then
		log "something is still mounted under $W; not removing it"
	else
		rm -rf --one-file-system -- "$W"
	fi
}

on_exit() {
	local rc=$?
	trap - EXIT
	trap '' INT TERM HUP	# let the cleanup finish
	if [ -n "$CUR_PID" ]; then
		kill -TERM "$CUR_PID" 2>/dev/null
		for _ in $(seq 1 50); do
			kill -0 "$CUR_PID" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$CUR_PID" 2>/dev/null
	fi
	cleanup_all
	exit "$rc"
}
trap on_exit EXIT
trap 'log "interrupted"; exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---------------------------------------------------------------- helpers
COLD_OK=1
drop_caches() {
	sync
	if [ "$COLD_OK" = 1 ]; then
		echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || {
			COLD_OK=0
			echo "- /proc/sys/vm/drop_caches is not writable: 'cold' runs are not cold." >>"$NOTES"
		}
	fi
}

rec() {	# rec GROUP PHASE SYSTEM KIND REP VALUE BYTES
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RES"
}

# Workload functions: they run in a child bash (exported) under timeout.
w_write() { dd if="$1" of="$2" bs=1M conv=fsync status=none; }
w_read() { dd if="$1" of=/dev/null bs=1M status=none; }
w_meta_create() {
	local d=$1 n=$2 i data
	data=$(printf '%0100d' 0)
	mkdir "$d" || return 1
	for ((i = 0; i < n; i++)); do
		printf '%s' "$data" >"$d/f$i" || return 1
	done
}
w_meta_stat() {
	local got
	got=$(find "$1" -type f -printf '%s\n' | wc -l)
	[ "$got" -eq "$2" ] || { echo "stat: found $got files, want $2" >&2; return 1; }
}
w_meta_delete() { rm -rf -- "$1" && [ ! -e "$1" ]; }
w_untar() { mkdir -p "$2" && tar -xf "$1" -C "$2"; }
w_meson() { local src=$1 bld=$2; shift 2; meson setup "$@" "$bld" "$src" >/dev/null; }
w_ninja() { ninja -C "$1" >/dev/null; }
w_cp_a() { cp -a "$1" "$2" && sync; }
w_cp_reflink() { cp -a --reflink=always "$1" "$2" && sync; }
w_clone() { "$COWFS" clone "$1" "$2" && sync; }
w_cp_file() { cp "$1" "$2" && sync "$2"; }
w_write4k() {	# FILE OFFSET_BLOCKS RANDFILE
	dd if="$3" of="$1" bs=4096 count=1 seek="$2" conv=notrunc,fsync status=none
}
w_tar_read() { tar -C "$1" -cf - . | cat >/dev/null; }
export -f w_write w_read w_meta_create w_meta_stat w_meta_delete w_untar \
	w_meson w_ninja w_cp_a w_cp_reflink w_clone w_cp_file w_write4k w_tar_read
export COWFS CCACHE_DISABLE=1

# Current system run (set by sys_up).
SYS=""; SYS_ROOT=""; SYS_D=""; SYS_MNT=""; SYS_SPACE=""; SYS_LOG=""
SYS_SETUP=""; SYS_DEAD=0; SYS_DAEMON=""; REP=0; GROUP=""
SYS_STORE0=""; SYS_MOUNT_SECS=""

sys_alive() {
	[ -z "$SYS_MNT" ] && return 0
	is_mounted "$SYS_MNT" && timeout 20 stat -- "$SYS_MNT/." >/dev/null 2>&1
}

# step PHASE SYSTEM-LABEL BYTES FUNC ARGS...: time FUNC ARGS in a child,
# record the result (or FAIL with a reproducer).  STEP_KIND=aux step ...
# records a step that only sets up or runs a measurement whose figures are
# recorded otherwise: its time is in no table.
step() {
	local phase=$1 label=$2 bytes=$3 tf lf rc t secs kind=${STEP_KIND:-time}
	shift 3
	STEP_NO=$((STEP_NO + 1))
	tf=$W/logs/step-$STEP_NO.time
	lf=$W/logs/step-$STEP_NO.log
	if [ "$SYS_DEAD" = 1 ]; then
		rec "$GROUP" "$phase" "$label" "$kind" "$REP" SKIP "$bytes"
		return 1
	fi
	log "rep $REP/$REPS  $GROUP  $label: $phase"
	sync
	timeout -k 10 "$STEP_TIMEOUT" bash -c '
		set -o pipefail
		f=$1; shift
		t0=$EPOCHREALTIME
		"$@" || exit $?
		t1=$EPOCHREALTIME
		printf "%s %s\n" "$t0" "$t1" >"$f"' _ "$tf" "$@" \
		</dev/null >"$lf" 2>&1 &
	CUR_PID=$!
	wait "$CUR_PID" 2>/dev/null	# no "Killed" job notice on a timeout
	rc=$?
	CUR_PID=""
	if [ "$rc" = 0 ] && [ -s "$tf" ]; then
		read -r t secs <"$tf"
		secs=$(awk -v a="$t" -v b="$secs" 'BEGIN { printf "%.6f", b - a }')
		rec "$GROUP" "$phase" "$label" "$kind" "$REP" "$secs" "$bytes"
		return 0
	fi
	rec "$GROUP" "$phase" "$label" "$kind" "$REP" FAIL "$bytes"
	fail_report "$phase" "$label" "$rc" "$lf" "$@"
	return 1
}

fail_report() {
	local phase=$1 label=$2 rc=$3 lf=$4 alive=yes f
	shift 4
	if [ -n "$SYS_MNT" ] && { [ "$rc" = 124 ] || [ "$rc" = 137 ]; }; then
		alive="NO (the step hung)"
		SYS_DEAD=1
	elif ! sys_alive; then
		alive="NO (daemon dead or hung)"
		SYS_DEAD=1
	fi
	{
		printf '\n#### FAIL: %s / %s on %s (rep %s)\n\n' "$GROUP" "$phase" "$label" "$REP"
		printf -- '- exit status %s%s\n' "$rc" \
			"$([ "$rc" = 124 ] && echo " (timed out after ${STEP_TIMEOUT}s)")"
		printf -- '- mount still answers after the failure: %s\n\n' "$alive"
		printf 'Reproducer (as run by bench.sh):\n\n```sh\n'
		printf '%s\n' "$SYS_SETUP"
		for f in "$@"; do
			case $f in w_*) declare -f "$f" ;; esac
		done
		printf '%q ' "$@"
		printf '\n```\n\nStep output (tail):\n\n```\n'
		tail -n 20 -- "$lf" 2>/dev/null
		printf '```\n'
		if [ -n "$SYS_LOG" ] && [ -s "$SYS_LOG" ]; then
			printf '\nDaemon log (tail):\n\n```\n'
			tail -n 30 -- "$SYS_LOG"
			printf '```\n'
		fi
		if [ "$SYS_DEAD" = 1 ] && [ -n "$SYS_DAEMON" ] && kill -0 "$SYS_DAEMON" 2>/dev/null; then
			printf '\nDaemon pid %s at %s%% CPU' "$SYS_DAEMON" "$(ps -o pcpu= -p "$SYS_DAEMON" | tr -d ' ')"
			if command -v gdb >/dev/null; then
				printf '; its threads (gdb):\n\n```\n'
				timeout 60 gdb -p "$SYS_DAEMON" -batch -ex 'thread apply all bt 8' 2>/dev/null |
					grep -E '^(Thread|#[0-9])' | grep -vE 'start_thread|clone3|libfuse3' | head -n 60
				printf '```\n'
			else
				printf '\n'
			fi
		fi
	} >>"$FAILS"
	log "FAILED: $GROUP / $phase on $label (rc $rc); see report"
}

# space PATH-TO-FSYNC...: fsync the given files/dirs, sync, print the
# bytes used by the current system's backing store.
space() {
	local p
	if [ "$SYS_DEAD" = 1 ]; then echo FAIL; return; fi
	for p in "$@"; do
		[ -e "$p" ] && timeout 60 sync -- "$p" 2>/dev/null
	done
	sync
	du -s --block-size=1 -- "$SYS_SPACE" 2>/dev/null | cut -f1
}

rec_space() {	# rec_space PHASE LABEL BEFORE AFTER
	local v=FAIL
	case "$3$4" in *FAIL* | "") ;; *) v=$(($4 - $3)) ;; esac
	[ "$SYS_DEAD" = 1 ] && v=FAIL
	rec "$GROUP" "$1" "$2" space "$REP" "$v" ""
}

# sys_up SYSTEM [LOWER|ORIGIN]: fresh instance of SYSTEM under the work dir.
sys_up() {
	local sys=$1 lower=${2:-} opts dev t0 t1
	SYS=$sys
	SYS_ROOT=$W/r$REP-$GROUP-$sys
	SYS_D=""; SYS_MNT=""; SYS_SPACE=""; SYS_LOG=""; SYS_DEAD=0; SYS_DAEMON=""
	rm -rf --one-file-system -- "$SYS_ROOT"
	mkdir -p -- "$SYS_ROOT"
	case $sys in
	host)
		mkdir "$SYS_ROOT/fs"
		SYS_D=$SYS_ROOT/fs
		SYS_SPACE=$SYS_D
		SYS_SETUP="mkdir $SYS_D; cd $SYS_D"
		;;
	cowfs | cowfs-origin)
		SYS_MNT=$SYS_ROOT/mnt
		SYS_LOG=$SYS_ROOT/daemon.log
		SYS_SPACE=$SYS_ROOT/store
		mkdir "$SYS_MNT"
		opts="logfile=$SYS_LOG${BENCH_COWFS_OPTS:+,$BENCH_COWFS_OPTS}"
		if [ "$sys" = cowfs-origin ]; then
			SYS_SETUP="$COWFS init $SYS_SPACE && $COWFS mount --origin $lower -o $opts $SYS_SPACE $SYS_MNT"
		else
			SYS_SETUP="$COWFS init $SYS_SPACE && $COWFS mount -o $opts $SYS_SPACE $SYS_MNT"
		fi
		if ! timeout 60 "$COWFS" init "$SYS_SPACE" >"$SYS_ROOT/init.log" 2>&1; then
			log "cowfs init failed: $(tail -n 3 "$SYS_ROOT/init.log")"
			return 1
		fi
		SYS_STORE0=$(du -s --block-size=1 -- "$SYS_SPACE" | cut -f1)
		t0=$EPOCHREALTIME
		if [ "$sys" = cowfs-origin ]; then
			timeout 60 "$COWFS" mount --origin "$lower" -o "$opts" "$SYS_SPACE" "$SYS_MNT" \
				>"$SYS_ROOT/mount.log" 2>&1
		else
			timeout 60 "$COWFS" mount -o "$opts" "$SYS_SPACE" "$SYS_MNT" \
				>"$SYS_ROOT/mount.log" 2>&1
		fi || {
			log "cowfs mount failed: $(tail -n 3 "$SYS_ROOT/mount.log")"
			return 1
		}
		t1=$EPOCHREALTIME
		SYS_MOUNT_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", b - a }')
		is_mounted "$SYS_MNT" || { log "cowfs mount returned but $SYS_MNT is not mounted"; return 1; }
		SYS_DAEMON=$(daemon_pids "$SYS_SPACE" | head -n 1)
		[ -n "$SYS_DAEMON" ] && DAEMON_PIDS+=("$SYS_DAEMON")
		SYS_D=$SYS_MNT
		;;
	fuse-overlayfs | overlayfs)
		mkdir "$SYS_ROOT/upper" "$SYS_ROOT/work" "$SYS_ROOT/mnt"
		if [ -z "$lower" ]; then
			lower=$SYS_ROOT/lower
			mkdir "$lower"
		fi
		SYS_MNT=$SYS_ROOT/mnt
		SYS_SPACE=$SYS_ROOT/upper
		opts="lowerdir=$lower,upperdir=$SYS_ROOT/upper,workdir=$SYS_ROOT/work"
		if [ "$sys" = fuse-overlayfs ]; then
			SYS_SETUP="fuse-overlayfs -o $opts $SYS_MNT"
			timeout 60 fuse-overlayfs -o "$opts" "$SYS_MNT" >"$SYS_ROOT/mount.log" 2>&1
		else
			SYS_SETUP="mount -t overlay overlay -o $opts $SYS_MNT"
			timeout 60 mount -t overlay overlay -o "$opts" "$SYS_MNT" >"$SYS_ROOT/mount.log" 2>&1
		fi || { log "$sys mount failed: $(tail -n 3 "$SYS_ROOT/mount.log")"; return 1; }
		SYS_D=$SYS_MNT
		;;
	btrfs)
		SYS_MNT=$SYS_ROOT/mnt
		SYS_SPACE=$SYS_ROOT/btrfs.img
		mkdir "$SYS_MNT"
		truncate -s "$BTRFS_IMG_SIZE" "$SYS_SPACE" &&
			mkfs.btrfs -q -f "$SYS_SPACE" >"$SYS_ROOT/mkfs.log" 2>&1 &&
			dev=$(losetup -f --show "$SYS_SPACE") || {
			log "btrfs image setup failed"
			return 1
		}
		SYS_SETUP="truncate -s $BTRFS_IMG_SIZE IMG; mkfs.btrfs -q -f IMG; mount \$(losetup -f --show IMG) $SYS_MNT"
		mount "$dev" "$SYS_MNT" || { log "btrfs mount failed"; return 1; }
		SYS_D=$SYS_MNT
		;;
	*) die "unknown system $sys" ;;
	esac
	return 0
}

sys_down() {
	local m fstype dev
	if [ -n "$SYS_MNT" ] && is_mounted "$SYS_MNT"; then
		while IFS=$'\t' read -r m fstype dev; do
			if [ "$SYS_DEAD" = 1 ]; then
				force_umount_now "$m" "$fstype" "$dev"
			else
				force_umount "$m" "$fstype" "$dev"
			fi || log "cannot unmount $m"
		done < <(mounts_under "$SYS_MNT")
	fi
	if [ -n "$SYS_DAEMON" ]; then
		for _ in $(seq 1 100); do
			kill -0 "$SYS_DAEMON" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$SYS_DAEMON" 2>/dev/null; then
			log "cowfs daemon $SYS_DAEMON still running after unmount; killing it"
			echo "- rep $REP $GROUP: the cowfs daemon (pid $SYS_DAEMON) did not exit after unmount and was killed." >>"$NOTES"
			kill -KILL "$SYS_DAEMON" 2>/dev/null
		fi
		DAEMON_PIDS=()
	fi
	if [ "$SYS" = btrfs ]; then
		detach_loops
	fi
	if [ -n "$SYS_LOG" ] && [ -s "$SYS_LOG" ]; then
		cp -- "$SYS_LOG" "$W/logs/daemon-r$REP-$GROUP-$SYS.log" 2>/dev/null
	fi
	if [ -z "$(mounts_under "$SYS_ROOT")" ]; then
		rm -rf --one-file-system -- "$SYS_ROOT"
	fi
	SYS_MNT=""
}

# A failed setup records FAIL for the system's phases via SYS_DEAD.
sys_up_or_dead() {
	if ! sys_up "$@"; then
		SYS_DEAD=1
		{
			printf '\n#### FAIL: setting up %s for %s (rep %s)\n\n```sh\n%s\n```\n\n```\n' \
				"$1" "$GROUP" "$REP" "$SYS_SETUP"
			for f in "$SYS_ROOT"/*.log; do
				[ -s "$f" ] && { printf -- '--- %s\n' "${f##*/}"; tail -n 20 -- "$f"; }
			done
			printf '```\n'
		} >>"$FAILS" 2>/dev/null
		return 1
	fi
	return 0
}

rotate() {	# rotate N WORDS...: print WORDS rotated left by N
	local n=$1
	shift
	local a=("$@") i len=$#
	for ((i = 0; i < len; i++)); do
		printf '%s\n' "${a[$(((i + n) % len))]}"
	done
}

# ---------------------------------------------------------------- probes
HOSTFS=$(findmnt -n -o FSTYPE --target "$W" 2>/dev/null || stat -f -c %T "$W")
SYSTEMS=()
if [ -n "$SYSTEMS_ARG" ]; then
	IFS=, read -r -a SYSTEMS <<<"$SYSTEMS_ARG"
else
	SYSTEMS=(host cowfs fuse-overlayfs overlayfs)
fi
probe_overlay() {
	local d=$W/probe-ov ok=1
	mkdir -p "$d"/{l,u,w,m}
	mount -t overlay overlay -o "lowerdir=$d/l,upperdir=$d/u,workdir=$d/w" "$d/m" \
		>/dev/null 2>&1 || ok=0
	[ "$ok" = 1 ] && umount "$d/m"
	rm -rf --one-file-system -- "$d"
	[ "$ok" = 1 ]
}
keep=()
for s in "${SYSTEMS[@]}"; do
	case $s in
	host | cowfs) keep+=("$s") ;;
	fuse-overlayfs)
		if command -v fuse-overlayfs >/dev/null; then keep+=("$s")
		else echo "- fuse-overlayfs is not installed: skipped." >>"$NOTES"; fi ;;
	overlayfs)
		if probe_overlay; then keep+=("$s")
		else echo "- kernel overlayfs does not mount here ($HOSTFS upper): skipped." >>"$NOTES"; fi ;;
	*) die "unknown system '$s'" ;;
	esac
done
SYSTEMS=("${keep[@]}")
has_system() {
	local s
	for s in "${SYSTEMS[@]}"; do [ "$s" = "$1" ] && return 0; done
	return 1
}

HAVE_CLONE=0
HAVE_BYREF=""	# probed on first use
HAVE_ORIGIN=0
HAVE_DF=0
HAVE_DU=0
"$COWFS" help clone >/dev/null 2>&1 && HAVE_CLONE=1
"$COWFS" help mount 2>&1 | grep -q -- '--origin' && HAVE_ORIGIN=1
"$COWFS" help df >/dev/null 2>&1 && HAVE_DF=1
"$COWFS" help du >/dev/null 2>&1 && HAVE_DU=1
HAVE_BTRFS=0
command -v mkfs.btrfs >/dev/null && command -v losetup >/dev/null && HAVE_BTRFS=1
[ "$HAVE_CLONE" = 1 ] || echo "- \`cowfs help clone\` fails: cowfs clone rows skipped (cowfs is measured with cp -a instead)." >>"$NOTES"
[ "$HAVE_ORIGIN" = 1 ] || echo "- \`cowfs help mount\` does not mention --origin: origin-mount rows skipped." >>"$NOTES"
[ "$HAVE_BTRFS" = 1 ] || echo "- mkfs.btrfs/losetup missing: btrfs reflink rows skipped." >>"$NOTES"

# ---------------------------------------------------------------- inputs
log "work directory $W ($HOSTFS), cowfs $COWFS, $REPS repetition(s)"
RAND=$W/input/random.bin
mkdir -p "$W/input"
if has_workload io || has_workload clone || has_workload space || has_workload speed; then
	want=0
	has_workload io && want=$IO_BYTES
	if has_workload speed; then
		[ "$FIO_BYTES" -gt "$want" ] && want=$FIO_BYTES
		[ "$SHARED_BYTES" -gt "$want" ] && want=$SHARED_BYTES
	fi
	has_workload clone && [ "$BIGFILE_BYTES" -gt "$want" ] && want=$BIGFILE_BYTES
	has_workload space && [ "$SPACE_BIG_BYTES" -gt "$want" ] && want=$SPACE_BIG_BYTES
	log "generating $want bytes of random data"
	head -c "$want" /dev/urandom >"$RAND" || die "cannot write $RAND"
fi
if has_workload build; then
	log "making a tarball of $UNPACK_SRC"
	tar -C "$(dirname "$UNPACK_SRC")" -cf "$W/input/unpack.tar" "$(basename "$UNPACK_SRC")" ||
		die "tar of $UNPACK_SRC failed"
	UNPACK_FILES=$(tar -tf "$W/input/unpack.tar" | wc -l)
fi
if has_workload build || has_workload speed; then
	log "making a tarball of $PROJECT_SRC"
	if git -C "$PROJECT_SRC" rev-parse --git-dir >/dev/null 2>&1; then
		(cd "$PROJECT_SRC" && git ls-files -co --exclude-standard -z |
			xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' _ |
			tar --null -T - -cf "$W/input/project.tar") ||
			die "tar of $PROJECT_SRC failed"
	else
		tar -C "$PROJECT_SRC" --exclude=.git --exclude='build*' \
			-cf "$W/input/project.tar" . || die "tar of $PROJECT_SRC failed"
	fi
	PROJECT_FILES=$(tar -tf "$W/input/project.tar" | wc -l)
fi
TREE_BIG_REL=data/big.bin
if has_workload clone; then
	log "generating the clone tree ($TREE_FILES files, $TREE_SIZE)"
	ORIGIN=$W/origin
	mkdir -p "$ORIGIN"
	"$TOP/scripts/gen-tree.sh" "$ORIGIN/src" "$TREE_FILES" "$TREE_SIZE" \
		>/dev/null 2>"$W/logs/gen-tree.log" ||
		die "gen-tree.sh failed: $(cat "$W/logs/gen-tree.log")"
	TREE_BIG_BYTES=$(stat -c %s "$ORIGIN/src/$TREE_BIG_REL")
	TREE_FILE_BYTES=$(find "$ORIGIN/src" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
	WRITE4K_BLOCK=$((TREE_BIG_BYTES / 4096 / 2 + 1))	# somewhere in the middle
	ORIGIN_SUM=$(cd "$ORIGIN/src" && find . -type f -printf '%p %s %T@\n' | sort | md5sum)
	ORIGIN_BIG_SUM=$(md5sum <"$ORIGIN/src/$TREE_BIG_REL")
fi

# gen_small_tree DIR COUNT MAXBYTES: COUNT files of 0..MAXBYTES bytes,
# 32 to a directory (DIR/dNN/sNN/file_NNNNNN), deterministic.  gen-tree.sh
# cannot fit 50 000 files into a small TOTAL (its files are 1-20 KiB), and
# the memory figures only need many inodes, not much data.
gen_small_tree() {
	python3 - "$@" <<'PYEOF'
import os, random, sys
root, count, maxb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(8)
pool = rng.randbytes(1 << 20)
made = set()
for i in range(count):
    leaf = i // 32
    d = os.path.join(root, "d%03d" % (leaf // 32), "s%02d" % (leaf % 32))
    if d not in made:
        os.makedirs(d, exist_ok=True)
        made.add(d)
    n = rng.randint(0, maxb)
    off = rng.randrange(0, len(pool) - n)
    with open(os.path.join(d, "file_%06d" % i), "wb") as f:
        f.write(pool[off:off + n])
PYEOF
}
tree_bytes() { find "$1" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }
tree_inodes() { find "$1" | wc -l; }
if has_workload mem; then
	log "generating the mem trees ($MEM_FILES and $C30_FILES files)"
	MEM_TREE=$W/input/mem-tree
	C30_TREE=$W/input/c30-tree
	gen_small_tree "$MEM_TREE" "$MEM_FILES" 4096 || die "cannot generate $MEM_TREE"
	gen_small_tree "$C30_TREE" "$C30_FILES" 4096 || die "cannot generate $C30_TREE"
	MEM_TREE_BYTES=$(tree_bytes "$MEM_TREE")
	MEM_TREE_INODES=$(tree_inodes "$MEM_TREE")
	C30_TREE_BYTES=$(tree_bytes "$C30_TREE")
	for d in $BYREF_DIRS; do
		[ -d "$d" ] || die "BYREF_DIRS: $d is not a directory"
	done
fi
if has_workload space; then
	# Files of 1-20 KiB only: the total is the files' mean size (10.5 KiB)
	# times their number, and the "big" file is small too.
	log "generating the space tree ($SPACE_FILES files)"
	SPACE_TREE=$W/input/space-tree
	"$TOP/scripts/gen-tree.sh" --big 16K "$SPACE_TREE" "$SPACE_FILES" \
		"$((SPACE_FILES * 21 / 2))K" >/dev/null 2>"$W/logs/gen-tree-space.log" ||
		die "gen-tree.sh failed: $(cat "$W/logs/gen-tree-space.log")"
	SPACE_TREE_BYTES=$(tree_bytes "$SPACE_TREE")
	SPACE_SUM=$(cd "$SPACE_TREE" && find . -type f -printf '%p %s %T@\n' | sort | md5sum)
fi
if has_workload scale; then
	log "generating the scale tree ($SCALE_FILES files)"
	SCALE_TREE=$W/input/scale-tree
	gen_small_tree "$SCALE_TREE" "$SCALE_FILES" 4096 || die "cannot generate $SCALE_TREE"
	SCALE_TREE_BYTES=$(tree_bytes "$SCALE_TREE")
fi
# speed: every system gets the same inputs, under one directory that is
# also the overlays' lower layer.
SPD=$W/input/speed
if has_workload speed; then
	log "generating the speed inputs ($TREE_FILES-file tree, git repository of $GIT_SRC, project)"
	mkdir -p "$SPD/repo" "$SPD/proj"
	gen_small_tree "$SPD/tree" "$TREE_FILES" 4096 || die "cannot generate $SPD/tree"
	tar -C "$GIT_SRC" -cf - . | tar -C "$SPD/repo" -xf - || die "cannot copy $GIT_SRC"
	(cd "$SPD/repo" && git -c init.defaultBranch=main init -q &&
		git add -A && git -c user.name=bench -c user.email=bench@localhost \
			commit -q -m "$GIT_SRC") >"$W/logs/git-init.log" 2>&1 ||
		die "cannot make the git repository: $(tail -n 3 "$W/logs/git-init.log")"
	[ -z "$(git -C "$SPD/repo" status --porcelain)" ] ||
		die "the git repository of $GIT_SRC is not clean after its commit"
	GIT_FILES=$(git -C "$SPD/repo" ls-files | wc -l)
	tar -C "$SPD/proj" -xf "$W/input/project.tar" || die "cannot unpack the project"
	head -c "$SHARED_BYTES" "$RAND" >"$SPD/shared.bin" || die "cannot write $SPD/shared.bin"
	sync
	cat >"$W/input/firstwrite.py" <<'PYEOF'
# firstwrite.py FILE N BLOCK OUT: N 4 KiB pwrite+fsync at the starts of N
# distinct random BLOCK-sized blocks of FILE, then the same N again; writes
# "median-ms-first median-ms-second N" to OUT.
import os, random, statistics, sys, time
path, n, bs, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
nblk = os.stat(path).st_size // bs
n = min(n, nblk)
offs = [b * bs for b in random.Random(10).sample(range(nblk), n)]
fd = os.open(path, os.O_WRONLY)
med = []
for _ in range(2):
    buf = os.urandom(4096)
    lat = []
    for off in offs:
        t0 = time.perf_counter()
        if os.pwrite(fd, buf, off) != len(buf):
            sys.exit("short write at %d" % off)
        os.fsync(fd)
        lat.append((time.perf_counter() - t0) * 1000)
    med.append(statistics.median(lat))
os.close(fd)
with open(out, "w") as f:
    f.write("%.4f %.4f %d\n" % (med[0], med[1], n))
PYEOF
fi

# ---------------------------------------------------------------- groups
run_io() {
	local sys=$1 f
	sys_up_or_dead "$sys"
	f=$SYS_D/seq.bin
	# the source in the page cache
	dd if="$RAND" of=/dev/null bs=1M count=$((IO_BYTES / 1048576)) status=none
	step "seq write + fsync" "$sys" "$IO_BYTES" w_write_n "$RAND" "$f" "$IO_BYTES"
	drop_caches
	step "cold read" "$sys" "$IO_BYTES" w_read "$f"
	step "hot read" "$sys" "$IO_BYTES" w_read "$f"
	sys_down
}
w_write_n() { head -c "$3" "$1" | dd of="$2" bs=1M iflag=fullblock conv=fsync status=none; }
export -f w_write_n

run_meta() {
	local sys=$1
	sys_up_or_dead "$sys"
	step "create $META_FILES x 100 B" "$sys" "" w_meta_create "$SYS_D/m" "$META_FILES"
	drop_caches
	step "stat all (cold)" "$sys" "" w_meta_stat "$SYS_D/m" "$META_FILES"
	step "delete all" "$sys" "" w_meta_delete "$SYS_D/m"
	sys_down
}

run_build() {
	local sys=$1 ub pb
	sys_up_or_dead "$sys"
	ub=$(stat -c %s "$W/input/unpack.tar")
	pb=$(stat -c %s "$W/input/project.tar")
	cat "$W/input/unpack.tar" "$W/input/project.tar" >/dev/null
	step "unpack $(basename "$UNPACK_SRC") ($UNPACK_FILES entries)" "$sys" "$ub" \
		w_untar "$W/input/unpack.tar" "$SYS_D/inc"
	step "unpack project ($PROJECT_FILES entries)" "$sys" "$pb" \
		w_untar "$W/input/project.tar" "$SYS_D/proj"
	step "meson setup" "$sys" "" w_meson "$SYS_D/proj" "$SYS_D/proj/_build" "${MESON_ARGS[@]}"
	step "ninja (build)" "$sys" "" w_ninja "$SYS_D/proj/_build"
	sys_down
}

P_POP="populate: cp -a host tree into fs"
P_COPY="copy tree (cp -a / clone / reflink)"
P_W4K="4 KiB write+fsync into the copy's big file"
P_CP1G="cp + fsync of a $BIGFILE_SIZE file"
P_BYREF="clone by reference from host tree"
P_READ="cold read of tree (tar cf - piped to cat)"
# Phases of the clone workload in report order.
printf '%s\n' "$P_POP" "$P_COPY" "$P_W4K" "$P_CP1G" "$P_BYREF" "$P_READ" >"$W/phases.txt"

# cowfs: optional df/du output for the notes (first repetition only).
cowfs_usage_note() {
	local what=$1
	[ "$REP" = 1 ] || return 0
	{
		if [ "$HAVE_DF" = 1 ]; then
			printf '\n`cowfs df` %s:\n\n```\n' "$what"
			timeout 60 "$COWFS" df "$SYS_MNT" 2>&1 | head -n 20
			printf '```\n'
		fi
		if [ "$HAVE_DU" = 1 ] && [ -n "${2:-}" ]; then
			printf '\n`cowfs du %s` %s:\n\n```\n' "${2#"$SYS_MNT"/}" "$what"
			timeout 60 "$COWFS" du "$2" 2>&1 | head -n 20
			printf '```\n'
		fi
	} >>"$W/cowfs-usage.md"
}

run_clone() {
	local sys=$1 b a dst label
	case $sys in
	host)
		sys_up_or_dead host
		b=$(space)
		step "$P_COPY" "host (cp -a)" "$TREE_FILE_BYTES" w_cp_a "$ORIGIN/src" "$SYS_D/dst"
		a=$(space "$SYS_D/dst"); rec_space "$P_COPY" "host (cp -a)" "$b" "$a"
		b=$a
		step "$P_W4K" "host (cp -a)" "" w_write4k "$SYS_D/dst/$TREE_BIG_REL" "$WRITE4K_BLOCK" "$RAND"
		a=$(space "$SYS_D/dst/$TREE_BIG_REL"); rec_space "$P_W4K" "host (cp -a)" "$b" "$a"
		dd if="$RAND" of="$SYS_D/f1g" bs=1M count=$((BIGFILE_BYTES / 1048576)) conv=fsync status=none
		b=$(space "$SYS_D/f1g")
		step "$P_CP1G" "host" "$BIGFILE_BYTES" w_cp_file "$SYS_D/f1g" "$SYS_D/f1g.copy"
		a=$(space "$SYS_D/f1g.copy"); rec_space "$P_CP1G" "host" "$b" "$a"
		drop_caches
		step "$P_READ" "host (origin)" "$TREE_FILE_BYTES" w_tar_read "$ORIGIN/src"
		sys_down
		;;
	cowfs)
		sys_up_or_dead cowfs
		step "$P_POP" "cowfs" "$TREE_FILE_BYTES" w_cp_a "$ORIGIN/src" "$SYS_D/src"
		b=$(space "$SYS_D/src")
		step "$P_COPY" "cowfs (cp -a)" "$TREE_FILE_BYTES" w_cp_a "$SYS_D/src" "$SYS_D/cpa"
		a=$(space "$SYS_D/cpa"); rec_space "$P_COPY" "cowfs (cp -a)" "$b" "$a"
		dst=$SYS_D/cpa
		label="cowfs (cp -a)"
		if [ "$HAVE_CLONE" = 1 ]; then
			cowfs_usage_note "before clone" "$SYS_D/src"
			b=$a
			step "$P_COPY" "cowfs (clone)" "$TREE_FILE_BYTES" w_clone "$SYS_D/src" "$SYS_D/cl"
			a=$(space "$SYS_D/cl"); rec_space "$P_COPY" "cowfs (clone)" "$b" "$a"
			cowfs_usage_note "after clone" "$SYS_D/cl"
			dst=$SYS_D/cl
			label="cowfs (clone)"
		fi
		b=$(space "$dst")
		step "$P_W4K" "$label" "" w_write4k "$dst/$TREE_BIG_REL" "$WRITE4K_BLOCK" "$RAND"
		a=$(space "$dst/$TREE_BIG_REL"); rec_space "$P_W4K" "$label" "$b" "$a"
		dd if="$RAND" of="$SYS_D/f1g" bs=1M count=$((BIGFILE_BYTES / 1048576)) conv=fsync status=none 2>/dev/null
		b=$(space "$SYS_D/f1g")
		step "$P_CP1G" "cowfs" "$BIGFILE_BYTES" w_cp_file "$SYS_D/f1g" "$SYS_D/f1g.copy"
		a=$(space "$SYS_D/f1g.copy"); rec_space "$P_CP1G" "cowfs" "$b" "$a"
		if [ "$HAVE_BYREF" = "" ] && [ "$HAVE_CLONE" = 1 ] && [ "$SYS_DEAD" = 0 ]; then
			mkdir -p "$W/input/probe/d" && echo probe >"$W/input/probe/d/f"
			if timeout 60 "$COWFS" clone "$W/input/probe" "$SYS_D/.probe" >"$W/logs/byref-probe.log" 2>&1 &&
				cmp -s "$W/input/probe/d/f" "$SYS_D/.probe/d/f"; then
				HAVE_BYREF=1
			else
				HAVE_BYREF=0
				echo "- \`cowfs clone HOSTDIR MNT/x\` (clone by reference) is not supported yet: $(head -c 200 "$W/logs/byref-probe.log" | tr '\n' ' ' | sed 's/ *$//') - rows skipped." >>"$NOTES"
			fi
			rm -rf "$SYS_D/.probe"
		fi
		if [ "$HAVE_CLONE" = 1 ] && [ "$HAVE_BYREF" = 1 ]; then
			b=$a
			step "$P_BYREF" "cowfs (by-ref clone)" "$TREE_FILE_BYTES" w_clone "$ORIGIN/src" "$SYS_D/ref"
			a=$(space "$SYS_D/ref"); rec_space "$P_BYREF" "cowfs (by-ref clone)" "$b" "$a"
			cowfs_usage_note "after clone by reference" "$SYS_D/ref"
		fi
		drop_caches
		step "$P_READ" "$label" "$TREE_FILE_BYTES" w_tar_read "$dst"
		if [ "$HAVE_CLONE" = 1 ] && [ "$HAVE_BYREF" = 1 ]; then
			drop_caches
			step "$P_READ" "cowfs (by-ref clone)" "$TREE_FILE_BYTES" w_tar_read "$SYS_D/ref"
			b=$(space "$SYS_D/ref")
			step "$P_W4K" "cowfs (by-ref clone)" "" w_write4k "$SYS_D/ref/$TREE_BIG_REL" "$WRITE4K_BLOCK" "$RAND"
			a=$(space "$SYS_D/ref/$TREE_BIG_REL"); rec_space "$P_W4K" "cowfs (by-ref clone)" "$b" "$a"
		fi
		sys_down
		if [ "$HAVE_ORIGIN" = 1 ]; then
			# The mount itself makes the clone: its wall time is the cost.
			sys_up_or_dead cowfs-origin "$ORIGIN/src"
			if [ "$SYS_DEAD" = 0 ]; then
				rec "$GROUP" "$P_BYREF" "cowfs (--origin mount)" time "$REP" "$SYS_MOUNT_SECS" "$TREE_FILE_BYTES"
				a=$(space "$SYS_D")
				rec_space "$P_BYREF" "cowfs (--origin mount)" "$SYS_STORE0" "$a"
			fi
			drop_caches
			step "$P_READ" "cowfs (--origin mount)" "$TREE_FILE_BYTES" w_tar_read "$SYS_D"
			b=$(space "$SYS_D")
			step "$P_W4K" "cowfs (--origin mount)" "" w_write4k "$SYS_D/$TREE_BIG_REL" "$WRITE4K_BLOCK" "$RAND"
			a=$(space "$SYS_D/$TREE_BIG_REL"); rec_space "$P_W4K" "cowfs (--origin mount)" "$b" "$a"
			sys_down
		fi
		;;
	btrfs)
		sys_up_or_dead btrfs
		step "$P_POP" "btrfs" "$TREE_FILE_BYTES" w_cp_a "$ORIGIN/src" "$SYS_D/src"
		b=$(space "$SYS_D/src")
		step "$P_COPY" "btrfs (reflink)" "$TREE_FILE_BYTES" w_cp_reflink "$SYS_D/src" "$SYS_D/dst"
		a=$(space "$SYS_D/dst"); rec_space "$P_COPY" "btrfs (reflink)" "$b" "$a"
		b=$a
		step "$P_W4K" "btrfs (reflink)" "" w_write4k "$SYS_D/dst/$TREE_BIG_REL" "$WRITE4K_BLOCK" "$RAND"
		a=$(space "$SYS_D/dst/$TREE_BIG_REL"); rec_space "$P_W4K" "btrfs (reflink)" "$b" "$a"
		dd if="$RAND" of="$SYS_D/f1g" bs=1M count=$((BIGFILE_BYTES / 1048576)) conv=fsync status=none
		b=$(space "$SYS_D/f1g")
		step "$P_CP1G" "btrfs" "$BIGFILE_BYTES" w_cp_file "$SYS_D/f1g" "$SYS_D/f1g.copy"
		a=$(space "$SYS_D/f1g.copy"); rec_space "$P_CP1G" "btrfs" "$b" "$a"
		drop_caches
		step "$P_READ" "btrfs (reflink)" "$TREE_FILE_BYTES" w_tar_read "$SYS_D/dst"
		sys_down
		;;
	fuse-overlayfs)
		# The host tree is the lower layer: MNT/src is the tree itself.
		sys_up_or_dead fuse-overlayfs "$ORIGIN"
		b=$(space)
		step "$P_COPY" "fuse-overlayfs (cp -a)" "$TREE_FILE_BYTES" w_cp_a "$SYS_D/src" "$SYS_D/dst"
		a=$(space "$SYS_D/dst"); rec_space "$P_COPY" "fuse-overlayfs (cp -a)" "$b" "$a"
		b=$a
		step "$P_W4K" "fuse-overlayfs (copy-up of lower)" "" w_write4k "$SYS_D/src/$TREE_BIG_REL" "$WRITE4K_BLOCK" "$RAND"
		a=$(space "$SYS_D/src/$TREE_BIG_REL"); rec_space "$P_W4K" "fuse-overlayfs (copy-up of lower)" "$b" "$a"
		b=$a
		step "$P_W4K" "fuse-overlayfs (cp -a)" "" w_write4k "$SYS_D/dst/$TREE_BIG_REL" "$WRITE4K_BLOCK" "$RAND"
		a=$(space "$SYS_D/dst/$TREE_BIG_REL"); rec_space "$P_W4K" "fuse-overlayfs (cp -a)" "$b" "$a"
		dd if="$RAND" of="$SYS_D/f1g" bs=1M count=$((BIGFILE_BYTES / 1048576)) conv=fsync status=none
		b=$(space "$SYS_D/f1g")
		step "$P_CP1G" "fuse-overlayfs" "$BIGFILE_BYTES" w_cp_file "$SYS_D/f1g" "$SYS_D/f1g.copy"
		a=$(space "$SYS_D/f1g.copy"); rec_space "$P_CP1G" "fuse-overlayfs" "$b" "$a"
		sys_down
		# Cold read of the unmodified tree through a fresh overlay.
		sys_up_or_dead fuse-overlayfs "$ORIGIN"
		drop_caches
		step "$P_READ" "fuse-overlayfs (lower tree)" "$TREE_FILE_BYTES" w_tar_read "$SYS_D/src"
		sys_down
		;;
	esac
}

# ---------------------------------------------------------------- issue 8
# Figures (not times) of the mem, space and scale workloads go to $FIGS and
# get their own table: median over the repetitions, the target, met or not.

rec_fig() {	# rec_fig NAME VALUE UNIT [TARGET]: "<= 200", "< 10", "" (none)
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$GROUP" "$1" "$REP" "${2:-FAIL}" "$3" "${4:-}" >>"$FIGS"
}

ratio() {	# ratio A B: A / B to 3 decimals, FAIL unless both are numbers
	awk -v a="$1" -v b="$2" 'BEGIN {
		if (a ~ /^-?[0-9.]+$/ && b ~ /^-?[0-9.]+$/ && b + 0 != 0)
			printf "%.3f\n", a / b
		else
			print "FAIL"
	}'
}

minus() {	# minus A B: A - B, FAIL unless both are integers
	case "$1$2" in *[!0-9-]* | "") echo FAIL ;; *) echo $(($1 - $2)) ;; esac
}

last_secs() {	# seconds of the last step recorded (FAIL/SKIP if it failed)
	tail -n 1 -- "$RES" | cut -f6
}

# cowfs_json CMD PATH FIELD...: the FIELDs of `cowfs CMD --json PATH` on one
# line (the first object of du's array).
cowfs_json() {
	local cmd=$1 path=$2
	shift 2
	if [ "$SYS_DEAD" = 1 ]; then echo FAIL; return 1; fi
	timeout 120 "$COWFS" "$cmd" --json "$path" 2>/dev/null | python3 -c '
import json, sys
try:
    d = json.load(sys.stdin)
except ValueError:
    d = {}
if isinstance(d, list):
    d = d[0] if d else {}
print(" ".join(str(d.get(k, "FAIL")) for k in sys.argv[1:]))' "$@"
}

# daemon_rss: VmRSS in bytes of the daemon serving the current mount; the
# pid comes from `cowfs status --json`.
daemon_rss() {
	local pid kb=""
	pid=$(cowfs_json status "$SYS_MNT" pid)
	case $pid in '' | *[!0-9]*) echo FAIL; return ;; esac
	kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)
	case $kb in '' | *[!0-9]*) echo FAIL ;; *) echo $((kb * 1024)) ;; esac
}

# objects_du PATH...: fsync PATHs, sync, du of STORE/objects.
objects_du() {
	local p
	if [ "$SYS_DEAD" = 1 ]; then echo FAIL; return; fi
	for p in "$@"; do
		[ -e "$p" ] && timeout 60 sync -- "$p" 2>/dev/null
	done
	sync
	du -s --block-size=1 -- "$SYS_SPACE/objects" 2>/dev/null | cut -f1
}

meta_size() { stat -c %s -- "$SYS_SPACE/cowfs.meta" 2>/dev/null || echo FAIL; }

w_umount() { "$COWFS" umount "$1" >/dev/null; }
w_mount() { "$COWFS" mount -o "$2" "$1" "$3" >/dev/null; }
w_clones() {	# DIR FIRST LAST: cowfs clone DIR/t0 DIR/tI for I in FIRST..LAST
	local i
	for ((i = $2; i <= $3; i++)); do
		"$COWFS" clone -q "$1/t0" "$1/t$i" || return 1
	done
	sync
}
w_detach() { "$COWFS" detach -q "$1" && sync; }
w_find_count() {	# MNT WANT: find MNT | wc -l must print WANT
	local got
	got=$(find "$1" | wc -l)
	echo "find: $got entries"
	[ "$got" = "$2" ] || { echo "find: $got entries, the daemon counts $2 inodes" >&2; return 1; }
}
export -f w_umount w_mount w_clones w_detach w_find_count

# cowfs_umount_timed PHASE: `cowfs umount` (it returns once the daemon has
# saved its final checkpoint and exited) as a timed step.
cowfs_umount_timed() {
	step "$1" cowfs "" w_umount "$SYS_MNT" || { SYS_DEAD=1; return 1; }
	! is_mounted "$SYS_MNT" || { SYS_DEAD=1; return 1; }
}

# cowfs_mount_timed PHASE: mount the current store again as a timed step.
cowfs_mount_timed() {
	local opts="logfile=$SYS_LOG${BENCH_COWFS_OPTS:+,$BENCH_COWFS_OPTS}"
	step "$1" cowfs "" w_mount "$SYS_SPACE" "$opts" "$SYS_MNT" || { SYS_DEAD=1; return 1; }
	is_mounted "$SYS_MNT" || { SYS_DEAD=1; return 1; }
	SYS_DAEMON=$(daemon_pids "$SYS_SPACE" | head -n 1)
	[ -n "$SYS_DAEMON" ] && DAEMON_PIDS+=("$SYS_DAEMON")
	return 0
}

# rss_figs LABEL INODES [TARGET]: daemon RSS and RSS per inode.
rss_figs() {
	local rss
	rss=$(daemon_rss)
	rec_fig "daemon RSS, $1" "$rss" B
	rec_fig "daemon RSS per inode, $1" "$(ratio "$rss" "$2")" B "${3:-}"
}

run_mem() {
	local n n0 n1 a b d i rss0 rss
	sys_up_or_dead cowfs
	rec_fig "daemon RSS, empty store" "$(daemon_rss)" B
	mkdir -p "$SYS_D/t" "$SYS_D/c30"
	step "populate: cp -a of a $MEM_FILES-file tree" cowfs "$MEM_TREE_BYTES" \
		w_cp_a "$MEM_TREE" "$SYS_D/t/t0"
	step "$MEM_CLONES clones of the tree" cowfs "" w_clones "$SYS_D/t" 1 "$MEM_CLONES"
	n=$(cowfs_json status "$SYS_MNT" inodes)
	rec_fig "inodes in the store" "$n" ""
	rec_fig "share of inodes that are clones" \
		"$(ratio "$((MEM_TREE_INODES * MEM_CLONES))" "$n")" ""
	rss_figs "after the clones" "$n" "<= 200"
	cowfs_umount_timed "unmount of the store (final checkpoint)"
	a=$(meta_size)
	rec_fig "cowfs.meta after unmount" "$a" B
	rec_fig "cowfs.meta per inode" "$(ratio "$a" "$n")" B "<= 120"
	cowfs_mount_timed "remount of the store"
	rss_figs "right after a remount" "$n" "<= 200"
	step "find MNT | wc -l" cowfs "" w_find_count "$SYS_MNT" "$n"
	rss_figs "after find MNT" "$n"

	# Growth of the saved metadata per cloned inode.
	step "populate: cp -a of a $C30_FILES-file tree" cowfs "$C30_TREE_BYTES" \
		w_cp_a "$C30_TREE" "$SYS_D/c30/a"
	n0=$(cowfs_json status "$SYS_MNT" inodes)
	cowfs_umount_timed "unmount before the clone"
	a=$(meta_size)
	cowfs_mount_timed "mount before the clone"
	step "clone of the $C30_FILES-file tree" cowfs "" w_clone "$SYS_D/c30/a" "$SYS_D/c30/b"
	rec_fig "clone of the $C30_FILES-file tree" "$(last_secs)" s "< 1"
	n1=$(cowfs_json status "$SYS_MNT" inodes)
	cowfs_umount_timed "unmount after the clone"
	b=$(meta_size)
	rec_fig "inodes of the clone" "$(minus "$n1" "$n0")" ""
	rec_fig "cowfs.meta growth per cloned inode" \
		"$(ratio "$(minus "$b" "$a")" "$(minus "$n1" "$n0")")" B "<= 100"
	sys_down

	# Clones by reference of host trees.
	for d in $BYREF_DIRS; do
		sys_up_or_dead cowfs
		rss0=$(daemon_rss)
		step "clone by reference of $d" cowfs "" w_clone "$d" "$SYS_D/ref"
		n=$(cowfs_json status "$SYS_MNT" inodes)
		rec_fig "inodes, clone by reference of $d" "$n" ""
		rss=$(daemon_rss)
		rec_fig "daemon RSS per inode, clone by reference of $d" "$(ratio "$rss" "$n")" B "<= 300"
		rec_fig "(RSS - RSS of the empty store) per inode, clone by reference of $d" \
			"$(ratio "$(minus "$rss" "$rss0")" "$n")" B
		cowfs_umount_timed "unmount after the clone by reference of $d"
		rec_fig "cowfs.meta per inode, clone by reference of $d" "$(ratio "$(meta_size)" "$n")" B
		sys_down
	done
}

# space_figs LABEL GROWTH HOST: du growth of STORE/objects against the host's.
space_figs() {
	rec_fig "$1: STORE/objects growth (du)" "$2" B
	rec_fig "$1: growth / host cp -a" "$(ratio "$2" "$3")" x "<= 1.2"
}

# cowfs_acct_figs LABEL PATH HB0: cowfs's own figures beside du.
cowfs_acct_figs() {
	local hb phys excl
	read -r hb phys < <(cowfs_json status "$SYS_MNT" host_bytes physical)
	read -r excl < <(cowfs_json du "$2" exclusive)
	rec_fig "$1: cowfs status host_bytes growth" "$(minus "$hb" "$3")" B
	rec_fig "$1: cowfs df physical (whole store)" "$phys" B
	rec_fig "$1: cowfs du exclusive of the tree" "$excl" B
}

run_space() {
	local h o0 o1 hb0 bs
	sys_up_or_dead host
	step "host: cp -a of the tree" "host (cp -a)" "$SPACE_TREE_BYTES" \
		w_cp_a "$SPACE_TREE" "$SYS_D/dst"
	sync
	h=$(du -s --block-size=1 -- "$SYS_D/dst" | cut -f1)
	rec_fig "host: cp -a of the $SPACE_FILES-file tree (du)" "$h" B
	sys_down

	sys_up_or_dead cowfs
	bs=$(cowfs_json status "$SYS_MNT" block_size)
	o0=$(objects_du)
	read -r hb0 < <(cowfs_json status "$SYS_MNT" host_bytes)
	step "clone by reference of the tree" cowfs "" w_clone "$SPACE_TREE" "$SYS_D/ref"
	step "cowfs detach of the clone" cowfs "$SPACE_TREE_BYTES" w_detach "$SYS_D/ref"
	o1=$(objects_du "$SYS_D/ref")
	space_figs "detach" "$(minus "$o1" "$o0")" "$h"
	cowfs_acct_figs "detach" "$SYS_D/ref" "$hb0"

	o0=$o1
	read -r hb0 < <(cowfs_json status "$SYS_MNT" host_bytes)
	step "cp -a of the tree into the mount" cowfs "$SPACE_TREE_BYTES" \
		w_cp_a "$SPACE_TREE" "$SYS_D/w"
	o1=$(objects_du "$SYS_D/w")
	space_figs "cp -a into the mount" "$(minus "$o1" "$o0")" "$h"
	cowfs_acct_figs "cp -a into the mount" "$SYS_D/w" "$hb0"

	o0=$o1
	read -r hb0 < <(cowfs_json status "$SYS_MNT" host_bytes)
	step "cp -a inside the mount (copy_file_range)" cowfs "$SPACE_TREE_BYTES" \
		w_cp_a "$SYS_D/w" "$SYS_D/w2"
	o1=$(objects_du "$SYS_D/w2")
	space_figs "cp -a inside the mount" "$(minus "$o1" "$o0")" "$h"
	cowfs_acct_figs "cp -a inside the mount" "$SYS_D/w2" "$hb0"
	rec_fig "cowfs.meta with the three trees" "$(meta_size)" B

	# Regression guard: a first 4 KiB write into a clone costs one block.
	dd if="$RAND" of="$SYS_D/big" bs=1M count=$((SPACE_BIG_BYTES / 1048576)) \
		conv=fsync status=none 2>/dev/null
	step "clone of a $SPACE_BIG file" cowfs "" w_clone "$SYS_D/big" "$SYS_D/big2"
	o0=$(objects_du "$SYS_D/big2")
	step "4 KiB write+fsync into the clone" cowfs "" \
		w_write4k "$SYS_D/big2" $((SPACE_BIG_BYTES / 4096 / 2 + 1)) "$RAND"
	o1=$(objects_du "$SYS_D/big2")
	rec_fig "4 KiB write into a clone of a $SPACE_BIG file: STORE/objects growth" \
		"$(minus "$o1" "$o0")" B "<= ${bs:-65536}"
	sys_down
}

# The scale daemon takes GBs on a shared machine: if memory runs out, the
# kernel should kill it rather than anything else.
scale_oom_first() {
	[ -n "$SYS_DAEMON" ] && echo 1000 >"/proc/$SYS_DAEMON/oom_score_adj" 2>/dev/null
	return 0
}

run_scale() {
	local n t1 t2 rss avail
	local STEP_TIMEOUT=$((STEP_TIMEOUT * 3))	# find over 10M inodes is slow
	sys_up_or_dead cowfs
	scale_oom_first
	mkdir -p "$SYS_D/all"
	step "populate: cp -a of a $SCALE_FILES-file tree" cowfs "$SCALE_TREE_BYTES" \
		w_cp_a "$SCALE_TREE" "$SYS_D/all/t0"
	t1=$(last_secs)
	step "$SCALE_CLONES clones of the tree" cowfs "" w_clones "$SYS_D/all" 1 "$SCALE_CLONES"
	t2=$(last_secs)
	rec_fig "time to build the store (cp -a + clones)" \
		"$(awk -v a="$t1" -v b="$t2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/) printf "%.3f", a + b; else print "FAIL" }')" s
	n=$(cowfs_json status "$SYS_MNT" inodes)
	rec_fig "inodes in the store" "$n" ""
	rss_figs "after building" "$n"
	cowfs_umount_timed "unmount (final checkpoint)"
	rec_fig "unmount (final checkpoint)" "$(last_secs)" s "< 10"
	rec_fig "cowfs.meta after unmount" "$(meta_size)" B
	rec_fig "cowfs.meta per inode" "$(ratio "$(meta_size)" "$n")" B
	cowfs_mount_timed "mount"
	scale_oom_first
	rec_fig "mount" "$(last_secs)" s "< 10"
	rss_figs "right after mount" "$n"
	step "find MNT | wc -l" cowfs "" w_find_count "$SYS_MNT" "$n"
	rec_fig "find MNT | wc -l" "$(last_secs)" s
	rss_figs "after find MNT" "$n"
	# A clone of the whole tree doubles the inodes, and the final checkpoint
	# is encoded in memory (about half the RSS): only with room for both
	# (2x the RSS), and without the kernel's inodes from find, which it can
	# drop.
	drop_caches
	rss=$(daemon_rss)
	avail=$(awk '/^MemAvailable:/ { printf "%.0f\n", $2 * 1024 }' /proc/meminfo)
	if [ "$rss" != FAIL ] && [ "$avail" -gt $((rss * 2)) ]; then
		step "clone of the whole store's tree" cowfs "" w_clone "$SYS_D/all" "$SYS_D/all2"
		rec_fig "clone of the whole store's tree" "$(last_secs)" s
		n=$(cowfs_json status "$SYS_MNT" inodes)
		rec_fig "inodes after the clone of the whole tree" "$n" ""
		rss_figs "after the clone of the whole tree" "$n"
		cowfs_umount_timed "unmount (final checkpoint), after the whole-tree clone"
		rec_fig "unmount after the whole-tree clone" "$(last_secs)" s
	else
		echo "- scale, rep $REP: the whole-tree clone was skipped: the daemon's RSS ($rss B) is more than half of MemAvailable ($avail B)." >>"$NOTES"
	fi
	sys_down
}

# ---------------------------------------------------------------- issue 10
# speed: each system works on its own copy of the inputs in $SPD at
# $SYS_D/NAME: host cp -a's them, cowfs cp -a's them into MNT/src and
# clones them (the timed steps run in the clones), the overlays have $SPD as
# their lower layer.  Rows that are not times (IOPS, ms) are recorded with
# their own kind; the steps that run them are STEP_KIND=aux.
P_SPOP="cp -a of the $TREE_FILES-file tree into the fs"
P_SCOPY="copy of the $TREE_FILES-file tree (cp -a / clone)"
P_STATC="stat of the tree, cold (find -printf %s)"
P_STATW="stat of the tree, warm (second find)"
P_LSLR="ls -lR of the tree (warm)"
P_RM="rm -rf of the tree"
P_GIT1="git status, first run after the copy (re-hashes)"
P_GITC="git status, cold"
P_GITW="git status, warm"
P_BLD="meson setup + ninja in the copy"
P_RR="fio 4 KiB random read IOPS (psync, 1 job), cold"
P_RRW="fio 4 KiB random read IOPS (psync, 1 job), warm"
P_RW="fio 4 KiB random write IOPS (psync, 1 job)"
P_FW="4 KiB write+fsync: first write to a shared block"
P_OW="4 KiB write+fsync: overwrite of the same offsets"
[ "$HAVE_CLONE" = 1 ] || P_SCOPY="copy of the $TREE_FILES-file tree (cp -a)"
printf '%s\n' "$P_SPOP" "$P_SCOPY" "$P_STATC" "$P_STATW" "$P_LSLR" "$P_RM" "$P_GIT1" \
	"$P_GITC" "$P_GITW" "$P_BLD" "$P_RR" "$P_RRW" "$P_RW" "$P_FW" "$P_OW" >>"$W/phases.txt"

w_ls_lr() { ls -lR "$1" >/dev/null; }
w_git_status() {	# DIR: git status must say the copy is clean
	local out
	out=$(git -c safe.directory='*' -C "$1" status --porcelain) || return 1
	[ -z "$out" ] && return 0
	echo "git status: the copy is not clean:" >&2
	printf '%s\n' "$out" | head -n 20 >&2
	return 1
}
w_build() {	# SRC BUILDDIR MESON-ARGS...
	local src=$1 bld=$2
	shift 2
	meson setup "$@" "$bld" "$src" >/dev/null && ninja -C "$bld" >/dev/null
}
w_fio() {	# FILE RW SIZE SECS OUT [FIO-OPTION...]
	fio --name="$2" --filename="$1" --rw="$2" --bs=4k --ioengine=psync \
		--numjobs=1 --size="$3" --time_based --runtime="$4" \
		--output-format=json --output="$5" "${@:6}" >/dev/null
}
w_firstwrite() { python3 "$@"; }	# SCRIPT FILE N BLOCK OUT
export -f w_ls_lr w_git_status w_build w_fio w_firstwrite

# fio_iops JSON read|write: the job's IOPS, or FAIL.
fio_iops() {
	python3 - "$1" "$2" <<'PYEOF' 2>/dev/null || echo FAIL
import json, sys
t = open(sys.argv[1]).read()
j = json.loads(t[t.index("{"):])["jobs"][0][sys.argv[2]]
if j["total_ios"] <= 0:
    sys.exit(1)
print("%.0f" % j["iops"])
PYEOF
}

# speed_place NAME [KIND]: $SPD/NAME at $SYS_D/NAME (see above).  The tree's
# copy is timed (KIND time); the other inputs' are not.
speed_place() {
	local n=$1 kind=${2:-aux}
	case $SYS in
	host)
		STEP_KIND=$kind step "$([ "$kind" = aux ] && echo "copy: $n" || echo "$P_SCOPY")" \
			"host (cp -a)" "" w_cp_a "$SPD/$n" "$SYS_D/$n" || return 1
		# The same copy is the host's figure for cowfs's cp -a into the fs.
		[ "$kind" = aux ] || rec "$GROUP" "$P_SPOP" "host (cp -a)" time "$REP" "$(last_secs)" ""
		;;
	cowfs)
		[ "$SYS_DEAD" = 0 ] && mkdir -p "$SYS_D/src"
		STEP_KIND=$kind step "$([ "$kind" = aux ] && echo "populate: $n" || echo "$P_SPOP")" \
			cowfs "" w_cp_a "$SPD/$n" "$SYS_D/src/$n" || return 1
		if [ "$HAVE_CLONE" = 1 ]; then
			STEP_KIND=$kind step "$([ "$kind" = aux ] && echo "clone: $n" || echo "$P_SCOPY")" \
				"cowfs (clone)" "" w_clone "$SYS_D/src/$n" "$SYS_D/$n"
		else
			STEP_KIND=$kind step "$([ "$kind" = aux ] && echo "copy: $n" || echo "$P_SCOPY")" \
				"cowfs (cp -a)" "" w_cp_a "$SYS_D/src/$n" "$SYS_D/$n"
		fi
		;;
	esac
}

speed_fio() {	# speed_fio PHASE RW read|write [warm]
	local out=$W/logs/fio-r$REP-$SYS-$2${4:+-$4}.json v=FAIL opt=()
	# fio drops the file's pages before a job (--invalidate=1) unless told
	# not to; a cold run also drops the backing store's.
	if [ -n "${4:-}" ]; then opt=(--invalidate=0); else drop_caches; fi
	STEP_KIND=aux step "$1" "$SYS" "" w_fio "$SYS_D/fio.bin" "$2" "$FIO_BYTES" "$FIO_SECS" "$out" "${opt[@]}" &&
		v=$(fio_iops "$out" "$3")
	rec "$GROUP" "$1" "$SYS" iops "$REP" "$v" ""
}

speed_firstwrite() {
	local out=$W/logs/firstwrite-r$REP-$SYS.txt bs=65536 b first=FAIL over=FAIL n
	if [ "$SYS" = cowfs ]; then
		b=$(cowfs_json status "$SYS_MNT" block_size)
		case $b in '' | *[!0-9]*) ;; *) bs=$b ;; esac
	fi
	if STEP_KIND=aux step "$FW_WRITES first writes, then $FW_WRITES overwrites" "$SYS" "" \
		w_firstwrite "$W/input/firstwrite.py" "$SYS_D/shared.bin" "$FW_WRITES" "$bs" "$out"; then
		read -r first over n <"$out" || { first=FAIL; over=FAIL; }
	fi
	rec "$GROUP" "$P_FW" "$SYS" ms "$REP" "$first" ""
	rec "$GROUP" "$P_OW" "$SYS" ms "$REP" "$over" ""
}

run_speed() {
	local sys=$1
	case $sys in
	fuse-overlayfs | overlayfs) sys_up_or_dead "$sys" "$SPD" ;;
	*) sys_up_or_dead "$sys" ;;
	esac
	speed_place tree time
	drop_caches
	step "$P_STATC" "$sys" "" w_meta_stat "$SYS_D/tree" "$TREE_FILES"
	step "$P_STATW" "$sys" "" w_meta_stat "$SYS_D/tree" "$TREE_FILES"
	step "$P_LSLR" "$sys" "" w_ls_lr "$SYS_D/tree"
	step "$P_RM" "$sys" "" w_meta_delete "$SYS_D/tree"

	speed_place repo
	step "$P_GIT1" "$sys" "" w_git_status "$SYS_D/repo"
	drop_caches
	step "$P_GITC" "$sys" "" w_git_status "$SYS_D/repo"
	step "$P_GITW" "$sys" "" w_git_status "$SYS_D/repo"

	speed_place proj
	step "$P_BLD" "$sys" "" w_build "$SYS_D/proj" "$SYS_D/proj/_build" "${MESON_ARGS[@]}"

	speed_place shared.bin
	speed_firstwrite

	dd if="$RAND" of=/dev/null bs=1M count=$((FIO_BYTES / 1048576)) status=none
	STEP_KIND=aux step "write of the fio file" "$sys" "" w_write_n "$RAND" "$SYS_D/fio.bin" "$FIO_BYTES"
	speed_fio "$P_RR" randread read
	# The file is read whole first: a warm run of a FUSE file tells
	# whether its page cache survives fio's open.
	timeout "$STEP_TIMEOUT" cat "$SYS_D/fio.bin" >/dev/null 2>&1
	speed_fio "$P_RRW" randread read warm
	speed_fio "$P_RW" randwrite write
	sys_down
}

# ---------------------------------------------------------------- main loop
T_START=$EPOCHREALTIME
for ((REP = 1; REP <= REPS; REP++)); do
	for GROUP in io meta build clone speed mem space scale; do
		has_workload "$GROUP" || continue
		case $GROUP in mem | space | scale)
			"run_$GROUP"
			continue ;;
		esac
		if [ "$GROUP" = clone ]; then
			list=()
			has_system host && list+=(host)
			has_system cowfs && list+=(cowfs)
			[ "$HAVE_BTRFS" = 1 ] && list+=(btrfs)
			has_system fuse-overlayfs && list+=(fuse-overlayfs)
		else
			list=("${SYSTEMS[@]}")
		fi
		[ ${#list[@]} -gt 0 ] || continue
		while read -r s; do
			"run_$GROUP" "$s"
		done < <(rotate $((REP - 1)) "${list[@]}")
	done
done
T_END=$EPOCHREALTIME

# Clones by reference and origin mounts must never write the host tree.
if has_workload clone; then
	if [ "$(cd "$ORIGIN/src" && find . -type f -printf '%p %s %T@\n' | sort | md5sum)" != "$ORIGIN_SUM" ] ||
		[ "$(md5sum <"$ORIGIN/src/$TREE_BIG_REL")" != "$ORIGIN_BIG_SUM" ]; then
		printf '\n#### FAIL: the host tree %s was modified during the clone workload\n' "$ORIGIN/src" >>"$FAILS"
	else
		echo "- host tree unchanged after the clone workload (names, sizes, mtimes, and the big file's contents checked)." >>"$NOTES"
	fi
fi
if has_workload space; then
	if [ "$(cd "$SPACE_TREE" && find . -type f -printf '%p %s %T@\n' | sort | md5sum)" != "$SPACE_SUM" ]; then
		printf '\n#### FAIL: the host tree %s was modified by the clone by reference or detach\n' "$SPACE_TREE" >>"$FAILS"
	fi
fi

# ---------------------------------------------------------------- report
# issue10_spec: the issue 10 summary's rows: label, group, phase, kind,
# mode (thr: host / system time; rate, slow: system / host; abs: the value;
# self:PHASE: the value / the same system's PHASE), target, and the exact
# cowfs row label where a phase has several.
issue10_spec() {
	spec_row() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@"; }
	spec_row "sequential write + fsync, throughput x host" io "seq write + fsync" time thr ">= 0.9" ""
	spec_row "cold sequential read, throughput x host" io "cold read" time thr ">= 0.95" ""
	spec_row "hot sequential read, throughput x host" io "hot read" time thr ">= 0.95" ""
	spec_row "4 KiB random read, cold start, IOPS x host" speed "$P_RR" iops rate ">= 0.7" ""
	spec_row "4 KiB random read, warm (file cached), IOPS x host" speed "$P_RRW" iops rate ">= 0.7" ""
	spec_row "4 KiB random write, IOPS x host" speed "$P_RW" iops rate ">= 0.7" ""
	spec_row "stat of a cold $TREE_FILES-file tree, time x host" speed "$P_STATC" time slow "<= 2" ""
	spec_row "stat of the tree, warm second pass, time x host" speed "$P_STATW" time slow "<= 1.5" ""
	spec_row "ls -lR of the tree (warm), time x host" speed "$P_LSLR" time slow "" ""
	spec_row "create $META_FILES files, time x host" meta "create $META_FILES x 100 B" time slow "<= 2" ""
	spec_row "delete the $META_FILES files, time x host" meta "delete all" time slow "<= 2" ""
	spec_row "git status, first run after the copy, time x host" speed "$P_GIT1" time slow "" ""
	spec_row "git status, cold, time x host" speed "$P_GITC" time slow "<= 1.3" ""
	spec_row "git status, warm, time x host" speed "$P_GITW" time slow "<= 1.3" ""
	spec_row "rm -rf of the $TREE_FILES-file tree, time x host" speed "$P_RM" time slow "<= 1.5" ""
	spec_row "meson setup + ninja in a clone, time x host" speed "$P_BLD" time slow "<= 1.1" ""
	spec_row "4 KiB write+fsync, first write to a shared block" speed "$P_FW" ms abs "" ""
	spec_row "4 KiB write+fsync, overwrite" speed "$P_OW" ms abs "" ""
	spec_row "first write / overwrite latency" speed "$P_FW" ms "self:$P_OW" "<= 2" ""
	[ "$HAVE_CLONE" = 1 ] &&
		spec_row "clone of a $TREE_FILES-file tree (speed)" speed "$P_SCOPY" time abs "< 0.1" "cowfs (clone)"
	[ "$HAVE_CLONE" = 1 ] &&
		spec_row "clone of the $TREE_FILES-file gen-tree.sh tree (clone)" clone "$P_COPY" time abs "< 0.1" "cowfs (clone)"
	return 0
}

hr() { numfmt --to=iec-i --suffix=B "$1" 2>/dev/null || echo "$1 B"; }
{
	echo "## cowfs benchmark"
	echo
	echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); host: $(uname -r), $(nproc) CPUs, $(free -g | awk '/^Mem:/ { print $2 }') GiB RAM"
	echo "- backing filesystem: $HOSTFS ($PARENT); cowfs binary: $COWFS"
	echo "- repetitions: $REPS (interleaved, system order rotated each repetition; each run on a fresh store/mount/dir)$([ "$QUICK" = 1 ] && echo "; **--quick smoke run**")"
	echo "- systems: ${SYSTEMS[*]}$([ "$HAVE_BTRFS" = 1 ] && has_workload clone && echo " (+ btrfs on a loop image for the clone workload)")"
	echo "- cowfs mount options: logfile=...${BENCH_COWFS_OPTS:+,$BENCH_COWFS_OPTS}; cowfs clone: $([ "$HAVE_CLONE" = 1 ] && echo yes || echo no); --origin: $([ "$HAVE_ORIGIN" = 1 ] && echo yes || echo no)"
	sizes=""
	has_workload io && sizes+="; io $(hr "$IO_BYTES")"
	has_workload meta && sizes+="; meta $META_FILES files"
	has_workload build &&
		sizes+="; unpack $UNPACK_SRC ($UNPACK_FILES entries, $(hr "$(stat -c %s "$W/input/unpack.tar")") tar); project $PROJECT_SRC ($PROJECT_FILES entries), meson ${MESON_ARGS[*]}"
	has_workload clone &&
		sizes+="; clone tree $TREE_FILES files, $(hr "$TREE_FILE_BYTES") (big file $(hr "$TREE_BIG_BYTES")), cp file $(hr "$BIGFILE_BYTES")"
	has_workload mem &&
		sizes+="; mem $MEM_FILES files ($MEM_TREE_INODES inodes, $(hr "$MEM_TREE_BYTES")) + $MEM_CLONES clones, a $C30_FILES-file tree, by reference: $BYREF_DIRS"
	has_workload space &&
		sizes+="; space $SPACE_FILES files of 1-20 KiB ($(hr "$SPACE_TREE_BYTES")), a $SPACE_BIG file"
	has_workload speed &&
		sizes+="; speed: a $TREE_FILES-file tree ($(hr "$(tree_bytes "$SPD/tree")")), a git repository of $GIT_SRC ($GIT_FILES files), the project ($PROJECT_FILES entries, meson ${MESON_ARGS[*]}), fio on a $(hr "$FIO_BYTES") file for $FIO_SECS s, $FW_WRITES first writes into a clone of a $(hr "$SHARED_BYTES") file"
	has_workload scale &&
		sizes+="; scale $SCALE_FILES files ($(hr "$SCALE_TREE_BYTES")) + $SCALE_CLONES clones"
	echo "- sizes: ${sizes#; }"
	echo "- total wall time: $(awk -v a="$T_START" -v b="$T_END" 'BEGIN { printf "%.0f", b - a }') s"
	echo "- cold = sync + echo 3 > /proc/sys/vm/drop_caches before the run (daemon caches are not dropped); ratios are median(system) / median(reference): > 1 means slower (time) or more space"
	if [ -s "$NOTES" ]; then echo; cat "$NOTES"; fi
	echo
	python3 - "$RES" "$W/phases.txt" <<'PYEOF'
import sys
from collections import OrderedDict

try:
    canon = [l.rstrip("\n") for l in open(sys.argv[2])]
except OSError:
    canon = []

rows = OrderedDict()
for line in open(sys.argv[1]):
    g, phase, system, kind, rep, val, nbytes = line.rstrip("\n").split("\t")
    key = (g, kind, phase, system)
    r = rows.setdefault(key, {"vals": [], "bytes": nbytes})
    r["vals"].append(val)

def median(xs):
    xs = sorted(xs)
    n = len(xs)
    if n == 0:
        return None
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2

def nums(vals):
    out = []
    for v in vals:
        try:
            out.append(float(v))
        except ValueError:
            pass
    return out

def human(b):
    if b is None:
        return "-"
    neg = b < 0
    b = abs(b)
    for unit, f in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= f:
            s = "%.2f %s" % (b / f, unit)
            break
    else:
        s = "%d B" % b
    return ("-" if neg else "") + s

def ref_of(g, kind, phase, prefix):
    for (g2, k2, p2, s2), r in rows.items():
        if (g2, k2, p2) == (g, kind, phase) and s2.split(" ")[0] == prefix:
            m = median(nums(r["vals"]))
            if m is not None:
                return m
    return None

def ratio(m, ref):
    if m is None or ref is None or ref <= 0:
        return "-"
    return "%.2f" % (m / ref)

titles = {
    "io": "a/b. Sequential write, cold and hot read",
    "meta": "c. Metadata: small files",
    "build": "d. Unpack and build",
    "clone": "e. Clones and copies",
    "mem": "f. Memory and saved metadata (issue 8): times",
    "space": "g. Host space of small files (issue 8): times",
    "scale": "h. Scale (issue 8): times",
    "speed": "i. Speed (issue 10)",
}
KINDS = {
    # kind: (title suffix, value header, format, unit)
    "time": ("", "median s", "%.3f", "s"),
    "space": (" - space growth", "median growth", None, "B"),
    "iops": (" - IOPS (more is better)", "median IOPS", "%.0f", "IOPS"),
    "ms": (" - latency per write", "median ms", "%.3f", "ms"),
}
groups = []
for (g, _, _, _) in rows:
    if g not in groups:
        groups.append(g)
RANK = ["host", "cowfs", "fuse-overlayfs", "overlayfs", "btrfs"]
phase_order = {}
for (g, kind, phase, system) in rows:
    idx = canon.index(phase) if phase in canon else 100 + len(phase_order)
    phase_order.setdefault((g, kind, phase), idx)

def sort_key(k):
    g, kind, phase, system = k
    first = system.split(" ")[0]
    rank = RANK.index(first) if first in RANK else len(RANK)
    return (phase_order[(g, kind, phase)], rank, system)

for g in groups:
    for kind in KINDS:
        keys = sorted((k for k in rows if k[0] == g and k[1] == kind), key=sort_key)
        if not keys:
            continue
        print("### %s%s\n" % (titles.get(g, g), KINDS[kind][0]))
        if kind in ("iops", "ms"):
            print("| measure | system | %s | x host | x fuse-overlayfs | runs |" % KINDS[kind][1])
            print("|---|---|---:|---:|---:|---|")
        elif kind == "time":
            print("| phase | system | median s | MiB/s | x host | x fuse-overlayfs | runs (s) |")
            print("|---|---|---:|---:|---:|---:|---|")
        else:
            print("| phase | system | median growth | x host | x fuse-overlayfs | runs (bytes) |")
            print("|---|---|---:|---:|---:|---|")
        for k in keys:
            _, _, phase, system = k
            r = rows[k]
            phase, system = phase.replace("|", "\\|"), system.replace("|", "\\|")
            xs = nums(r["vals"])
            m = median(xs)
            bad = len(r["vals"]) - len(xs)
            rh = ratio(m, ref_of(g, kind, phase, "host"))
            rf = ratio(m, ref_of(g, kind, phase, "fuse-overlayfs"))
            if kind in ("iops", "ms"):
                f = KINDS[kind][2]
                raw = ", ".join(v if v in ("FAIL", "SKIP") else f % float(v)
                                for v in r["vals"])
                ms = f % m if m is not None else "FAIL"
                if bad and m is not None:
                    ms += " (%d failed)" % bad
                print("| %s | %s | %s | %s | %s | %s |"
                      % (phase, system, ms, rh, rf, raw))
            elif kind == "time":
                raw = ", ".join(v if v in ("FAIL", "SKIP") else "%.3f" % float(v)
                                for v in r["vals"])
                mbs = "-"
                if m and r["bytes"]:
                    mbs = "%.1f" % (int(r["bytes"]) / m / 1048576)
                ms = "%.3f" % m if m is not None else "FAIL"
                if bad and m is not None:
                    ms += " (%d failed)" % bad
                print("| %s | %s | %s | %s | %s | %s | %s |"
                      % (phase, system, ms, mbs, rh, rf, raw))
            else:
                raw = ", ".join(v if v in ("FAIL", "SKIP") else str(int(float(v)))
                                for v in r["vals"])
                ms = human(m) if m is not None else "FAIL"
                print("| %s | %s | %s | %s | %s | %s |"
                      % (phase, system, ms, rh, rf, raw))
        print()
PYEOF
	[ -s "$FIGS" ] && python3 - "$FIGS" <<'PYEOF'
import sys
from collections import OrderedDict

titles = {
    "mem": "f. Memory and saved metadata (issue 8)",
    "space": "g. Host space of small files (issue 8)",
    "scale": "h. Scale (issue 8)",
}
rows = OrderedDict()
for line in open(sys.argv[1]):
    g, name, rep, val, unit, target = line.rstrip("\n").split("\t")
    r = rows.setdefault((g, name), {"vals": [], "unit": unit, "target": target})
    r["vals"].append(val)

def num(v):
    try:
        return float(v)
    except ValueError:
        return None

def median(xs):
    xs = sorted(xs)
    n = len(xs)
    if n == 0:
        return None
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2

def fmt(v, unit):
    if v is None:
        return "FAIL"
    if v == int(v) and abs(v) >= 1000:
        s = "{:,}".format(int(v))
        if unit == "B" and abs(v) >= 1 << 20:
            s += " (%.1f MiB)" % (v / (1 << 20))
        return s
    return "%g" % round(v, 3)

def met(m, target):
    if not target or m is None:
        return "-"
    op, lim = target.split()
    lim = float(lim)
    ok = {"<=": m <= lim, "<": m < lim, ">=": m >= lim, ">": m > lim}[op]
    return "yes" if ok else "**no**"

groups = []
for (g, _) in rows:
    if g not in groups:
        groups.append(g)
for g in groups:
    print("### %s\n" % titles.get(g, g))
    print("| figure | median | unit | target | met | runs |")
    print("|---|---:|---|---|---|---|")
    for (g2, name), r in rows.items():
        if g2 != g:
            continue
        xs = [x for x in map(num, r["vals"]) if x is not None]
        m = median(xs)
        runs = ", ".join(fmt(num(v), r["unit"]) if num(v) is not None else v
                         for v in r["vals"])
        print("| %s | %s | %s | %s | %s | %s |" % (
            name.replace("|", "\\|"), fmt(m, r["unit"]), r["unit"] or "-",
            r["target"] or "-", met(m, r["target"]), runs))
    print()
PYEOF
	issue10_spec >"$W/summary.tsv"
	python3 - "$RES" "$W/summary.tsv" <<'PYEOF'
import sys
from collections import OrderedDict

# Every issue 10 figure: a ratio to the host (or an absolute value) per
# system, from the medians of the timed rows; "met" judges cowfs.
meds = OrderedDict()
for line in open(sys.argv[1]):
    g, phase, system, kind, rep, val, nbytes = line.rstrip("\n").split("\t")
    meds.setdefault((g, kind, phase, system), []).append(val)

def median(vals):
    xs = []
    for v in vals:
        try:
            xs.append(float(v))
        except ValueError:
            pass
    xs.sort()
    n = len(xs)
    if n == 0:
        return None
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2

def med(g, kind, phase, system, exact):
    for (g2, k2, p2, s2), vals in meds.items():
        if (g2, k2, p2) != (g, kind, phase):
            continue
        if s2 == system if exact else s2.split(" ")[0] == system:
            return median(vals)
    return None

def div(a, b):
    return a / b if a is not None and b else None

UNIT = {"time": "s", "iops": "IOPS", "ms": "ms"}
SYSTEMS = ["cowfs", "fuse-overlayfs", "overlayfs"]
out, missing = [], []
for line in open(sys.argv[2]):
    label, g, phase, kind, mode, target, cowlabel = line.rstrip("\n").split("\t")
    if not any(k[0] == g and k[2] == phase for k in meds):
        missing.append(label)
        continue
    host = med(g, kind, phase, "host", False)
    cells, vals = [], {}
    for system in SYSTEMS:
        exact = system == "cowfs" and bool(cowlabel)
        v = med(g, kind, phase, cowlabel if exact else system, exact)
        if mode == "thr":
            v = div(host, v)
        elif mode in ("rate", "slow"):
            v = div(v, host)
        elif mode.startswith("self:"):
            v = div(v, med(g, kind, mode[5:], system, False))
        vals[system] = v
        unit = " " + UNIT[kind] if mode == "abs" else ("x" if v is not None else "")
        cells.append("-" if v is None else ("%.3f" % v if mode == "abs" else "%.2f" % v) + unit)
    if mode.startswith("self:"):
        h = div(host, med(g, kind, mode[5:], "host", False))
        hcell = "-" if h is None else "%.2fx" % h
    else:
        hcell = "-" if host is None else (("%.0f" if kind == "iops" else "%.3f") % host) + " " + UNIT[kind]
    v = vals["cowfs"]
    if not target or v is None:
        ok = "-"
    else:
        op, lim = target.split()
        lim = float(lim)
        ok = "yes" if {"<=": v <= lim, "<": v < lim, ">=": v >= lim, ">": v > lim}[op] else "**no**"
    out.append("| %s | %s | %s | %s | %s |" % (
        label.replace("|", "\\|"), target or "-", hcell, " | ".join(cells), ok))
if out:
    print("### Issue 10: every figure against its target\n")
    print("Ratios are to the host's median (throughput and IOPS: system / host, "
          "more is better; times: system / host, less is better); the host "
          "column is the host's own median.  \"met\" judges cowfs.\n")
    print("| figure | target (cowfs) | host | cowfs | fuse-overlayfs | overlayfs | met |")
    print("|---|---|---:|---:|---:|---:|---|")
    print("\n".join(out))
    if missing:
        print("\nNot run here (their workload was not in --workloads): %s." % "; ".join(missing))
    print()
PYEOF
	if [ -s "$W/cowfs-usage.md" ]; then
		echo "### cowfs's own accounting (repetition 1)"
		cat "$W/cowfs-usage.md"
		echo
	fi
	if [ -s "$FAILS" ]; then
		echo "### Failures"
		cat "$FAILS"
	fi
} >"$W/report.md"

cat "$W/report.md"
if [ -n "$OUT" ]; then
	cp -- "$W/report.md" "$OUT" || die "cannot write $OUT"
	log "report written to $OUT"
fi
if [ -s "$FAILS" ]; then
	log "some steps failed; see the Failures section"
	exit 1
fi
exit 0
