"""A full host disk: writes fail with ENOSPC, nothing already written is
lost, and the store still unmounts, mounts and checks clean.

With the kernel's writeback cache (the default) write(2) only fills the
page cache and the daemon's ENOSPC comes back at fsync or close; with
-o nowriteback_cache (COWFS_TEST_WRITEBACK=0) at the write itself."""

import errno
import os
import shutil
import subprocess

import pytest

from conftest import NO_WRITEBACK, run, Mount, make_mount_dir

pytestmark = pytest.mark.needs_store


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        pytest.skip("needs root and mkfs.ext4")
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(48 << 20)
    run(["mkfs.ext4", "-q", "-F", img])
    mnt = tmp_path / "disk"
    mnt.mkdir()
    run(["mount", "-o", "loop", img, mnt])
    yield mnt
    run(["umount", "-l", mnt], check=False)


def test_enospc_keeps_store_usable(small_disk, mnt_root, cowfs_bin, request):
    m = Mount(small_disk, make_mount_dir(mnt_root, request.node.name),
              "commit=1", cowfs_bin)
    m.log = small_disk.parent / "daemon.log"
    m.init()
    m.mount()
    try:
        keep = os.urandom(1 << 20)
        m.p("keep").write_bytes(keep)
        fd = os.open(m.p("keep"), os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        hit = where = None
        chunk = os.urandom(1 << 20)
        fd = os.open(m.p("fill"), os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            for i in range(200):
                os.write(fd, chunk)
        except OSError as e:
            hit, where = e.errno, "write"
        try:
            os.fsync(fd)
        except OSError as e:
            if not hit:
                hit, where = e.errno, "fsync"
        finally:
            try:
                os.close(fd)
            except OSError as e:
                if not hit:
                    hit, where = e.errno, "close"
        assert hit == errno.ENOSPC, (hit, where)
        if NO_WRITEBACK:
            assert where == "write", where
        else:
            assert where in ("fsync", "close"), where
        # more files while full: may fail with ENOSPC (at the write, or
        # at close once written back), never crash
        for i in range(50):
            try:
                m.p(f"small{i}").write_bytes(b"x")
            except OSError as e:
                assert e.errno == errno.ENOSPC
        os.unlink(m.p("fill"))
        m.remount()
        assert m.p("keep").read_bytes() == keep
        m.p("after").write_bytes(b"space again")
        m.umount()
        p = m.fsck()
        assert p is None or p.returncode == 0, p.stdout + p.stderr
        m.mount()
        assert m.p("after").read_bytes() == b"space again"
    finally:
        msgs = m.problems()
    # the daemon logs the failed writes as errors: that is expected here
    msgs = [x for x in msgs if not x.startswith("daemon log")]
    assert not msgs, "\n".join(msgs)
