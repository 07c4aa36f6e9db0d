# shellcheck shell=bash
# scripts/lib.sh - shell functions shared by scripts/test.sh, scripts/demo.sh
# and the pytest harness (test/conftest.py sources this file to mount and
# unmount stores).  Source it; it sets no shell options of its own.
#
#   cowfs_install_deps            install missing Debian packages
#   cowfs_build DIR [MESON ARGS]  meson setup DIR (once) and ninja -C DIR
#   harness_mount STORE MNT LOG [OPT,...]
#                                 mount STORE on MNT, daemon log in LOG;
#                                 returns once the mount is live
#   harness_umount MNT            unmount and wait for the daemon to exit
#   harness_holders MNT           print what keeps MNT busy
#   harness_mounts_under DIR      print the mount points at or under DIR
#   harness_cleanup_under DIR     unmount everything at or under DIR
#   harness_trap DIR              unmount everything under DIR on exit
#
# Works with no terminal, with CI=true, as root or as a user with sudo.

COWFS_TOP=${COWFS_TOP:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}

COWFS_DEPS="libfuse3-dev fuse3 libxxhash-dev libbsd-dev meson ninja-build
pkg-config gcc python3-pytest python3-hypothesis attr acl fio fuse-overlayfs
git rsync clang libclang-rt-14-dev dpkg-dev debhelper fakeroot"

cowfs_log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }

cowfs_sudo() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	else
		sudo -n "$@"
	fi
}

# Install whatever Debian package of COWFS_DEPS is missing.
cowfs_install_deps() {
	local p missing=""
	for p in $COWFS_DEPS; do
		if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null |
		     grep -q '^install ok installed$'; then
			missing="$missing $p"
		fi
	done
	[ -z "$missing" ] && return 0
	cowfs_log "installing:$missing"
	cowfs_sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q ||
		return 1
	# shellcheck disable=SC2086
	cowfs_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		--no-install-recommends $missing || return 1
	# FUSE needs its device node; a fresh container may lack the module.
	if [ ! -e /dev/fuse ]; then
		cowfs_sudo modprobe fuse 2>/dev/null || true
	fi
}

# cowfs_build DIR [meson setup args...]: configure DIR once, then build.
cowfs_build() {
	local dir=$1
	shift
	if [ ! -f "$dir/build.ninja" ]; then
		meson setup "$dir" "$COWFS_TOP" "$@" || return 1
	elif [ $# -gt 0 ]; then
		meson configure "$dir" "$@" || return 1
	fi
	ninja -C "$dir" || return 1
}

# The cowfs binary the harness uses.
harness_bin() {
	printf '%s\n' "${COWFS_BIN:-$COWFS_TOP/build/cowfs}"
}

# Mount points of /proc/self/mountinfo, one a line, octal escapes decoded.
harness_all_mounts() {
	local info m
	# The table is read whole, in one pass, then split.  'read' straight
	# from the file seeks back after each line to just past it, and a
	# seek in mountinfo counts bytes again from the first mount: when a
	# mount listed before (another test run's) goes away in between, the
	# next line starts in the wrong place and a live mount is missed --
	# harness_umount then "unmounts" nothing.
	info=$(</proc/self/mountinfo) || return 1
	# mountinfo escapes space, tab, newline and backslash as \ooo; %b
	# decodes \0ooo, hence the extra 0
	while read -r _ _ _ _ m _; do
		printf '%b\n' "${m//\\/\\0}"
	done <<<"$info"
}

harness_is_mounted() {
	local want m
	want=$(realpath -m -- "$1") || return 1
	while IFS= read -r m; do
		[ "$m" = "$want" ] && return 0
	done < <(harness_all_mounts)
	return 1
}

# harness_mount STORE MNT LOG [OPT[,OPT...]]
harness_mount() {
	local store=$1 mnt=$2 log=$3 opts=${4:-} bin i
	bin=$(harness_bin)
	mkdir -p -- "$mnt" || return 1
	if [ -n "$opts" ]; then
		opts="logfile=$log,$opts"
	else
		opts="logfile=$log"
	fi
	# COWFS_MOUNT_OPTS: options for every mount of a test run (e.g.
	# passthrough, to run the whole suite in that mode)
	opts="$opts${COWFS_MOUNT_OPTS:+,$COWFS_MOUNT_OPTS}"
	if ! "$bin" mount -o "$opts" "$store" "$mnt"; then
		cowfs_log "mount of $store on $mnt failed; daemon log:"
		tail -n 20 -- "$log" >&2 2>/dev/null
		return 1
	fi
	# The contract says mount returns once the mount is live; check it.
	for i in $(seq 1 100); do
		harness_is_mounted "$mnt" && return 0
		sleep 0.1
	done
	cowfs_log "$mnt is not mounted 10 s after 'cowfs mount' returned"
	return 1
}

# harness_holders MNT: the processes whose cwd, root or an open file is
# at or under MNT (what makes an unmount fail with EBUSY), one a line.
# find reads the /proc links without following them: no call into MNT.
harness_holders() {
	local mnt
	mnt=$(realpath -m -- "$1") || return 1
	find /proc/[0-9]*/cwd /proc/[0-9]*/root /proc/[0-9]*/fd -maxdepth 1 \
		\( -lname "$mnt" -o -lname "$mnt/*" \) -printf '%p -> %l\n' \
		2>/dev/null
}

# harness_umount MNT: cowfs umount, falling back to a lazy fusermount3.
harness_umount() {
	local mnt=$1 bin i rc=0 h
	bin=$(harness_bin)
	harness_is_mounted "$mnt" || return 0
	if ! timeout 120 "$bin" umount "$mnt"; then
		cowfs_log "cowfs umount $mnt failed; trying fusermount3 -u -z"
		while IFS= read -r h; do
			cowfs_log "held by $h"
		done < <(harness_holders "$mnt")
		rc=1
	fi
	if harness_is_mounted "$mnt"; then
		fusermount3 -u -z -- "$mnt" 2>/dev/null ||
			cowfs_sudo umount -l -- "$mnt" 2>/dev/null
		rc=1
	fi
	for i in $(seq 1 50); do
		harness_is_mounted "$mnt" || return "$rc"
		sleep 0.1
	done
	cowfs_log "$mnt still mounted"
	return 1
}

# Print mount points at or under DIR, deepest first.
harness_mounts_under() {
	local dir m
	dir=$(realpath -m -- "$1") || return 1
	harness_all_mounts | while IFS= read -r m; do
		case $m in
		"$dir" | "$dir"/*) printf '%s\n' "$m" ;;
		esac
	done | sort -r
}

# Unmount every mount at or under DIR (deepest first).  Returns 0 when
# nothing was left mounted, 1 when something had to be cleaned up.
harness_cleanup_under() {
	local m found=0
	[ -n "${1:-}" ] || return 0
	while IFS= read -r m; do
		found=1
		cowfs_log "cleanup: unmounting $m"
		harness_umount "$m" ||
			fusermount3 -u -z -- "$m" 2>/dev/null ||
			cowfs_sudo umount -l -- "$m" 2>/dev/null || true
	done < <(harness_mounts_under "$1")
	return "$found"
}

# harness_trap DIR [CMD]: on exit or signal, unmount everything under DIR,
# then run CMD (e.g. rm -rf of the temp dir).  The script's exit status is
# kept; a signal exits with 128+N.
harness_trap() {
	HARNESS_TRAP_DIR=$1
	HARNESS_TRAP_CMD=${2:-}
	trap '_harness_on_exit' EXIT
	trap '_harness_on_signal 130' INT
	trap '_harness_on_signal 143' TERM
	trap '_harness_on_signal 129' HUP
}

_harness_on_exit() {
	local rc=$?
	trap - EXIT
	harness_cleanup_under "$HARNESS_TRAP_DIR" || true
	if [ -n "$HARNESS_TRAP_CMD" ]; then
		eval "$HARNESS_TRAP_CMD" || true
	fi
	exit "$rc"
}

_harness_on_signal() {
	exit "$1"	# runs the EXIT trap
}
