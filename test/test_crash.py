"""Real crashes: kill -9 of the daemon, then remount.

What fsync promised must survive, a clone is there whole or not at all,
and cowfs fsck finds no problem (leaked space is allowed: fsck reports it
and --repair returns it)."""

import os
import random
import signal
import subprocess
import time

import pytest

from conftest import run, tree_snapshot, is_mounted

pytestmark = pytest.mark.needs_store


def crash(m):
    pid = m.daemon_pid()
    assert pid, "no daemon pid in the store's lock file"
    os.kill(pid, signal.SIGKILL)
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    run(["fusermount3", "-u", "-z", m.mnt], check=False)
    assert not is_mounted(m.mnt)


def fsck_ok(m):
    p = m.cowfs("fsck", m.store)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
import os, random, subprocess, sys
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
            n = os.path.join(root, f"f{{i}}")
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
            d = n + ".c"
            subprocess.run([{m.bin!r}, "clone", n, d], capture_output=True)
            names.append(d)
        elif op < 0.9:
            n = names.pop(random.randrange(len(names)))
            os.unlink(n)
        else:
            n = random.choice(names)
            os.rename(n, n + "r")
            names[names.index(n)] = n + "r"
    except OSError:
        pass
"""
    return subprocess.Popen(["/usr/bin/python3", "-c", code],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.mount_opts("commit=1")
def test_kill_loop_random_workload(mount):
    seed = int(os.environ.get("TEST_SEED", random.randrange(1 << 30)))
    print("seed", seed)
    for k in range(6):
        proc = random_workload(mount, 5, seed + k)
        time.sleep(random.uniform(0.3, 2.5))
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
