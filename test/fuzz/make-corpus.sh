#!/usr/bin/env bash
# test/fuzz/make-corpus.sh [OUTDIR] - make seed inputs for fuzz_load from
# real stores: mount a store (FUSE), run a small workload of every kind of
# change (files, appends, truncates, holes, xattrs, symlinks, hard links,
# renames, clones, clones by reference, deletes), and copy cowfs.meta
# after each fsynced step while mounted (checkpoint + journal batches) and
# after the clean unmount (a checkpoint alone).  OUTDIR defaults to
# test/fuzz/corpus.  Needs build/cowfs (COWFS_BIN to override) and
# fusermount3.
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$top/test/fuzz/corpus}
export COWFS_BIN=${COWFS_BIN:-$top/build/cowfs}
# shellcheck source=scripts/lib.sh
. "$top/scripts/lib.sh"
bin=$(harness_bin)

work=$(mktemp -d /tmp/cowfs-corpus.XXXXXX)
harness_trap "$work" 'rm -rf -- "$work"'
mkdir -p "$out" "$work/origin/sub"
printf 'origin file\n' >"$work/origin/a"
head -c 70000 /dev/urandom >"$work/origin/sub/b"

n=0
snap() {	# snap NAME: copy the metadata file into the corpus
	n=$((n + 1))
	cp -- "$work/s/cowfs.meta" "$out/$(printf '%02d' $n)-$1"
}
fsync_all() { python3 -c 'import os,sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY); os.fsync(fd); os.close(fd)' "$@"; }

"$bin" init --block-size 4096 "$work/s" >/dev/null
harness_mount "$work/s" "$work/m" "$work/log" commit=3600
m=$work/m
snap empty-mounted
mkdir "$m/d" "$m/d/e"
printf 'hello\n' >"$m/d/f"
head -c 20000 /dev/urandom >"$m/d/big"
fsync_all "$m/d/big" "$m"
snap files
ln -s ../d/f "$m/d/e/link"
ln "$m/d/f" "$m/d/hard"
setfattr -n user.k -v value "$m/d/f" 2>/dev/null || true
mknod "$m/d/fifo" p
truncate -s 100000 "$m/d/big"
printf 'x' | dd of="$m/d/big" bs=1 seek=50000 conv=notrunc status=none
fsync_all "$m/d/big" "$m"
snap links-xattr-holes
"$bin" clone "$m/d" "$m/c" >/dev/null
printf 'changed' | dd of="$m/c/big" bs=1 seek=10 conv=notrunc status=none
cp "$m/d/big" "$m/copy"
fsync_all "$m/c/big" "$m/copy" "$m"
snap clones
"$bin" clone "$work/origin" "$m/o" >/dev/null
fsync_all "$m"
snap origin
mv "$m/d/e" "$m/c/moved"
rm -f "$m/d/hard" "$m/copy"
truncate -s 3000 "$m/c/big"
fsync_all "$m"
snap rename-delete-truncate
harness_umount "$m"
snap checkpoint
echo "$n seed inputs in $out"
