"""Directories: large ones, readdir streams across changes, and clones that
share their source's names and name tables (struct dir) until one of them
changes.  Every test runs on a real mount; the fixtures unmount, run cowfs
fsck and check the daemon log at teardown."""
import collections
import os
import random

import pytest

pytestmark = pytest.mark.needs_store


def clone(m, src, dst):
    return m.cowfs("clone", src, dst, check=True)


def touch(path):
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


def listing(d):
    return sorted(os.listdir(d))


def test_large_directory_lookups_and_stream(mount):
    """20,000 entries: every name looks up to its own inode; a readdir
    stream that goes on while entries are deleted, made and renamed returns
    each entry that lives throughout exactly once; tombstones are squeezed
    (many deletes, then more creates) without changing any of this."""
    d = mount.p("big")
    os.mkdir(d)
    names = [f"e{i:06d}" + "x" * (i % 37) for i in range(20000)]
    for n in names:
        touch(d / n)
    inos = {n: os.lstat(d / n).st_ino for n in names}
    assert len(set(inos.values())) == len(names)
    rng = random.Random(7)
    keep = set(rng.sample(names, 5000))
    churn = [n for n in names if n not in keep]
    rng.shuffle(churn)
    seen = []
    made = 0
    with os.scandir(d) as it:
        for i, ent in enumerate(it):
            seen.append(ent.name)
            if churn and i % 2 == 0:
                victim = churn.pop()
                if i % 6 == 0:
                    os.rename(d / victim, d / f"r{i:06d}")
                else:
                    os.unlink(d / victim)
                touch(d / f"n{i:06d}")
                made += 1
    counts = collections.Counter(seen)
    assert not [n for n, c in counts.items() if c > 1]
    assert keep <= set(seen)
    assert made > 1000
    # squeeze: delete most of what is left of churn, then add again
    for n in churn[: len(churn) * 3 // 4]:
        os.unlink(d / n)
    for i in range(3000):
        touch(d / f"m{i:05d}")
    now = listing(d)
    assert len(now) == len(set(now))
    for n in keep:
        assert os.lstat(d / n).st_ino == inos[n], n
    for n in rng.sample(now, 500):
        os.lstat(d / n)
    assert not os.path.exists(d / "nope")
    mount.remount()
    assert listing(d) == now
    for n in keep:
        assert os.lstat(d / n).st_ino == inos[n], n


def test_clone_shares_names_until_changed(mount):
    """A clone's directories share the source's names and table: changes
    on either side (add, delete, rename, in small and large directories)
    never show on the other, live and after a remount (which shares equal
    directories again)."""
    src = mount.p("src")
    os.mkdir(src)
    for sub, count in (("small", 5), ("mid", 40), ("large", 3000)):
        os.mkdir(src / sub)
        for i in range(count):
            touch(src / sub / f"{sub}-{i:05d}.c")
    # tombstones in one source directory: the clone takes entries one by one
    for i in range(0, 40, 3):
        os.unlink(src / "mid" / f"mid-{i:05d}.c")
    clone(mount, src, mount.p("c1"))
    clone(mount, src, mount.p("c2"))

    def state():
        return {top: {sub: listing(mount.p(top, sub))
                      for sub in ("small", "mid", "large")}
                for top in ("src", "c1", "c2")}

    before = state()
    assert before["c1"] == before["src"] == before["c2"]

    def change(top, tag):
        for sub in ("small", "mid", "large"):
            d = mount.p(top, sub)
            names = listing(d)
            os.unlink(d / names[0])
            os.rename(d / names[-1], d / f"{tag}-renamed")
            touch(d / f"{tag}-new")

    def check(expect):
        got = state()
        assert got == expect
        for top in expect:
            for sub, names in expect[top].items():
                for n in names[:50] + names[-50:]:
                    assert os.path.lexists(mount.p(top, sub, n)), (top, sub, n)

    for rnd in range(2):
        change("c1", f"c1r{rnd}")
        expect = state()
        assert expect["src"] == before["src"]
        assert expect["c2"] == before["c2"]
        change("src", f"sr{rnd}")
        expect2 = state()
        assert expect2["c1"] == expect["c1"]
        assert expect2["c2"] == before["c2"]
        # a fresh clone equals src: after the remount they share again
        k = f"k{rnd}"
        clone(mount, src, mount.p(k))
        assert {sub: listing(mount.p(k, sub)) for sub in expect2["src"]} \
            == expect2["src"]
        mount.remount()
        check(expect2)
        change(k, k)
        assert state() == expect2
        change("src", f"s2r{rnd}")
        change("c2", f"c2r{rnd}")
        expect3 = state()
        assert expect3["c1"] == expect2["c1"]
        assert {sub: listing(mount.p(k, sub)) for sub in expect2["src"]} \
            != expect3["src"]
        before = expect3
    mount.remount()
    check(before)


def test_cached_listing_follows_every_change(mount, tmp_path):
    """The kernel caches directory listings across opens (cache_readdir):
    a listing read once must still show what the daemon adds by itself
    (a clone, a clone by reference) and what goes through the kernel
    (create, rename, unlink), each time, and again after a remount."""
    d = mount.p("d")
    os.mkdir(d)
    for i in range(300):	# more than one READDIR reply
        touch(d / f"f{i:03d}")
    want = set(os.listdir(d))
    assert set(os.listdir(d)) == want	# now cached
    clone(mount, d / "f000", d / "cl")
    want.add("cl")
    assert set(os.listdir(d)) == want
    host = tmp_path / "host"
    host.mkdir()
    (host / "x").write_bytes(b"x")
    clone(mount, host, d / "byref")
    want.add("byref")
    assert set(os.listdir(d)) == want
    clone(mount, d, mount.p("d2"))	# a clone of the cached directory
    assert set(os.listdir(mount.p("d2"))) == want
    touch(d / "new")
    os.rename(d / "f001", d / "moved")
    os.unlink(d / "f002")
    want |= {"new", "moved"}
    want -= {"f001", "f002"}
    assert set(os.listdir(d)) == want
    assert set(os.listdir(mount.p("d2"))) == want - {"new", "moved"} | {
        "f001", "f002"}
    mount.remount()
    assert set(os.listdir(d)) == want
