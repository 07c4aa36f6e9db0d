"""Every filesystem operation through a real cowfs mount, checked against
what POSIX and Linux (ext4, used as the reference directory `ref`) do, and
against a umount + remount."""

import collections
import ctypes
import errno
import json
import mmap
import os
import random
import socket
import stat
import subprocess
import threading
import time

import pytest

import conftest
from conftest import run, sha256_file, tree_snapshot

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
BS = 64 * KiB           # the default block size

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


def _check(r):
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def fallocate(fd, mode, off, length):
    f = libc.fallocate
    f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _check(f(fd, mode, off, length))


def renameat2(old, new, flags):
    f = libc.renameat2
    f.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                  ctypes.c_char_p, ctypes.c_uint]
    _check(f(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags))


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat(path, atime, mtime, follow=True):
    """atime/mtime: (sec, nsec) pairs; nsec may be UTIME_NOW/UTIME_OMIT."""
    ts = (Timespec * 2)(Timespec(*atime), Timespec(*mtime))
    f = libc.utimensat
    f.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p,
                  ctypes.c_int]
    _check(f(AT_FDCWD, os.fsencode(path), ctypes.byref(ts),
             0 if follow else AT_SYMLINK_NOFOLLOW))


def err_of(fn, *a, **kw):
    """errno name of fn(*a), or 'OK'."""
    try:
        fn(*a, **kw)
    except OSError as e:
        return errno.errorcode.get(e.errno, e.errno)
    return "OK"


def both(mount, ref, fn):
    """Run fn(root) in the mount and in the reference dir; return both
    results, which the caller compares."""
    return fn(mount.mnt), fn(ref)


def tick():
    """Let the clock move past the kernel's timestamp granularity."""
    time.sleep(0.02)


def wr(path, data, mode=0o644):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)


def rd(path):
    with open(path, "rb") as f:
        return f.read()


def pread_all(path, off, n):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, n, off)
    finally:
        os.close(fd)


def rand(n, seed):
    return random.Random(seed).randbytes(n)


# --------------------------------------------------------------------------
# create, read, write


def test_create_write_read(mount):
    f = mount.p("f")
    wr(f, b"hello world")
    assert rd(f) == b"hello world"
    st = os.stat(f)
    assert st.st_size == 11
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o644
    assert st.st_uid == 0 and st.st_gid == 0
    assert st.st_nlink == 1
    fd = os.open(f, os.O_RDWR)
    assert os.pwrite(fd, b"WORLD", 6) == 5
    assert os.pread(fd, 100, 0) == b"hello WORLD"
    assert os.pread(fd, 100, 11) == b""
    assert os.pread(fd, 100, 1000) == b""
    os.close(fd)
    mount.remount()
    assert rd(f) == b"hello WORLD"


def test_create_mode_umask(mount, ref):
    def go(root):
        old = os.umask(0o027)
        try:
            fd = os.open(root / "f", os.O_CREAT | os.O_WRONLY, 0o777)
            os.close(fd)
            os.mkdir(root / "d", 0o777)
        finally:
            os.umask(old)
        return (oct(os.stat(root / "f").st_mode),
                oct(os.stat(root / "d").st_mode))
    got, want = both(mount, ref, go)
    assert got == want == (oct(0o100750), oct(0o40750))


def test_empty_file(mount):
    f = mount.p("empty")
    fd = os.open(f, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    assert os.stat(f).st_size == 0
    assert rd(f) == b""
    mount.remount()
    assert os.stat(f).st_size == 0
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600


def test_append(mount, ref):
    def go(root):
        f = root / "a"
        wr(f, b"start:")
        a = os.open(f, os.O_WRONLY | os.O_APPEND)
        b = os.open(f, os.O_WRONLY | os.O_APPEND)
        plain = os.open(f, os.O_WRONLY)
        os.lseek(a, 0, os.SEEK_SET)
        os.write(a, b"A1")
        os.write(b, b"B1")
        os.pwrite(plain, b"Z" * 3, 100)        # extends; a hole before
        os.write(a, b"A2")
        os.pwrite(b, b"B2", 0)                  # Linux: O_APPEND wins
        pos = os.lseek(a, 0, os.SEEK_CUR)
        for fd in (a, b, plain):
            os.close(fd)
        return rd(f), pos
    (got, gpos), (want, wpos) = both(mount, ref, go)
    assert got == want
    assert gpos == wpos
    assert got.startswith(b"start:A1B1")
    assert got.endswith(b"ZZZA2B2")
    mount.remount()
    assert rd(mount.p("a")) == want


def test_o_excl(mount):
    f = mount.p("x")
    fd = os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.close(fd)
    assert err_of(os.open, f, os.O_CREAT | os.O_EXCL | os.O_WRONLY) \
        == "EEXIST"
    os.symlink("nowhere", mount.p("dangling"))
    assert err_of(os.open, mount.p("dangling"),
                  os.O_CREAT | os.O_EXCL | os.O_WRONLY) == "EEXIST"
    os.mkdir(mount.p("dir"))
    assert err_of(os.open, mount.p("dir"),
                  os.O_CREAT | os.O_EXCL | os.O_WRONLY) == "EEXIST"
    # O_CREAT without O_EXCL through a dangling symlink creates the target
    fd = os.open(mount.p("dangling"), os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    assert os.path.isfile(mount.p("nowhere"))


def test_o_trunc(mount):
    f = mount.p("t")
    wr(f, rand(3 * BS + 17, 1))
    os.utime(f, ns=(10**18, 10**18))
    before = os.stat(f)
    tick()
    fd = os.open(f, os.O_WRONLY | os.O_TRUNC)
    st = os.fstat(fd)
    os.write(fd, b"new")
    os.close(fd)
    assert st.st_size == 0
    assert st.st_mtime_ns != before.st_mtime_ns
    assert st.st_ctime_ns > before.st_ctime_ns
    assert rd(f) == b"new"
    # extending after the truncate must not resurrect the old bytes
    os.truncate(f, 2 * BS)
    assert rd(f) == b"new" + bytes(2 * BS - 3)
    mount.remount()
    assert rd(f) == b"new" + bytes(2 * BS - 3)


def test_read_write_errors(mount):
    os.mkdir(mount.p("d"))
    assert err_of(os.open, mount.p("d"), os.O_WRONLY) == "EISDIR"
    assert err_of(os.open, mount.p("missing"), os.O_RDONLY) == "ENOENT"
    wr(mount.p("f"), b"x")
    assert err_of(os.open, mount.p("f", "sub"), os.O_RDONLY) == "ENOTDIR"
    fd = os.open(mount.p("f"), os.O_RDONLY)
    assert err_of(os.write, fd, b"y") == "EBADF"
    os.close(fd)


def test_large_file_unaligned_writes(mount):
    """Many overlapping unaligned writes across 64K blocks, checked against
    an in-memory model, then after a remount."""
    rng = random.Random(20240607)
    size = 5 * MiB + 4321
    model = bytearray(size)
    f = mount.p("big")
    fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o644)
    os.ftruncate(fd, size)
    for i in range(300):
        n = rng.choice([1, 7, 4095, 4097, BS - 1, BS, BS + 1, 3 * BS + 5,
                        rng.randrange(1, 300 * KiB)])
        off = rng.choice([rng.randrange(0, size - n),
                          (rng.randrange(0, size // BS) * BS - 1) % (size - n),
                          rng.randrange(0, size // BS) * BS % (size - n)])
        data = rng.randbytes(n)
        assert os.pwrite(fd, data, off) == n
        model[off:off + n] = data
        if i % 50 == 0:
            # random reads while writing
            for _ in range(5):
                o = rng.randrange(0, size)
                m = rng.randrange(1, 200 * KiB)
                assert os.pread(fd, m, o) == bytes(model[o:o + m])
    os.close(fd)
    assert rd(f) == bytes(model)
    mount.remount()
    assert os.stat(f).st_size == size
    assert rd(f) == bytes(model)


def test_write_spanning_many_blocks(mount):
    """One write of 3 MiB + a little at an odd offset (FUSE splits it)."""
    data = rand(3 * MiB + 333, 2)
    f = mount.p("w")
    fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o644)
    os.pwrite(fd, data, BS - 5)
    os.close(fd)
    assert rd(f) == bytes(BS - 5) + data
    mount.remount()
    assert rd(f) == bytes(BS - 5) + data


# --------------------------------------------------------------------------
# holes, truncate, fallocate, lseek


def test_sparse_1gib(mount):
    f = mount.p("sparse")
    fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o644)
    os.pwrite(fd, b"end", GiB - 3)
    os.pwrite(fd, b"middle", 500 * MiB + 7)
    os.close(fd)
    st = os.stat(f)
    assert st.st_size == GiB
    assert st.st_blocks * 512 <= 4 * MiB, f"st_blocks {st.st_blocks}"
    for off in (0, 4096, 100 * MiB + 1, 500 * MiB - 4096, GiB - 4 * KiB - 3):
        assert pread_all(f, off, 4096) == bytes(4096), off
    assert pread_all(f, 500 * MiB + 7, 6) == b"middle"
    assert pread_all(f, 500 * MiB, 13) == bytes(7) + b"middle"
    assert pread_all(f, GiB - 3, 100) == b"end"
    mount.remount()
    st = os.stat(f)
    assert st.st_size == GiB
    assert st.st_blocks * 512 <= 4 * MiB
    assert pread_all(f, 500 * MiB, 13) == bytes(7) + b"middle"
    assert pread_all(f, GiB - 8, 100) == bytes(5) + b"end"


def test_dense_file_st_blocks(mount):
    f = mount.p("dense")
    wr(f, rand(MiB, 3))
    st = os.stat(f)
    assert st.st_blocks * 512 >= MiB
    assert st.st_blocks * 512 <= MiB + 2 * BS + 64 * KiB


def test_truncate_down_up(mount, ref):
    def go(root):
        f = root / "t"
        wr(f, rand(5 * BS + 100, 4))
        os.truncate(f, 2 * BS + 3)              # mid-block
        a = rd(f)
        os.truncate(f, 6 * BS)                  # re-extend: zeros
        b = rd(f)
        fd = os.open(f, os.O_RDWR)
        os.ftruncate(fd, BS // 2)
        os.pwrite(fd, b"tail", BS - 4)          # same block, past old end
        os.pwrite(fd, b"far", 9 * BS + 1)       # past the end: a hole
        os.close(fd)
        c = rd(f)
        os.truncate(f, 0)
        os.truncate(f, 3)
        d = rd(f)
        return a, b, c, d
    got, want = both(mount, ref, go)
    assert got[0] == want[0] and len(got[0]) == 2 * BS + 3
    assert got[1] == want[1]
    assert got[1][2 * BS + 3:] == bytes(4 * BS - 3)
    assert got[2] == want[2]
    assert got[2][BS // 2:BS - 4] == bytes(BS // 2 - 4), \
        "stale bytes after truncate + write in the same block"
    assert got[3] == want[3] == bytes(3)


def test_truncate_stale_block_tail(mount):
    """Truncate into a block, write further on in the same block: the bytes
    between must read as zeros, also after a remount."""
    f = mount.p("s")
    wr(f, b"A" * BS)
    os.truncate(f, 10)
    fd = os.open(f, os.O_WRONLY)
    os.pwrite(fd, b"B", 60000)
    os.close(fd)
    want = b"A" * 10 + bytes(60000 - 10) + b"B"
    assert rd(f) == want
    mount.remount()
    assert rd(f) == want


def test_truncate_times_and_errors(mount):
    f = mount.p("f")
    wr(f, b"12345")
    os.utime(f, ns=(10**18, 10**18))
    b = os.stat(f)
    tick()
    os.truncate(f, 2)
    a = os.stat(f)
    assert a.st_mtime_ns != b.st_mtime_ns
    assert a.st_ctime_ns > b.st_ctime_ns
    os.mkdir(mount.p("d"))
    assert err_of(os.truncate, mount.p("d"), 0) == "EISDIR"
    assert err_of(os.truncate, f, -1) == "EINVAL"


def test_posix_fallocate(mount):
    f = mount.p("pf")
    wr(f, b"abc")
    fd = os.open(f, os.O_RDWR)
    os.posix_fallocate(fd, 0, 3 * BS + 5)
    os.close(fd)
    assert os.stat(f).st_size == 3 * BS + 5
    assert rd(f) == b"abc" + bytes(3 * BS + 2)


def test_fallocate_modes(mount, ref):
    def go(root):
        f = root / "fa"
        base = rand(8 * BS, 5)
        wr(f, base)
        fd = os.open(f, os.O_RDWR)
        out = {}
        fallocate(fd, 0, 8 * BS, 2 * BS)                  # plain, extends
        out["plain"] = os.fstat(fd).st_size
        fallocate(fd, FALLOC_FL_KEEP_SIZE, 10 * BS, 4 * BS)
        out["keep"] = os.fstat(fd).st_size
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  BS + 100, 2 * BS)                         # unaligned
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  4 * BS, BS)                               # aligned
        out["punch_size"] = os.fstat(fd).st_size
        fallocate(fd, FALLOC_FL_ZERO_RANGE, 6 * BS - 7, 1000)
        fallocate(fd, FALLOC_FL_ZERO_RANGE, 10 * BS - 10, 20)  # extends
        out["zero_size"] = os.fstat(fd).st_size
        fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                  11 * BS, 5)
        out["zero_keep_size"] = os.fstat(fd).st_size
        out["punch_past_eof"] = err_of(
            fallocate, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
            20 * BS, BS)
        out["punch_no_keep"] = err_of(fallocate, fd, FALLOC_FL_PUNCH_HOLE,
                                      0, BS)
        out["bad_len"] = err_of(fallocate, fd, 0, 0, 0)
        os.close(fd)
        out["data"] = rd(f)
        return out, base
    (got, base), (want, _) = both(mount, ref, go)
    assert got == want
    d = got["data"]
    assert d[:BS + 100] == base[:BS + 100]
    assert d[BS + 100:3 * BS + 100] == bytes(2 * BS)
    assert d[3 * BS + 100:4 * BS] == base[3 * BS + 100:4 * BS]
    assert d[4 * BS:5 * BS] == bytes(BS)
    assert d[6 * BS - 7:6 * BS + 993] == bytes(1000)
    assert len(d) == 10 * BS + 10
    mount.remount()
    assert rd(mount.p("fa")) == d


def test_fallocate_cli(mount, ref):
    """The util-linux fallocate(1) command: -p, -z, -n, -l."""
    def go(root):
        f = root / "cli"
        wr(f, rand(4 * BS, 6))
        run(["fallocate", "-p", "-o", str(BS + 1), "-l", str(BS), f])
        run(["fallocate", "-z", "-o", str(3 * BS), "-l", "100", f])
        run(["fallocate", "-n", "-o", str(5 * BS), "-l", str(BS), f])
        run(["fallocate", "-o", str(4 * BS), "-l", str(BS), f])
        return rd(f)
    got, want = both(mount, ref, go)
    assert got == want
    assert len(got) == 5 * BS


def test_punch_hole_frees_space(mount):
    f = mount.p("p")
    wr(f, rand(16 * BS, 7))
    before = os.stat(f).st_blocks
    fd = os.open(f, os.O_RDWR)
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 2 * BS, 10 * BS)
    os.close(fd)
    after = os.stat(f).st_blocks
    assert after * 512 <= before * 512 - 9 * BS, (before, after)
    assert os.stat(f).st_size == 16 * BS


def test_seek_data_hole(mount):
    f = mount.p("sd")
    fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o644)
    os.pwrite(fd, b"x" * MiB, 0)            # data [0, 1M)
    os.pwrite(fd, b"y" * MiB, 4 * MiB)      # data [4M, 5M)
    os.ftruncate(fd, 8 * MiB)               # hole [5M, 8M)

    def check(fd):
        assert os.lseek(fd, 0, os.SEEK_DATA) == 0
        assert os.lseek(fd, 0, os.SEEK_HOLE) == MiB
        assert os.lseek(fd, 100, os.SEEK_HOLE) == MiB
        assert os.lseek(fd, MiB, os.SEEK_DATA) == 4 * MiB
        assert os.lseek(fd, 2 * MiB + 5, os.SEEK_DATA) == 4 * MiB
        assert os.lseek(fd, 2 * MiB + 5, os.SEEK_HOLE) == 2 * MiB + 5
        assert os.lseek(fd, 4 * MiB + 1, os.SEEK_DATA) == 4 * MiB + 1
        assert os.lseek(fd, 4 * MiB, os.SEEK_HOLE) == 5 * MiB
        assert err_of(os.lseek, fd, 5 * MiB, os.SEEK_DATA) == "ENXIO"
        assert os.lseek(fd, 6 * MiB, os.SEEK_HOLE) == 6 * MiB
        assert err_of(os.lseek, fd, 8 * MiB, os.SEEK_DATA) == "ENXIO"
        assert err_of(os.lseek, fd, 8 * MiB, os.SEEK_HOLE) == "ENXIO"
        assert err_of(os.lseek, fd, 9 * MiB, os.SEEK_HOLE) == "ENXIO"
    check(fd)
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, MiB)
    assert os.lseek(fd, 0, os.SEEK_DATA) == 4 * MiB
    assert os.lseek(fd, 0, os.SEEK_HOLE) == 0
    os.pwrite(fd, b"x" * MiB, 0)
    os.close(fd)
    mount.remount()
    fd = os.open(f, os.O_RDONLY)
    check(fd)
    os.close(fd)


def test_seek_empty_and_dense(mount):
    f = mount.p("e")
    wr(f, b"")
    fd = os.open(f, os.O_RDONLY)
    assert err_of(os.lseek, fd, 0, os.SEEK_DATA) == "ENXIO"
    assert err_of(os.lseek, fd, 0, os.SEEK_HOLE) == "ENXIO"
    os.close(fd)
    wr(f, b"z" * (3 * BS + 1))
    fd = os.open(f, os.O_RDONLY)
    assert os.lseek(fd, 5, os.SEEK_DATA) == 5
    assert os.lseek(fd, 5, os.SEEK_HOLE) == 3 * BS + 1
    os.close(fd)


# --------------------------------------------------------------------------
# mmap


def test_mmap_shared_write(mount):
    f = mount.p("m")
    size = 3 * BS + 100
    orig = rand(size, 8)
    wr(f, orig)
    model = bytearray(orig)
    fd = os.open(f, os.O_RDWR)
    mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    for off, data in ((0, b"head"), (BS - 2, b"span"), (2 * BS + 7, b"x" * 5000),
                      (size - 3, b"end")):
        mm[off:off + len(data)] = data
        model[off:off + len(data)] = data
    mm.flush()
    assert os.pread(fd, size, 0) == bytes(model)
    mm.close()
    os.close(fd)
    assert rd(f) == bytes(model)
    mount.remount()
    assert rd(f) == bytes(model)
    assert os.stat(f).st_size == size


def test_mmap_read_and_grow(mount):
    f = mount.p("g")
    wr(f, b"a" * 100)
    with open(f, "r+b") as fh:
        fh.truncate(2 * BS)
        mm = mmap.mmap(fh.fileno(), 2 * BS)
        assert mm[:100] == b"a" * 100
        assert mm[100:2 * BS] == bytes(2 * BS - 100)
        mm[BS:BS + 3] = b"mid"
        mm.close()
    mount.remount()
    d = rd(f)
    assert d[:100] == b"a" * 100 and d[BS:BS + 3] == b"mid"
    assert len(d) == 2 * BS


# --------------------------------------------------------------------------
# attributes and times


def test_chmod_chown(mount):
    f = mount.p("f")
    wr(f, b"x")
    os.chmod(f, 0o4751)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o4751
    os.chmod(f, 0o640)
    os.chown(f, 1234, 5678)
    st = os.stat(f)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.chown(f, -1, 42)
    assert (os.stat(f).st_uid, os.stat(f).st_gid) == (1234, 42)
    os.symlink("f", mount.p("l"))
    os.lchown(mount.p("l"), 77, 88)
    lst = os.lstat(mount.p("l"))
    assert (lst.st_uid, lst.st_gid) == (77, 88)
    assert os.stat(f).st_uid == 1234
    d = mount.p("d")
    os.mkdir(d)
    os.chmod(d, 0o1777)
    mount.remount()
    st = os.stat(f)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, st.st_gid) == (1234, 42)
    assert (os.lstat(mount.p("l")).st_uid, os.lstat(mount.p("l")).st_gid) \
        == (77, 88)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o1777


def test_chown_clears_setid(mount, ref):
    def go(root):
        f = root / "s"
        wr(f, b"x")
        os.chmod(f, 0o6755)
        os.chown(f, 1000, 1000)
        a = stat.S_IMODE(os.stat(f).st_mode)
        g = root / "g"
        wr(g, b"x")
        os.chmod(g, 0o2644)       # setgid without group exec: kept
        os.chown(g, 1000, 1000)
        b = stat.S_IMODE(os.stat(g).st_mode)
        return a, b
    got, want = both(mount, ref, go)
    assert got == want


@pytest.mark.skipif(conftest.NO_WRITEBACK and os.geteuid() == 0,
                    reason="without the writeback cache the kernel sends root's "
                    "chown(f, -1, -1) as an empty SETATTR, which the daemon "
                    "cannot tell from a write's (README, Limits)")
def test_chown_without_ids_clears_setid(mount, ref):
    """chown(f, -1, -1) changes no id but clears setuid, and setgid with
    group exec, as every chown of a file does; not on a directory."""
    def go(root):
        out = []
        for name, mode in (("s", 0o6755), ("g", 0o2755), ("k", 0o2644)):
            f = root / name
            wr(f, b"x")
            os.chmod(f, mode)
            os.chown(f, -1, -1)
            out.append(stat.S_IMODE(os.stat(f).st_mode))
        d = root / "d"
        os.mkdir(d)
        os.chmod(d, 0o2755)
        os.chown(d, -1, -1)
        out.append(stat.S_IMODE(os.stat(d).st_mode))
        return out
    got, want = both(mount, ref, go)
    assert got == want
    assert got[0] == 0o755


def test_utimes_ns(mount):
    f = mount.p("t")
    wr(f, b"x")
    at, mt = 1234567890123456789, 987654321987654321
    os.utime(f, ns=(at, mt))
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (at, mt)
    # edges: negative (before 1970), zero, far future, nsec 999999999
    cases = [(-1, 0), (0, -10**9 - 1), (2**33 * 10**9 + 999999999, 1)]
    for a, m in cases:
        os.utime(f, ns=(a, m))
        st = os.stat(f)
        assert (st.st_atime_ns, st.st_mtime_ns) == (a, m)
    os.utime(f, ns=(at, mt))
    mount.remount()
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (at, mt)


def test_utimensat_now_omit(mount):
    f = mount.p("t")
    wr(f, b"x")
    os.utime(f, ns=(10**18, 2 * 10**18))
    c0 = os.stat(f).st_ctime_ns
    tick()
    utimensat(f, (5, 123), (0, UTIME_OMIT))
    st = os.stat(f)
    assert st.st_atime_ns == 5 * 10**9 + 123
    assert st.st_mtime_ns == 2 * 10**18
    assert st.st_ctime_ns > c0
    t0 = time.time_ns()
    utimensat(f, (0, UTIME_OMIT), (0, UTIME_NOW))
    t1 = time.time_ns()
    st = os.stat(f)
    assert st.st_atime_ns == 5 * 10**9 + 123
    assert t0 - 20 * 10**6 <= st.st_mtime_ns <= t1 + 20 * 10**6
    utimensat(f, (0, UTIME_NOW), (0, UTIME_OMIT))
    st2 = os.stat(f)
    assert t0 - 20 * 10**6 <= st2.st_atime_ns <= time.time_ns() + 20 * 10**6
    assert st2.st_mtime_ns == st.st_mtime_ns
    c1 = st2.st_ctime_ns
    tick()
    utimensat(f, (0, UTIME_OMIT), (0, UTIME_OMIT))   # changes nothing
    assert os.stat(f).st_mtime_ns == st2.st_mtime_ns
    assert os.stat(f).st_atime_ns == st2.st_atime_ns
    assert os.stat(f).st_ctime_ns >= c1


def test_symlink_times(mount):
    os.symlink("target", mount.p("l"))
    utimensat(mount.p("l"), (11, 22), (33, 44), follow=False)
    st = os.lstat(mount.p("l"))
    assert (st.st_atime_ns, st.st_mtime_ns) == (11 * 10**9 + 22,
                                                33 * 10**9 + 44)
    mount.remount()
    st = os.lstat(mount.p("l"))
    assert (st.st_atime_ns, st.st_mtime_ns) == (11 * 10**9 + 22,
                                                33 * 10**9 + 44)


def test_touch_d(mount):
    f = mount.p("touched")
    run(["touch", "-d", "2001-02-03 04:05:06.123456789 UTC", f])
    st = os.stat(f)
    assert st.st_mtime_ns == 981173106123456789
    assert st.st_atime_ns == 981173106123456789
    run(["touch", "-m", "-d", "@1700000000.5", f])
    st = os.stat(f)
    assert st.st_mtime_ns == 1700000000500000000
    assert st.st_atime_ns == 981173106123456789


def test_write_updates_mtime_ctime(mount):
    f = mount.p("w")
    wr(f, b"abc")
    os.utime(f, ns=(10**18, 10**18))
    b = os.stat(f)
    tick()
    fd = os.open(f, os.O_WRONLY)
    os.pwrite(fd, b"z", 1)
    os.close(fd)
    a = os.stat(f)
    assert a.st_mtime_ns > 10**18
    assert a.st_ctime_ns > b.st_ctime_ns
    assert abs(a.st_mtime_ns - time.time_ns()) < 10 * 10**9


def test_read_keeps_mtime_ctime(mount):
    f = mount.p("r")
    wr(f, b"abc")
    b = os.stat(f)
    tick()
    rd(f)
    a = os.stat(f)
    assert (a.st_mtime_ns, a.st_ctime_ns) == (b.st_mtime_ns, b.st_ctime_ns)


def test_chmod_updates_ctime_only(mount):
    f = mount.p("c")
    wr(f, b"abc")
    b = os.stat(f)
    tick()
    os.chmod(f, 0o600)
    a = os.stat(f)
    assert a.st_mtime_ns == b.st_mtime_ns
    assert a.st_ctime_ns > b.st_ctime_ns
    tick()
    os.chown(f, 5, 5)
    a2 = os.stat(f)
    assert a2.st_mtime_ns == b.st_mtime_ns
    assert a2.st_ctime_ns > a.st_ctime_ns
    tick()
    os.setxattr(f, "user.x", b"1")
    a3 = os.stat(f)
    assert a3.st_mtime_ns == b.st_mtime_ns
    assert a3.st_ctime_ns > a2.st_ctime_ns


def test_link_updates_ctime(mount):
    f = mount.p("f")
    wr(f, b"abc")
    b = os.stat(f)
    tick()
    os.link(f, mount.p("g"))
    a = os.stat(f)
    assert a.st_ctime_ns > b.st_ctime_ns
    assert a.st_mtime_ns == b.st_mtime_ns
    tick()
    os.unlink(mount.p("g"))
    a2 = os.stat(f)
    assert a2.st_ctime_ns > a.st_ctime_ns


def test_dir_times(mount):
    d = mount.p("d")
    os.mkdir(d)
    os.mkdir(mount.p("e"))

    def changed(op):
        b = os.stat(d)
        tick()
        op()
        a = os.stat(d)
        return a.st_mtime_ns > b.st_mtime_ns and a.st_ctime_ns > b.st_ctime_ns

    assert changed(lambda: wr(d / "f", b"1"))
    assert changed(lambda: os.mkdir(d / "sub"))
    assert changed(lambda: os.symlink("x", d / "sym"))
    assert changed(lambda: os.link(d / "f", d / "hard"))
    assert changed(lambda: os.mknod(d / "fifo", stat.S_IFIFO | 0o644))
    assert changed(lambda: os.unlink(d / "hard"))
    assert changed(lambda: os.rmdir(d / "sub"))
    assert changed(lambda: os.rename(d / "sym", d / "sym2"))
    assert changed(lambda: os.rename(d / "sym2", mount.p("e", "sym")))
    assert changed(lambda: os.rename(mount.p("e", "sym"), d / "back"))
    # changes to an entry's inode do not touch the directory
    b = os.stat(d)
    tick()
    os.chmod(d / "f", 0o600)
    wr(d / "f", b"more")
    os.setxattr(d / "f", "user.a", b"1")
    a = os.stat(d)
    assert (a.st_mtime_ns, a.st_ctime_ns) == (b.st_mtime_ns, b.st_ctime_ns)


# --------------------------------------------------------------------------
# special files


def test_mknod(mount):
    os.mkfifo(mount.p("fifo"), 0o640)
    os.mknod(mount.p("chr"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(mount.p("blk"), stat.S_IFBLK | 0o600, os.makedev(8, 17))
    os.mknod(mount.p("sock"), stat.S_IFSOCK | 0o644)
    os.mknod(mount.p("reg"), stat.S_IFREG | 0o604)

    def check():
        st = os.lstat(mount.p("fifo"))
        assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
        st = os.lstat(mount.p("chr"))
        assert stat.S_ISCHR(st.st_mode)
        assert st.st_rdev == os.makedev(1, 3)
        st = os.lstat(mount.p("blk"))
        assert stat.S_ISBLK(st.st_mode)
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (8, 17)
        assert stat.S_ISSOCK(os.lstat(mount.p("sock")).st_mode)
        st = os.lstat(mount.p("reg"))
        assert stat.S_ISREG(st.st_mode) and st.st_size == 0
        assert stat.S_IMODE(st.st_mode) == 0o604
    check()
    assert err_of(os.mknod, mount.p("fifo"), stat.S_IFIFO | 0o600) == "EEXIST"
    mount.remount()
    check()


def test_fifo_works(mount):
    p = mount.p("fifo")
    os.mkfifo(p)
    fd = os.open(p, os.O_RDWR)
    os.write(fd, b"through the pipe")
    assert os.read(fd, 100) == b"through the pipe"
    os.close(fd)


def test_unix_socket_bind_connect(mount):
    p = str(mount.p("sock"))
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        srv.bind(p)
        srv.listen(1)
        assert stat.S_ISSOCK(os.stat(p).st_mode)
        cli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        cli.connect(p)
        conn, _ = srv.accept()
        cli.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        conn.close()
        cli.close()
    finally:
        srv.close()
    os.unlink(p)


# --------------------------------------------------------------------------
# directories


def test_mkdir_rmdir(mount):
    d = mount.p("d")
    os.mkdir(d, 0o750)
    st = os.stat(d)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o750
    assert st.st_nlink == 2
    assert err_of(os.mkdir, d) == "EEXIST"
    wr(d / "f", b"x")
    assert err_of(os.rmdir, d) == "ENOTEMPTY"
    assert err_of(os.rmdir, d / "f") == "ENOTDIR"
    assert err_of(os.rmdir, mount.p("nope")) == "ENOENT"
    assert err_of(os.unlink, d) == "EISDIR"
    assert err_of(os.mkdir, mount.p("nope", "x")) == "ENOENT"
    assert err_of(os.mkdir, d / "f" / "x") == "ENOTDIR"
    os.unlink(d / "f")
    os.rmdir(d)
    assert not os.path.exists(d)
    assert os.listdir(mount.mnt) == []
    mount.remount()
    assert os.listdir(mount.mnt) == []


def test_dir_nlink(mount):
    d = mount.p("d")
    os.mkdir(d)
    root_nlink = os.stat(mount.mnt).st_nlink
    assert root_nlink == 3
    for i in range(3):
        os.mkdir(d / f"s{i}")
    wr(d / "file", b"x")
    os.symlink("s0", d / "link")
    assert os.stat(d).st_nlink == 5
    os.rmdir(d / "s2")
    assert os.stat(d).st_nlink == 4
    os.mkdir(mount.p("e"))
    os.rename(d / "s1", mount.p("e", "s1"))       # moves '..'
    assert os.stat(d).st_nlink == 3
    assert os.stat(mount.p("e")).st_nlink == 3
    assert os.stat(mount.p("e", "s1", "..")).st_ino == \
        os.stat(mount.p("e")).st_ino
    assert os.stat(mount.mnt).st_nlink == 4
    mount.remount()
    assert os.stat(d).st_nlink == 3
    assert os.stat(mount.p("e")).st_nlink == 3
    assert os.stat(mount.mnt).st_nlink == 4
    assert os.stat(mount.p("e", "s1")).st_nlink == 2


def test_readdir_lists_everything(mount):
    d = mount.p("d")
    os.mkdir(d)
    names = set()
    for i in range(300):
        n = f"entry-{i}" + "z" * (i % 200)
        names.add(n)
        if i % 3 == 0:
            os.mkdir(d / n)
        else:
            wr(d / n, b"")
    assert set(os.listdir(d)) == names
    for e in os.scandir(d):
        st = os.lstat(d / e.name)
        assert e.inode() == st.st_ino, e.name
        assert e.is_dir(follow_symlinks=False) == stat.S_ISDIR(st.st_mode)
    mount.remount()
    assert set(os.listdir(d)) == names
    assert len(os.listdir(d)) == len(names)


def test_readdir_stable_while_changing(mount):
    """Entries present throughout a listing are returned exactly once, even
    while other entries come and go between the reads of the listing."""
    d = mount.p("d")
    os.mkdir(d)
    keep = [f"keep-{i:04d}-" + "k" * 40 for i in range(1000)]
    churn = [f"churn-{i:04d}-" + "c" * 40 for i in range(400)]
    for n in keep + churn:
        fd = os.open(d / n, os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)
    random.Random(3).shuffle(churn)
    added = []
    seen = []
    with os.scandir(d) as it:
        for i, ent in enumerate(it):
            seen.append(ent.name)
            if i % 4 == 0 and churn:
                os.unlink(d / churn.pop())
                n = f"new-{i:04d}-" + "n" * 40
                fd = os.open(d / n, os.O_CREAT | os.O_WRONLY, 0o644)
                os.close(fd)
                added.append(n)
    counts = collections.Counter(seen)
    dups = sorted(n for n, c in counts.items() if c > 1)
    assert not dups, f"returned twice: {dups[:10]}"
    missing = set(keep) - set(seen)
    assert not missing, f"{len(missing)} entries never returned"
    allowed = set(keep) | {f"churn-{i:04d}-" + "c" * 40 for i in range(400)} \
        | set(added)
    assert set(seen) <= allowed
    assert len(added) > 100   # the listing did span many reads


def test_readdir_offsets_after_deleting_current(mount):
    """rm -rf style: unlink each entry right after reading it."""
    d = mount.p("d")
    os.mkdir(d)
    names = {f"f{i:05d}" for i in range(1500)}
    for n in names:
        fd = os.open(d / n, os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)
    seen = []
    with os.scandir(d) as it:
        for ent in it:
            seen.append(ent.name)
            os.unlink(d / ent.name)
    assert sorted(seen) == sorted(names)
    assert os.listdir(d) == []
    os.rmdir(d)


def test_dot_entries(mount):
    """getdents returns . and .. (ls -a)."""
    os.mkdir(mount.p("d"))
    out = run(["ls", "-a1", mount.p("d")]).stdout.split()
    assert out == [".", ".."]
    out = run(["ls", "-ai1", mount.p("d")]).stdout.split()
    inos = dict(zip(out[1::2], out[0::2]))
    assert int(inos["."]) == os.stat(mount.p("d")).st_ino


# --------------------------------------------------------------------------
# names: unlink, symlink, link, rename


def test_unlink_open_file(mount):
    f = mount.p("f")
    wr(f, b"data")
    fd = os.open(f, os.O_RDWR)
    os.unlink(f)
    assert not os.path.exists(f)
    assert os.listdir(mount.mnt) == []
    os.pwrite(fd, b"more", 4 * BS)
    assert os.pread(fd, 4, 0) == b"data"
    assert os.pread(fd, 4, 4 * BS) == b"more"
    assert os.fstat(fd).st_nlink == 0
    os.close(fd)
    assert err_of(os.stat, f) == "ENOENT"
    assert not [n for n in os.listdir(mount.mnt) if n.startswith(".fuse")]
    mount.remount()
    assert os.listdir(mount.mnt) == []


def test_rename_over_open_file(mount):
    a, b = mount.p("a"), mount.p("b")
    wr(a, b"new contents")
    wr(b, b"old contents" * 1000)
    fd = os.open(b, os.O_RDONLY)
    os.rename(a, b)
    assert rd(b) == b"new contents"
    assert os.pread(fd, 12, 0) == b"old contents"
    assert os.fstat(fd).st_nlink == 0
    os.close(fd)
    mount.remount()
    assert rd(b) == b"new contents"
    assert os.listdir(mount.mnt) == ["b"]


def test_symlink_readlink(mount):
    targets = {
        "rel": "some/relative/path",
        "abs": "/etc/hostname",
        "dangling": "no-such-file",
        "dot": ".",
        "long": "x/" * 2047 + "y",          # 4095 bytes
        "weird": "sp ace\tand\nnewline\xe9",
    }
    for n, t in targets.items():
        os.symlink(t, mount.p(n))
    wr(mount.p("real"), b"through link")
    os.symlink("real", mount.p("tofile"))

    def check():
        for n, t in targets.items():
            assert os.readlink(mount.p(n)) == t
            st = os.lstat(mount.p(n))
            assert stat.S_ISLNK(st.st_mode)
            assert st.st_size == len(os.fsencode(t))
            assert stat.S_IMODE(st.st_mode) == 0o777
        assert rd(mount.p("tofile")) == b"through link"
        assert err_of(os.stat, mount.p("dangling")) == "ENOENT"
    check()
    assert err_of(os.symlink, "x", mount.p("rel")) == "EEXIST"
    assert err_of(os.readlink, mount.p("real")) == "EINVAL"
    mount.remount()
    check()


def test_hard_links(mount):
    f = mount.p("f")
    wr(f, b"shared")
    os.mkdir(mount.p("d"))
    os.link(f, mount.p("d", "g"))
    os.link(f, mount.p("h"))
    sf, sg = os.stat(f), os.stat(mount.p("d", "g"))
    assert sf.st_ino == sg.st_ino
    assert sf.st_nlink == 3
    wr(mount.p("h"), b"changed via h")
    assert rd(f) == b"changed via h"
    assert err_of(os.link, mount.p("d"), mount.p("dl")) == "EPERM"
    assert err_of(os.link, f, mount.p("h")) == "EEXIST"
    assert err_of(os.link, mount.p("nope"), mount.p("x")) == "ENOENT"
    os.unlink(f)
    assert os.stat(mount.p("h")).st_nlink == 2
    mount.remount()
    sg, sh = os.stat(mount.p("d", "g")), os.stat(mount.p("h"))
    assert sg.st_ino == sh.st_ino == sf.st_ino
    assert sg.st_nlink == 2
    assert rd(mount.p("d", "g")) == b"changed via h"
    os.unlink(mount.p("h"))
    assert os.stat(mount.p("d", "g")).st_nlink == 1


def test_hard_linked_attrs_not_cached(tmp_path, cowfs_bin):
    """The kernel keeps no attributes of a file with two names: each stat
    is a GETATTR in the daemon's -d log, so that a link count the kernel
    lowered itself after an unlink that a concurrent reply had already
    counted cannot stick for an hour (attr_timeout() in fuse_ops.c; the
    race made test_parallel_metadata_stress see a named file with no
    link).  A file with one name is served from the cache."""
    store, mnt, log = tmp_path / "store", tmp_path / "mnt", tmp_path / "d.log"
    mnt.mkdir()
    run([cowfs_bin, "init", store])
    with open(log, "w") as out:
        d = subprocess.Popen([cowfs_bin, "mount", "-d", store, mnt],
                             stdout=out, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            if conftest.is_mounted(mnt):
                break
            time.sleep(0.05)
        assert conftest.is_mounted(mnt), log.read_text()[-2000:]
        a = mnt / "a"
        a.write_bytes(b"x")
        ino = os.stat(a).st_ino

        def getattrs():
            return sum(1 for ln in log.read_text().splitlines()
                       if "opcode: GETATTR" in ln and f"nodeid: {ino}," in ln)
        n = getattrs()
        for _ in range(3):
            assert os.stat(a).st_nlink == 1
        assert getattrs() == n, "one name: attributes cached"
        os.link(a, mnt / "b")
        n = getattrs()
        for _ in range(3):
            assert os.stat(a).st_nlink == 2
        assert getattrs() >= n + 3, "two names: each stat asks"
        os.unlink(mnt / "b")
        assert os.stat(a).st_nlink == 1
        n = getattrs()
        os.stat(a)
        assert getattrs() == n, "one name again: cached again"
    finally:
        subprocess.run(["fusermount3", "-u", mnt], capture_output=True)
        d.wait(timeout=60)


def test_rename_basic(mount, ref):
    def go(root):
        out = []
        wr(root / "a", b"A")
        wr(root / "b", b"B")
        os.mkdir(root / "d")
        os.mkdir(root / "e")
        wr(root / "e" / "inside", b"I")
        os.mkdir(root / "empty")
        ino_a = os.stat(root / "a").st_ino
        os.rename(root / "a", root / "b")             # replace a file
        out.append(rd(root / "b"))
        out.append(os.stat(root / "b").st_ino == ino_a)
        out.append(err_of(os.rename, root / "d", root / "e"))     # ENOTEMPTY
        out.append(err_of(os.rename, root / "b", root / "d"))     # EISDIR
        out.append(err_of(os.rename, root / "d", root / "b"))     # ENOTDIR
        out.append(err_of(os.rename, root / "d", root / "d" / "x"))  # EINVAL
        out.append(err_of(os.rename, root / "nope", root / "x"))  # ENOENT
        os.rename(root / "d", root / "empty")          # dir over empty dir
        out.append(sorted(os.listdir(root)))
        os.rename(root / "b", root / "b")              # same name: no-op
        os.link(root / "b", root / "b2")
        os.rename(root / "b", root / "b2")             # same inode: no-op
        out.append(sorted(os.listdir(root)))
        os.rename(root / "e", root / "empty" / "e")
        out.append(rd(root / "empty" / "e" / "inside"))
        out.append(os.stat(root / "empty").st_nlink)
        out.append(os.stat(root).st_nlink)
        return out
    got, want = both(mount, ref, go)
    assert got == want
    assert got[2:7] == ["ENOTEMPTY", "EISDIR", "ENOTDIR", "EINVAL", "ENOENT"]
    mount.remount()
    assert rd(mount.p("empty", "e", "inside")) == b"I"
    assert sorted(os.listdir(mount.mnt)) == ["b", "b2", "empty"]


def test_rename_noreplace(mount):
    wr(mount.p("a"), b"A")
    wr(mount.p("b"), b"B")
    assert err_of(renameat2, mount.p("a"), mount.p("b"), RENAME_NOREPLACE) \
        == "EEXIST"
    assert rd(mount.p("a")) == b"A" and rd(mount.p("b")) == b"B"
    renameat2(mount.p("a"), mount.p("c"), RENAME_NOREPLACE)
    assert sorted(os.listdir(mount.mnt)) == ["b", "c"]
    mount.remount()
    assert rd(mount.p("c")) == b"A"


def test_rename_exchange(mount):
    wr(mount.p("a"), b"A")
    os.mkdir(mount.p("d1"))
    os.mkdir(mount.p("d2"))
    os.mkdir(mount.p("d1", "sub"))
    wr(mount.p("d1", "sub", "x"), b"X")
    ino_a = os.stat(mount.p("a")).st_ino
    ino_sub = os.stat(mount.p("d1", "sub")).st_ino
    # file <-> dir, across directories
    renameat2(mount.p("a"), mount.p("d1", "sub"), RENAME_EXCHANGE)
    assert os.stat(mount.p("d1", "sub")).st_ino == ino_a
    assert os.stat(mount.p("a")).st_ino == ino_sub
    assert rd(mount.p("a", "x")) == b"X"
    assert rd(mount.p("d1", "sub")) == b"A"
    assert os.stat(mount.p("a", "..")).st_ino == os.stat(mount.mnt).st_ino
    assert os.stat(mount.p("d1")).st_nlink == 2
    assert os.stat(mount.mnt).st_nlink == 5
    assert err_of(renameat2, mount.p("a"), mount.p("missing"),
                  RENAME_EXCHANGE) == "ENOENT"
    assert err_of(renameat2, mount.p("a"), mount.p("d2"),
                  RENAME_EXCHANGE | RENAME_NOREPLACE) == "EINVAL"
    mount.remount()
    assert os.stat(mount.p("d1", "sub")).st_ino == ino_a
    assert rd(mount.p("a", "x")) == b"X"
    assert os.stat(mount.p("d1")).st_nlink == 2
    assert os.stat(mount.mnt).st_nlink == 5


def test_name_max(mount, ref):
    def go(root):
        ok = "n" * 255
        bad = "n" * 256
        return [err_of(wr, root / ok, b"x"),
                err_of(wr, root / bad, b"x"),
                err_of(os.mkdir, root / bad),
                err_of(os.symlink, "t", root / bad),
                err_of(os.link, root / ok, root / bad),
                err_of(os.rename, root / ok, root / bad),
                err_of(os.stat, root / bad),
                os.listdir(root)]
    got, want = both(mount, ref, go)
    assert got == want
    assert got[1] == "ENAMETOOLONG"


# --------------------------------------------------------------------------
# xattrs and ACLs


def test_xattrs(mount):
    f = mount.p("f")
    wr(f, b"x")
    os.setxattr(f, "user.a", b"1")
    os.setxattr(f, "user.empty", b"")
    os.setxattr(f, "trusted.t", b"\x00\x01\x02")
    os.setxattr(f, "security.s", b"sec")
    # ext4 (the host backend) keeps xattrs in one 4K block
    big = rand(3000 if mount.host else 65536, 9)
    os.setxattr(f, "user.big", big)
    assert os.getxattr(f, "user.a") == b"1"
    assert os.getxattr(f, "user.empty") == b""
    assert set(os.listxattr(f)) >= {"user.a", "user.empty", "trusted.t",
                                     "security.s", "user.big"}
    assert err_of(os.setxattr, f, "user.a", b"2", os.XATTR_CREATE) == "EEXIST"
    assert err_of(os.setxattr, f, "user.zz", b"2", os.XATTR_REPLACE) \
        == "ENODATA"
    assert err_of(os.getxattr, f, "user.zz") == "ENODATA"
    assert err_of(os.removexattr, f, "user.zz") == "ENODATA"
    os.setxattr(f, "user.a", b"replaced", os.XATTR_REPLACE)
    os.setxattr(f, "user.new", b"n", os.XATTR_CREATE)
    os.removexattr(f, "user.new")
    assert err_of(os.setxattr, f, "user." + "x" * 251, b"v") == "ERANGE"
    assert err_of(os.setxattr, f, "user.toobig", bytes(65537)) in \
        ("E2BIG", "ERANGE", "ENOSPC")
    os.mkdir(mount.p("d"))
    os.setxattr(mount.p("d"), "user.dir", b"D")
    os.symlink("f", mount.p("l"))
    os.setxattr(mount.p("l"), "trusted.onlink", b"L", follow_symlinks=False)
    assert err_of(os.setxattr, mount.p("l"), "user.x", b"1",
                  follow_symlinks=False) == "EPERM"

    def check():
        assert os.getxattr(f, "user.a") == b"replaced"
        assert os.getxattr(f, "user.big") == big
        assert os.getxattr(f, "trusted.t") == b"\x00\x01\x02"
        assert os.getxattr(f, "security.s") == b"sec"
        assert os.getxattr(f, "user.empty") == b""
        assert err_of(os.getxattr, f, "user.new") == "ENODATA"
        names = [n for n in os.listxattr(f) if not n.startswith("system.")]
        assert sorted(names) == sorted(["user.a", "user.empty", "trusted.t",
                                        "security.s", "user.big"])
        assert os.getxattr(mount.p("d"), "user.dir") == b"D"
        assert os.getxattr(mount.p("l"), "trusted.onlink",
                           follow_symlinks=False) == b"L"
        assert "trusted.onlink" not in os.listxattr(f)
    check()
    mount.remount()
    check()


@pytest.mark.needs_store
def test_xattr_many(mount):
    f = mount.p("f")
    wr(f, b"")
    want = {f"user.k{i:03d}": rand(i * 13, i) for i in range(200)}
    for k, v in want.items():
        os.setxattr(f, k, v)
    for k in list(want)[::3]:
        os.removexattr(f, k)
        del want[k]
    mount.remount()
    names = sorted(n for n in os.listxattr(f) if n.startswith("user."))
    assert names == sorted(want)
    for k, v in want.items():
        assert os.getxattr(f, k) == v


def getfacl(path):
    out = run(["getfacl", "-cpn", path]).stdout
    return sorted(ln for ln in out.splitlines() if ln and not
                  ln.startswith("#"))


@pytest.mark.mount_opts("allow_other")
def test_acl_grants_access(mount, user):
    f = mount.p("secret")
    wr(f, b"top secret")
    os.chmod(f, 0o600)
    read = f"open({str(f)!r}, 'rb').read()"
    assert user.errno_of(read) == "EACCES"
    run(["setfacl", "-m", f"u:{user.name}:r", f])
    assert f"user:{user.uid}:r--" in getfacl(f)
    assert user.errno_of(read) == "OK"
    assert user.errno_of(f"open({str(f)!r}, 'ab')") == "EACCES"
    mount.remount()
    assert f"user:{user.uid}:r--" in getfacl(f)
    assert user.errno_of(read) == "OK"
    run(["setfacl", "-x", f"u:{user.name}", f])
    assert user.errno_of(read) == "EACCES"
    run(["setfacl", "-m", f"u:{user.name}:rw", f])
    run(["setfacl", "-b", f])
    assert user.errno_of(read) == "EACCES"
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600


def test_acl_like_ext4(mount, ref):
    """Default ACLs, inheritance and the mask/chmod interplay, compared with
    getfacl on ext4."""
    def go(root):
        d = root / "d"
        os.mkdir(d)
        run(["setfacl", "-m", "u:1234:rwx,g:99:rx", d])
        run(["setfacl", "-d", "-m", "u:1234:rw,g::r,o::-", d])
        wr(d / "f", b"x", 0o666)
        os.mkdir(d / "sub", 0o777)
        os.chmod(d / "f", 0o640)        # sets the mask
        res = [getfacl(d), getfacl(d / "f"), getfacl(d / "sub"),
               oct(os.stat(d / "f").st_mode), oct(os.stat(d / "sub").st_mode)]
        run(["setfacl", "-k", d])
        wr(d / "g", b"y", 0o666)
        res.append(getfacl(d / "g"))
        return res
    got, want = both(mount, ref, go)
    assert got == want
    mount.remount()
    d = mount.mnt / "d"
    assert [getfacl(d / "f"), getfacl(d / "sub")] == want[1:3]


# --------------------------------------------------------------------------
# permissions as an unprivileged user (through allow_other)


@pytest.mark.mount_opts("allow_other")
def test_user_permissions(mount, user):
    root_file = mount.p("rootfile")
    wr(root_file, b"root's")
    os.chmod(root_file, 0o644)
    assert user.errno_of(f"open({str(root_file)!r}, 'rb').read()") == "OK"
    assert user.errno_of(f"open({str(root_file)!r}, 'ab')") == "EACCES"
    assert user.errno_of(f"os.truncate({str(root_file)!r}, 0)") == "EACCES"
    assert user.errno_of(f"os.unlink({str(root_file)!r})") == "EACCES"
    assert user.errno_of(f"os.chmod({str(root_file)!r}, 0o666)") == "EPERM"
    assert user.errno_of(f"os.utime({str(root_file)!r}, (1, 1))") == "EPERM"
    assert user.errno_of(
        f"open({str(mount.p('new'))!r}, 'w')") == "EACCES"
    priv = mount.p("private")
    wr(priv, b"p")
    os.chmod(priv, 0o600)
    assert user.errno_of(f"open({str(priv)!r}, 'rb')") == "EACCES"

    tmp = mount.p("tmp")
    os.mkdir(tmp)
    os.chmod(tmp, 0o1777)
    mine = tmp / "mine"
    assert user.errno_of(f"open({str(mine)!r}, 'w').write('u')") == "OK"
    st = os.stat(mine)
    assert (st.st_uid, st.st_gid) == (user.uid, user.gid)
    assert user.errno_of(f"os.chmod({str(mine)!r}, 0o600)") == "OK"
    assert user.errno_of(f"os.utime({str(mine)!r}, (1, 1))") == "OK"
    assert user.errno_of(f"os.chown({str(mine)!r}, 0, -1)") == "EPERM"
    assert user.errno_of(f"os.chown({str(mine)!r}, {user.uid + 1}, -1)") \
        == "EPERM"
    assert user.errno_of(f"os.chown({str(mine)!r}, -1, 0)") == "EPERM"
    assert user.errno_of(f"os.mkdir({str(tmp / 'udir')!r})") == "OK"
    assert os.stat(tmp / "udir").st_uid == user.uid
    # sticky: root's file in the 1777 dir cannot be removed by the user
    wr(tmp / "rootowned", b"r")
    os.chmod(tmp / "rootowned", 0o666)
    assert user.errno_of(f"os.unlink({str(tmp / 'rootowned')!r})") == "EPERM"
    assert user.errno_of(
        f"os.rename({str(tmp / 'rootowned')!r}, {str(tmp / 'x')!r})") \
        == "EPERM"
    # ...but can be written (mode 666) and utime'd to now (write access)
    assert user.errno_of(
        f"open({str(tmp / 'rootowned')!r}, 'ab').write(b'u')") == "OK"
    assert user.errno_of(f"os.utime({str(tmp / 'rootowned')!r})") == "OK"
    assert user.errno_of(f"os.unlink({str(mine)!r})") == "OK"
    mount.remount()
    assert os.stat(tmp / "udir").st_uid == user.uid
    assert rd(tmp / "rootowned") == b"ru"


@pytest.mark.mount_opts("allow_other")
def test_user_setgid_dir(mount, user):
    d = mount.p("sg")
    os.mkdir(d)
    os.chown(d, 0, 4242)
    os.chmod(d, 0o2777)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o2777
    assert user.errno_of(f"open({str(d / 'f')!r}, 'w')") == "OK"
    assert user.errno_of(f"os.mkdir({str(d / 'sub')!r}, 0o755)") == "OK"
    st = os.stat(d / "f")
    assert (st.st_uid, st.st_gid) == (user.uid, 4242)
    st = os.stat(d / "sub")
    assert (st.st_uid, st.st_gid) == (user.uid, 4242)
    assert st.st_mode & stat.S_ISGID
    # root creating there too
    os.mkdir(d / "rootsub")
    assert os.stat(d / "rootsub").st_gid == 4242
    assert os.stat(d / "rootsub").st_mode & stat.S_ISGID
    mount.remount()
    assert os.stat(d / "f").st_gid == 4242
    assert os.stat(d / "sub").st_mode & stat.S_ISGID


@pytest.mark.mount_opts("allow_other")
def test_user_write_clears_setuid(mount, user):
    f = mount.p("suid")
    wr(f, b"x")
    os.chmod(f, 0o4777)
    assert user.errno_of(f"open({str(f)!r}, 'ab').write(b'y')") == "OK"
    assert not os.stat(f).st_mode & stat.S_ISUID


# The kernel leaves clearing setuid/setgid to the daemon when it has
# FUSE_CAP_HANDLE_KILLPRIV_V2 (libfuse >= 3.16); without it, to itself.
# Either way the result must be the VFS's, in every mode.
@pytest.mark.mount_opts("allow_other")
@pytest.mark.parametrize("how", ["write", "append", "truncate", "otrunc"])
def test_user_change_clears_setuid_setgid(mount, user, how):
    f = mount.p("s")
    wr(f, b"abc")
    os.chmod(f, 0o6777)
    stmt = {
        "write": f"os.pwrite(os.open({str(f)!r}, os.O_WRONLY), b'y', 1)",
        "append": f"open({str(f)!r}, 'ab').write(b'y')",
        "truncate": f"os.truncate({str(f)!r}, 1)",
        "otrunc": f"os.close(os.open({str(f)!r}, os.O_WRONLY | os.O_TRUNC))",
    }[how]
    assert user.errno_of(stmt) == "OK"
    mode = os.stat(f).st_mode
    assert not mode & (stat.S_ISUID | stat.S_ISGID), oct(mode)
    mount.remount()
    assert not os.stat(f).st_mode & (stat.S_ISUID | stat.S_ISGID)


@pytest.mark.mount_opts("allow_other")
def test_setgid_without_group_exec_is_kept_on_write(mount, user):
    f = mount.p("s")
    wr(f, b"abc")
    os.chmod(f, 0o2666)	# setgid, no group exec: a locking mark, kept
    assert user.errno_of(f"open({str(f)!r}, 'ab').write(b'y')") == "OK"
    assert os.stat(f).st_mode & stat.S_ISGID


def test_root_write_keeps_setuid_chown_clears_it(mount):
    f = mount.p("s")
    wr(f, b"abc")
    os.chmod(f, 0o6755)
    with open(f, "r+b") as fh:	# root has CAP_FSETID
        fh.write(b"xyz")
        fh.flush()
        os.fsync(fh.fileno())
    os.truncate(f, 2)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o6755
    os.chown(f, 1, 1)	# chown clears both, root or not
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o755
    os.chmod(f, 0o6755)
    os.chown(f, 1, 1)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o755
    d = mount.p("d")
    os.mkdir(d)
    os.chmod(d, 0o2755)
    os.chown(d, 1, 1)	# not on a directory
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o2755
    mount.remount()
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o755


def test_write_drops_file_capability(mount):
    f = mount.p("cap")
    wr(f, b"abc")
    # security.capability: VFS_CAP_REVISION_2, cap_net_raw permitted
    cap = bytes.fromhex("0000000200200000000000000000000000000000")
    os.setxattr(f, "security.capability", cap)
    with open(f, "r+b") as fh:
        fh.write(b"x")
    assert "security.capability" not in os.listxattr(f)


@pytest.mark.needs_store
def test_no_allow_other_by_default(mount, user):
    """Without allow_other, other users cannot even look in."""
    wr(mount.p("f"), b"x")
    os.chmod(mount.p("f"), 0o644)
    assert user.errno_of(f"os.stat({str(mount.p('f'))!r})") == "EACCES"


# --------------------------------------------------------------------------
# statfs, fsync


def test_statfs(mount):
    sv = os.statvfs(mount.mnt)
    assert sv.f_bsize > 0 and sv.f_frsize > 0
    assert sv.f_blocks > 0
    assert 0 < sv.f_bavail <= sv.f_bfree <= sv.f_blocks
    assert sv.f_namemax == 255
    assert sv.f_files >= sv.f_ffree
    assert sv.f_blocks * sv.f_frsize >= 64 * MiB


def test_fsync(mount):
    f = mount.p("f")
    fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o644)
    os.write(fd, b"durable")
    os.fsync(fd)
    os.pwrite(fd, b"!", 7)
    os.fdatasync(fd)
    os.close(fd)
    dfd = os.open(mount.mnt, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)
    assert rd(f) == b"durable!"
    os.sync()


# --------------------------------------------------------------------------
# copy_file_range (the block-sharing path) and copy-on-write


def test_copy_file_range_cow(mount):
    src, dst = mount.p("src"), mount.p("dst")
    data = rand(10 * BS + 777, 10)
    wr(src, data)
    fi = os.open(src, os.O_RDONLY)
    fo = os.open(dst, os.O_CREAT | os.O_WRONLY, 0o644)
    n, total = 0, 0
    while total < len(data):
        n = os.copy_file_range(fi, fo, len(data) - total, total, total)
        assert n > 0
        total += n
    # and an unaligned range into the middle of another file
    other = mount.p("other")
    wr(other, b"o" * (4 * BS))
    fo2 = os.open(other, os.O_WRONLY)
    done = 0
    while done < 2 * BS + 3:
        done += os.copy_file_range(fi, fo2, 2 * BS + 3 - done, 100 + done,
                                   BS - 1 + done)
    for fd in (fi, fo, fo2):
        os.close(fd)
    assert rd(dst) == data
    want_other = bytearray(b"o" * (4 * BS))
    want_other[BS - 1:BS - 1 + 2 * BS + 3] = data[100:100 + 2 * BS + 3]
    assert rd(other) == bytes(want_other)
    # copy-on-write: writes to either side do not show on the other
    fd = os.open(src, os.O_WRONLY)
    os.pwrite(fd, b"S" * 10, BS + 5)
    os.close(fd)
    fd = os.open(dst, os.O_WRONLY)
    os.pwrite(fd, b"D" * 10, 2 * BS + 5)
    os.close(fd)
    want_src = bytearray(data)
    want_src[BS + 5:BS + 15] = b"S" * 10
    want_dst = bytearray(data)
    want_dst[2 * BS + 5:2 * BS + 15] = b"D" * 10
    assert rd(src) == bytes(want_src)
    assert rd(dst) == bytes(want_dst)
    os.truncate(src, 0)
    assert rd(dst) == bytes(want_dst)
    mount.remount()
    assert rd(dst) == bytes(want_dst)
    assert rd(other) == bytes(want_other)
    os.unlink(dst)
    assert rd(other) == bytes(want_other)


def test_cp_shares_and_diverges(mount):
    """Plain cp inside the mount (copy_file_range), then divergence."""
    src = mount.p("a")
    data = rand(4 * MiB, 11)
    wr(src, data)
    run(["cp", src, mount.p("b")])
    assert sha256_file(mount.p("b")) == sha256_file(src)
    with open(mount.p("b"), "r+b") as fh:
        fh.seek(MiB)
        fh.write(b"changed")
    assert rd(src) == data
    mount.remount()
    assert rd(src) == data
    d = rd(mount.p("b"))
    assert d[:MiB] == data[:MiB] and d[MiB:MiB + 7] == b"changed"
    assert d[MiB + 7:] == data[MiB + 7:]


# --------------------------------------------------------------------------
# persistence


def build_tree(root):
    """A tree with a bit of everything; returns nothing."""
    rng = random.Random(42)
    os.mkdir(root / "a")
    os.mkdir(root / "a" / "b")
    os.mkdir(root / "a" / "b" / "c", 0o700)
    os.mkdir(root / "empty")
    for i in range(60):
        d = root / ["", "a", "a/b", "a/b/c"][i % 4]
        size = rng.choice([0, 1, 100, 4095, BS, BS + 1, 3 * BS - 7,
                           rng.randrange(0, 400 * KiB)])
        f = d / f"file{i}"
        wr(f, rng.randbytes(size), rng.choice([0o644, 0o600, 0o755, 0o444]))
        os.chmod(f, rng.choice([0o644, 0o600, 0o755, 0o444, 0o4755]))
    fd = os.open(root / "sparse", os.O_CREAT | os.O_WRONLY, 0o644)
    os.pwrite(fd, b"s", 10 * MiB)
    os.close(fd)
    os.link(root / "file4", root / "a" / "hard1")
    os.link(root / "file4", root / "a" / "b" / "hard2")
    os.symlink("../file8", root / "a" / "sym")
    os.symlink("/does/not/exist", root / "broken")
    os.mkfifo(root / "a" / "fifo")
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.setxattr(root / "a", "user.dirattr", b"on a dir")
    os.setxattr(root / "file12", "user.x", rng.randbytes(300))
    os.setxattr(root / "file12", "trusted.y", b"t")
    os.chown(root / "file16", 1001, 1002)
    os.chown(root / "a" / "b", 55, 66)
    os.utime(root / "file20", ns=(1, 2))


def test_tree_identical_after_remount(mount, ref):
    build_tree(mount.mnt)
    build_tree(ref)
    snap = tree_snapshot(mount.mnt, times=True, inodes=True)
    assert tree_snapshot(mount.mnt) == tree_snapshot(ref)
    mount.remount()
    assert tree_snapshot(mount.mnt, times=True, inodes=True) == snap
    mount.remount()
    assert tree_snapshot(mount.mnt, times=True, inodes=True) == snap


def test_inode_numbers_unique_and_stable(mount):
    inos = {}
    for i in range(100):
        d = mount.p(f"d{i % 7}")
        d.mkdir(exist_ok=True)
        wr(d / f"f{i}", b"x" * i)
        if i % 10 == 0:
            os.symlink("x", d / f"l{i}")
    for i in range(0, 100, 9):
        os.unlink(mount.p(f"d{i % 7}", f"f{i}"))
    for i in range(100, 150):
        wr(mount.p(f"new{i}"), b"y")
    os.link(mount.p("new100"), mount.p("d0", "link100"))
    for dirpath, dirnames, filenames in os.walk(mount.mnt):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            inos[os.path.relpath(p, mount.mnt)] = os.lstat(p).st_ino
    by_ino = collections.defaultdict(list)
    for p, i in inos.items():
        by_ino[i].append(p)
    shared = {i: ps for i, ps in by_ino.items() if len(ps) > 1}
    assert [sorted(v) for v in shared.values()] == \
        [["d0/link100", "new100"]]
    assert os.stat(mount.mnt).st_ino not in by_ino
    mount.remount()
    for p, i in inos.items():
        assert os.lstat(mount.p(p)).st_ino == i, p


def test_times_stable_across_remount(mount):
    f = mount.p("f")
    wr(f, b"x")
    os.mkdir(mount.p("d"))
    os.utime(f, ns=(1111111111222222222, 1333333333444444444))
    before = {n: os.lstat(mount.p(n)) for n in ("f", "d")}
    before["/"] = os.lstat(mount.mnt)
    mount.remount()
    for n, b in before.items():
        a = os.lstat(mount.mnt if n == "/" else mount.p(n))
        assert (a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns) == \
            (b.st_atime_ns, b.st_mtime_ns, b.st_ctime_ns), n


def test_commit_option_and_many_remounts(mount):
    mount.remount("commit=1")
    for i in range(5):
        wr(mount.p(f"f{i}"), rand(i * 30000, i))
        mount.remount()
    for i in range(5):
        assert rd(mount.p(f"f{i}")) == rand(i * 30000, i)


def test_concurrent_writers(mount):
    """Threads writing disjoint parts of one file and separate files."""
    f = mount.p("shared")
    wr(f, bytes(8 * BS * 4))
    errors = []

    def worker(k):
        try:
            fd = os.open(f, os.O_WRONLY)
            for j in range(8):
                os.pwrite(fd, bytes([k + 1]) * (BS - 3), (k * 8 + j) * BS + 1)
            os.close(fd)
            wr(mount.p(f"own{k}"), rand(300 * KiB + k, k))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    d = rd(f)
    for k in range(4):
        for j in range(8):
            off = (k * 8 + j) * BS
            assert d[off] == 0 and d[off + BS - 2] == 0
            assert d[off + 1:off + BS - 2] == bytes([k + 1]) * (BS - 3)
        assert rd(mount.p(f"own{k}")) == rand(300 * KiB + k, k)


# --------------------------------------------------------------------------
# journal replay after a daemon killed with SIGKILL


def kill_daemon(mount):
    conftest.kill_daemon(mount.store, mount.mnt)


def mixed_metadata_workload(root):
    """Every kind of metadata change, to be replayed from the journal."""
    build_tree(root)
    os.rename(root / "a" / "b", root / "b-moved")
    os.rename(root / "file0", root / "empty" / "file0-moved")
    os.unlink(root / "a" / "hard1")
    os.truncate(root / "file8", 100)
    os.truncate(root / "file12", 5 * BS + 3)
    fd = os.open(root / "file24", os.O_RDWR)
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 1, 2 * BS)
    os.close(fd)
    os.removexattr(root / "file12", "trusted.y")
    os.setxattr(root / "empty", "user.later", b"L")
    os.chmod(root / "a", 0o711)
    os.symlink("b-moved/c", root / "to-c")
    os.mkdir(root / "gone")
    os.rmdir(root / "gone")
    wr(root / "doomed", b"d" * 1000)
    os.unlink(root / "doomed")
    renameat2(root / "file28", root / "file32", RENAME_EXCHANGE)
    os.utime(root / "file36", ns=(123, 456))


@pytest.mark.needs_store
@pytest.mark.mount_opts("commit=3600")
def test_journal_replay_exact(mount):
    """After fsync (which commits the journal) and kill -9, the remounted
    tree is exactly what was there: contents, modes, owners, links,
    xattrs, inode numbers and ns times."""
    mixed_metadata_workload(mount.mnt)
    want = tree_snapshot(mount.mnt, times=True, inodes=True)
    fd = os.open(mount.p("file40"), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    kill_daemon(mount)
    p = mount.fsck()
    assert p is None or p.returncode == 0, p.stdout + p.stderr
    mount.mount()
    got = tree_snapshot(mount.mnt, times=True, inodes=True)
    diff = {k: (got.get(k), want.get(k)) for k in set(got) | set(want)
            if got.get(k) != want.get(k)}
    assert not diff, diff
    # and the replayed store keeps working and checkpoints cleanly
    wr(mount.p("after"), b"after replay")
    mount.remount()
    assert rd(mount.p("after")) == b"after replay"
    want["after"] = tree_snapshot(mount.mnt)["after"]


@pytest.mark.needs_store
@pytest.mark.mount_opts("commit=1")
def test_commit_interval_without_fsync(mount):
    """With commit=1 and no fsync, what was done 2.5 s before a kill -9 is
    there after the remount (the daemon died, the host did not)."""
    mixed_metadata_workload(mount.mnt)
    want = tree_snapshot(mount.mnt, times=True, inodes=True)
    time.sleep(2.5)
    kill_daemon(mount)
    mount.mount()
    got = tree_snapshot(mount.mnt, times=True, inodes=True)
    diff = {k: (got.get(k), want.get(k)) for k in set(got) | set(want)
            if got.get(k) != want.get(k)}
    assert not diff, diff


# --------------------------------------------------------------------------
# large and absurd offsets


def test_offsets_beyond_4gib(mount, ref):
    def go(root):
        f = root / "far"
        fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.pwrite(fd, b"five", 5 * GiB + 3)
            os.pwrite(fd, b"tera", (1 << 40) + BS - 2)
            out = [os.fstat(fd).st_size,
                   os.pread(fd, 8, 5 * GiB),
                   os.pread(fd, 8, (1 << 40) + BS - 4),
                   os.lseek(fd, 0, os.SEEK_DATA) // BS,
                   os.lseek(fd, 5 * GiB + BS, os.SEEK_DATA) // BS]
            os.ftruncate(fd, 5 * GiB + 5)
            out += [os.fstat(fd).st_size, os.pread(fd, 10, 5 * GiB + 2)]
            return out, os.fstat(fd).st_blocks * 512
        finally:
            os.close(fd)
    (got, blocks), (want, _) = both(mount, ref, go)
    assert got == want
    assert blocks <= 4 * BS
    mount.remount()
    assert os.stat(mount.p("far")).st_size == 5 * GiB + 5
    assert pread_all(mount.p("far"), 5 * GiB + 2, 10) == b"\0fi"


@pytest.mark.parametrize("off", [(1 << 44) - 1, 1 << 50, 1 << 62,
                                 (1 << 63) - 2])
def test_absurd_offsets_fail_cleanly(mount, off):
    """A write, truncate or fallocate at an absurd offset either works
    (and reads back) or fails with a sane errno; the store stays sound
    (the fixture runs fsck) and the daemon stays up."""
    f = mount.p("f")
    wr(f, b"base")
    fd = os.open(f, os.O_RDWR)
    try:
        r = err_of(os.pwrite, fd, b"xy", off)
        assert r in ("OK", "EFBIG", "EINVAL", "ENOSPC"), r
        if r == "OK":
            # with the writeback cache the kernel takes the write and the
            # daemon's answer shows at fsync
            r = err_of(os.fsync, fd)
            assert r in ("OK", "EFBIG", "EINVAL", "ENOSPC", "EIO"), r
        if r == "OK":
            assert os.pread(fd, 2, off) == b"xy"
            assert os.fstat(fd).st_size == off + 2
        r = err_of(os.ftruncate, fd, off)
        assert r in ("OK", "EFBIG", "EINVAL", "ENOSPC"), r
        r = err_of(fallocate, fd, 0, off, BS)
        assert r in ("OK", "EFBIG", "EINVAL", "ENOSPC", "EOPNOTSUPP"), r
        os.ftruncate(fd, 4)
        assert os.pread(fd, 10, 0) == b"base"
    finally:
        os.close(fd)
    mount.remount()
    assert rd(f) == b"base"


def test_huge_ranges_are_fast(mount):
    """Punching or zeroing a 2^62-byte range, or seeking in it, must not
    walk it block by block."""
    f = mount.p("f")
    wr(f, rand(3 * BS, 12))
    fd = os.open(f, os.O_RDWR)
    t0 = time.monotonic()
    try:
        r = err_of(fallocate, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                   BS, 1 << 62)
        assert r in ("OK", "EFBIG", "EINVAL"), r
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, BS,
                  1 << 40)
        r = err_of(fallocate, fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                   2 * BS, 1 << 62)
        assert r in ("OK", "EFBIG", "EINVAL", "EOPNOTSUPP"), r
        assert err_of(os.lseek, fd, 1 << 62, os.SEEK_DATA) == "ENXIO"
        assert os.lseek(fd, 0, os.SEEK_HOLE) == BS
        assert os.fstat(fd).st_size == 3 * BS
        assert os.pread(fd, 3 * BS, 0)[BS:] == bytes(2 * BS)
    finally:
        os.close(fd)
    assert time.monotonic() - t0 < 10


def test_many_small_appends(mount):
    """10 000 small appends (a log file): correct, and not quadratic."""
    f = mount.p("log")
    t0 = time.monotonic()
    fd = os.open(f, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
    for i in range(10000):
        os.write(fd, b"line %05d\n" % i)
    os.close(fd)
    elapsed = time.monotonic() - t0
    want = b"".join(b"line %05d\n" % i for i in range(10000))
    assert rd(f) == want
    mount.remount()
    assert rd(f) == want
    assert elapsed < 60, f"{elapsed:.1f} s for 10 000 appends"


# --------------------------------------------------------------------------
# O_DIRECT, O_TMPFILE


def test_o_direct(mount):
    f = mount.p("direct")
    fd = os.open(f, os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o644)
    try:
        buf = mmap.mmap(-1, 2 * BS)
        buf.write(rand(2 * BS, 13))
        assert os.pwrite(fd, buf, BS) == 2 * BS
        back = mmap.mmap(-1, 2 * BS)
        assert os.preadv(fd, [back], BS) == 2 * BS
        assert back[:] == buf[:]
    finally:
        os.close(fd)
    # buffered readers see the direct writes
    assert rd(f) == bytes(BS) + buf[:]
    mount.remount()
    assert rd(f) == bytes(BS) + buf[:]


def status_json(m):
    return json.loads(m.cowfs("status", "--json", m.mnt, check=True).stdout)


def open_tmpfile(mount, d=None, flags=0, mode=0o600):
    """open(d, O_TMPFILE|O_RDWR|flags); skips when the binary's libfuse
    (before 3.16 here) has no O_TMPFILE request."""
    if not mount.host and not conftest.built_with(mount.bin, "O_TMPFILE"):
        pytest.skip("built with a libfuse without O_TMPFILE (3.14)")
    return os.open(d or mount.mnt, os.O_TMPFILE | os.O_RDWR | flags, mode)


def link_fd(fd, dst):
    """Name an open file: linkat("/proc/self/fd/N", AT_SYMLINK_FOLLOW), as
    glibc's documentation shows for O_TMPFILE (os.link calls link(2))."""
    f = libc.linkat
    f.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                  ctypes.c_char_p, ctypes.c_int]
    _check(f(AT_FDCWD, f"/proc/self/fd/{fd}".encode(), AT_FDCWD,
             os.fsencode(dst), 0x400))


def test_o_tmpfile(mount):
    """An O_TMPFILE has no name and no link until linkat names it; its
    directory does not change until then; the umask applies; the named
    file keeps every byte across a remount."""
    d = mount.p("d")
    d.mkdir()
    before = os.stat(d)
    old = os.umask(0o027)
    try:
        fd = open_tmpfile(mount, d, mode=0o666)
    finally:
        os.umask(old)
    data = rand(3 * BS + 5, 41)
    try:
        assert os.write(fd, data) == len(data)
        st = os.fstat(fd)
        assert st.st_nlink == 0
        assert stat.S_ISREG(st.st_mode) and st.st_mode & 0o7777 == 0o640
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
        assert os.listdir(d) == []
        after = os.stat(d)
        assert (after.st_mtime_ns, after.st_nlink) == \
            (before.st_mtime_ns, before.st_nlink)
        assert os.pread(fd, len(data), 0) == data
        link_fd(fd, d / "named")
        assert os.fstat(fd).st_nlink == 1
        assert os.listdir(d) == ["named"]
        os.pwrite(fd, b"tail", len(data))       # still writable, named
    finally:
        os.close(fd)
    mount.remount()
    assert rd(d / "named") == data + b"tail"
    assert os.stat(d / "named").st_nlink == 1


def test_o_tmpfile_unnamed_is_freed(mount):
    """A tmpfile closed without a name goes with its blocks, as an
    unlinked file does: no inode and no space is left behind."""
    if mount.host:
        pytest.skip("cowfs status")
    fd = open_tmpfile(mount)
    os.write(fd, rand(4 * MiB, 42))
    os.fsync(fd)
    assert status_json(mount)["inodes"] == 2
    os.close(fd)
    for _ in range(100):                # the kernel's FORGET is async
        if status_json(mount)["inodes"] == 1:
            break
        time.sleep(0.05)
    s = status_json(mount)
    assert s["inodes"] == 1 and s["physical"] == 0, s
    mount.umount()
    p = mount.fsck()
    assert p.returncode == 0 and " 0 leaked object(s)" in p.stdout, p.stdout
    mount.mount()


def test_o_tmpfile_link_refused(mount):
    """O_TMPFILE|O_EXCL can never be named, and a tmpfile named and
    unlinked again cannot be named twice: ENOENT, as on ext4."""
    fd = open_tmpfile(mount, flags=os.O_EXCL)
    try:
        os.write(fd, b"x")
        with pytest.raises(FileNotFoundError):
            link_fd(fd, mount.p("excl"))
    finally:
        os.close(fd)
    fd = open_tmpfile(mount)
    try:
        link_fd(fd, mount.p("once"))
        os.unlink(mount.p("once"))
        with pytest.raises(FileNotFoundError):
            link_fd(fd, mount.p("twice"))
    finally:
        os.close(fd)
    assert os.listdir(mount.mnt) == []


def test_o_tmpfile_read_only_mount(mount):
    if mount.host:
        pytest.skip("no read-only mount of the host")
    mount.remount("ro")
    try:
        with pytest.raises(OSError) as e:
            os.close(open_tmpfile(mount))
        assert e.value.errno == errno.EROFS
    finally:
        mount.remount("")


# --------------------------------------------------------------------------
# the same data paths on stores with the smallest and largest block size


@pytest.mark.needs_store
@pytest.mark.parametrize("bs", ["4K", "1M"])
def test_other_block_sizes(mount_factory, ref, bs):
    m = mount_factory("bs" + bs, block_size=bs)
    for d in ("t1", "t2"):
        (ref / d).mkdir()
    test_large_file_unaligned_writes(m)
    test_truncate_stale_block_tail(m)
    test_truncate_down_up(m, ref / "t1")
    test_fallocate_modes(m, ref / "t2")
    test_copy_file_range_cow(m)
    test_seek_data_hole(m)


def test_unlinked_file_space_returns_while_mounted(mount):
    """In no-open mode the kernel sends no RELEASE for created files: the
    space of an unlinked file must still come back while mounted, once the
    kernel forgets the inode, and an unlinked file that is still open
    stays readable until then."""
    import json
    import time
    first = mount.p("first")
    first.write_bytes(b"x")
    first.read_bytes()          # the first open puts the kernel in no-open mode
    big = mount.p("big")
    big.write_bytes(os.urandom(300_000))
    fd = os.open(mount.p("held"), os.O_CREAT | os.O_RDWR)
    os.write(fd, b"keep me")
    os.unlink(mount.p("held"))
    os.unlink(big)
    for _ in range(50):
        d = json.loads(mount.cowfs("df", "--json", mount.mnt, check=True).stdout)
        if d["logical"] == 1 + 7:
            break
        time.sleep(0.1)
    assert d["logical"] == 1 + 7, d
    assert os.pread(fd, 7, 0) == b"keep me"
    os.close(fd)
