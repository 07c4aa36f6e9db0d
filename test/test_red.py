"""Adversarial review of issues 7 and 9 as merged: what a hostile local
user or a new user found, each with the test that failed before the fix.

- A non-root user's clone must not make what mknod(2) would refuse it:
  a device node owned by that user (with 'dev' mounts, a block device of
  the root disk opened by anyone).
- A clone to a new owner drops file capabilities as chown(2) does, and a
  clone by reference by a non-root user does not copy security.capability
  (setxattr would need CAP_SETFCAP).
- Every ioctl checks its flags: the status request too.
- --json output is valid JSON for any path, names that are not UTF-8
  included."""

import json
import os
import shutil
import stat
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import run
from test_security import IOC_PY, as_user, chown, users  # noqa: F401

pytestmark = pytest.mark.needs_store

# security.capability, VFS_CAP_REVISION_2, cap_net_raw (13) permitted and
# effective
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


@pytest.fixture
def shared(mount_factory):
    m = mount_factory("s", opts="allow_other")
    os.chmod(m.mnt, 0o777)
    return m


def test_user_clone_of_device_node_refused(shared, users):
    """mknod(2) of a device needs CAP_MKNOD; a clone by a user would have
    made a device node owned by that user (mode at its will)."""
    m = shared
    a, b = users
    os.mknod(m.p("null"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkdir(m.p("tree"), 0o755)
    os.mknod(m.p("tree", "blk"), 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    m.p("tree", "f").write_bytes(b"f")
    os.chmod(m.p("tree", "f"), 0o644)
    os.mkfifo(m.p("fifo"), 0o644)
    for src in ("null", "tree"):
        p = b.run([m.bin, "clone", m.p(src), m.p("mine-" + src)])
        assert p.returncode == 1, p.stdout + p.stderr
        assert "Operation not permitted" in p.stderr, p.stderr
        assert not os.path.lexists(m.p("mine-" + src))
    # a FIFO is fine, and root may clone devices
    p = b.run([m.bin, "clone", m.p("fifo"), m.p("mine-fifo")])
    assert p.returncode == 0, p.stderr
    assert os.lstat(m.p("mine-fifo")).st_uid == b.uid
    run([m.bin, "clone", m.p("tree"), m.p("root-tree")])
    st = os.lstat(m.p("root-tree", "blk"))
    assert stat.S_ISBLK(st.st_mode) and st.st_uid == 0


def test_file_caps_not_given_to_users(hostdir_caps, shared, users):
    m = shared
    a, b = users
    f = m.p("ping")
    f.write_bytes(b"#!/bin/true\n")
    os.chmod(f, 0o755)
    os.setxattr(f, "security.capability", CAP_NET_RAW)
    os.setxattr(f, "user.note", b"kept")
    p = b.run([m.bin, "clone", f, m.p("mine")])
    assert p.returncode == 0, p.stderr
    assert os.lstat(m.p("mine")).st_uid == b.uid
    assert "security.capability" not in os.listxattr(m.p("mine"))
    assert os.getxattr(m.p("mine"), "user.note") == b"kept"
    # root's clone keeps them (cp -a as root would too)
    run([m.bin, "clone", f, m.p("roots")])
    assert os.getxattr(m.p("roots"), "security.capability") == CAP_NET_RAW
    # by reference from the host
    h = hostdir_caps / "ping"
    p = b.run([m.bin, "clone", h, m.p("hmine")])
    assert p.returncode == 0, p.stderr
    assert "security.capability" not in os.listxattr(m.p("hmine"))
    run([m.bin, "clone", h, m.p("hroot")])
    assert os.getxattr(m.p("hroot"), "security.capability") == CAP_NET_RAW
    m.remount()
    assert "security.capability" not in os.listxattr(m.p("mine"))
    assert "security.capability" not in os.listxattr(m.p("hmine"))
    assert os.getxattr(m.p("roots"), "security.capability") == CAP_NET_RAW


@pytest.fixture
def hostdir_caps():
    d = Path(tempfile.mkdtemp(prefix="cowfs-red.", dir="/tmp"))
    os.chmod(d, 0o755)
    f = d / "ping"
    f.write_bytes(b"#!/bin/true\n")
    os.chmod(f, 0o755)
    try:
        os.setxattr(f, "security.capability", CAP_NET_RAW)
    except OSError as e:
        shutil.rmtree(d)
        pytest.skip(f"no file capabilities on {d}: {e}")
    yield d
    shutil.rmtree(d)


def test_status_ioctl_checks_flags(shared, users):
    m = shared
    a, b = users
    out = as_user(b, f"""
STATUS = IOWR(6, 9472)
buf = bytearray(9472)
print(res(ioctl_path, {str(m.mnt)!r}, STATUS, buf))
buf = bytearray(9472); buf[0] = 1
print(res(ioctl_path, {str(m.mnt)!r}, STATUS, buf))
buf = bytearray(9472); buf[8 * 18 + 5] = 1
print(res(ioctl_path, {str(m.mnt)!r}, STATUS, buf))
""").split()
    assert out == ["OK", "EINVAL", "EINVAL"], out


def test_json_for_any_name(mount):
    """du/df/status --json parse with a JSON parser, whatever the bytes of
    the paths (quotes, control characters, not UTF-8)."""
    m = mount
    name = b'q"b\\s\n\x01\xff\xc3('
    d = os.path.join(os.fsencode(m.mnt), name)
    os.mkdir(d)
    with open(os.path.join(d, b"f"), "wb") as f:
        f.write(b"x" * 5000)
    p = subprocess.run([os.fsencode(m.bin), b"du", b"--json", d],
                       capture_output=True, env=m.env, check=False)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert os.fsencode(doc[0]["path"]) == d
    assert doc[0]["logical"] == 5000
    for cmd in (b"df", b"status"):
        p = subprocess.run([os.fsencode(m.bin), cmd, b"--json", d],
                           capture_output=True, env=m.env, check=False)
        assert p.returncode == 0, p.stderr
        doc = json.loads(p.stdout)
        assert os.fsencode(doc["mountpoint"]) == d


def test_clone_src_with_trailing_slash_through_symlink(mount, tmp_path):
    """'link/' names the directory the link points to (as cp -r and ls
    take it), in the mount and on the host; 'link' is the link."""
    m = mount
    m.p("d").mkdir()
    m.p("d", "f").write_bytes(b"f")
    os.symlink("d", m.p("ld"))
    h = tmp_path / "h"
    (h / "dd").mkdir(parents=True)
    (h / "dd" / "g").write_bytes(b"g")
    os.symlink("dd", h / "ldd")
    for src, dst in ((f"{m.p('ld')}/", "c1"), (f"{h / 'ldd'}/", "c2")):
        p = m.cowfs("clone", src, m.p(dst))
        assert p.returncode == 0, p.stderr
        assert m.p(dst).is_dir() and not m.p(dst).is_symlink(), dst
    assert m.p("c1", "f").read_bytes() == b"f"
    assert m.p("c2", "g").read_bytes() == b"g"
    for src, dst in ((m.p("ld"), "l1"), (h / "ldd", "l2")):
        p = m.cowfs("clone", src, m.p(dst))
        assert p.returncode == 0, p.stderr
        assert m.p(dst).is_symlink()


def test_clone_error_names_the_path_at_fault(shared, users):
    """cowfs: clone: 'PATH': reason, PATH the side that refused."""
    m = shared
    a, b = users
    m.p("secret").write_bytes(b"s")
    os.chmod(m.p("secret"), 0o600)
    m.p("pub").write_bytes(b"p")
    os.chmod(m.p("pub"), 0o644)
    m.p("ro").mkdir(mode=0o755)
    os.mknod(m.p("null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    cases = [("secret", "x1", "secret", "Permission denied"),
             ("pub", "ro/x2", "ro/x2", "Permission denied"),
             ("null", "x3", "null", "Operation not permitted")]
    for src, dst, at, why in cases:
        p = b.run([m.bin, "clone", m.p(src), m.p(dst)])
        assert p.returncode == 1
        assert p.stderr == f"cowfs: clone: '{m.p(at)}': {why}\n", p.stderr


def test_mount_bad_option_is_usage_error(mount_factory):
    """A -o option libfuse does not take is a usage error (exit 2, the
    option named), found before the store is opened; the options of an
    fstab line mount."""
    m = mount_factory("m", do_mount=False)
    for opts, bad in (("bogus", "bogus"), ("allow_other,nosuch=1", "nosuch=1")):
        p = m.cowfs("mount", "-o", opts, m.store, m.mnt)
        assert p.returncode == 2, p.stdout + p.stderr
        assert p.stderr.startswith(
            f"cowfs: mount: unknown option '{bad}'\n"), p.stderr
        assert "could not mount" not in p.stderr
        assert not m.daemon_pid()
    m.mount("ro,nosuid,nodev,noexec,relatime,noatime,nofail,_netdev,"
            "x-systemd.automount,commit=5,logfile=" + str(m.log))
    with open("/proc/self/mountinfo") as f:
        line = [ln for ln in f if f" {m.mnt} " in ln][0]
    assert " ro," in line and "nosuid" in line and "noexec" in line, line


def test_clone_honours_every_supplementary_group(hostdir_caps, shared,
                                                 users):
    """Mode 0604 denies the file's group: a member must not clone it,
    even when that group is its 70th (the daemon kept 64), and a caller
    with more groups than the daemon keeps gets no more than the kernel
    would give (other bits only where the group bits agree; no clone by
    reference, which reads the host with the caller's groups)."""
    m = shared
    a, b = users
    base = 50000
    many = list(range(base, base + 70))
    huge = list(range(base, base + 1100))
    for name, gid in (("g70", base + 69), ("g1100", base + 1099)):
        f = m.p(name)
        f.write_bytes(b"not for the group")
        os.chown(f, 0, gid)
        os.chmod(f, 0o604)
    m.p("open").write_bytes(b"open")
    os.chmod(m.p("open"), 0o644)
    root = str(m.mnt)
    code = f"""
import os
def c(src, dst):
    ino = os.stat({root!r} + "/" + src).st_ino
    return res(clone, {root!r}, ino, 1, src, dst)
print(res(open, {root!r} + "/g70"), c("g70", "x70" + S))
print(res(open, {root!r} + "/g1100"), c("g1100", "x1100" + S),
      c("open", "xo" + S))
print(res(clone_host, {root!r}, {str(hostdir_caps / 'ping')!r}, "xh" + S))
"""
    out = as_user(b, code.replace("S)", "'a')"), groups=many).splitlines()
    assert out == ["EACCES EACCES", "OK OK OK", "OK"], out
    out = as_user(b, code.replace("S)", "'b')"), groups=huge).splitlines()
    assert out == ["EACCES EACCES", "EACCES EACCES OK", "EPERM"], out
    assert not m.p("x70a").exists() and not m.p("x70b").exists()
    assert not m.p("x1100b").exists() and not m.p("xhb").exists()


def test_clone_top_of_bind_mount(mount, tmp_path):
    """A directory of the mount bind-mounted elsewhere: its top cannot be
    named by parent and name from there; a clear message, not EINVAL
    naming DST.  What is under it clones."""
    m = mount
    m.p("d").mkdir()
    m.p("d", "f").write_bytes(b"f")
    b = tmp_path / "bind"
    b.mkdir()
    run(["mount", "--bind", m.p("d"), b])
    try:
        p = m.cowfs("clone", b, m.p("x"))
        assert p.returncode == 1
        assert p.stderr == (f"cowfs: clone: '{b}': the top of a bind mount: "
                            "name it by its path in the cowfs mount\n"), \
            p.stderr
        p = m.cowfs("clone", b / "f", m.p("y"))
        assert p.returncode == 0, p.stderr
    finally:
        run(["umount", b])
    assert m.p("y").read_bytes() == b"f"


def test_no_probing_names_in_private_dirs(shared, users):
    """A clone request naming an entry of another user's 0700 directory
    answers EACCES whether the name exists or not (it was ENOENT for a
    name that is not there: names could be guessed one by one); and
    EEXIST in a DST directory comes only after its permission checks."""
    m = shared
    a, b = users
    p = m.p("a")
    p.mkdir()
    (p / "plan.txt").write_bytes(b"x")
    os.chmod(p / "plan.txt", 0o644)
    (p / "drop").mkdir()
    (p / "drop" / "taken").write_bytes(b"t")
    os.chmod(p / "drop", 0o777)
    chown(p, a, 0o700)
    m.p("pub").write_bytes(b"p")
    os.chmod(m.p("pub"), 0o644)
    a_ino = os.stat(p).st_ino
    f_ino = os.stat(p / "plan.txt").st_ino
    drop = str(p / "drop")
    root = str(m.mnt)
    pub = os.stat(m.p("pub")).st_ino
    out = run_as_with_fd(b, drop, f"""
print(res(clone, {root!r}, {f_ino}, {a_ino}, "plan.txt", "x1"))
print(res(clone, {root!r}, {f_ino}, {a_ino}, "nothing.txt", "x2"))
print(res(clone, {root!r}, {f_ino} + 1, {a_ino}, "plan.txt", "x3"))
print(res(clone_fd, fd, {pub}, 1, "pub", "taken"))
print(res(clone_fd, fd, {pub}, 1, "pub", "free"))
""")
    assert out == ["EACCES"] * 5, out
    assert not (p / "drop" / "free").exists()


def run_as_with_fd(u, dirpath, code):
    """Open dirpath as root, then run code as u with the fd as 'fd'."""
    fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
    try:
        args = ["setpriv", f"--reuid={u.uid}", f"--regid={u.gid}",
                "--clear-groups", "--", "/usr/bin/python3", "-I", "-c",
                IOC_PY + f"\nfd = {fd}\n"
                "def clone_fd(fd, src_ino, src_parent, src_name, name):\n"
                "    fcntl.ioctl(fd, CLONE, clone_buf(src_ino, src_parent,"
                " src_name, name))\n" + code]
        p = subprocess.run(args, capture_output=True, text=True, cwd="/",
                           pass_fds=(fd,), timeout=300)
    finally:
        os.close(fd)
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


def test_df_and_status_of_any_path_in_the_mount(mount):
    """df and status are about the whole mount: for a symlink, FIFO or
    device inside it they printed all zeros ('blocks of 0 bytes'), 'Too
    many levels of symbolic links' or 'not inside a cowfs mount'."""
    m = mount
    m.p("f").write_bytes(b"x" * 10000)
    os.symlink("f", m.p("l"))
    os.mkfifo(m.p("fifo"))
    os.mknod(m.p("null"), 0o644 | stat.S_IFCHR, os.makedev(1, 3))
    want = json.loads(m.cowfs("df", "--json", m.mnt, check=True).stdout)
    assert want["logical"] == 10000 and want["block_size"] > 0
    for name in ("f", "l", "fifo", "null"):
        p = m.cowfs("df", "--json", m.p(name), timeout=30)
        assert p.returncode == 0, p.stderr
        got = json.loads(p.stdout)
        for k in ("logical", "files", "dirs", "block_size"):
            assert got[k] == want[k], (name, k, got, want)
        p = m.cowfs("status", "--json", m.p(name), timeout=30)
        assert p.returncode == 0, (name, p.stderr)
        assert json.loads(p.stdout)["store"] == str(m.store.resolve())


def test_user_clone_into_setgid_dir_takes_its_group(shared, users):
    """A new entry in a setgid directory belongs to the directory's group,
    whoever makes it (as mkdir/creat do there)."""
    m = shared
    a, b = users
    os.mkdir(m.p("team"))
    os.chown(m.p("team"), 0, b.group)
    os.chmod(m.p("team"), 0o2777)
    m.p("f").write_bytes(b"f")
    os.chmod(m.p("f"), 0o644)
    p = a.run([m.bin, "clone", m.p("f"), m.p("team", "f")])
    assert p.returncode == 0, p.stderr
    st = os.lstat(m.p("team", "f"))
    assert (st.st_uid, st.st_gid) == (a.uid, b.group)
    # and outside it, the caller's own group
    p = a.run([m.bin, "clone", m.p("f"), m.p("g")])
    assert p.returncode == 0, p.stderr
    assert os.lstat(m.p("g")).st_gid == a.gid
    m.remount()         # replayed the same way
    assert os.lstat(m.p("team", "f")).st_gid == b.group
