"""Origins: writable zero-copy clones of host directory trees.

The clone's extents point at the host files, which the daemon reads in
place and never writes; a write copies one block into the store."""

import errno
import hashlib
import json
import os
import random
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import (run, tree_snapshot, sha256_file, Mount, make_mount_dir,
                      proc_status)

pytestmark = pytest.mark.needs_store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def store_bytes(m):
    os.sync()
    return int(run(["du", "-s", "--block-size=1", m.store]).stdout.split()[0])


def make_origin(root):
    root.mkdir()
    (root / "empty").write_bytes(b"")
    (root / "small").write_bytes(b"hello\n")
    (root / "big").write_bytes(os.urandom(300_000))
    with open(root / "sparse", "wb") as f:
        f.truncate(10 << 20)
        f.seek(5 << 20)
        f.write(b"island")
    (root / "d").mkdir()
    (root / "d" / "e").mkdir()
    (root / "d" / "e" / "f.c").write_bytes(b"int main(void) { return 0; }\n")
    os.link(root / "small", root / "d" / "small-link")
    os.symlink("small", root / "sym")
    os.symlink("/etc/passwd", root / "abs-sym")
    os.mkfifo(root / "fifo")
    os.setxattr(root / "small", "user.color", b"green")
    os.chmod(root / "d" / "e" / "f.c", 0o600)
    os.utime(root / "big", ns=(1_500_000_000_000_000_001, 1_600_000_000_123_456_789))


def origin_state(root):
    """Everything that must not change in an origin, atime included."""
    out = {}
    for dp, dns, fns in os.walk(root):
        for n in sorted(dns + fns) + ["."]:
            p = os.path.join(dp, n)
            # read first, stat after: under relatime our own first read
            # moves atime, and must not count as a change by cowfs
            extra = ()
            if os.path.islink(p):
                extra = (os.readlink(p),)
            elif os.path.isfile(p):
                extra = (sha256_file(p),)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (
                st.st_mode, st.st_size, st.st_mtime_ns, st.st_atime_ns,
                st.st_ctime_ns, st.st_ino, st.st_nlink) + extra
    return out


def test_clone_host_tree_is_identical(mount, tmp_path):
    origin = tmp_path / "origin"
    make_origin(origin)
    before = origin_state(origin)
    mount.cowfs("clone", origin, mount.p("c"), check=True)
    a = tree_snapshot(origin, times=False)
    b = tree_snapshot(mount.p("c"), times=False)
    assert a == b
    # times and hard links kept, sparse stays sparse
    assert os.stat(mount.p("c", "big")).st_mtime_ns == 1_600_000_000_123_456_789
    s1, s2 = os.stat(mount.p("c", "small")), os.stat(mount.p("c", "d", "small-link"))
    assert s1.st_ino == s2.st_ino and s1.st_nlink == 2
    assert os.stat(mount.p("c", "sparse")).st_blocks * 512 <= 256 * 1024
    assert os.readlink(mount.p("c", "abs-sym")) == "/etc/passwd"
    # reading the clone left the origin untouched (no atime either)
    run(["tar", "cf", "/dev/null", "-C", mount.p("c"), "."])
    for n in ["small", "big", "sparse", "d/e/f.c"]:
        mount.p("c", n).read_bytes()
    assert origin_state(origin) == before
    mount.remount()
    assert tree_snapshot(mount.p("c")) == b


def test_clone_real_tree(mount):
    """A real host tree: the project's own sources and /usr/include/linux."""
    for src, name in [(os.path.join(REPO, "src"), "src"),
                      ("/usr/include/linux", "linux")]:
        if not os.path.isdir(src):
            continue
        mount.cowfs("clone", src, mount.p(name), check=True)
        assert tree_snapshot(src) == tree_snapshot(mount.p(name))


def test_origin_untouched_by_workload(mount, tmp_path):
    origin = tmp_path / "origin"
    make_origin(origin)
    for i in range(30):
        (origin / f"gen{i}").write_bytes(os.urandom(random.randrange(1, 200_000)))
    before = origin_state(origin)
    mount.cowfs("clone", origin, mount.p("w"), check=True)
    rnd = random.Random(int(os.environ.get("TEST_SEED", 7)))
    files = [f"gen{i}" for i in range(30)] + ["small", "big", "sparse"]
    for step in range(300):
        n = mount.p("w", rnd.choice(files))
        if not n.exists():
            continue
        op = rnd.random()
        if op < 0.4:
            with open(n, "r+b") as f:
                f.seek(rnd.randrange(0, 400_000))
                f.write(os.urandom(rnd.randrange(1, 70_000)))
        elif op < 0.55:
            os.truncate(n, rnd.randrange(0, 400_000))
        elif op < 0.65:
            os.chmod(n, rnd.choice([0o600, 0o644, 0o755]))
        elif op < 0.7:
            os.setxattr(n, "user.x", b"y")
        elif op < 0.8:
            n.read_bytes()
        elif op < 0.9:
            os.rename(n, str(n) + ".r")
            files.append(os.path.basename(str(n)) + ".r")
        else:
            os.utime(n)
    run(["rm", "-rf", mount.p("w", "d")])
    mount.remount()
    assert origin_state(origin) == before


def test_origin_change_gives_eio(mount, tmp_path):
    origin = tmp_path / "origin"
    make_origin(origin)
    mount.cowfs("clone", origin, mount.p("c"), check=True)
    with open(origin / "big", "r+b") as f:
        f.write(b"changed underneath")
    with pytest.raises(OSError) as e:
        mount.p("c", "big").read_bytes()
    assert e.value.errno == errno.EIO
    # the others keep working
    assert mount.p("c", "small").read_bytes() == b"hello\n"
    assert "origin file" in mount.log_text() and str(origin / "big") in mount.log_text()
    assert mount.log_text().count("changed since it was cloned") == 1
    mount.umount()
    p = mount.fsck()
    assert p.returncode == 1 and str(origin / "big") in p.stdout
    mount.mount()
    os.unlink(mount.p("c", "big"))  # so that teardown's fsck is clean


def test_write_into_big_origin_file_costs_one_block(mount, tmp_path):
    origin = tmp_path / "origin"
    origin.mkdir()
    with open(origin / "big", "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(256):
            f.write(chunk)
    before = store_bytes(mount)
    mount.cowfs("clone", origin, mount.p("c"), check=True)
    mid = store_bytes(mount)
    fd = os.open(mount.p("c", "big"), os.O_WRONLY)
    os.pwrite(fd, b"w" * 4096, 100 << 20)
    os.fsync(fd)
    os.close(fd)
    growth = store_bytes(mount) - mid
    print(f"clone growth {mid - before}, 4 KiB write growth {growth}")
    assert growth <= 192 * 1024, growth
    assert mid - before < 1 << 20
    data = mount.p("c", "big").read_bytes()
    assert data[100 << 20:(100 << 20) + 4096] == b"w" * 4096
    assert hashlib.sha256(data[:100 << 20]).digest() == \
        hashlib.sha256((origin / "big").read_bytes()[:100 << 20]).digest()


def test_detach(mount, tmp_path):
    origin = tmp_path / "origin"
    make_origin(origin)
    want = tree_snapshot(origin)
    mount.cowfs("clone", origin, mount.p("c"), check=True)
    mt = os.stat(mount.p("c", "big")).st_mtime_ns
    p = mount.cowfs("detach", mount.p("c"), check=True)
    assert "bytes copied" in p.stdout
    d = json.loads(mount.cowfs("df", "--json", mount.mnt, check=True).stdout)
    assert d["origin"] == 0, d
    # the origin can change or go: the clone no longer needs it
    shutil.rmtree(origin)
    assert tree_snapshot(mount.p("c")) == want
    mount.remount()
    assert tree_snapshot(mount.p("c")) == want
    assert os.stat(mount.p("c", "big")).st_mtime_ns == mt  # same content


def test_mount_origin(mount_factory, tmp_path):
    origin = tmp_path / "origin"
    make_origin(origin)
    before = origin_state(origin)
    m = mount_factory("o", init=False, do_mount=False)
    assert not m.store.exists()
    # the drop-in for an overlay: one command, store created implicitly
    p = run([m.bin, "mount", "-o", f"logfile={m.log}", "--origin", origin,
             m.store, m.mnt], env=m.env)
    assert tree_snapshot(origin) == tree_snapshot(m.mnt)
    (m.mnt / "small").write_bytes(b"changed in the clone\n")
    (m.mnt / "new").write_bytes(b"new")
    m.umount()
    # later mounts reuse it, with or without --origin
    run([m.bin, "mount", "-o", f"logfile={m.log}", "--origin", origin,
         m.store, m.mnt], env=m.env)
    assert (m.mnt / "small").read_bytes() == b"changed in the clone\n"
    m.umount()
    m.mount()
    assert (m.mnt / "new").read_bytes() == b"new"
    m.umount()
    # a different origin is refused with a message
    other = tmp_path / "other"
    other.mkdir()
    p = run([m.bin, "mount", "--origin", other, m.store, m.mnt], check=False,
            env=m.env)
    assert p.returncode == 1 and "clone of" in p.stderr
    assert p.stderr.count("\n") == 1
    m.mount()
    assert origin_state(origin) == before


@pytest.fixture
def request_cleanup():
    dirs = []
    yield dirs
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def test_privilege_checked_as_caller(request_cleanup, mount_factory, user):
    m = mount_factory("p", opts="allow_other")
    # a host directory the user can reach (pytest's tmp dirs are 0700)
    import tempfile
    host = Path(tempfile.mkdtemp(prefix="cowfs-host.", dir="/tmp"))
    request_cleanup.append(host)
    os.chmod(host, 0o755)
    (host / "secret").write_bytes(b"root only")
    os.chmod(host / "secret", 0o600)
    (host / "public").write_bytes(b"everyone")
    os.chmod(host / "public", 0o644)
    os.chmod(m.mnt, 0o777)
    # the user cannot clone what they cannot read
    p = user.run([m.bin, "clone", host / "secret", m.mnt / "stolen"])
    assert p.returncode == 1 and "Permission denied" in p.stderr, p.stderr
    assert not (m.mnt / "stolen").exists()
    p = user.run([m.bin, "clone", host, m.mnt / "tree"])
    assert p.returncode == 1 and "Permission denied" in p.stderr
    # nor into a directory they cannot write
    (m.mnt / "rootonly").mkdir(mode=0o755)
    p = user.run([m.bin, "clone", host / "public", m.mnt / "rootonly" / "x"])
    assert p.returncode == 1 and "Permission denied" in p.stderr, p.stderr
    assert not (m.mnt / "rootonly" / "x").exists()
    # a readable file in a search-only directory is fine, as for cat
    (host / "xo").mkdir()
    (host / "xo" / "pub").write_bytes(b"through x")
    os.chmod(host / "xo", 0o711)
    p = user.run([m.bin, "clone", host / "xo" / "pub", m.mnt / "pub"])
    assert p.returncode == 0, p.stderr
    # but what they can read, they can clone, and it is theirs
    p = user.run([m.bin, "clone", host / "public", m.mnt / "mine"])
    assert p.returncode == 0, p.stderr
    st = os.stat(m.mnt / "mine")
    assert (st.st_uid, st.st_gid) == (user.uid, user.gid)
    assert user.py(f"print(open({str(m.mnt / 'mine')!r}).read())") == "everyone"


def test_sockets_skipped_with_warning(mount, tmp_path):
    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "f").write_bytes(b"x")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(origin / "sock"))
    try:
        p = mount.cowfs("clone", origin, mount.p("c"))
    finally:
        s.close()
    assert p.returncode == 0
    assert "warning" in p.stderr and "skipped" in p.stderr
    assert sorted(os.listdir(mount.p("c"))) == ["f"]


def test_many_files_bounded_fds(mount_factory, tmp_path):
    origin = tmp_path / "origin"
    origin.mkdir()
    for i in range(3000):
        (origin / f"f{i}").write_bytes(b"%d\n" % i)
    m = mount_factory("fd", do_mount=False)
    # a daemon with few fds must still serve thousands of origin files
    run(["bash", "-c", f'ulimit -n 128 && "{m.bin}" mount -o logfile={m.log} '
         f'"{m.store}" "{m.mnt}"'], env=m.env)
    m.cowfs("clone", origin, m.mnt / "c", check=True)
    for rnd in range(2):
        for i in range(3000):
            assert (m.mnt / "c" / f"f{i}").read_bytes() == b"%d\n" % i


@pytest.mark.timeout(300)
def test_clone_by_reference_memory(mount, tmp_path):
    """A clone by reference keeps no more memory than the same tree loaded
    by a remount: the walk's memory (names, paths, block runs) is unmapped
    after the clone and a big batch is committed at once, instead of
    staying in the daemon's heap under the inodes it made.  Each origin
    file's object is small: its host directory's path is stored once, its
    one-run extent map is packed into the map's word."""
    if proc_status(mount.daemon_pid(), "VmData") > 1 << 40:
        pytest.skip("a sanitizer build's allocator keeps its own memory")
    origin = tmp_path / "origin"
    ndirs, nfiles = 100, 150
    for d in range(ndirs):
        sub = origin / f"some-directory-{d:03d}" / "with-a-longer-path"
        sub.mkdir(parents=True)
        for i in range(nfiles):
            (sub / f"file-{i:04d}.txt").write_bytes(b"%d %d\n" % (d, i))
    n = 1 + 2 * ndirs + ndirs * nfiles
    os.listdir(mount.mnt)
    rss0 = proc_status(mount.daemon_pid(), "VmRSS")
    mount.cowfs("clone", origin, mount.p("c"), check=True)
    per_clone = (proc_status(mount.daemon_pid(), "VmRSS") - rss0) / n
    mount.remount()
    pid = mount.daemon_pid()
    per_load = (proc_status(pid, "VmRSS") - rss0) / n
    # every file reads back through its rebuilt host path
    for d in (0, ndirs // 2, ndirs - 1):
        sub = mount.p("c", f"some-directory-{d:03d}", "with-a-longer-path")
        for i in (0, nfiles - 1):
            with open(os.path.join(sub, f"file-{i:04d}.txt"), "rb") as f:
                assert f.read() == b"%d %d\n" % (d, i)
    print(f"RSS per inode: {per_clone:.0f} B after the clone, "
          f"{per_load:.0f} B after a remount")
    # main before the first issue 8 work: 1390 B after the clone, 890 B
    # after a remount; before the packed maps, carved origins and the
    # tree of origin directories: 404 B and 338 B; with them: 285 B and
    # 247 B (each origin file: a packed map, no array; a 72-B origin
    # object and its name, no malloc header; its directory's path once);
    # then 289 B and 243 B; with a 96-B inode (a directory's part in the
    # per-type union, xattrs in a side table) and directories sized once
    # with their tables: 269-282 B and 225-233 B; with requests read, not
    # spliced (each worker thread's request buffer filled by read(2): about
    # 75 KB for the whole daemon, 5 B an inode at this test's 15,201
    # inodes, 0.5 B at /usr's 160k): 274-279 B and 238-246 B
    assert per_clone <= per_load + 150, (per_clone, per_load)
    assert per_clone < 300 and per_load < 252, (per_clone, per_load)
