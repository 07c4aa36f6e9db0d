"""cowfs clone: instant tree clones with block-level copy-on-write.

Every test runs on a real mount; the fixtures unmount, run cowfs fsck and
check the daemon log at teardown."""

import errno
import json
import os
import random
import stat
import subprocess
import threading
import time

import pytest

from conftest import NO_WRITEBACK, run, tree_snapshot

pytestmark = pytest.mark.needs_store

B = 65536


def clone(m, src, dst, check=True):
    return m.cowfs("clone", src, dst, check=check)


def du(m, path):
    p = m.cowfs("du", "--json", path, check=True)
    return json.loads(p.stdout)[0]


def df(m):
    return json.loads(m.cowfs("df", "--json", m.mnt, check=True).stdout)


def store_bytes(m):
    """Allocated bytes of the store on the host (after sync)."""
    os.sync()
    p = run(["du", "-s", "--block-size=1", m.store])
    return int(p.stdout.split()[0])


def write_at(path, off, data, sync=False):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, off)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def snap_without_times(root):
    s = tree_snapshot(root)
    return s


def make_tree(root):
    """A small tree with every kind of thing cp -a keeps."""
    root.mkdir()
    (root / "empty").write_bytes(b"")
    (root / "small").write_bytes(b"hello\n")
    (root / "big").write_bytes(os.urandom(3 * B + 123))
    with open(root / "sparse", "wb") as f:
        f.truncate(50 * B)
        f.seek(20 * B + 7)
        f.write(b"island")
    (root / "sub").mkdir()
    (root / "sub" / "deep").mkdir()
    (root / "sub" / "deep" / "f").write_bytes(os.urandom(1000))
    os.link(root / "big", root / "sub" / "big-link")
    os.link(root / "small", root / "small-link")
    os.symlink("small", root / "sym")
    os.symlink("/nonexistent/target", root / "dangling")
    os.mkfifo(root / "fifo")
    os.setxattr(root / "small", "user.color", b"blue")
    os.setxattr(root / "sub", "user.dir", b"x" * 300)
    os.chmod(root / "sub" / "deep" / "f", 0o640)
    os.chown(root / "small", 1234, 5678)
    os.utime(root / "big", ns=(1_000_000_123, 2_000_000_456))


def test_clone_file_isolated(mount):
    src = mount.p("a")
    data = os.urandom(5 * B + 17)
    src.write_bytes(data)
    clone(mount, src, mount.p("b"))
    b = mount.p("b")
    assert b.read_bytes() == data
    assert os.stat(b).st_ino != os.stat(src).st_ino
    # writes on either side never show on the other
    write_at(b, B + 5, b"CLONE")
    write_at(src, 3 * B, b"SOURCE")
    exp_b = bytearray(data)
    exp_b[B + 5:B + 10] = b"CLONE"
    exp_a = bytearray(data)
    exp_a[3 * B:3 * B + 6] = b"SOURCE"
    assert b.read_bytes() == bytes(exp_b)
    assert src.read_bytes() == bytes(exp_a)
    mount.remount()
    assert mount.p("b").read_bytes() == bytes(exp_b)
    assert mount.p("a").read_bytes() == bytes(exp_a)


def test_clone_tree_like_cp_a(mount):
    src = mount.p("src")
    make_tree(src)
    t0 = time.monotonic()
    clone(mount, src, mount.p("dst"))
    elapsed = time.monotonic() - t0
    a = tree_snapshot(src)
    b = tree_snapshot(mount.p("dst"))
    assert a == b
    # times kept (mtime), hard links kept inside the clone and apart from src
    assert os.stat(mount.p("dst", "big")).st_mtime_ns == 2_000_000_456
    d1 = os.stat(mount.p("dst", "big"))
    d2 = os.stat(mount.p("dst", "sub", "big-link"))
    assert d1.st_ino == d2.st_ino and d1.st_nlink == 2
    assert d1.st_ino != os.stat(mount.p("src", "big")).st_ino
    assert stat.S_ISFIFO(os.lstat(mount.p("dst", "fifo")).st_mode)
    # sparse stays sparse
    assert os.stat(mount.p("dst", "sparse")).st_blocks * 512 <= 2 * B
    # a link in the clone changes nothing in the source
    write_at(mount.p("dst", "sub", "big-link"), 0, b"X")
    assert mount.p("dst", "big").read_bytes()[:1] == b"X"
    assert tree_snapshot(src) == a
    mount.remount()
    assert tree_snapshot(mount.p("src")) == a
    print(f"clone took {elapsed:.3f}s")


def test_clone_into_own_subtree(mount):
    src = mount.p("t")
    make_tree(src)
    before = tree_snapshot(src)
    clone(mount, src, mount.p("t", "sub", "copy"))
    assert tree_snapshot(mount.p("t", "sub", "copy")) == before
    # the copy does not contain itself
    assert not mount.p("t", "sub", "copy", "sub", "copy").exists()


def test_clone_errors(mount, tmp_path):
    mount.p("f").write_bytes(b"x")
    mount.p("g").write_bytes(b"y")
    p = clone(mount, mount.p("f"), mount.p("g"), check=False)
    assert p.returncode == 1 and "File exists" in p.stderr
    assert p.stderr.count("\n") == 1
    p = clone(mount, mount.p("f"), mount.p("nodir", "x"), check=False)
    assert p.returncode == 1 and p.stderr.startswith("cowfs: clone:")
    p = clone(mount, mount.p("missing"), mount.p("x"), check=False)
    assert p.returncode == 1 and "No such file" in p.stderr
    (tmp_path / "host").write_bytes(b"h")
    p = clone(mount, mount.p("f"), tmp_path / "elsewhere", check=False)
    assert p.returncode == 1 and "not inside a cowfs mount" in p.stderr
    p = mount.cowfs("clone", mount.p("f"))
    assert p.returncode == 2


def test_clone_visible_after_negative_lookup(mount):
    mount.p("f").write_bytes(b"data")
    # the kernel caches this ENOENT
    for _ in range(3):
        assert not os.path.exists(mount.p("new"))
    clone(mount, mount.p("f"), mount.p("new"))
    assert os.path.exists(mount.p("new"))
    assert mount.p("new").read_bytes() == b"data"
    assert "new" in os.listdir(mount.mnt)
    # and the parent's nlink/mtime are fresh for a directory clone
    mount.p("d").mkdir()
    n0 = os.stat(mount.mnt).st_nlink
    clone(mount, mount.p("d"), mount.p("d2"))
    assert os.stat(mount.mnt).st_nlink == n0 + 1


def test_clone_depth_chain(mount):
    data = bytearray(os.urandom(8 * B))
    mount.p("c0").write_bytes(bytes(data))
    expect = {"c0": bytes(data)}
    for i in range(1, 8):
        clone(mount, mount.p(f"c{i-1}"), mount.p(f"c{i}"))
        cur = bytearray(expect[f"c{i-1}"])
        off = random.randrange(0, len(cur) - 100)
        cur[off:off + 100] = bytes([i]) * 100
        write_at(mount.p(f"c{i}"), off, bytes([i]) * 100)
        expect[f"c{i}"] = bytes(cur)
    for name, content in expect.items():
        assert mount.p(name).read_bytes() == content, name
    mount.remount()
    for name, content in expect.items():
        assert mount.p(name).read_bytes() == content, name


def test_truncate_punch_on_shared_blocks(mount):
    data = os.urandom(6 * B)
    mount.p("a").write_bytes(data)
    clone(mount, mount.p("a"), mount.p("b"))
    clone(mount, mount.p("a"), mount.p("c"))
    os.truncate(mount.p("b"), B + 10)
    os.truncate(mount.p("b"), 4 * B)
    run(["fallocate", "-p", "-o", str(B // 2), "-l", str(2 * B), mount.p("c")])
    run(["fallocate", "-z", "-o", str(4 * B + 3), "-l", "100", mount.p("a")])
    a = bytearray(data)
    a[4 * B + 3:4 * B + 103] = bytes(100)
    b = bytearray(data[:B + 10]) + bytes(4 * B - (B + 10))
    c = bytearray(data)
    c[B // 2:B // 2 + 2 * B] = bytes(2 * B)
    assert mount.p("a").read_bytes() == bytes(a)
    assert mount.p("b").read_bytes() == bytes(b)
    assert mount.p("c").read_bytes() == bytes(c)
    mount.remount()
    assert mount.p("a").read_bytes() == bytes(a)
    assert mount.p("b").read_bytes() == bytes(b)
    assert mount.p("c").read_bytes() == bytes(c)


def test_du_df_figures(mount):
    mount.p("a").write_bytes(os.urandom(16 * B))
    u = du(mount, mount.p("a"))
    assert (u["logical"], u["shared"], u["exclusive"]) == (16 * B, 0, 16 * B)
    clone(mount, mount.p("a"), mount.p("b"))
    for n in "ab":
        u = du(mount, mount.p(n))
        assert (u["shared"], u["exclusive"]) == (16 * B, 0), n
    write_at(mount.p("b"), 0, b"z" * (2 * B))
    u = du(mount, mount.p("b"))
    assert (u["shared"], u["exclusive"]) == (14 * B, 2 * B)
    # the whole mount holds everything exclusively
    u = du(mount, mount.mnt)
    assert u["shared"] == 0 and u["exclusive"] == 18 * B
    d = df(mount)
    assert d["logical"] == 32 * B and d["physical"] == 18 * B
    assert d["shared"] == 14 * B
    # a human-readable table on a terminal is not required here; --bytes is
    p = mount.cowfs("du", "--bytes", mount.p("a"), check=True)
    assert str(16 * B) in p.stdout


def test_cow_write_costs_one_block(mount):
    big = mount.p("big")
    with open(big, "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(64):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    clone(mount, big, mount.p("clone"))
    before = store_bytes(mount)
    write_at(mount.p("clone"), 32 * (1 << 20) + 4096, b"w" * 4096, sync=True)
    growth = store_bytes(mount) - before
    assert growth <= 192 * 1024, growth
    # cp shares through copy_file_range
    before = store_bytes(mount)
    run(["cp", big, mount.p("copy")])
    run(["sync"])
    growth = store_bytes(mount) - before
    assert growth < 1 << 20, growth
    assert run(["cmp", big, mount.p("copy")]).returncode == 0


def test_space_returns_when_all_deleted(mount):
    empty = store_bytes(mount)
    mount.p("a").write_bytes(os.urandom(20 * B))
    mount.p("t").mkdir()
    mount.p("t", "x").write_bytes(os.urandom(3 * B))
    clone(mount, mount.p("a"), mount.p("b"))
    clone(mount, mount.p("t"), mount.p("t2"))
    write_at(mount.p("b"), 5, b"diverge")
    for n in ["a", "b"]:
        os.unlink(mount.p(n))
    run(["rm", "-rf", mount.p("t"), mount.p("t2")])
    mount.remount()
    objs = [os.path.join(d, f) for d, _, fs in os.walk(mount.store / "objects")
            for f in fs]
    assert objs == [], objs
    total = store_bytes(mount)
    # back to the empty store's size, within the metadata file's size
    meta = os.path.getsize(mount.store / "cowfs.meta")
    assert total <= empty + meta + 4096, (total, empty)


def test_clone_while_source_is_written(mount):
    """Each cloned file is a point-in-time state of the daemon's data.
    Without the writeback cache that is a prefix of whole 4 KiB records,
    never a torn one.  With it, every record written before the clone
    command started is in the clone (the command writes dirty pages back
    first); records written meanwhile reach the daemon page by page in
    writeback order, so each of them is there whole or reads as zeros."""
    rec = 4096
    path = mount.p("log")
    path.write_bytes(b"")
    stop = threading.Event()
    done = [0]

    def writer():
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        i = 0
        # bounded: with the writeback cache appends run at page cache
        # speed, and each snapshot is read whole below
        while not stop.is_set() and i < 16384:
            os.write(fd, (b"%08d" % i) * (rec // 8))
            i += 1
            done[0] = i
        os.close(fd)

    t = threading.Thread(target=writer)
    t.start()
    before = []
    try:
        for k in range(20):
            time.sleep(0.01)
            before.append(done[0])
            clone(mount, path, mount.p(f"snap{k}"))
    finally:
        stop.set()
        t.join()
    for k in range(20):
        data = mount.p(f"snap{k}").read_bytes()
        assert len(data) % rec == 0, (k, len(data))
        assert len(data) >= before[k] * rec, (k, len(data), before[k])
        for i in range(len(data) // rec):
            got = data[i * rec:(i + 1) * rec]
            want = (b"%08d" % i) * (rec // 8)
            if NO_WRITEBACK or i < before[k]:
                assert got == want, (k, i)
            else:
                assert got in (want, bytes(rec)), (k, i)


def test_big_tree_clone_is_fast_and_small(mount):
    src = mount.p("tree")
    src.mkdir()
    for d in range(20):
        sub = src / f"d{d}"
        sub.mkdir()
        for f in range(100):
            (sub / f"f{f}.c").write_bytes(b"int x%d;\n" % f * (f + 1))
    run(["sync"])
    before = store_bytes(mount)
    t0 = time.monotonic()
    clone(mount, src, mount.p("tree2"))
    elapsed = time.monotonic() - t0
    run(["sync"])
    growth = store_bytes(mount) - before
    assert tree_snapshot(src) == tree_snapshot(mount.p("tree2"))
    print(f"2000-file clone: {elapsed:.3f}s, store growth {growth} bytes")
    assert growth < 1 << 20


def test_clone_src_named_every_way(mount):
    """The command names SRC to the daemon by its parent and name (the
    daemon checks that entry): the root, '.', '..', a path through a
    symlinked directory, a symlink itself, a hard link."""
    m = mount
    m.p("d", "sub").mkdir(parents=True)
    m.p("d", "f").write_bytes(b"f" * 70000)
    os.symlink("d", m.p("dl"))
    os.symlink("f", m.p("d", "fl"))
    os.link(m.p("d", "f"), m.p("hard"))
    for src, dst in ((m.mnt, "root"), (m.p("d", "."), "dot"),
                     (m.p("d", "sub", ".."), "dotdot"),
                     (str(m.p("d", "sub")) + "/", "slash"),
                     (m.p("dl", "f"), "via_link"), (m.p("d", "fl"), "sym"),
                     (m.p("hard"), "hard2")):
        p = clone(m, src, m.p(dst), check=False)
        assert p.returncode == 0, (src, p.stderr)
    assert sorted(os.listdir(m.p("root"))) == ["d", "dl", "hard"]
    assert sorted(os.listdir(m.p("dot"))) == ["f", "fl", "sub"]
    assert sorted(os.listdir(m.p("dotdot"))) == ["f", "fl", "sub"]
    assert os.listdir(m.p("slash")) == []
    assert m.p("via_link").read_bytes() == b"f" * 70000
    assert os.readlink(m.p("sym")) == "f"
    assert m.p("hard2").read_bytes() == b"f" * 70000
