#!/usr/bin/env bash
# scripts/fetch-libfuse.sh - put libfuse 3.17.2 (Debian 13's source package
# fuse3) into subprojects/libfuse, for a build with FUSE passthrough on a
# system whose libfuse is older than 3.16 (Debian 12 has 3.14).
#
#   scripts/fetch-libfuse.sh          fetch unless subprojects/libfuse exists
#
# apt-get runs with a private sources list, lists and cache in a scratch
# directory: the system's apt state is neither read nor changed, nothing is
# installed. apt checks the Release file's signature against the system's
# Debian archive keyring and the .dsc's hash; dpkg-source checks the
# tarballs against the .dsc. Needs dpkg-dev (dpkg-source) and the network.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
dest=$top/subprojects/libfuse
want=3.17.2

die() { printf 'fetch-libfuse.sh: %s\n' "$*" >&2; exit 1; }

if [ -f "$dest/meson.build" ]; then
	exit 0
fi
command -v apt-get >/dev/null || die "apt-get not found (fetch libfuse $want by hand into $dest)"
command -v dpkg-source >/dev/null || die "dpkg-source not found: install dpkg-dev"

scratch=$(mktemp -d /tmp/cowfs-libfuse.XXXXXX)
trap 'rm -rf -- "$scratch"' EXIT
mkdir -p "$scratch/lists/partial" "$scratch/cache/archives/partial" "$scratch/src"
echo 'deb-src http://deb.debian.org/debian trixie main' >"$scratch/sources.list"
apt=(apt-get -q
	-o "Dir::Etc::SourceList=$scratch/sources.list"
	-o Dir::Etc::SourceParts=/dev/null
	-o "Dir::State::Lists=$scratch/lists"
	-o "Dir::Cache=$scratch/cache"
	-o Debug::NoLocking=1
	-o APT::Sandbox::User=root)

if ! "${apt[@]}" update >"$scratch/update.log" 2>&1 ||
   grep -qE '^(W|E): ' "$scratch/update.log"; then
	cat "$scratch/update.log" >&2
	die "apt-get update of trixie's sources failed (offline? no deb.debian.org?)"
fi
# --download-only: fetch and verify (Release signature, .dsc hash), then
# unpack ourselves so that the tarball checks are dpkg-source's.
if ! (cd "$scratch/src" && "${apt[@]}" source --download-only "fuse3=$want-*" \
	>"$scratch/source.log" 2>&1) &&
   ! (cd "$scratch/src" && "${apt[@]}" source --download-only fuse3 \
	>"$scratch/source.log" 2>&1); then
	cat "$scratch/source.log" >&2
	die "apt-get source fuse3 failed"
fi
dsc=$(ls "$scratch"/src/fuse3_*.dsc 2>/dev/null | head -n 1)
[ -n "$dsc" ] || die "no fuse3 .dsc downloaded"
case ${dsc##*/} in
fuse3_"$want"-*) ;;
*) die "trixie has ${dsc##*/}, not fuse3 $want" ;;
esac
(cd "$scratch/src" && dpkg-source -x "$dsc" libfuse >"$scratch/x.log" 2>&1) || {
	cat "$scratch/x.log" >&2
	die "dpkg-source -x of ${dsc##*/} failed"
}
[ -f "$scratch/src/libfuse/meson.build" ] || die "the unpacked source has no meson.build"
mkdir -p "$top/subprojects"
rm -rf -- "$dest.tmp"
mv -- "$scratch/src/libfuse" "$dest.tmp"
mv -- "$dest.tmp" "$dest"
echo "fetch-libfuse.sh: libfuse $want in subprojects/libfuse"
