#!/usr/bin/env bash
# scripts/check-layers.sh [BUILDDIR] - the core's modules must call each
# other in one direction only (docs/design.md, "Modules").  Reads which
# module defines and which uses each symbol from the object files of the
# core library (nm), prints the module graph in dependency order, and fails
# if it has a cycle.
set -euo pipefail
dir=${1:-build}
objs=("$dir"/libcowfscore.a.p/*.o)
[ -e "${objs[0]}" ] || { echo "check-layers: no objects in $dir" >&2; exit 2; }

mod() { local m=${1##*/}; m=${m%.c.o}; printf '%s\n' "${m#src_}"; }

declare -A def
for o in "${objs[@]}"; do
	m=$(mod "$o")
	while read -r s; do def[$s]=$m; done < <(nm --defined-only "$o" |
		awk '$2 ~ /^[TDBR]$/ {print $3}')
done
edges=$(for o in "${objs[@]}"; do
	m=$(mod "$o")
	nm -u "$o" | awk '{print $2}' | while read -r s; do
		t=${def[$s]:-}
		if [ -n "$t" ] && [ "$t" != "$m" ]; then echo "$m $t"; fi
	done
done | sort -u)
if ! order=$(printf '%s\n' "$edges" | tsort 2>&1 >/dev/null); then :; fi
if [ -n "$order" ]; then
	echo "check-layers: the core's modules call each other in a circle:" >&2
	printf '%s\n' "$order" >&2
	exit 1
fi
echo "check-layers: top to bottom: $(printf '%s\n' "$edges" | tsort | tr '\n' ' ')"
