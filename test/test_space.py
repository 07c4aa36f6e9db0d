"""Host space: the last block of a file costs its bytes (rounded up to the
host's 4 KiB pages), not a whole block, on every path that fills a block
partly: plain writes, the copy-on-write of a partial shared or origin
block, detach, copy_file_range's partial blocks, truncate.  And `cowfs df`
and `cowfs du` report the host bytes the objects really take.

Every figure is measured on the host: the sum of st_blocks * 512 over the
store's object files, against the same sum over a `cp -a` of the tree
(directories left out on both sides: the store's 256 objects/XX
directories are a constant, not a blow-up)."""

import ctypes
import ctypes.util
import json
import os
import random
import shutil

import pytest

from conftest import run

pytestmark = pytest.mark.needs_store

BLOCK_SIZES = [4096, 65536, 1 << 20]
NFILES = 500
SLACK = 1.2     # the bound: at most 1.2x the host space of cp -a


def make_small_tree(root, seed, n=NFILES):
    """n files of 1 B .. 20 KB of random bytes in a few directories."""
    rnd = random.Random(seed)
    root.mkdir()
    for i in range(n):
        d = root / f"d{i % 10}"
        d.mkdir(exist_ok=True)
        (d / f"f{i}").write_bytes(rnd.randbytes(rnd.randint(1, 20_000)))


def files_bytes(root):
    """Host bytes of the regular files under root (st_blocks * 512)."""
    os.sync()
    total = 0
    for dp, _, fns in os.walk(root):
        for n in fns:
            st = os.lstat(os.path.join(dp, n))
            total += st.st_blocks * 512
    return total


def objects_bytes(m):
    return files_bytes(m.store / "objects")


def cp_a(src, dst):
    run(["cp", "-a", str(src), str(dst)])
    return files_bytes(dst)


def contents(root):
    out = {}
    for dp, _, fns in os.walk(root):
        for n in fns:
            p = os.path.join(dp, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


def write_tree(src, dst):
    """Copy src's files into dst with plain write(2)s (no copy_file_range,
    no reflink): the write path alone."""
    for dp, _, fns in os.walk(src):
        rel = os.path.relpath(dp, src)
        os.makedirs(os.path.join(dst, rel), exist_ok=True)
        for n in fns:
            with open(os.path.join(dp, n), "rb") as f:
                data = f.read()
            with open(os.path.join(dst, rel, n), "wb") as f:
                f.write(data)


def commit(m):
    fd = os.open(m.mnt, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def df(m):
    return json.loads(m.cowfs("df", "--json", m.mnt, check=True).stdout)


def du(m, *paths):
    return json.loads(m.cowfs("du", "--json", *paths, check=True).stdout)


def check_host_figures(m, *paths):
    """df's host figure is the objects' st_blocks; du's of the whole mount
    is close to it; each PATH's is no more than df's."""
    commit(m)
    real = objects_bytes(m)
    d = df(m)
    assert abs(d["host"] - real) <= max(real // 50, 65536), (d, real)
    text = m.cowfs("df", "--bytes", m.mnt, check=True).stdout
    assert f"on the host:     {d['host']} bytes" in text, text
    whole = du(m, m.mnt)[0]
    assert abs(whole["host"] - d["host"]) <= max(real // 50, 65536), \
        (whole, d)
    for u in du(m, *paths):
        assert 0 < u["host"] <= d["host"] + 65536, (u, d)
    text = m.cowfs("du", "--bytes", *paths, check=True).stdout
    assert text.splitlines()[0].split()[:4] == \
        ["Logical", "Shared", "Exclusive", "Host"], text
    return real


def assert_within(used, ref, what, factor=SLACK):
    assert used <= factor * ref, \
        f"{what}: {used} host bytes for {ref} of cp -a ({used / ref:.2f}x)"


@pytest.mark.parametrize("bs", BLOCK_SIZES)
def test_detach_small_files(mount_factory, tmp_path, bs):
    m = mount_factory(block_size=bs)
    src = tmp_path / "src"
    make_small_tree(src, seed=bs)
    ref = cp_a(src, tmp_path / "ref")
    m.cowfs("clone", src, m.p("c"), check=True)
    assert objects_bytes(m) == 0      # by reference: nothing copied yet
    m.cowfs("detach", "--quiet", m.p("c"), check=True)
    assert df(m)["origin"] == 0
    used = check_host_figures(m, m.p("c"))
    assert_within(used, ref, f"detach, blocks of {bs}")
    shutil.rmtree(src)                # the clone no longer needs it
    assert contents(m.p("c")) == contents(tmp_path / "ref")
    m.remount()
    assert contents(m.p("c")) == contents(tmp_path / "ref")


@pytest.mark.parametrize("bs", BLOCK_SIZES)
def test_write_small_files(mount_factory, tmp_path, bs):
    m = mount_factory(block_size=bs)
    src = tmp_path / "src"
    make_small_tree(src, seed=bs + 1)
    ref = cp_a(src, tmp_path / "ref")
    write_tree(src, m.p("w"))
    used = check_host_figures(m, m.p("w"))
    assert_within(used, ref, f"writes, blocks of {bs}")
    assert contents(m.p("w")) == contents(src)


@pytest.mark.parametrize("bs", BLOCK_SIZES)
def test_cp_small_files(mount_factory, tmp_path, bs):
    """cp inside the mount: copy_file_range, whose partial blocks (all of
    a file under one block, the head and tail of a longer one) go through
    the write path, and whole blocks are shared."""
    m = mount_factory(block_size=bs)
    src = tmp_path / "src"
    make_small_tree(src, seed=bs + 2)
    ref = cp_a(src, tmp_path / "ref")
    write_tree(src, m.p("a"))
    run(["cp", "-a", str(m.p("a")), str(m.p("b"))])
    used = check_host_figures(m, m.p("a"), m.p("b"))
    assert_within(used, 2 * ref, f"cp in the mount, blocks of {bs}")
    assert contents(m.p("b")) == contents(src)
    if bs == 4096:      # files over a block share their whole blocks
        assert du(m, m.p("b"))[0]["shared"] > 0


def patch_tree(root):
    """A 100 B write into every file's last block (partial, or past EOF for
    files under 150 B).  Returns nothing; the same on any tree."""
    for dp, _, fns in os.walk(root):
        for n in sorted(fns):
            p = os.path.join(dp, n)
            size = os.path.getsize(p)
            fd = os.open(p, os.O_WRONLY)
            try:
                os.pwrite(fd, b"P" * 100, max(0, size - 150))
            finally:
                os.close(fd)


@pytest.mark.parametrize("bs", BLOCK_SIZES)
def test_small_write_into_clone_by_reference(mount_factory, tmp_path, bs):
    """The copy-on-write of an origin block keeps the origin's bytes up to
    EOF and no further."""
    m = mount_factory(block_size=bs)
    src = tmp_path / "src"
    make_small_tree(src, seed=bs + 3)
    ref = cp_a(src, tmp_path / "ref")
    m.cowfs("clone", src, m.p("c"), check=True)
    patch_tree(m.p("c"))
    patch_tree(tmp_path / "ref")
    used = check_host_figures(m, m.p("c"))
    assert_within(used, ref, f"100 B writes into origin blocks of {bs}")
    assert contents(m.p("c")) == contents(tmp_path / "ref")
    m.remount()
    assert contents(m.p("c")) == contents(tmp_path / "ref")


@pytest.mark.parametrize("bs", BLOCK_SIZES)
def test_small_write_into_clone(mount_factory, tmp_path, bs):
    """The same for a clone inside the store: the shared last block is
    copied up to EOF."""
    m = mount_factory(block_size=bs)
    src = tmp_path / "src"
    make_small_tree(src, seed=bs + 4)
    ref = cp_a(src, tmp_path / "ref")
    write_tree(src, m.p("a"))
    m.cowfs("clone", m.p("a"), m.p("b"), check=True)
    patch_tree(m.p("b"))
    patch_tree(tmp_path / "ref")
    used = check_host_figures(m, m.p("a"), m.p("b"))
    assert_within(used, 2 * ref, f"100 B writes into shared blocks of {bs}")
    assert contents(m.p("a")) == contents(src)
    assert contents(m.p("b")) == contents(tmp_path / "ref")


# --------------------------------------------------------------------------
# bytes past EOF in the last block read zeros once the file grows again

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long,
                            ctypes.c_long]
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 1, 2, 0x10


def fallocate(path, mode, off, length):
    fd = os.open(path, os.O_WRONLY)
    try:
        if _libc.fallocate(fd, mode, off, length) < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), path)
    finally:
        os.close(fd)


def pwrite(path, off, data):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, off)
    finally:
        os.close(fd)


@pytest.mark.parametrize("bs", BLOCK_SIZES)
def test_tail_reads_zeros_after_growth(mount_factory, tmp_path, bs):
    """Each step is done on a host file too (the reference); the files must
    stay equal, across a remount too."""
    m = mount_factory(block_size=bs)
    ref = tmp_path / "ref"
    ref.mkdir()
    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "o").write_bytes(b"\xaa" * 5000)
    (ref / "o").write_bytes(b"\xaa" * 5000)
    m.cowfs("clone", origin / "o", m.p("o"), check=True)
    m.p("f").write_bytes(b"\xbb" * 5000)
    (ref / "f").write_bytes(b"\xbb" * 5000)
    m.cowfs("clone", m.p("f"), m.p("g"), check=True)   # a shared block
    shutil.copy(ref / "f", ref / "g")

    def both(fn, name, *args):
        fn(m.p(name), *args)
        fn(ref / name, *args)
        assert m.p(name).read_bytes() == (ref / name).read_bytes(), \
            (name, fn.__name__, args)

    for name in ("f", "g", "o"):
        both(os.truncate, name, 100)           # shrink into the block
        both(os.truncate, name, 3000)          # and grow inside it
        both(pwrite, name, 4000, b"w")         # a write past EOF
        both(os.truncate, name, 2 * bs + 7)    # grow past the block
    # an origin file's block written past its EOF, never truncated
    (origin / "p").write_bytes(b"\xcc" * 3000)
    (ref / "p").write_bytes(b"\xcc" * 3000)
    m.cowfs("clone", origin / "p", m.p("p"), check=True)
    both(pwrite, "p", 3500, b"q")
    # a shared block zeroed in part, by punching and by ZERO_RANGE
    m.p("h").write_bytes(b"\xdd" * 5000)
    (ref / "h").write_bytes(b"\xdd" * 5000)
    m.cowfs("clone", m.p("h"), m.p("h2"), check=True)
    shutil.copy(ref / "h", ref / "h2")
    both(fallocate, "h2", FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 10, 20)
    both(fallocate, "h2", FALLOC_FL_ZERO_RANGE, 4990, 100)
    both(fallocate, "h", FALLOC_FL_ZERO_RANGE, 100, 50)
    want = contents(ref)
    got = {k: v for k, v in contents(m.mnt).items() if k in want}
    assert got == want
    m.remount()
    got = {k: v for k, v in contents(m.mnt).items() if k in want}
    assert got == want


@pytest.mark.parametrize("bs", BLOCK_SIZES)
def test_growth_writes_no_zeros(mount_factory, bs):
    """Growing a file (truncate, a write past EOF, an extending fallocate)
    makes holes, not blocks of zeros."""
    m = mount_factory(block_size=bs)
    for i in range(20):
        p = m.p(f"f{i}")
        p.write_bytes(b"x" * 100)
        os.truncate(p, 4 * bs + 100)
        pwrite(p, 8 * bs, b"y")
        fallocate(p, FALLOC_FL_ZERO_RANGE, 8 * bs + 10, bs)
        assert p.read_bytes() == (b"x" * 100 + bytes(8 * bs - 100) + b"y"
                                  + bytes(bs + 9))
    used = check_host_figures(m, m.mnt)
    # each file: two pages of data (its first block, the 'y'); a 4 KiB
    # block store may allocate a third for the ZERO_RANGE's last page
    assert used <= 20 * 3 * 4096, used


def test_detach_keeps_a_sparse_file_sparse(mount, tmp_path):
    """Detach copies an origin's data blocks into slots that are fresh
    holes, so the zeros in them (a sparse file's holes inside a block)
    are not written: cp -a keeps them holes too."""
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.truncate(10 << 20)
        for off in (0, 3 << 20, (5 << 20) + 100_000):
            f.seek(off)
            f.write(b"island" * 100)
    (src / "zeros").write_bytes(bytes(200_000))     # written zeros
    ref = cp_a(src, tmp_path / "ref")
    mount.cowfs("clone", src, mount.p("c"), check=True)
    mount.cowfs("detach", "--quiet", mount.p("c"), check=True)
    used = check_host_figures(mount, mount.p("c"))
    assert_within(used, max(ref, 3 * 4096), "detach of a sparse file")
    assert contents(mount.p("c")) == contents(src)
    mount.remount()
    assert contents(mount.p("c")) == contents(src)
