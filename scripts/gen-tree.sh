#!/usr/bin/env bash
# scripts/gen-tree.sh - generate a deterministic source-like file tree.
#
#   scripts/gen-tree.sh [--seed N] [--big SIZE] DIR [COUNT [TOTAL]]
#
# Writes COUNT files (default 30000) holding exactly TOTAL bytes (default
# 1G) under DIR, which must be absent or empty:
#
#   DIR/data/big.bin            one file of exactly BIG bytes (default
#                               TOTAL/4, i.e. 256 MiB for 1 GiB)
#   DIR/assets/aNN/blob-NNNN.bin  some binary files of 1-8 MiB
#   DIR/src/dNN/sNN/file_NNNNN.{c,h,py,txt}
#                               many text files of 1-20 KiB
#
# The same seed, COUNT, TOTAL and BIG give byte-identical trees (contents,
# names, sizes, modes and mtimes).  Text files are unique (each starts with
# its own header and is cut from a random offset of a generated C-like
# corpus); binary files are pseudo-random, so neither compresses nor
# dedups.  SIZE takes K/M/G suffixes (powers of 1024).  The path of the big
# file is printed on stdout; a summary goes to stderr.
set -euo pipefail

usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
	exit "${1:-2}"
}

seed=42
big=""
while [ $# -gt 0 ]; do
	case $1 in
	--seed) seed=$2; shift 2 ;;
	--seed=*) seed=${1#*=}; shift ;;
	--big) big=$2; shift 2 ;;
	--big=*) big=${1#*=}; shift ;;
	-h | --help) usage 0 ;;
	--) shift; break ;;
	-*) echo "gen-tree.sh: unknown option $1" >&2; usage ;;
	*) break ;;
	esac
done
[ $# -ge 1 ] && [ $# -le 3 ] || usage
dir=$1
count=${2:-30000}
total=${3:-1G}

exec python3 - "$dir" "$count" "$total" "$seed" "$big" <<'PYEOF'
import os
import random
import sys

def size_arg(s):
    s = s.strip()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if s and s[-1].upper() in mult:
        return int(s[:-1]) * mult[s[-1].upper()]
    if s.upper().endswith("IB") and s[-3].upper() in mult:
        return int(s[:-3]) * mult[s[-3].upper()]
    return int(s)

root, count, total, seed, big = sys.argv[1:6]
count = int(count)
total = size_arg(total)
seed = int(seed)
big = size_arg(big) if big else total // 4
KiB, MiB = 1 << 10, 1 << 20
MTIME = 1700000000  # fixed, so trees compare equal with cp -a / tar

if count < 1:
    sys.exit("gen-tree.sh: COUNT must be >= 1")
if big > total:
    sys.exit("gen-tree.sh: big file larger than TOTAL")
if os.path.exists(root) and os.listdir(root):
    sys.exit("gen-tree.sh: %s exists and is not empty" % root)

rest = total - big          # bytes for the other count-1 files
nrest = count - 1
SMALL_LO, SMALL_HI = 1 * KiB, 20 * KiB
LARGE_LO, LARGE_HI = 1 * MiB, 8 * MiB

def small_size(i):
    # Size of small file i depends only on (seed, i).
    return random.Random(seed * 1000003 + i).randint(SMALL_LO, SMALL_HI)

def plan(nlarge):
    nsmall = nrest - nlarge
    smalls = [small_size(i) for i in range(nsmall)]
    return smalls, rest - sum(smalls)

# Pick the number of 1-8 MiB files so that the small files plus those fill
# `rest` exactly; fall back to stretching the small files when the budget
# is too small (or too large) for that.
avg_small = (SMALL_LO + SMALL_HI) / 2
avg_large = (LARGE_LO + LARGE_HI) / 2
nlarge = int(round((rest - nrest * avg_small) / (avg_large - avg_small)))
nlarge = max(0, min(nlarge, nrest))
smalls, large_total = plan(nlarge)
for _ in range(50):
    if nlarge == 0 or LARGE_LO * nlarge <= large_total <= LARGE_HI * nlarge:
        break
    if large_total < LARGE_LO * nlarge:
        nlarge -= 1
    else:
        if nlarge >= nrest:
            break
        nlarge += 1
    smalls, large_total = plan(nlarge)

rng = random.Random(seed)
larges = []
if nlarge > 0:
    left = large_total
    for k in range(nlarge - 1):
        remaining = nlarge - 1 - k
        lo = max(LARGE_LO, left - remaining * LARGE_HI)
        hi = min(LARGE_HI, left - remaining * LARGE_LO)
        if lo > hi:
            lo = hi = max(0, left // (remaining + 1))
        s = rng.randint(lo, hi)
        larges.append(s)
        left -= s
    larges.append(left)
else:
    # No large files: put the difference on the small files.
    diff = large_total
    if smalls:
        per = diff // len(smalls)
        smalls = [max(0, s + per) for s in smalls]
        smalls[-1] = max(0, smalls[-1] + (rest - sum(smalls)))
    elif diff:
        sys.exit("gen-tree.sh: COUNT=1 needs TOTAL == BIG")
if smalls and sum(smalls) + sum(larges) != rest:
    smalls[-1] += rest - sum(smalls) - sum(larges)
    if smalls[-1] < 0:
        sys.exit("gen-tree.sh: cannot fit %d files into %d bytes"
                 % (count, total))

# A C-like corpus to cut text files from.
words = ("static int void const struct return if else for while unsigned "
         "char size_t uint64_t uint32_t break continue switch case default "
         "goto sizeof typedef enum union extern inline NULL errno ret err "
         "len buf off ino blk ref map node tree key val ctx fs store extent "
         "journal commit lock unlock alloc free read write flush sync").split()
crng = random.Random(seed ^ 0x5EED)
lines = []
corpus_len = 0
while corpus_len < 2 * MiB:
    indent = "\t" * crng.randint(0, 3)
    n = crng.randint(2, 10)
    body = " ".join(crng.choice(words) for _ in range(n))
    tail = crng.choice([";", ";", " {", "}", ");", " = 0;", ""])
    line = "%s%s%s /* %08x */\n" % (indent, body, tail, crng.getrandbits(32))
    lines.append(line)
    corpus_len += len(line)
corpus = "".join(lines).encode()

exts = [".c", ".c", ".c", ".h", ".h", ".py", ".txt"]
dirs = set()

def write_file(path, data_iter):
    d = os.path.dirname(path)
    if d not in dirs:
        os.makedirs(d, exist_ok=True)
        p = d
        while p not in dirs and p.startswith(root) and p != root:
            dirs.add(p)
            p = os.path.dirname(p)
    with open(path, "wb") as f:
        for chunk in data_iter:
            f.write(chunk)
    os.chmod(path, 0o644)
    os.utime(path, (MTIME, MTIME))

def random_chunks(r, size):
    step = 4 * MiB
    while size > 0:
        n = min(step, size)
        yield r.randbytes(n)
        size -= n

os.makedirs(root, exist_ok=True)
big_path = os.path.join(root, "data", "big.bin")
write_file(big_path, random_chunks(random.Random(seed * 7 + 1), big))

for k, s in enumerate(larges):
    p = os.path.join(root, "assets", "a%02d" % (k // 16),
                     "blob-%04d.bin" % k)
    write_file(p, random_chunks(random.Random(seed * 7 + 2 + k), s))

trng = random.Random(seed * 7 + 3)
for i, s in enumerate(smalls):
    leaf = i // 32
    p = os.path.join(root, "src", "d%02d" % (leaf // 32), "s%02d" % (leaf % 32),
                     "file_%05d%s" % (i, exts[i % len(exts)]))
    head = ("/* %s: generated file %d, seed %d, %d bytes */\n"
            % (os.path.basename(p), i, seed, s)).encode()
    body_len = max(0, s - len(head))
    out = []
    need = body_len
    while need > 0:
        off = trng.randrange(0, len(corpus) - 1)
        piece = corpus[off:off + need]
        out.append(piece)
        need -= len(piece)
    write_file(p, [(head + b"".join(out))[:s]])

for d in sorted(dirs, key=len, reverse=True):
    os.chmod(d, 0o755)
    os.utime(d, (MTIME, MTIME))
os.utime(root, (MTIME, MTIME))

nfiles = 1 + len(larges) + len(smalls)
nbytes = big + sum(larges) + sum(smalls)
sys.stderr.write("gen-tree.sh: %s: %d files (%d small, %d of 1-8 MiB, "
                 "1 of %d bytes), %d bytes, seed %d\n"
                 % (root, nfiles, len(smalls), len(larges), big, nbytes, seed))
print(big_path)
PYEOF
