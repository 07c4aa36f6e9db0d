"""A real workload in a mount: copy the project's own source tree in, build
it there with meson and ninja, put it under git, then check that a remount
changes nothing: every file's bytes, and the stat data git keeps in its
index (inode numbers, ns times), so git sees a clean tree without
rehashing."""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, run, sha256_file

GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "a@b",
    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "a@b",
}
EXCLUDE_DIRS = {".git", "__pycache__", ".pytest_cache", ".hypothesis"}


# COWFS_WORKLOAD_SRC: another tree to copy and build instead of this repo.
SRC = Path(os.environ.get("COWFS_WORKLOAD_SRC") or REPO)


def source_files():
    """The project's files: what git tracks or would track, else a walk
    that leaves out build directories."""
    try:
        out = subprocess.run(
            ["git", "-C", SRC, "ls-files", "-z", "--cached", "--others",
             "--exclude-standard"], capture_output=True, check=True).stdout
        files = [f for f in out.decode().split("\0") if f]
        files = [f for f in files if os.path.lexists(SRC / f)]
        if files:
            return sorted(set(files))
    except (OSError, subprocess.CalledProcessError):
        pass
    files = []
    for dirpath, dirnames, filenames in os.walk(SRC):
        dirnames[:] = [d for d in dirnames if d not in EXCLUDE_DIRS
                       and not d.startswith("build")]
        for f in filenames:
            files.append(os.path.relpath(os.path.join(dirpath, f), SRC))
    return sorted(files)


def manifest(root):
    """rel path -> (kind, mode, sha256 or link target) for the whole tree."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                out[rel] = ("f", st.st_mode, st.st_size, sha256_file(p))
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", st.st_mode, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", st.st_mode)
            else:
                out[rel] = ("o", st.st_mode)
    return out


def git(src, *args, home):
    env = dict(os.environ, HOME=str(home), **GIT_ENV)
    return run(["git", "-C", src, *args], env=env, timeout=300)


@pytest.mark.timeout(1200)
def test_build_and_git_in_mount(mount, tmp_path):
    files = source_files()
    assert "meson.build" in files
    src = mount.p("cowfs-src")
    for rel in files:
        s, d = SRC / rel, src / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(s, d, follow_symlinks=False)
    for rel in files:
        if not os.path.islink(SRC / rel):
            assert sha256_file(src / rel) == sha256_file(SRC / rel), rel

    # build inside the mount
    env = dict(os.environ)
    for v in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
        env.pop(v, None)
    run(["meson", "setup", "build"], cwd=src, env=env, timeout=600)
    run(["ninja", "-C", "build"], cwd=src, env=env, timeout=900)
    out = run([src / "build" / "cowfs", "--version"], env=env).stdout
    assert "cowfs" in out

    # git
    home = tmp_path / "home"
    home.mkdir()
    git(src, "-c", "init.defaultBranch=main", "init", "-q", home=home)
    git(src, "add", "-A", home=home)
    git(src, "-c", "user.email=a@b", "-c", "user.name=t", "commit", "-qm",
        "x", home=home)
    assert git(src, "status", "--porcelain", home=home).stdout == ""
    git(src, "fsck", "--no-progress", home=home)
    tracked = git(src, "ls-files", home=home).stdout.split()
    assert "meson.build" in tracked and len(tracked) >= len(
        [f for f in files if not f.startswith("build")]) * 0.9

    before = manifest(src)
    mount.remount()
    after = manifest(src)
    missing = sorted(set(before) - set(after))
    extra = sorted(set(after) - set(before))
    changed = sorted(k for k in before if k in after and before[k] != after[k])
    assert not (missing or extra or changed), (
        f"missing {missing[:10]} extra {extra[:10]} changed {changed[:10]}")
    # git's index stat data (ino, mtime, ctime, size) still matches
    # without a refresh: diff-files compares stat data only
    stale = git(src, "diff-files", "--name-only", home=home).stdout
    assert stale == "", f"stat data changed across remount:\n{stale[:2000]}"
    assert git(src, "status", "--porcelain", home=home).stdout == ""
    git(src, "fsck", "--no-progress", home=home)
    # the build is still up to date (ninja checks mtimes)
    out = run(["ninja", "-C", "build", "-n", "-d", "explain"], cwd=src,
              env=env).stdout
    assert "no work to do" in out, out[-3000:]


def test_fio_verify(mount, tmp_path):
    """fio writes with varied block sizes and engines, then verifies every
    block it wrote (crc32c headers), also after a remount."""
    d = mount.p("fio")
    d.mkdir()
    common = ["--directory", d, "--size=24m", "--verify=crc32c",
              "--verify_fatal=1", "--verify_state_save=0",
              "--group_reporting", "--output-format=terse"]
    jobs = [
        ["--name=seq", "--rw=write", "--bs=64k", "--ioengine=psync"],
        ["--name=rand", "--rw=randwrite", "--bsrange=4k-192k",
         "--ioengine=psync", "--randrepeat=1"],
        ["--name=mm", "--rw=randwrite", "--bs=16k", "--ioengine=mmap"],
        ["--name=odd", "--rw=randwrite", "--bs=7k", "--ioengine=pvsync",
         "--fsync=13"],
    ]
    for j in jobs:
        run(["fio", *common, *j], timeout=600, cwd=tmp_path)
    files = sorted(os.listdir(d))
    assert len(files) == len(jobs)
    before = {f: sha256_file(d / f) for f in files}
    mount.remount()
    assert {f: sha256_file(d / f) for f in files} == before
    # fio's own verify of what is on the mount now, without writing
    for j in jobs:
        if "--rw=randwrite" in j and "--randrepeat=1" not in j:
            continue        # random offsets fio cannot replay
        run(["fio", *common, *j, "--verify_only"], timeout=600,
            cwd=tmp_path)


STRESS = r'''
import errno, os, random, sys
root, seed, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
names = [os.path.join(root, a, b) for a in ("", "d0", "d1", "d0/d2")
         for b in ("a", "b", "c", "d2")]
ok = {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR,
      errno.EISDIR, errno.EINVAL, errno.EPERM}
for i in range(n):
    p, q = rng.choice(names), rng.choice(names)
    op = rng.randrange(9)
    try:
        if op == 0:
            with open(p, "ab") as f:
                f.write(os.urandom(rng.randrange(1, 70000)))
        elif op == 1:
            os.rename(p, q)
        elif op == 2:
            os.unlink(p)
        elif op == 3:
            os.mkdir(p)
        elif op == 4:
            os.rmdir(p)
        elif op == 5:
            os.link(p, q)
        elif op == 6:
            os.truncate(p, rng.randrange(0, 200000))
        elif op == 7:
            os.listdir(os.path.dirname(p))
        else:
            os.setxattr(p, "user.s", os.urandom(rng.randrange(0, 100)))
    except OSError as e:
        if e.errno not in ok:
            print(f"op {op} {p} {q}: {e}", flush=True)
            sys.exit(1)
'''


@pytest.mark.timeout(600)
def test_parallel_metadata_stress(mount, tmp_path):
    """Four processes race on one small namespace (renames, links, unlinks,
    mkdir/rmdir, appends, truncates, xattrs): only the expected errnos, no
    hang, and a consistent tree afterwards (the fixture runs fsck)."""
    for d in ("d0", "d1", "d0/d2"):
        os.makedirs(mount.p(d), exist_ok=True)
    script = tmp_path / "stress.py"
    script.write_text(STRESS)
    procs = [subprocess.Popen(["/usr/bin/python3", script, mount.mnt,
                               str(1000 + k), "6000"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for k in range(4)]
    outs = [p.communicate(timeout=500)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out

    def check_tree():
        snap = {}
        for dirpath, dirnames, filenames in os.walk(mount.mnt):
            st = os.lstat(dirpath)
            assert st.st_nlink == 2 + len(dirnames), dirpath
            for n in filenames:
                p = os.path.join(dirpath, n)
                s = os.lstat(p)
                with open(p, "rb") as f:
                    assert len(f.read()) == s.st_size, p
                snap[os.path.relpath(p, mount.mnt)] = (s.st_ino, s.st_size,
                                                       s.st_nlink)
        # link counts match the names seen
        by_ino = {}
        for rel, (ino, _, nlink) in snap.items():
            by_ino.setdefault(ino, []).append(nlink)
        for ino, nl in by_ino.items():
            assert nl[0] == len(nl), (ino, nl)
        return snap
    before = check_tree()
    mount.remount()
    assert check_tree() == before


def test_sqlite(mount):
    """SQLite in rollback-journal and WAL modes: transactions, deletes,
    vacuum; integrity_check before and after a remount."""
    import sqlite3
    want = {}
    for mode in ("delete", "wal", "truncate"):
        p = str(mount.p(f"db-{mode}.sqlite"))
        c = sqlite3.connect(p)
        c.execute(f"pragma journal_mode={mode}")
        c.execute("pragma synchronous=full")
        c.execute("create table t(a integer primary key, b blob)")
        for i in range(40):
            with c:
                c.executemany("insert into t(b) values(?)",
                              [(os.urandom(300 + i),) for _ in range(100)])
        with c:
            c.execute("delete from t where a % 3 = 0")
        c.execute("vacuum")
        assert c.execute("pragma integrity_check").fetchone() == ("ok",)
        want[p] = c.execute("select a, b from t order by a").fetchall()
        c.execute("pragma wal_checkpoint(truncate)") if mode == "wal" else 0
        c.close()
    mount.remount()
    for p, rows in want.items():
        c = sqlite3.connect(p)
        assert c.execute("pragma integrity_check").fetchone() == ("ok",)
        assert c.execute("select a, b from t order by a").fetchall() == rows
        c.close()
