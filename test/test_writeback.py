"""The kernel's writeback cache (on by default, off with -o
nowriteback_cache).  With it, writes are dirty pages in the kernel until
writeback, the kernel owns a cached file's size, mtime and ctime, and the
daemon must never act on file data it has not been sent yet.  Each test
checks what the daemon stored (after a remount, or through a clone) and
runs in both modes: the mode comes from the `wb` parameter here, not from
COWFS_TEST_WRITEBACK."""

import ctypes
import ctypes.util
import errno
import json
import mmap
import os
import time

import pytest

from conftest import NO_WRITEBACK, is_mounted, run

pytestmark = pytest.mark.needs_store

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long,
                           ctypes.c_long]
PUNCH = 0x01 | 0x02     # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE


@pytest.fixture(params=["wb", "nowb"])
def wbm(request, mount_factory):
    """A fresh mount with the writeback cache on (wb) or off (nowb)."""
    if NO_WRITEBACK and request.param == "wb":
        pytest.skip("COWFS_TEST_WRITEBACK=0 turns the cache off everywhere")
    opts = "" if request.param == "wb" else "nowriteback_cache"
    m = mount_factory("m", opts=opts)
    m.wb = request.param == "wb"
    return m


def fresh(m):
    """Every page and attribute the kernel holds for the mount goes: what
    is read next comes from the daemon."""
    m.remount()


def rand(n, seed):
    return bytes((i * 131 + seed * 7 + (i >> 9)) & 0xFF for i in range(n))


def test_mode_is_logged_and_bdi_tuned(wbm):
    log = wbm.log_text()
    if wbm.wb:
        assert "kernel writeback cache on" in log, log
    else:
        assert "kernel writeback cache off" in log, log
    if wbm.wb and os.geteuid() == 0:
        dev = run(["mountpoint", "-d", wbm.mnt]).stdout.strip()
        knob = f"/sys/class/bdi/{dev}/strict_limit"
        if os.path.exists(knob):
            with open(knob) as f:
                assert f.read().strip() == "0"


@pytest.mark.skipif(NO_WRITEBACK, reason="the cache is off everywhere")
def test_option_spellings(mount_factory):
    for opt in ("writeback_cache", "no_writeback_cache"):
        m = mount_factory(opt, opts=opt)
        assert is_mounted(m.mnt)
        word = "off" if opt.startswith("no") else "on"
        assert f"kernel writeback cache {word}" in m.log_text()


def test_data_and_size_reach_the_store(wbm):
    """Unsynced writes, a grow and a shrink by truncate, all before any
    writeback: the store ends up with what the kernel showed."""
    f = wbm.p("f")
    data = rand(300_000, 1)
    fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o644)
    os.write(fd, data)
    os.ftruncate(fd, 200_001)          # shrink with dirty pages past it
    os.pwrite(fd, b"tail", 250_000)    # a gap of zeros, then 4 bytes
    os.ftruncate(fd, 260_000)          # grow past the last dirty page
    want = data[:200_001] + bytes(49_999) + b"tail" + bytes(9_996)
    assert os.fstat(fd).st_size == 260_000
    assert os.pread(fd, 300_000, 0) == want
    os.close(fd)
    fresh(wbm)
    assert f.read_bytes() == want


def test_times_are_stored_exactly(wbm):
    """The kernel's mtime and ctime (sent back with setattr when it
    flushes) are what the store keeps, to the nanosecond, after fsync and
    after a plain close."""
    for name, sync in (("a", True), ("b", False)):
        f = wbm.p(name)
        fd = os.open(f, os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"x" * 10_000)
        time.sleep(0.02)
        os.pwrite(fd, b"y", 5)
        if sync:
            os.fsync(fd)
        os.close(fd)
        st = os.stat(f)
        fresh(wbm)
        st2 = os.stat(f)
        assert (st2.st_size, st2.st_mtime_ns, st2.st_ctime_ns) == \
            (st.st_size, st.st_mtime_ns, st.st_ctime_ns), name
    # utime with exact values, on a file with dirty pages
    f = wbm.p("c")
    fd = os.open(f, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"z" * 5000)
    os.utime(fd, ns=(1_000_000_123, 2_000_000_456))
    os.close(fd)
    st = os.stat(f)
    assert st.st_mtime_ns == 2_000_000_456
    fresh(wbm)
    st2 = os.stat(f)
    assert st2.st_mtime_ns == 2_000_000_456
    assert st2.st_ctime_ns == st.st_ctime_ns
    assert f.read_bytes() == b"z" * 5000


def cowfs_keeping(m, fd, *args):
    """Run the cowfs command with fd open in it: every close of a file
    (an exec closing an O_CLOEXEC fd, subprocess closing what it does not
    pass) makes the kernel write its dirty pages back, which would hide
    whether the command flushes by itself."""
    os.set_inheritable(fd, True)
    return run([m.bin, *args], env=m.env, pass_fds=(fd,))


def test_clone_sees_unsynced_writes(wbm):
    """cowfs clone writes the mount's dirty pages back before it clones:
    a file still open for writing, a tree, and pages dirtied through an
    mmap whose fd is closed are cloned whole."""
    f = wbm.p("f")
    fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o644)
    os.write(fd, rand(1 << 20, 2))
    os.pwrite(fd, b"late", 123_456)
    want = os.pread(fd, 2 << 20, 0)
    cowfs_keeping(wbm, fd, "clone", f, wbm.p("f2"))
    assert wbm.p("f2").read_bytes() == want
    os.close(fd)
    d = wbm.p("d")
    d.mkdir()
    for i in range(20):
        (d / f"x{i}").write_bytes(rand(5000 + i, i))
    wbm.cowfs("clone", d, wbm.p("d2"), check=True)
    m = wbm.p("m")
    m.write_bytes(bytes(65536))
    with open(m, "r+b") as fm:
        mm = mmap.mmap(fm.fileno(), 65536)
    mm[100:104] = b"mmap"
    wbm.cowfs("clone", m, wbm.p("m2"), check=True)
    assert wbm.p("m2").read_bytes()[96:108] == bytes(4) + b"mmap" + bytes(4)
    mm.close()
    fresh(wbm)
    assert wbm.p("f2").read_bytes() == want
    for i in range(20):
        assert (wbm.p("d2") / f"x{i}").read_bytes() == rand(5000 + i, i)
    assert wbm.p("m2").read_bytes()[96:108] == bytes(4) + b"mmap" + bytes(4)


def test_du_counts_unsynced_writes(wbm):
    f = wbm.p("f")
    fd = os.open(f, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, rand(3 << 20, 3))
    p = cowfs_keeping(wbm, fd, "du", "--json", f)
    os.close(fd)
    out = json.loads(p.stdout)[0]
    assert out["exclusive"] >= 3 << 20, out


def test_copy_file_range_of_dirty_pages(wbm):
    """The kernel writes the source's and the destination's ranges back
    before copy_file_range and sets the destination's size after it."""
    src, dst = wbm.p("src"), wbm.p("dst")
    bs = 1 << 16
    a = rand(8 * bs + 100, 4)
    fs = os.open(src, os.O_CREAT | os.O_RDWR, 0o644)
    fd = os.open(dst, os.O_CREAT | os.O_RDWR, 0o644)
    os.write(fs, a)
    os.write(fd, b"d" * 1000)
    n = os.copy_file_range(fs, fd, len(a), 0, bs)
    assert n == len(a)
    want = b"d" * 1000 + bytes(bs - 1000) + a
    assert os.fstat(fd).st_size == bs + len(a)
    assert os.pread(fd, 2 * len(want), 0) == want
    os.close(fs)
    os.close(fd)
    fresh(wbm)
    assert dst.read_bytes() == want


def test_punch_and_seek_on_dirty_pages(wbm):
    f = wbm.p("f")
    bs = 1 << 16
    fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o644)
    os.pwrite(fd, rand(bs, 5), 4 * bs)
    # SEEK_DATA/SEEK_HOLE see data that is still dirty in the kernel
    assert os.lseek(fd, 0, os.SEEK_DATA) == 4 * bs
    assert os.lseek(fd, 4 * bs, os.SEEK_HOLE) == 5 * bs
    os.pwrite(fd, rand(3 * bs, 6), 0)
    assert libc.fallocate(fd, PUNCH, 1000, bs) == 0, ctypes.get_errno()
    want = bytearray(rand(3 * bs, 6) + bytes(bs) + rand(bs, 5))
    want[1000:1000 + bs] = bytes(bs)
    assert os.pread(fd, 10 * bs, 0) == want
    os.close(fd)
    fresh(wbm)
    assert f.read_bytes() == want


def test_hard_links_and_rename_with_dirty_pages(wbm):
    f = wbm.p("f")
    f.write_bytes(b"one")
    os.link(f, wbm.p("g"))
    with open(wbm.p("g"), "ab") as g:
        g.write(b"two")
    os.rename(f, wbm.p("h"))
    assert wbm.p("h").read_bytes() == b"onetwo"
    fresh(wbm)
    assert wbm.p("h").read_bytes() == b"onetwo"
    assert wbm.p("g").read_bytes() == b"onetwo"


def test_write_error_shows_at_fsync_or_close(wbm):
    """A write the daemon refuses (an offset past what the store takes)
    fails at the write without the cache, at fsync with it; either way
    the file keeps its data and the store its consistency."""
    f = wbm.p("f")
    f.write_bytes(b"base")
    fd = os.open(f, os.O_RDWR)
    where = None
    try:
        os.pwrite(fd, b"xy", (1 << 44) - 1)
        os.fsync(fd)
    except OSError as e:
        where = e.errno
    finally:
        try:
            os.ftruncate(fd, 4)
        finally:
            os.close(fd)
    if where is None:
        pytest.skip("the store took a 16 TiB offset")
    assert where in (errno.EFBIG, errno.EINVAL, errno.EIO, errno.ENOSPC)
    fresh(wbm)
    assert f.read_bytes() == b"base"
