#!/usr/bin/env bash
# scripts/demo.sh - cowfs end to end on a fresh Debian machine: install what
# is missing, build, make a store in a temp dir, mount it, copy a real tree
# in, unmount, remount, verify every file by sha256, clone the tree (when
# this cowfs has clones), write 4 KiB into a clone of a large file and show
# the store grow by one block, unmount and clean up.  Whatever happens,
# nothing stays mounted.
#
#   scripts/demo.sh [SOURCE_TREE]    (default /usr/include/linux, else the
#                                     repo's own tree)
#   COWFS_BUILD=DIR                  build directory (default build)
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$top/scripts/lib.sh"

say() { printf '\n== %s\n' "$*"; }

src=${1:-/usr/include/linux}
[ -d "$src" ] || src=$top
src=$(cd "$src" && pwd)

say "installing missing packages"
cowfs_install_deps

builddir=${COWFS_BUILD:-build}
case $builddir in /*) ;; *) builddir=$top/$builddir ;; esac
say "building in $builddir"
cowfs_build "$builddir" >/dev/null
export COWFS_BIN=$builddir/cowfs
cowfs=$COWFS_BIN
"$cowfs" --version

work=$(mktemp -d /tmp/cowfs-demo.XXXXXX)
harness_trap "$work" 'rm -rf -- "$work"'
store=$work/store
mnt=$work/mnt
log=$work/daemon.log
name=$(basename "$src")

say "1. a writable zero-copy clone of a host tree, in one command"
ostore=$work/origin-store
omnt=$work/origin-mnt
mkdir -p "$omnt"
echo "cowfs mount --origin $top $ostore $omnt"
start=$(date +%s.%N)
"$cowfs" mount -o "logfile=$log" --origin "$top" "$ostore" "$omnt"
end=$(date +%s.%N)
awk -v a="$start" -v b="$end" -v n="$(find "$top" -type f | wc -l)" \
	'BEGIN { printf "mounted a clone of %s files in %.2f s\n", n, b - a }'
echo "store on the host: $(du -sh "$ostore" | cut -f1) for" \
	"$(du -sh --apparent-size "$omnt" | cut -f1) of files: they are read in" \
	"place from $top, so the store holds only metadata"
"$cowfs" df "$omnt"
before=$(sha256sum "$top/README.md" | cut -d' ' -f1)
echo "appending a line to README.md inside the mount"
echo "changed inside the clone" >>"$omnt/README.md"
tail -n 1 "$omnt/README.md"
after=$(sha256sum "$top/README.md" | cut -d' ' -f1)
[ "$before" = "$after" ] || { echo "the origin changed!" >&2; exit 1; }
echo "the origin's README.md is unchanged (sha256 $before)"
"$cowfs" du "$omnt/README.md"
harness_umount "$omnt"
"$cowfs" fsck "$ostore"

say "2. a store of its own: creating it in $store"
"$cowfs" init "$store"
harness_mount "$store" "$mnt" "$log"
echo "mounted on $mnt"

say "copying $src into the mount"
files=$(find "$src" -type f | wc -l)
echo "source: $files files, $(du -sh --apparent-size "$src" | cut -f1) of data"
start=$(date +%s.%N)
cp -a "$src" "$mnt/$name"
end=$(date +%s.%N)
awk -v a="$start" -v b="$end" 'BEGIN { printf "copied in %.2f s\n", b - a }' 
echo "in the mount: $(find "$mnt/$name" -type f | wc -l) files," \
	"$(du -sh --apparent-size "$mnt/$name" | cut -f1) apparent," \
	"$(du -sh "$mnt/$name" | cut -f1) allocated"
df -h "$mnt" | tail -n 1

say "unmounting and remounting"
harness_umount "$mnt"
echo "store on the host: $(du -sh "$store" | cut -f1)" \
	"(metadata $(du -h "$store/cowfs.meta" | cut -f1))"
if "$cowfs" help fsck >/dev/null 2>&1; then
	"$cowfs" fsck "$store"
	echo "fsck: clean"
fi
harness_mount "$store" "$mnt" "$log"

say "verifying every file by sha256"
(cd "$src" && find . -type f -print0 | sort -z | xargs -0 sha256sum) \
	>"$work/manifest"
(cd "$mnt/$name" && sha256sum --quiet -c "$work/manifest")
n=$(wc -l <"$work/manifest")
got=$(find "$mnt/$name" -type f | wc -l)
[ "$n" -eq "$got" ] || { echo "file count differs: $n vs $got" >&2; exit 1; }
echo "all $n files match"

if "$cowfs" help clone >/dev/null 2>&1; then
	say "cloning the tree (copy-on-write, no data copied)"
	start=$(date +%s.%N)
	"$cowfs" clone "$mnt/$name" "$mnt/$name-clone"
	end=$(date +%s.%N)
	awk -v n="$n" -v a="$start" -v b="$end" \
		'BEGIN { printf "cloned %s files in %.3f s\n", n, b - a }' 
	if "$cowfs" help du >/dev/null 2>&1; then
		"$cowfs" du "$mnt/$name" "$mnt/$name-clone" || true
	fi
	first=$(cd "$mnt/$name-clone" && find . -type f | sort | sed -n 1p)
	echo "changing $first in the clone only"
	echo "/* changed in the clone */" >>"$mnt/$name-clone/$first"
	(cd "$mnt/$name" && sha256sum --quiet -c "$work/manifest")
	echo "the original is unchanged; the clone's file now holds one block of its own:"
	"$cowfs" du "$mnt/$name/$first" "$mnt/$name-clone/$first" || true
	if "$cowfs" help df >/dev/null 2>&1; then
		"$cowfs" df "$mnt" || true
	fi
	harness_umount "$mnt"
	harness_mount "$store" "$mnt" "$log"
	(cd "$mnt/$name" && sha256sum --quiet -c "$work/manifest")
	grep -q 'changed in the clone' "$mnt/$name-clone/$first"
	echo "after a remount: original intact, clone keeps its change"
fi

if "$cowfs" help status >/dev/null 2>&1; then
	say "copy-on-write inside a large file: a 4 KiB write costs one block"
	# the bytes the store's objects take on the host (st_blocks)
	host_bytes() {
		"$cowfs" status --json "$mnt" |
			sed -n 's/.*"host_bytes": \([0-9]*\).*/\1/p'
	}
	head -c 64M /dev/urandom >"$mnt/big.bin"
	sync "$mnt/big.bin"
	b0=$(host_bytes)
	"$cowfs" clone "$mnt/big.bin" "$mnt/big-clone.bin"
	b1=$(host_bytes)
	echo "cloned a 64 MiB file: the store grew by $((b1 - b0)) bytes"
	echo "writing 4 KiB at offset 4000 KiB of the clone (dd conv=notrunc,fsync)"
	dd if=/dev/urandom of="$mnt/big-clone.bin" bs=4096 count=1 seek=1000 \
		conv=notrunc,fsync status=none
	b2=$(host_bytes)
	bs=$("$cowfs" status --json "$mnt" |
		sed -n 's/.*"block_size": \([0-9]*\).*/\1/p')
	echo "the store grew by $((b2 - b1)) bytes: one block of $bs bytes," \
		"not a copy of the file"
	ndiff=$({ cmp -l "$mnt/big.bin" "$mnt/big-clone.bin" || true; } | wc -l)
	echo "the two files differ in $ndiff bytes, all inside that 4 KiB"
	"$cowfs" du "$mnt/big.bin" "$mnt/big-clone.bin"
	"$cowfs" status "$mnt"
fi

say "unmounting"
harness_umount "$mnt"
if "$cowfs" help fsck >/dev/null 2>&1; then
	"$cowfs" fsck "$store"
	echo "fsck: clean"
fi
if grep -Eiq 'error|sanitizer' "$log" 2>/dev/null; then
	echo "the daemon log reports errors:" >&2
	cat "$log" >&2
	exit 1
fi
say "demo finished: everything verified"
