"""Real crashes: kill -9 of the daemon, then remount.

What fsync promised must survive, a clone is there whole or not at all,
and cowfs fsck finds no problem (leaked space is allowed: fsck reports it
and --repair returns it)."""

import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import built_with, fsync_path, kill_daemon, tree_snapshot

pytestmark = pytest.mark.needs_store


def crash(m):
    kill_daemon(m.store, m.mnt)


def fsck_ok(m):
    p = m.cowfs("fsck", m.store)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


@pytest.mark.mount_opts("commit=3600")
def test_fsynced_data_survives_kill(mount):
    want = {}
    mount.p("d").mkdir()
    for i in range(10):
        data = os.urandom(random.randrange(1, 300_000))
        p = mount.p("d", f"f{i}")
        with open(p, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        want[f"f{i}"] = data
    # overwrite in place and through copy-on-write, then fsync
    mount.cowfs("clone", mount.p("d", "f0"), mount.p("d", "c0"), check=True)
    with open(mount.p("d", "c0"), "r+b") as f:
        f.seek(10)
        f.write(b"changed")
        f.flush()
        os.fsync(f.fileno())
    c0 = bytearray(want["f0"])
    c0[10:17] = b"changed"
    want["c0"] = bytes(c0[:max(len(c0), 17)])
    # not fsynced: may or may not survive, must not break anything
    mount.p("d", "late").write_bytes(b"x" * 100000)
    crash(mount)
    fsck_ok(mount)
    mount.mount()
    for name, data in want.items():
        assert mount.p("d", name).read_bytes() == data, name
    assert "recovered after an unclean stop" in mount.log_text()


@pytest.mark.mount_opts("commit=1")
def test_kill_during_tree_clone(mount):
    src = mount.p("src")
    src.mkdir()
    for d in range(30):
        sub = src / f"dir{d}"
        sub.mkdir()
        for f in range(100):
            (sub / f"file{f}").write_bytes(b"%d/%d\n" % (d, f) * 50)
    os.link(src / "dir0" / "file0", src / "dir1" / "hardlink")
    fsync_path(src)
    want = tree_snapshot(src)
    outcomes = []
    for round_ in range(6):
        dst = mount.p(f"dst{round_}")
        proc = subprocess.Popen([mount.bin, "clone", src, dst],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        delay = random.choice([0, 0.001, 0.005, 0.02, 1.5])
        time.sleep(delay)
        crash(mount)
        proc.wait(timeout=60)
        fsck_ok(mount)
        mount.mount()
        if dst.exists():
            assert tree_snapshot(dst) == want, f"round {round_}: partial clone"
            outcomes.append("complete")
        else:
            outcomes.append("absent")
        assert tree_snapshot(src) == want
    print("outcomes:", outcomes)
    assert len(outcomes) == 6


@pytest.mark.mount_opts("commit=1")
def test_clone_then_fsync_is_durable(mount):
    mount.p("t").mkdir()
    mount.p("t", "a").write_bytes(os.urandom(200_000))
    fsync_path(mount.p("t"))
    want = tree_snapshot(mount.p("t"))
    mount.cowfs("clone", mount.p("t"), mount.p("u"), check=True)
    fsync_path(mount.mnt)
    crash(mount)
    mount.mount()
    assert tree_snapshot(mount.p("u")) == want


def random_workload(m, seconds, seed):
    """Run a workload in a child process so the kill hits it mid-way."""
    code = f"""
import errno, os, random, subprocess, sys
random.seed({seed})
root = {str(m.mnt)!r}
names = []
import time
end = time.time() + {seconds}
i = 0
while time.time() < end:
    i += 1
    op = random.random()
    try:
        if op < 0.4 or not names:
            # names unique across rounds: files of earlier rounds survive
            n = os.path.join(root, f"s{seed}f{{i}}")
            with open(n, "wb") as f:
                f.write(os.urandom(random.randrange(0, 200000)))
                if random.random() < 0.3:
                    f.flush(); os.fsync(f.fileno())
            names.append(n)
        elif op < 0.6:
            n = random.choice(names)
            with open(n, "r+b") as f:
                f.seek(random.randrange(0, 300000))
                f.write(os.urandom(random.randrange(1, 70000)))
        elif op < 0.7:
            n = random.choice(names)
            os.truncate(n, random.randrange(0, 300000))
        elif op < 0.8:
            n = random.choice(names)
            d = n + f".c{{i}}"
            subprocess.run([{m.bin!r}, "clone", n, d], capture_output=True,
                           check=True)
            names.append(d)
        elif op < 0.9:
            n = names.pop(random.randrange(len(names)))
            os.unlink(n)
        else:
            n = random.choice(names)
            os.rename(n, n + f"r{{i}}")
            names[names.index(n)] = n + f"r{{i}}"
    except OSError as e:
        # the daemon was killed: the mount is gone, stop quietly; any
        # other error before that is a failure (the test reads the exit
        # status before the kill only)
        if e.errno in (errno.ENOTCONN, errno.ECONNABORTED) or \
                not os.path.ismount(root):
            sys.exit(0)
        print(f"op {{i}}: {{e!r}}", file=sys.stderr)
        sys.exit(1)
    except subprocess.CalledProcessError as e:
        # cowfs clone fails once the daemon is gone; before, it must not
        if not os.path.ismount(root):
            sys.exit(0)
        print(f"op {{i}}: {{e!r}} {{e.stderr!r}}", file=sys.stderr)
        sys.exit(1)
"""
    return subprocess.Popen(["/usr/bin/python3", "-c", code],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


@pytest.mark.mount_opts("commit=1")
def test_kill_loop_random_workload(mount):
    seed = int(os.environ.get("TEST_SEED", random.randrange(1 << 30)))
    print("seed", seed)
    rounds = 0
    want = int(os.environ.get("COWFS_KILL_ROUNDS") or 6)
    for k in range(want):
        proc = random_workload(mount, 5, seed + k)
        time.sleep(random.uniform(0.3, 2.5))
        early = proc.poll()
        assert early in (None, 0), \
            f"round {k}: the workload failed before the kill: " \
            f"{proc.stderr.read()}"
        crash(mount)
        proc.kill()
        proc.wait()
        out = fsck_ok(mount)
        mount.mount()
        # everything that is listed can be read whole
        for name in os.listdir(mount.mnt):
            p = mount.p(name)
            if p.is_file():
                assert len(p.read_bytes()) == os.stat(p).st_size
        print(f"round {k}: {out.strip()}")
        rounds += 1
    assert rounds == want


# ---- issue 7 ----

def header_flags(store):
    with open(Path(store) / "cowfs.meta", "rb") as f:
        return struct.unpack_from("<I", f.read(64), 48)[0]


def test_mount_mark(mount):
    """The header's mount mark is set while a read-write mount runs and
    cleared by the clean unmount; a read-only mount writes nothing."""
    assert header_flags(mount.store) == 1, "no mount mark while mounted"
    mount.umount()
    assert header_flags(mount.store) == 0, "clean unmount left the mark"
    before = (mount.store / "cowfs.meta").read_bytes()
    mount.mount("ro")
    assert header_flags(mount.store) == 0
    mount.umount()
    assert (mount.store / "cowfs.meta").read_bytes() == before
    mount.mount("")


@pytest.mark.mount_opts("commit=3600")
def test_crash_before_the_first_commit(mount):
    """A crash after a write that nothing committed, before the mount's
    first commit, is an unclean stop (the journal is empty): the write
    object is retired, and a later partial write into the hole that the
    lost write filled shows zeros, not the lost bytes."""
    B = 65536
    p = mount.p("f")
    p.write_bytes(b"a" * B)             # block 0, in the write object
    mount.umount()                      # clean: the checkpoint keeps it
    mount.mount()
    with open(p, "r+b") as f:           # block 2: lost in the crash
        f.seek(2 * B)
        f.write(b"\xee" * B)
    crash(mount)
    fsck_ok(mount)
    mount.mount()
    assert p.read_bytes() == b"a" * B
    with open(p, "r+b") as f:
        f.seek(2 * B + 100)
        f.write(b"\x01")
    got = p.read_bytes()
    want = b"a" * B + bytes(B + 100) + b"\x01"
    assert len(got) == len(want)
    if got != want:
        i = next(k for k in range(len(want)) if got[k] != want[k])
        pytest.fail(f"byte {i} is {got[i]:#x} after the crash, want "
                    f"{want[i]:#x}: a lost write's bytes came back")
    assert "recovered after an unclean stop" in mount.log_text()


def test_crashloop(tmp_path, cowfs_bin):
    """The crash loop (scripts/crashloop.sh), short: 20 rounds of kill -9
    at random moments, fsynced bytes and names verified, fsck clean."""
    seed = int(os.environ.get("TEST_SEED", random.randrange(1 << 30)))
    top = Path(__file__).resolve().parent.parent
    n = int(os.environ.get("COWFS_CRASHLOOP_ROUNDS") or 20)
    p = subprocess.run([str(top / "scripts" / "crashloop.sh"), str(n),
                        "--seed", str(seed), "--workdir",
                        str(tmp_path / "loop")],
                       capture_output=True, text=True, timeout=1200,
                       env={**os.environ, "COWFS_BIN": str(cowfs_bin)})
    print(p.stdout[-2000:], p.stderr[-4000:], file=sys.stderr)
    assert p.returncode == 0, p.stdout + p.stderr
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith(f"crashloop: {n} rounds,"), last
    verified = int(last.split(",")[1].split()[0])
    assert verified > 0, last


@pytest.mark.mount_opts("commit=3600")
def test_o_tmpfile_crash(mount):
    """kill -9 with two fsynced O_TMPFILEs open: the one named by linkat
    survives whole; the unnamed one is an orphan that the next mount
    frees, with its blocks (nothing leaks)."""
    if not built_with(mount.bin, "O_TMPFILE"):
        pytest.skip("built with a libfuse without O_TMPFILE (3.14)")
    import test_ops
    named, anon = os.urandom(1 << 20), os.urandom(2 << 20)
    fd1 = os.open(mount.mnt, os.O_TMPFILE | os.O_RDWR, 0o644)
    fd2 = os.open(mount.mnt, os.O_TMPFILE | os.O_RDWR, 0o644)
    try:
        os.write(fd1, named)
        test_ops.link_fd(fd1, mount.p("named"))
        os.fsync(fd1)
        os.write(fd2, anon)
        os.fsync(fd2)                   # the unnamed inode, committed
        crash(mount)
    finally:
        for fd in (fd1, fd2):
            try:
                os.close(fd)
            except OSError:
                pass
    out = fsck_ok(mount)
    mount.mount()
    assert "1 orphan inode(s) freed" in mount.log_text(), mount.log_text()
    assert os.listdir(mount.mnt) == ["named"]
    assert mount.p("named").read_bytes() == named
    mount.umount()
    out = fsck_ok(mount)
    assert "2 inodes, 0 problem(s), 0 leaked object(s), 0 leaked block(s)" \
        in out, out
    mount.mount()
