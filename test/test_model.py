"""Model test: random operations applied to a cowfs mount and to a plain
host directory (ext4), which must agree after every step (contents, sizes,
modes, link counts, listings, xattrs and the errno of failed operations),
and after umount + remount (a rule, and at the end of every run).

Each run (example) gets a fresh store.  Environment:
  COWFS_MODEL_EXAMPLES  runs (default 25)
  COWFS_MODEL_STEPS     steps per run (default 30)
  COWFS_MODEL_SEED      replay the runs of a seed printed by a failure
  COWFS_MODEL_SHRINK=1  let hypothesis shrink a failure to a minimal one
                        (slow: every shrink step mounts a fresh store)
"""

import ctypes
import errno
import os
import random
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, invariant, rule,
                                 run_state_machine_as_test)

from conftest import Mount, Watchdog, make_mount_dir, xattrs_of

BS = 64 * 1024
FILES = ["f0", "f1", "f2", "d0/f0", "d0/f1", "d1/f0", "d0/d2/f0"]
DIRS = ["d0", "d1", "d0/d2", "d1/d3"]
ALL = FILES + DIRS
EDGES = [0, 1, 4095, 4096, BS - 1, BS, BS + 1, 2 * BS, 3 * BS - 1,
         1 << 20, (1 << 20) + 7]

paths = st.sampled_from(ALL)
offsets = st.one_of(st.integers(0, 4 * BS + 100), st.sampled_from(EDGES))
lengths = st.one_of(st.integers(0, BS + 100), st.sampled_from(
    [1, 4096, BS, BS + 1, 3 * BS + 5]))
seeds = st.integers(0, 2**32 - 1)
modes = st.sampled_from([0o644, 0o600, 0o755, 0o444, 0o4711, 0o1777])
xnames = st.sampled_from(["user.a", "user.b", "trusted.c"])

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                           ctypes.c_int64]
PUNCH = 0x02 | 0x01     # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


def outcome(fn, root):
    """fn(root) -> ('ok', value) or ('err', errno name)."""
    try:
        return ("ok", fn(root))
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno, e.errno))


def snapshot(root):
    """Everything the model compares, per relative path."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            st_ = os.lstat(p)
            ent = [oct(st_.st_mode), st_.st_nlink]
            if stat.S_ISREG(st_.st_mode):
                with open(p, "rb") as f:
                    data = f.read()
                assert len(data) == st_.st_size, rel
                ent += [st_.st_size, data]
            elif stat.S_ISLNK(st_.st_mode):
                ent += [os.readlink(p)]
            ent.append(xattrs_of(p))
            out[rel] = ent
    return out


def describe_diff(a, b):
    lines = []
    for k in sorted(set(a) | set(b)):
        if k not in a:
            lines.append(f"{k}: only in the host dir: {b[k][:2]}")
        elif k not in b:
            lines.append(f"{k}: only in cowfs: {a[k][:2]}")
        elif a[k] != b[k]:
            ea, eb = a[k], b[k]
            if len(ea) > 3 and len(eb) > 3 and isinstance(ea[3], bytes) \
                    and isinstance(eb[3], bytes) and ea[3] != eb[3]:
                da, db = ea[3], eb[3]
                i = next((i for i in range(min(len(da), len(db)))
                          if da[i] != db[i]), min(len(da), len(db)))
                lines.append(f"{k}: data differs from byte {i} "
                             f"(cowfs size {len(da)}, host {len(db)}): "
                             f"cowfs {da[i:i + 16].hex()} host "
                             f"{db[i:i + 16].hex()}")
                ea, eb = ea[:3] + ea[4:], eb[:3] + eb[4:]
            if ea != eb:
                lines.append(f"{k}: cowfs {ea!r} host {eb!r}")
    return "\n".join(lines)


class CowfsModel(RuleBasedStateMachine):
    ctx = {}        # set by the test: tmp, mnt_root, bin

    def __init__(self):
        super().__init__()
        c = type(self).ctx
        self.base = Path(tempfile.mkdtemp(prefix="run.", dir=c["tmp"]))
        self.m = Mount(self.base, make_mount_dir(c["mnt_root"], "model"),
                       "", c["bin"])
        self.m.init(c.get("block_size"))
        self.m.mount()
        self.dog = Watchdog([self.m], 180)
        self.ref = self.base / "ref"
        self.ref.mkdir()
        self.nsteps = 0

    # -- helpers

    def both(self, what, fn):
        a = outcome(fn, self.m.mnt)
        b = outcome(fn, self.ref)
        note(f"{what}: cowfs {a[0]} {a[1] if a[0] == 'err' else ''} / "
             f"host {b[0]} {b[1] if b[0] == 'err' else ''}")
        assert a == b, f"{what}: cowfs {a!r} but the host dir {b!r}"

    def compare(self, when):
        a = snapshot(self.m.mnt)
        b = snapshot(self.ref)
        if a != b:
            raise AssertionError(f"trees differ {when}:\n"
                                 + describe_diff(a, b))

    # -- rules

    @rule(p=paths, mode=modes)
    def create(self, p, mode):
        def go(root):
            os.close(os.open(root / p, os.O_CREAT | os.O_WRONLY, mode))
        self.both(f"create {p} {oct(mode)}", go)

    @rule(p=paths, off=offsets, n=lengths, seed=seeds)
    def write(self, p, off, n, seed):
        data = random.Random(seed).randbytes(n)

        def go(root):
            fd = os.open(root / p, os.O_WRONLY)
            try:
                return os.pwrite(fd, data, off)
            finally:
                os.close(fd)
        self.both(f"write {p} off {off} len {n}", go)

    @rule(p=paths, n=lengths, seed=seeds)
    def overwrite(self, p, n, seed):
        """open(O_CREAT|O_TRUNC) and write from 0, like a shell '>'."""
        data = random.Random(seed).randbytes(n)

        def go(root):
            fd = os.open(root / p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                         0o644)
            try:
                return os.write(fd, data)
            finally:
                os.close(fd)
        self.both(f"overwrite {p} len {n}", go)

    @rule(p=paths, n=lengths)
    def append(self, p, n):
        data = bytes([n & 0xff]) * n

        def go(root):
            fd = os.open(root / p, os.O_WRONLY | os.O_APPEND)
            try:
                return os.write(fd, data)
            finally:
                os.close(fd)
        self.both(f"append {p} len {n}", go)

    @rule(p=paths, size=offsets)
    def truncate(self, p, size):
        self.both(f"truncate {p} {size}",
                  lambda root: os.truncate(root / p, size))

    @rule(p=paths, off=offsets, n=lengths)
    def punch(self, p, off, n):
        def go(root):
            fd = os.open(root / p, os.O_WRONLY)
            try:
                if n == 0:
                    return "skip"
                if libc.fallocate(fd, PUNCH, off, n) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, os.strerror(e))
            finally:
                os.close(fd)
        self.both(f"punch {p} off {off} len {n}", go)

    @rule(src=paths, dst=paths, off_in=offsets, off_out=offsets, n=lengths)
    def copy_range(self, src, dst, off_in, off_out, n):
        """copy_file_range: the block-sharing path in cowfs."""
        def go(root):
            fi = os.open(root / src, os.O_RDONLY)
            try:
                fo = os.open(root / dst, os.O_WRONLY)
                try:
                    done = 0
                    while done < n:
                        k = os.copy_file_range(fi, fo, n - done,
                                               off_in + done, off_out + done)
                        if k == 0:
                            break
                        done += k
                    return done
                finally:
                    os.close(fo)
            finally:
                os.close(fi)
        self.both(f"copy_file_range {src}@{off_in} -> {dst}@{off_out} "
                  f"len {n}", go)

    @rule(src=paths, dst=paths)
    def rename(self, src, dst):
        self.both(f"rename {src} {dst}",
                  lambda root: os.rename(root / src, root / dst))

    @rule(src=paths, dst=paths)
    def link(self, src, dst):
        self.both(f"link {src} {dst}",
                  lambda root: os.link(root / src, root / dst))

    @rule(dest=st.sampled_from(ALL + ["../f0", "nowhere"]), p=paths)
    def symlink(self, dest, p):
        self.both(f"symlink {dest} {p}",
                  lambda root: os.symlink(dest, root / p))

    @rule(p=paths)
    def unlink(self, p):
        self.both(f"unlink {p}", lambda root: os.unlink(root / p))

    @rule(p=paths)
    def mkdir(self, p):
        self.both(f"mkdir {p}", lambda root: os.mkdir(root / p))

    @rule(p=paths)
    def rmdir(self, p):
        self.both(f"rmdir {p}", lambda root: os.rmdir(root / p))

    @rule(p=paths, mode=modes)
    def chmod(self, p, mode):
        self.both(f"chmod {p} {oct(mode)}",
                  lambda root: os.chmod(root / p, mode))

    @rule(p=paths, name=xnames, n=st.integers(0, 300),
          flags=st.sampled_from([0, os.XATTR_CREATE, os.XATTR_REPLACE]))
    def setxattr(self, p, name, n, flags):
        value = bytes([n % 251]) * n
        self.both(f"setxattr {p} {name} len {n} flags {flags}",
                  lambda root: os.setxattr(root / p, name, value, flags))

    @rule(p=paths, name=xnames)
    def removexattr(self, p, name):
        self.both(f"removexattr {p} {name}",
                  lambda root: os.removexattr(root / p, name))

    @rule()
    def remount(self):
        note("remount")
        self.m.remount()
        self.compare("after a remount")

    @invariant()
    def trees_agree(self):
        self.nsteps += 1
        self.compare(f"after step {self.nsteps}")

    def teardown(self):
        try:
            self.m.remount()
            self.compare("after the final remount")
        finally:
            self.dog.cancel()
            msgs = list(self.dog.report) + self.m.problems()
            shutil.rmtree(self.base, ignore_errors=True)
            shutil.rmtree(self.m.mnt, ignore_errors=True)
        assert not msgs, "\n".join(msgs)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("block_size,share", [(None, 1.0), ("4K", 0.4),
                                              ("1M", 0.4)])
def test_model(tmp_path, mnt_root, cowfs_bin, block_size, share):
    """The default 64K blocks get the full number of runs; 4K and 1M
    stores a share of it."""
    CowfsModel.ctx = {"tmp": tmp_path, "mnt_root": mnt_root,
                      "bin": cowfs_bin, "block_size": block_size}
    seed = int(os.environ.get("COWFS_MODEL_SEED")
               or random.SystemRandom().randrange(2**32))
    phases = [Phase.explicit, Phase.generate]
    if os.environ.get("COWFS_MODEL_SHRINK") == "1":
        phases.append(Phase.shrink)
    examples = int(os.environ.get("COWFS_MODEL_EXAMPLES") or 25)
    s = settings(max_examples=max(1, int(examples * share)),
                 stateful_step_count=int(os.environ.get("COWFS_MODEL_STEPS")
                                         or 30),
                 deadline=None, derandomize=False, database=None,
                 phases=phases, print_blob=True,
                 suppress_health_check=list(HealthCheck))
    CowfsModel._hypothesis_internal_use_seed = seed
    print(f"test_model: COWFS_MODEL_SEED={seed}")
    t0 = time.monotonic()
    try:
        run_state_machine_as_test(CowfsModel, settings=s)
    except BaseException:
        print(f"test_model FAILED: replay with COWFS_MODEL_SEED={seed} "
              "(and COWFS_MODEL_SHRINK=1 for a minimal example)")
        raise
    print(f"test_model: {time.monotonic() - t0:.0f} s")
