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
