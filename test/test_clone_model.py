"""Isolation of clones, model-based (hypothesis).

Random writes, truncates, punches, appends and clones across a family of
files, checked after every step against a model that holds each file's
bytes and, per block, an identity: a clone copies identities, a write or a
zeroed partial block makes a new one.  A change to one file never shows in
another; `cowfs du` must report as shared exactly the blocks whose identity
another file also holds; all of it again after a remount; fsck clean at
teardown (fixture)."""

import itertools
import json
import os
import random
import shutil
import subprocess
import time

import pytest
from hypothesis import settings, strategies as st, HealthCheck
from hypothesis.stateful import (RuleBasedStateMachine, rule, precondition,
                                 invariant, run_state_machine_as_test)

pytestmark = pytest.mark.needs_store

B = 4096
MAX = 24 * B
ids = itertools.count(1)


class Model:
    def __init__(self):
        self.data = bytearray()
        self.blocks = []  # identity per block, None for a hole

    def nblocks(self):
        return (len(self.data) + B - 1) // B

    def fit(self):
        n = self.nblocks()
        self.blocks = (self.blocks + [None] * n)[:n]

    def grow_tail(self):
        """The size grows: the old partial last block is zeroed past EOF
        (bytes there are never trusted), so a mapped one is rewritten."""
        if len(self.data) % B:
            self.zero_partial(len(self.data) // B, 0, B)

    def write(self, off, buf):
        end = off + len(buf)
        if off > len(self.data):
            self.grow_tail()
        if end > len(self.data):
            self.data.extend(bytes(end - len(self.data)))
        self.data[off:end] = buf
        self.fit()
        for b in range(off // B, (end - 1) // B + 1):
            self.blocks[b] = next(ids)

    def zero_partial(self, b, lo, hi):
        """Bytes [lo, hi) of block b read as zeros; a mapped block gets a
        new identity (written in place or copied), a hole stays a hole."""
        if b < len(self.blocks) and self.blocks[b] is not None:
            self.blocks[b] = next(ids)

    def truncate(self, size):
        old = len(self.data)
        if size < old:
            if size % B:
                self.zero_partial(size // B, size % B, B)
            del self.data[size:]
        elif size > old:
            self.grow_tail()
            self.data.extend(bytes(size - old))
        self.fit()

    def punch(self, off, length):
        end = off + length
        first, last = off // B, (end - 1) // B
        lo, hi = off % B, (end - 1) % B + 1
        if first == last and (lo or hi != B):
            self.zero_partial(first, lo, hi)
        else:
            if lo:
                self.zero_partial(first, lo, B)
            if hi != B:
                self.zero_partial(last, 0, hi)
            for b in range(first + (1 if lo else 0),
                           last + (0 if hi != B else 1)):
                if b < len(self.blocks):
                    self.blocks[b] = None
        size = len(self.data)
        z0, z1 = min(off, size), min(end, size)
        self.data[z0:z1] = bytes(z1 - z0)

    def copy(self):
        m = Model()
        m.data = bytearray(self.data)
        m.blocks = list(self.blocks)
        return m


names = st.sampled_from(["a", "b", "c", "d", "e", "f"])


class CloneMachine(RuleBasedStateMachine):
    mount = None
    counter = itertools.count()

    def __init__(self):
        super().__init__()
        self.dir = self.mount.p(f"run{next(self.counter)}")
        self.dir.mkdir()
        self.files = {}

    def path(self, n):
        return self.dir / n

    def teardown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(n=names, size=st.integers(0, MAX), seed=st.integers(0, 2**32))
    def create(self, n, size, seed):
        data = random.Random(seed).randbytes(size)
        self.path(n).write_bytes(data)
        m = Model()
        if size:
            m.write(0, data)
        self.files[n] = m

    @precondition(lambda self: self.files)
    @rule(data=st.data(), off=st.integers(0, MAX), size=st.integers(1, 3 * B),
          seed=st.integers(0, 2**32))
    def write(self, data, off, size, seed):
        n = data.draw(st.sampled_from(sorted(self.files)))
        buf = random.Random(seed).randbytes(size)
        fd = os.open(self.path(n), os.O_WRONLY)
        os.pwrite(fd, buf, off)
        os.close(fd)
        self.files[n].write(off, buf)

    @precondition(lambda self: self.files)
    @rule(data=st.data(), size=st.integers(0, MAX))
    def truncate(self, data, size):
        n = data.draw(st.sampled_from(sorted(self.files)))
        os.truncate(self.path(n), size)
        self.files[n].truncate(size)

    @precondition(lambda self: self.files)
    @rule(data=st.data(), off=st.integers(0, MAX), length=st.integers(1, 4 * B))
    def punch(self, data, off, length):
        n = data.draw(st.sampled_from(sorted(self.files)))
        subprocess.run(["fallocate", "-p", "-o", str(off), "-l", str(length),
                        self.path(n)], check=True)
        self.files[n].punch(off, length)

    @precondition(lambda self: self.files)
    @rule(data=st.data(), dst=names)
    def clone(self, data, dst):
        src = data.draw(st.sampled_from(sorted(self.files)))
        if src == dst:
            return
        if dst in self.files:
            os.unlink(self.path(dst))
            del self.files[dst]
        p = self.mount.cowfs("clone", self.path(src), self.path(dst))
        assert p.returncode == 0, p.stderr
        self.files[dst] = self.files[src].copy()

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def delete(self, data):
        n = data.draw(st.sampled_from(sorted(self.files)))
        os.unlink(self.path(n))
        del self.files[n]

    @rule()
    def remount(self):
        self.mount.remount()

    @invariant()
    def contents_match(self):
        for n, m in self.files.items():
            got = self.path(n).read_bytes()
            assert len(got) == len(m.data), n
            assert got == bytes(m.data), f"{n}: content differs"
        assert sorted(os.listdir(self.dir)) == sorted(self.files)

    @invariant()
    def du_matches(self):
        """A deleted file's blocks go when the kernel forgets its inode,
        which FUSE sends asynchronously after the unlink: give it a
        moment before calling a difference wrong."""
        for attempt in range(30):
            try:
                return self._du_matches()
            except AssertionError:
                if attempt == 29:
                    raise
                time.sleep(0.1)

    def _du_matches(self):
        if not self.files:
            return
        held = {}
        for n, m in self.files.items():
            for i in m.blocks:
                if i is not None:
                    held[i] = held.get(i, 0) + 1
        names_ = sorted(self.files)
        p = self.mount.cowfs("du", "--json", *[self.path(n) for n in names_])
        assert p.returncode == 0, p.stderr
        for n, u in zip(names_, json.loads(p.stdout)):
            m = self.files[n]
            shared = sum(1 for i in m.blocks if i is not None and held[i] > 1)
            excl = sum(1 for i in m.blocks if i is not None and held[i] == 1)
            assert (u["shared"], u["exclusive"]) == (shared * B, excl * B), \
                (n, u, m.blocks)


@pytest.mark.block_size(4096)
def test_clone_isolation_model(mount):
    CloneMachine.mount = mount
    run_state_machine_as_test(
        CloneMachine,
        settings=settings(max_examples=int(os.environ.get("COWFS_MODEL_EXAMPLES", 40)),
                          stateful_step_count=25, deadline=None,
                          suppress_health_check=list(HealthCheck),
                          print_blob=True))
