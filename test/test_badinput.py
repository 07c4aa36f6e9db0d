"""Bad input to the cowfs command: corrupt or foreign stores, misuse, usage
errors.  Each must end in a one-line message and a nonzero exit, never a
crash (no signal, no sanitizer report)."""

import ctypes
import os
import random
import signal
import struct

import pytest

import conftest
from conftest import (cowfs_binary, is_mounted, make_mount_dir, run,
                      sanitizer_env, sanitizer_reports)

pytestmark = pytest.mark.needs_store

HDR = 64
SANITIZER_WORDS = ("Sanitizer", "runtime error", "SUMMARY:", "==ERROR")


def cowfs(base, *args, timeout=120):
    """Run cowfs with stdin closed; sanitizer reports go to files in base."""
    return run([cowfs_binary(), *args], check=False, timeout=timeout,
               env=sanitizer_env(base), stdin=open(os.devnull))


def assert_clean_failure(p, base, code=None, words=(), one_line=True):
    """A refusal: nonzero exit (or exactly code), no signal, no sanitizer
    output, exactly one line on stderr (a usage error may add usage lines
    after its message: one_line=False)."""
    ctx = f"exit {p.returncode}\nstdout: {p.stdout!r}\nstderr: {p.stderr!r}"
    assert p.returncode > 0, "killed by a signal or succeeded: " + ctx
    if code is not None:
        assert p.returncode == code, ctx
    for w in SANITIZER_WORDS:
        assert w not in p.stderr, ctx
    reports = sanitizer_reports(base)
    assert not reports, "\n".join(reports)
    lines = p.stderr.strip().splitlines()
    assert lines, "no message: " + ctx
    if one_line:
        assert len(lines) == 1, "want a one-line error: " + ctx
    assert len(lines[0]) < 400, ctx
    for w in words:
        assert w.lower() in lines[0].lower(), f"message lacks {w!r}: " + ctx
    return lines[0]


def assert_ok(p):
    assert p.returncode == 0, \
        f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"


@pytest.fixture
def env(tmp_path, mnt_root, request):
    """base dir, a fresh store path (not yet made) and a mount point; the
    mount point is unmounted at teardown whatever happens."""
    class E:
        pass
    e = E()
    e.base = tmp_path
    e.store = tmp_path / "store"
    e.mnt = make_mount_dir(mnt_root, request.node.name)
    e.log = tmp_path / "daemon.log"
    e.mounts = [e.mnt]
    yield e
    for m in e.mounts:
        if is_mounted(m):
            p = cowfs(tmp_path, "umount", m)
            if is_mounted(m):
                run(["fusermount3", "-u", "-z", m], check=False)
            assert p.returncode == 0, p.stderr


def mount(e, store=None, mnt=None, opts=None):
    o = f"logfile={e.log}" + (f",{opts}" if opts else "")
    return cowfs(e.base, "mount", "-o", o, store or e.store, mnt or e.mnt)


def init_store(e, *extra):
    assert_ok(cowfs(e.base, "init", *extra, e.store))


def make_populated_store(e):
    """A store whose checkpoint holds something: files written, unmounted."""
    init_store(e)
    assert_ok(mount(e))
    for i in range(50):
        d = e.mnt / f"d{i % 5}"
        d.mkdir(exist_ok=True)
        (d / f"f{i}").write_bytes(os.urandom(100 + i * 997))
        os.setxattr(d / f"f{i}", "user.k", b"v" * i)
    os.symlink("d0/f0", e.mnt / "link")
    assert_ok(cowfs(e.base, "umount", e.mnt))
    assert not is_mounted(e.mnt)


def read_header(store):
    with open(store / "cowfs.meta", "rb") as f:
        return bytearray(f.read(HDR))


def xxh3_64(data):
    lib = ctypes.CDLL("libxxhash.so.0")
    lib.XXH3_64bits.restype = ctypes.c_uint64
    lib.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    return lib.XXH3_64bits(bytes(data), len(data))


def write_header(store, hdr, fix_csum=True):
    hdr = bytearray(hdr)
    if fix_csum:
        hdr[56:64] = struct.pack("<Q", xxh3_64(hdr[:56]))
    with open(store / "cowfs.meta", "r+b") as f:
        f.write(hdr)


def refused_mount(e, words=()):
    p = mount(e)
    msg = assert_clean_failure(p, e.base, words=words)
    assert not is_mounted(e.mnt), "mounted a bad store"
    return msg


def refused_fsck(e):
    p = cowfs(e.base, "help", "fsck")
    if p.returncode != 0:
        return
    p = cowfs(e.base, "fsck", e.store)
    assert p.returncode != 0, f"fsck passed a bad store: {p.stdout}"
    assert p.returncode > 0, f"fsck died by signal {-p.returncode}"
    for w in SANITIZER_WORDS:
        assert w not in p.stderr + p.stdout, p.stderr
    assert not sanitizer_reports(e.base)


# --------------------------------------------------------------------------
# header sanity of a fresh store (the tests below rely on this layout)


def test_init_layout(env):
    init_store(env)
    assert (env.store / "cowfs.meta").is_file()
    assert (env.store / "objects").is_dir()
    h = read_header(env.store)
    assert h[:8] == b"COWFSMD1"
    assert struct.unpack_from("<I", h, 8)[0] == 1
    assert struct.unpack_from("<I", h, 20)[0] == 16      # 64K default
    ckpt_len = struct.unpack_from("<Q", h, 24)[0]
    assert os.path.getsize(env.store / "cowfs.meta") >= HDR + ckpt_len
    assert struct.unpack_from("<Q", h, 56)[0] == xxh3_64(h[:56])


@pytest.mark.parametrize("arg,shift", [("4096", 12), ("4K", 12),
                                       ("64K", 16), ("1M", 20),
                                       ("8k", 13), ("65536", 16)])
def test_init_block_sizes(env, arg, shift):
    if arg == "8k":
        # lower-case suffix: accept it or refuse it as a usage error
        p = cowfs(env.base, "init", "--block-size", arg, env.store)
        if p.returncode != 0:
            assert_clean_failure(p, env.base, code=2, one_line=False)
            return
    else:
        init_store(env, "--block-size", arg)
    h = read_header(env.store)
    assert struct.unpack_from("<I", h, 20)[0] == shift
    assert_ok(mount(env))
    data = os.urandom(3 * (1 << shift) + 123)
    (env.mnt / "f").write_bytes(data)
    st = os.statvfs(env.mnt)
    assert st.f_bsize > 0
    assert_ok(cowfs(env.base, "umount", env.mnt))
    assert_ok(mount(env))
    assert (env.mnt / "f").read_bytes() == data


@pytest.mark.parametrize("size", ["3000", "2M", "2K", "0", "abc", "64Q",
                                  "-4096", "", "4097", "1G",
                                  "18446744073709551616"])
def test_init_bad_block_size(env, size):
    p = cowfs(env.base, "init", "--block-size", size, env.store)
    assert_clean_failure(p, env.base, code=2, one_line=False)
    assert not (env.store / "cowfs.meta").exists()


# --------------------------------------------------------------------------
# corrupt or foreign metadata


@pytest.mark.parametrize("kind", ["random", "text", "empty", "short",
                                  "zeros", "magic_only"])
def test_foreign_meta(env, kind):
    init_store(env)
    meta = env.store / "cowfs.meta"
    content = {
        "random": random.Random(1).randbytes(8192),
        "text": b"hello, I am not a cowfs metadata file\n" * 20,
        "empty": b"",
        "short": b"COWFSMD1\x01\x00",
        "zeros": bytes(4096),
        "magic_only": b"COWFSMD1" + bytes(56),
    }[kind]
    meta.write_bytes(content)
    refused_mount(env)
    refused_fsck(env)
    assert meta.read_bytes() == content, "a refused mount changed the file"


def test_truncated_checkpoint(env):
    make_populated_store(env)
    meta = env.store / "cowfs.meta"
    h = read_header(env.store)
    ckpt_len = struct.unpack_from("<Q", h, 24)[0]
    assert ckpt_len > 200, f"checkpoint only {ckpt_len} bytes"
    assert meta.stat().st_size >= HDR + ckpt_len
    for cut in (HDR + ckpt_len // 2, HDR + ckpt_len - 1, HDR + 1, HDR):
        os.truncate(meta, cut)
        refused_mount(env)
        refused_fsck(env)
        assert meta.stat().st_size == cut


def test_corrupt_checkpoint_byte(env):
    make_populated_store(env)
    meta = env.store / "cowfs.meta"
    h = read_header(env.store)
    ckpt_len = struct.unpack_from("<Q", h, 24)[0]
    data = bytearray(meta.read_bytes())
    data[HDR + ckpt_len // 3] ^= 0x40
    meta.write_bytes(data)
    refused_mount(env, words=["checksum"])
    refused_fsck(env)


def test_corrupt_header_checksum(env):
    init_store(env)
    h = read_header(env.store)
    h[40] ^= 1      # generation, checksum left alone
    write_header(env.store, h, fix_csum=False)
    refused_mount(env, words=["checksum"])


def test_wrong_version_checksum_unchanged(env):
    """Version changed, checksum not recomputed: refused (as a checksum
    mismatch, which is checked first)."""
    init_store(env)
    h = read_header(env.store)
    struct.pack_into("<I", h, 8, 2)
    write_header(env.store, h, fix_csum=False)
    refused_mount(env)
    refused_fsck(env)


@pytest.mark.parametrize("version", [0, 2, 0xffffffff])
def test_wrong_version(env, version):
    """A well-formed header from another format version."""
    init_store(env)
    h = read_header(env.store)
    struct.pack_into("<I", h, 8, version)
    write_header(env.store, h)
    refused_mount(env, words=["version"])
    refused_fsck(env)


def test_unknown_incompat_feature(env):
    init_store(env)
    h = read_header(env.store)
    struct.pack_into("<I", h, 12, 1 << 31)
    write_header(env.store, h)
    refused_mount(env, words=["feature"])


def test_unknown_compat_feature_mounts(env):
    """Unknown compatible feature bits are ignored."""
    init_store(env)
    h = read_header(env.store)
    struct.pack_into("<I", h, 16, 1 << 31)
    write_header(env.store, h)
    assert_ok(mount(env))
    (env.mnt / "x").write_bytes(b"x")


@pytest.mark.parametrize("shift", [0, 11, 21, 64, 0xffffffff])
def test_bad_block_shift(env, shift):
    init_store(env)
    h = read_header(env.store)
    struct.pack_into("<I", h, 20, shift)
    write_header(env.store, h)
    refused_mount(env, words=["block size"])


def test_huge_ckpt_len(env):
    """ckpt_len far beyond the file (with a valid header checksum)."""
    init_store(env)
    h = read_header(env.store)
    for n in (1 << 40, (1 << 64) - 1, (1 << 63) + 5):
        struct.pack_into("<Q", h, 24, n)
        write_header(env.store, h)
        refused_mount(env)


def test_missing_meta(env):
    init_store(env)
    os.unlink(env.store / "cowfs.meta")
    refused_mount(env)


def test_missing_store(env):
    refused_mount(env)


def test_store_is_a_file(env):
    env.store.write_bytes(b"x")
    refused_mount(env)


def test_missing_mountpoint(env):
    init_store(env)
    p = cowfs(env.base, "mount", "-o", f"logfile={env.log}", env.store,
              env.base / "no-such-dir")
    assert_clean_failure(p, env.base)


# --------------------------------------------------------------------------
# misuse


def test_second_mount_refused(env, mnt_root, request):
    init_store(env)
    assert_ok(mount(env))
    (env.mnt / "a").write_bytes(b"first")
    mnt2 = make_mount_dir(mnt_root, request.node.name + "-2")
    env.mounts.append(mnt2)
    p = mount(env, mnt=mnt2)
    assert_clean_failure(p, env.base, code=1)
    assert not is_mounted(mnt2)
    # The first mount still works.
    assert (env.mnt / "a").read_bytes() == b"first"
    (env.mnt / "b").write_bytes(b"second")
    assert_ok(cowfs(env.base, "umount", env.mnt))
    # and after it is gone, the store mounts again
    assert_ok(mount(env, mnt=mnt2))
    assert (mnt2 / "b").read_bytes() == b"second"


def test_same_mountpoint_twice(env):
    init_store(env)
    assert_ok(mount(env))
    p = mount(env)
    assert p.returncode != 0
    assert p.returncode > 0
    (env.mnt / "ok").write_bytes(b"1")


def test_init_nonempty_dir(env):
    env.store.mkdir()
    (env.store / "precious").write_bytes(b"data")
    p = cowfs(env.base, "init", env.store)
    assert_clean_failure(p, env.base, code=1)
    assert sorted(os.listdir(env.store)) == ["precious"]
    assert (env.store / "precious").read_bytes() == b"data"


def test_init_existing_store(env):
    init_store(env)
    before = (env.store / "cowfs.meta").read_bytes()
    p = cowfs(env.base, "init", env.store)
    assert_clean_failure(p, env.base, code=1)
    assert (env.store / "cowfs.meta").read_bytes() == before


def test_init_empty_dir_ok(env):
    env.store.mkdir()
    init_store(env)
    assert (env.store / "cowfs.meta").is_file()


def test_fsck_refuses_mounted_store(env):
    if cowfs(env.base, "help", "fsck").returncode != 0:
        pytest.skip("no fsck yet")
    init_store(env)
    assert_ok(mount(env))
    p = cowfs(env.base, "fsck", env.store)
    assert_clean_failure(p, env.base)
    (env.mnt / "still").write_bytes(b"works")


def test_umount_not_mounted(env):
    p = cowfs(env.base, "umount", env.mnt)
    assert_clean_failure(p, env.base)


def test_mount_ro_refuses_writes(env):
    init_store(env)
    assert_ok(mount(env))
    (env.mnt / "f").write_bytes(b"data")
    assert_ok(cowfs(env.base, "umount", env.mnt))
    assert_ok(mount(env, opts="ro"))
    assert (env.mnt / "f").read_bytes() == b"data"
    with pytest.raises(OSError) as ei:
        (env.mnt / "g").write_bytes(b"x")
    assert ei.value.errno == 30     # EROFS
    with pytest.raises(OSError) as ei:
        os.open(env.mnt / "f", os.O_WRONLY)
    assert ei.value.errno == 30


def test_kill9_daemon_then_remount(env):
    """A daemon killed with SIGKILL: the store mounts again (journal replay),
    fsynced data is there, fsck is clean."""
    init_store(env)
    assert_ok(mount(env))
    data = os.urandom(300000)
    fd = os.open(env.mnt / "f", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, data)
    os.fsync(fd)
    os.close(fd)
    os.mkdir(env.mnt / "dir")
    dfd = os.open(env.mnt / "dir", os.O_RDONLY)
    os.fsync(dfd)
    os.close(dfd)
    pid = int((env.store / "lock").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    conftest.wait_exit(pid, 5)
    run(["fusermount3", "-u", "-z", env.mnt], check=False)
    assert not is_mounted(env.mnt)
    assert_ok(mount(env))
    assert (env.mnt / "f").read_bytes() == data
    assert (env.mnt / "dir").is_dir()
    assert_ok(cowfs(env.base, "umount", env.mnt))
    p = cowfs(env.base, "help", "fsck")
    if p.returncode == 0:
        assert_ok(cowfs(env.base, "fsck", env.store))


# --------------------------------------------------------------------------
# usage


@pytest.mark.parametrize("args", [
    [],
    ["frobnicate"],
    ["init"],
    ["mount"],
    ["mount", "/nonexistent-store"],
    ["umount"],
    ["init", "--no-such-option", "/tmp/x-never-made"],
    ["mount", "--bogus", "/a", "/b"],
    ["init", "--block-size"],
    ["init", "a", "b"],
    ["mount", "a", "b", "c"],
    ["help", "no-such-command"],
    ["--no-such-option"],
])
def test_usage_errors(tmp_path, args):
    p = cowfs(tmp_path, *args)
    ctx = f"{args}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    assert p.returncode == 2, ctx
    assert p.stderr.strip(), "usage error says nothing: " + ctx
    for w in SANITIZER_WORDS:
        assert w not in p.stderr, ctx
    assert not sanitizer_reports(tmp_path)


def test_fsck_usage(tmp_path):
    if cowfs(tmp_path, "help", "fsck").returncode != 0:
        pytest.skip("no fsck yet")
    assert cowfs(tmp_path, "fsck").returncode == 2


@pytest.mark.parametrize("args", [
    ["--help"], ["help"], ["init", "--help"], ["mount", "--help"],
    ["umount", "--help"], ["help", "init"], ["help", "mount"],
    ["help", "umount"],
])
def test_help(tmp_path, args):
    p = cowfs(tmp_path, *args)
    assert p.returncode == 0, f"{args}: {p.stderr}"
    out = p.stdout + p.stderr
    assert "usage" in out.lower() or "cowfs" in out.lower(), out
    assert not sanitizer_reports(tmp_path)


def test_help_names_commands(tmp_path):
    p = cowfs(tmp_path, "--help")
    for c in ("init", "mount", "umount"):
        assert c in p.stdout, p.stdout


def test_version(tmp_path):
    p = cowfs(tmp_path, "--version")
    assert p.returncode == 0
    assert any(ch.isdigit() for ch in p.stdout), p.stdout
    assert "0.1" in p.stdout


# --------------------------------------------------------------------------
# a bad record in the middle of the journal (issue 7): corruption, not a
# torn tail; the mount is refused with the offset, fsck says so, and only
# fsck --repair cuts the journal, saying what it drops

def journal_records(meta):
    """(offset, type, length) of every whole record after the checkpoint."""
    ckpt_len = struct.unpack_from("<Q", meta, 24)[0]
    off, out = HDR + ckpt_len, []
    while off + 16 <= len(meta):
        ln, typ = struct.unpack_from("<IH", meta, off)
        if ln < 16 or off + ln > len(meta):
            break
        out.append((off, typ, ln))
        off += ln
    return out


def kill_daemon(e):
    conftest.kill_daemon(e.store, e.mnt)


def test_bad_record_in_the_middle_of_the_journal(env):
    e = env
    init_store(e)
    assert_ok(mount(e, opts="commit=3600"))
    for i in range(4):
        with open(e.mnt / f"f{i}", "wb") as f:
            f.write(os.urandom(5000))
            f.flush()
            os.fsync(f.fileno())
    kill_daemon(e)              # the journal stays as it is on disk
    meta = bytearray((e.store / "cowfs.meta").read_bytes())
    recs = journal_records(meta)
    commits = [i for i, r in enumerate(recs) if r[1] == 11]
    assert len(commits) >= 4, recs
    # the first record after the batch that holds f0 (inode 2) whole
    whole = next(i for i, (off, typ, _) in enumerate(recs) if typ == 2 and
                 struct.unpack_from("<QQ", meta, off + 16) == (2, 5000))
    after = next(c for c in commits if c > whole)
    bad = recs[after + 1][0]
    later = sum(1 for c in commits if c > after)
    meta[bad + 16 + 2] ^= 0x40
    (e.store / "cowfs.meta").write_bytes(meta)

    msg = refused_mount(e, words=(f"offset {bad}", "fsck --repair"))
    assert f"{later} committed batch" in msg, msg
    p = cowfs(e.base, "fsck", e.store)
    assert p.returncode != 0 and f"offset {bad}" in p.stdout + p.stderr, \
        p.stdout + p.stderr
    assert (e.store / "cowfs.meta").read_bytes() == meta, "fsck changed it"

    p = cowfs(e.base, "fsck", "--repair", e.store)
    assert_ok(p)
    assert "journal cut at offset" in p.stdout and "dropped" in p.stdout, \
        p.stdout
    assert_ok(cowfs(e.base, "fsck", e.store))
    assert_ok(mount(e))
    assert len((e.mnt / "f0").read_bytes()) == 5000
    for i in (1, 2, 3):
        assert not (e.mnt / f"f{i}").exists()
    assert_ok(cowfs(e.base, "umount", e.mnt))


def test_torn_tail_of_the_journal_still_mounts(env):
    """The other side: an incomplete last batch is a torn tail, dropped
    with a log line, and the mount goes on."""
    e = env
    init_store(e)
    assert_ok(mount(e, opts="commit=3600"))
    for i in range(2):
        with open(e.mnt / f"f{i}", "wb") as f:
            f.write(b"x" * 100)
            f.flush()
            os.fsync(f.fileno())
    kill_daemon(e)
    meta = bytearray((e.store / "cowfs.meta").read_bytes())
    recs = journal_records(meta)
    last = recs[-1]
    assert last[1] == 11
    (e.store / "cowfs.meta").write_bytes(meta[:last[0] + 7])  # cut COMMIT
    assert_ok(mount(e))
    assert (e.mnt / "f0").exists() and not (e.mnt / "f1").exists()
    assert_ok(cowfs(e.base, "umount", e.mnt))
    assert "torn tail" in e.log.read_text()
