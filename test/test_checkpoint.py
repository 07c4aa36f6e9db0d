"""Checkpoints written while the daemon serves.

A checkpoint of the whole state is encoded and written by a child process
forked under the metadata lock: the child's memory is a frozen image of
the state, so the daemon goes on serving requests meanwhile (issue 7: no
long work under fs->lock).  COWFS_TEST_CKPT_STALL_MS makes the child stall
after encoding (debug builds), long enough to be seen."""

import os
import struct
import threading
import time

import pytest

from test_crash import crash

pytestmark = pytest.mark.needs_store

STALL_MS = 4000
REC_PACK = 14
INCOMPAT_PACKED = 1


def children_of(pid):
    out = []
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(x) for x in f.read().split()]
        except FileNotFoundError:
            pass
    return out


@pytest.mark.mount_opts("commit=3600")
def test_requests_served_during_a_checkpoint(mount):
    mount.env["COWFS_TEST_CKPT_STALL_MS"] = str(STALL_MS)
    mount.remount()
    pid = mount.daemon_pid()
    mount.p("d").mkdir()
    mount.p("d", "f").write_bytes(b"before")
    big = mount.p("big")
    big.write_bytes(b"x")
    # more than 32 MiB of journal: the next commit writes a checkpoint
    value = os.urandom(60000)
    for i in range(600):
        os.setxattr(big, "user.v", value[i:] + value[:i])
    meta = mount.store / "cowfs.meta"

    done = {}

    def commit():
        fd = os.open(big, os.O_RDONLY)
        try:
            os.fsync(fd)        # commits, then checkpoints (in a child)
        finally:
            os.close(fd)
        done["at"] = time.monotonic()

    t = threading.Thread(target=commit)
    t.start()
    deadline = time.monotonic() + 20
    while not children_of(pid):
        assert time.monotonic() < deadline, "no checkpoint child appeared"
        assert t.is_alive() or children_of(pid), \
            "the commit ended without a checkpoint child"
        time.sleep(0.02)
    child_seen = time.monotonic()
    # while the child writes the checkpoint, the mount keeps serving
    os.stat(mount.p("d", "f"))
    assert sorted(os.listdir(mount.p("d"))) == ["f"]
    assert mount.p("d", "f").read_bytes() == b"before"
    mount.p("d", "g").write_bytes(b"during")
    mount.p("d", "sub").mkdir()
    os.rename(mount.p("d", "f"), mount.p("d", "f2"))
    served = time.monotonic()
    assert children_of(pid), "the checkpoint child ended before the requests"
    assert served - child_seen < STALL_MS / 1000 / 2, \
        f"requests took {served - child_seen:.2f} s during the checkpoint"
    t.join(60)
    assert not t.is_alive()
    assert done["at"] - child_seen > STALL_MS / 1000 / 2, \
        "the fsync did not wait for its checkpoint"
    assert meta.stat().st_size < 1 << 20, "no checkpoint was written"
    # the changes made during the checkpoint go in the journal after it
    fd = os.open(mount.p("d", "g"), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    mount.env.pop("COWFS_TEST_CKPT_STALL_MS")
    crash(mount)
    p = mount.cowfs("fsck", mount.store)
    assert p.returncode == 0, p.stdout + p.stderr
    mount.mount()
    assert sorted(os.listdir(mount.p("d"))) == ["f2", "g", "sub"]
    assert mount.p("d", "f2").read_bytes() == b"before"
    assert os.getxattr(big, "user.v") == value[599:] + value[:599]


def checkpoint_records(meta):
    """(incompat, file size, [(type, len)] of the checkpoint's records)."""
    data = meta.read_bytes()
    incompat, = struct.unpack_from("<I", data, 12)
    ckpt_len, = struct.unpack_from("<Q", data, 24)
    recs, off = [], 64
    while off < 64 + ckpt_len:
        ln, typ = struct.unpack_from("<IH", data, off)
        assert ln >= 16, f"record at {off}: length {ln}"
        recs.append((typ, ln))
        off += ln
    assert off == 64 + ckpt_len
    return incompat, len(data), recs


@pytest.mark.mount_opts("commit=3600")
def test_packed_checkpoint_and_clone_cost(mount):
    """Issue 8: the checkpoint is packed (REC_PACK records, incompat bit
    PACKED), at most 120 B per inode, and a clone adds at most 100 B of
    saved metadata per cloned inode (it was about 290 B unpacked)."""
    nfiles, ninodes = 3000, 1
    for i in range(nfiles):
        d = mount.p("t", f"d{i // 100:03d}")
        if i % 100 == 0:
            d.mkdir(parents=True)
            ninodes += 1
        (d / f"file_{i:05d}.c").write_bytes(b"x" * (100 + i * 37 % 5000))
        ninodes += 1
    os.symlink("d000/file_00000.c", mount.p("t", "link"))
    os.setxattr(mount.p("t", "d001"), "user.k", b"value")
    ninodes += 1
    mount.umount()
    meta = mount.store / "cowfs.meta"
    incompat, base, recs = checkpoint_records(meta)
    assert incompat == INCOMPAT_PACKED
    assert recs and all(t == REC_PACK for t, _ in recs), recs
    assert len(recs) > 1, "a checkpoint this big fills several packs"
    assert base / (ninodes + 1) <= 120, \
        f"{base / (ninodes + 1):.1f} B per inode in the checkpoint"

    mount.mount()
    p = mount.cowfs("clone", "-q", mount.p("t"), mount.p("c"))
    assert p.returncode == 0, p.stdout + p.stderr
    mount.umount()
    incompat, after, recs = checkpoint_records(meta)
    assert incompat == INCOMPAT_PACKED
    assert all(t == REC_PACK for t, _ in recs)
    per = (after - base) / ninodes
    assert per <= 100, f"{per:.1f} B of metadata per cloned inode"

    # what was packed reads back, in the clone as in its source
    p = mount.cowfs("fsck", mount.store)
    assert p.returncode == 0, p.stdout + p.stderr
    mount.mount()
    for top in ("t", "c"):
        assert len(os.listdir(mount.p(top, "d029"))) == 100
        assert mount.p(top, "d007", "file_00777.c").read_bytes() == \
            b"x" * (100 + 777 * 37 % 5000)
        assert os.readlink(mount.p(top, "link")) == "d000/file_00000.c"
        assert os.getxattr(mount.p(top, "d001"), "user.k") == b"value"
