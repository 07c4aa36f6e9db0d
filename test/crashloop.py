#!/usr/bin/python3
"""crashloop.py - kill -9 the cowfs daemon at random moments, forever (or
for a number of rounds or seconds), and check that nothing fsync promised
is lost.

Each round mounts the store, sometimes kills the daemon right after the
mount (before or after a write that nothing commits), otherwise runs a
random workload (writes, overwrites, appends, truncates up and down,
O_TMPFILEs named by linkat,
writes into holes, copy_file_range, clones, tree clones, clones by
reference of a host tree, renames, deletes, fsyncs) while a timer kills
the daemon with SIGKILL at a random moment.  Then:

  - `cowfs fsck STORE` must exit 0 (leaked space is allowed);
  - the store mounts again;
  - every file of the state that the last successful fsync made durable,
    and that no operation touched afterwards, must be there, under its
    name, with every byte (cowfs's fsync commits the whole journal, so
    one fsync makes every name and every file written before it durable);
  - every file listed can be read whole (no EIO, size = bytes read);
  - the daemon log holds no sanitizer report.

The state found after the crash becomes the model for the next round.
Each round ends with a clean unmount after topping the model up to four
files, so the next round always has files made durable to check.
Prints one line per round with -v, and always a final line:

  crashloop: N rounds, B bytes verified in F files, seed S

Exits 1 on the first failure (the store and logs are kept in the work
directory), 0 otherwise.

  crashloop.py --bin build/cowfs [--rounds N | --seconds S] [--seed S]
               [--workdir DIR] [--block-size B] [-v]
"""

import argparse
import ctypes
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                        ctypes.c_char_p, ctypes.c_int]

SANITIZER_MARKS = ("runtime error", "AddressSanitizer", "LeakSanitizer",
                   "UndefinedBehaviorSanitizer")


class Failure(Exception):
    pass


def mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == path:
                return True
    return False


class Loop:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.work = args.workdir
        self.store = os.path.join(self.work, "store")
        self.mnt = os.path.join(self.work, "mnt")
        self.log = os.path.join(self.work, "daemon.log")
        self.origin = os.path.join(self.work, "origin")
        self.model = {}         # path -> bytes: what the mount should hold
        self.dirs = {""}        # directories (relative, "" is the root)
        self.durable = {}       # model at the last successful fsync
        self.touched = set()    # paths changed since that fsync
        self.rounds = 0
        self.bytes_verified = 0
        self.files_verified = 0
        self.ops = 0
        self.n = 0
        self.owner = None       # a file with a write object at unmount
        # O_TMPFILE files too, when the binary's libfuse allows them
        self.tmpfile = "O_TMPFILE: yes" in subprocess.run(
            [args.bin, "--version"], capture_output=True, text=True).stdout
        # sanitizer builds: reports go to files in the work directory
        self.env = dict(os.environ)
        for var, name in (("ASAN_OPTIONS", "asan"), ("UBSAN_OPTIONS",
                                                     "ubsan")):
            if var in self.env:
                self.env[var] += f":log_path={self.work}/{name}"

    # ---- the daemon ----

    def cowfs(self, *a, check=True, timeout=300):
        p = subprocess.run([self.args.bin, *map(str, a)], capture_output=True,
                           text=True, timeout=timeout, env=self.env)
        if check and p.returncode != 0:
            raise Failure(f"cowfs {' '.join(map(str, a))}: exit "
                          f"{p.returncode}: {p.stdout}{p.stderr}")
        return p

    def mount(self):
        opts = f"logfile={self.log},commit={self.rng.choice([1, 1, 2, 5])}"
        self.cowfs("mount", "-o", opts, self.store, self.mnt)
        for _ in range(100):
            if mounted(self.mnt):
                return
            time.sleep(0.05)
        raise Failure("the mount is not live after cowfs mount returned")

    def daemon_pid(self):
        with open(os.path.join(self.store, "lock")) as f:
            return int(f.read().split()[0])

    def kill(self):
        pid = self.daemon_pid()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for _ in range(400):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.01)
        else:
            raise Failure(f"daemon {pid} survived SIGKILL")
        subprocess.run(["fusermount3", "-u", "-z", self.mnt],
                       capture_output=True)
        if mounted(self.mnt):
            raise Failure("still mounted after the kill")

    def check_log(self):
        try:
            with open(self.log, errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            text = ""
        for mark in SANITIZER_MARKS:
            if mark in text:
                raise Failure(f"daemon log has a sanitizer report ({mark})")
        for name in sorted(os.listdir(self.work)):
            path = os.path.join(self.work, name)
            if name.startswith(("asan.", "ubsan.")) and os.path.getsize(path):
                with open(path, errors="replace") as f:
                    raise Failure(f"sanitizer report {name}:\n{f.read()}")

    # ---- the workload ----

    def p(self, rel):
        return os.path.join(self.mnt, rel)

    def new_name(self, d=None):
        self.n += 1
        if d is None:
            d = self.rng.choice(sorted(self.dirs))
        return os.path.join(d, f"f{self.n}") if d else f"f{self.n}"

    def files(self):
        return sorted(self.model)

    def touch(self, *rels):
        self.touched.update(rels)

    def data(self, n):
        # compressible and random runs, so blocks differ
        if self.rng.random() < 0.5:
            return os.urandom(n)
        return bytes([self.rng.randrange(256)]) * n

    def fsync(self, rel):
        want = dict(self.model)
        fd = os.open(self.p(rel), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.durable = want
        self.touched = set()

    def op(self):
        r = self.rng.random()
        files = self.files()
        B = self.args.block_size
        if r < 0.18 or not files:                       # new file
            rel = self.new_name()
            size = self.rng.choice([0, 1, 100, B - 1, B, B + 1, 3 * B + 7,
                                    self.rng.randrange(1, 300_000)])
            buf = self.data(size)
            self.touch(rel)
            if r < 0.04 and self.tmpfile:
                # O_TMPFILE, written, then named by linkat
                fd = os.open(os.path.dirname(self.p(rel)),
                             os.O_TMPFILE | os.O_WRONLY, 0o644)
                try:
                    os.write(fd, buf)
                    if LIBC.linkat(-100, f"/proc/self/fd/{fd}".encode(),
                                   -100, os.fsencode(self.p(rel)),
                                   0x400) != 0:
                        e = ctypes.get_errno()
                        raise OSError(e, os.strerror(e))
                finally:
                    os.close(fd)
            else:
                with open(self.p(rel), "wb") as f:
                    f.write(buf)
            self.model[rel] = buf
        elif r < 0.36:                                  # overwrite / hole
            rel = self.rng.choice(files)
            old = self.model[rel]
            off = self.rng.randrange(0, len(old) + 2 * B + 1)
            buf = self.data(self.rng.choice([1, 10, B, self.rng.randrange(
                1, 3 * B)]))
            self.touch(rel)
            fd = os.open(self.p(rel), os.O_WRONLY)
            try:
                os.pwrite(fd, buf, off)
            finally:
                os.close(fd)
            new = bytearray(old)
            if off > len(new):
                new.extend(bytes(off - len(new)))
            new[off:off + len(buf)] = buf
            self.model[rel] = bytes(new)
        elif r < 0.44:                                  # append
            rel = self.rng.choice(files)
            buf = self.data(self.rng.randrange(1, 2 * B))
            self.touch(rel)
            with open(self.p(rel), "ab") as f:
                f.write(buf)
            self.model[rel] += buf
        elif r < 0.52:                                  # truncate
            rel = self.rng.choice(files)
            old = self.model[rel]
            size = self.rng.choice([0, len(old) // 2, len(old) + 3 * B,
                                    self.rng.randrange(0, 400_000)])
            self.touch(rel)
            os.truncate(self.p(rel), size)
            self.model[rel] = old[:size] + bytes(max(0, size - len(old)))
        elif r < 0.60:                                  # clone a file
            src = self.rng.choice(files)
            dst = self.new_name()
            self.touch(dst)
            self.cowfs("clone", self.p(src), self.p(dst))
            self.model[dst] = self.model[src]
        elif r < 0.64:                                  # clone a tree
            src = self.rng.choice(sorted(self.dirs))
            self.n += 1
            dst = f"t{self.n}"
            members = {k: v for k, v in self.model.items()
                       if src == "" or k.startswith(src + "/")}
            if src == "" or len(self.dirs) > 12:
                return
            self.touch(dst)
            self.cowfs("clone", self.p(src), self.p(dst))
            for d in [d for d in self.dirs if d == src or
                      d.startswith(src + "/")]:
                self.dirs.add(dst + d[len(src):])
            for k, v in members.items():
                self.model[dst + k[len(src):]] = v
        elif r < 0.67:                                  # clone by reference
            self.n += 1
            dst = f"o{self.n}"
            if len(self.dirs) > 12:
                return
            self.touch(dst)
            self.cowfs("clone", self.origin, self.p(dst))
            self.dirs.add(dst)
            for name, v in self.origin_files.items():
                self.model[f"{dst}/{name}"] = v
        elif r < 0.71:                                  # copy_file_range
            src = self.rng.choice(files)
            dst = self.new_name()
            self.touch(dst)
            with open(self.p(src), "rb") as fi, open(self.p(dst), "wb") as fo:
                left = len(self.model[src])
                while left:
                    n = os.copy_file_range(fi.fileno(), fo.fileno(), left)
                    if n <= 0:
                        raise Failure("copy_file_range returned 0 early")
                    left -= n
            self.model[dst] = self.model[src]
        elif r < 0.78:                                  # rename
            src = self.rng.choice(files)
            if self.rng.random() < 0.3 and len(files) > 1:
                dst = self.rng.choice([f for f in files if f != src])
            else:
                dst = self.new_name()
            self.touch(src, dst)
            os.rename(self.p(src), self.p(dst))
            self.model[dst] = self.model.pop(src)
        elif r < 0.84:                                  # delete
            rel = self.rng.choice(files)
            self.touch(rel)
            os.unlink(self.p(rel))
            del self.model[rel]
        elif r < 0.87:                                  # mkdir
            if len(self.dirs) > 12:
                return
            self.n += 1
            parent = self.rng.choice(sorted(self.dirs))
            rel = os.path.join(parent, f"d{self.n}") if parent else \
                f"d{self.n}"
            self.touch(rel)
            os.mkdir(self.p(rel))
            self.dirs.add(rel)
        else:                                           # fsync
            if self.rng.random() < 0.2:
                self.fsync(self.rng.choice(sorted(self.dirs)))
            else:
                self.fsync(self.rng.choice(files))
        self.ops += 1

    def workload(self, seconds):
        end = time.time() + seconds
        while time.time() < end:
            try:
                self.op()
            except (OSError, Failure) as e:
                # the daemon died under us: expected once the timer fired
                if self.killed.is_set():
                    return
                if isinstance(e, Failure):
                    raise
                raise Failure(f"operation failed before the kill: {e!r}")
            if self.killed.is_set():
                return

    # ---- checking ----

    def read_tree(self):
        got, dirs = {}, {""}
        for root, dnames, fnames in os.walk(self.mnt):
            rel = os.path.relpath(root, self.mnt)
            rel = "" if rel == "." else rel
            for d in dnames:
                dirs.add(os.path.join(rel, d) if rel else d)
            for fn in fnames:
                r = os.path.join(rel, fn) if rel else fn
                path = self.p(r)
                try:
                    with open(path, "rb") as f:
                        b = f.read()
                except OSError as e:
                    raise Failure(f"{r}: cannot be read after the crash: "
                                  f"{e}")
                if len(b) != os.stat(path).st_size:
                    raise Failure(f"{r}: read {len(b)} bytes, size "
                                  f"{os.stat(path).st_size}")
                got[r] = b
        return got, dirs

    def verify(self):
        got, dirs = self.read_tree()
        for rel, want in self.durable.items():
            if rel in self.touched or any(
                    rel.startswith(t + "/") for t in self.touched):
                continue
            if rel not in got:
                raise Failure(f"{rel}: fsynced, untouched since, but gone "
                              f"after the crash")
            if got[rel] != want:
                i = next((k for k in range(min(len(want), len(got[rel])))
                          if want[k] != got[rel][k]),
                         min(len(want), len(got[rel])))
                raise Failure(f"{rel}: fsynced, untouched since, but differs "
                              f"after the crash at byte {i} (size "
                              f"{len(got[rel])}, want {len(want)})")
            self.bytes_verified += len(want)
            self.files_verified += 1
        # the state found is the model from now on (recovery checkpointed it)
        self.model, self.dirs = got, dirs
        self.durable, self.touched = dict(got), set()

    def probe_hole(self, rel, off):
        """The lost write's block is a hole now: one byte written into it
        must read back with zeros around it (invariant 4: the write object
        was retired, its slot is not reused)."""
        if rel not in self.model:
            return
        fd = os.open(self.p(rel), os.O_RDWR)
        try:
            os.pwrite(fd, b"\x01", off + 10)
            old = self.model[rel]
            new = bytearray(old) + bytes(max(0, off + 11 - len(old)))
            new[off + 10] = 1
            self.model[rel] = bytes(new)
            got = os.pread(fd, self.args.block_size + 11, off - 0)
        finally:
            os.close(fd)
        want = self.model[rel][off:off + self.args.block_size + 11]
        if got != want:
            i = next(k for k in range(min(len(got), len(want)))
                     if got[k] != want[k])
            raise Failure(f"{rel}: a 1-byte write into a hole at {off + 10} "
                          f"after a crash shows byte {got[i]:#x} at "
                          f"{off + i}, want {want[i]:#x} (stale bytes from "
                          f"a write lost in the crash)")
        self.bytes_verified += len(want)

    def fsck(self):
        p = self.cowfs("fsck", self.store, check=False)
        if p.returncode != 0:
            raise Failure(f"cowfs fsck: exit {p.returncode}:\n{p.stdout}"
                          f"{p.stderr}")

    # ---- rounds ----

    def round(self):
        self.mount()
        self.killed = threading.Event()
        probe = None
        how = self.rng.random()
        if how < 0.08:
            what = "kill right after mount"
            self.kill()
        elif how < 0.16 and self.model:
            # the case: a write lands, nothing commits, crash
            # a whole block past EOF (a hole once the file grows), lost
            what = "kill after an uncommitted write"
            B = self.args.block_size
            # the file the last clean unmount left with a write object
            rel = self.owner if self.owner in self.model else \
                self.rng.choice(self.files())
            self.touch(rel)
            fd = os.open(self.p(rel), os.O_WRONLY)
            off = (len(self.model[rel]) + B - 1) // B * B + \
                self.rng.randrange(0, 3) * B
            os.pwrite(fd, bytes([0xee]) * B, off)
            os.close(fd)
            probe = (rel, off)
            self.kill()
        else:
            delay = self.rng.choice([0.0, 0.005, 0.05, 0.2,
                                     self.rng.uniform(0, 2.5)])
            what = f"kill after {delay:.3f} s of workload"

            errors = []

            def fire():
                self.killed.set()
                try:
                    self.kill()
                except Exception as e:  # noqa: BLE001 - re-raised below
                    errors.append(e)
            t = threading.Timer(delay, fire)
            t.start()
            try:
                self.workload(delay + 5)
            finally:
                t.join()
            if errors:
                raise Failure(f"kill: {errors[0]}")
        self.check_log()
        self.fsck()
        self.mount()
        self.verify()
        if probe:
            self.probe_hole(*probe)
        # keep a few files that the clean unmount makes durable: a round
        # whose workload is killed before anything commits loses every
        # file it made, and a model left empty would verify nothing
        while len(self.model) < 4:
            rel = self.new_name("")
            buf = self.data(self.rng.choice([1, self.args.block_size + 1,
                                             self.rng.randrange(1, 100_000)]))
            with open(self.p(rel), "wb") as f:
                f.write(buf)
            self.model[rel] = buf
        # leave a file owning a write object at the clean unmount, for the
        # next round's uncommitted write
        if self.model:
            self.owner = self.rng.choice(self.files())
            buf = self.data(self.rng.randrange(1, 2 * self.args.block_size))
            with open(self.p(self.owner), "ab") as f:
                f.write(buf)
            self.model[self.owner] += buf
        self.cowfs("umount", self.mnt)
        if mounted(self.mnt):
            raise Failure("cowfs umount returned but the store is mounted")
        # a clean unmount makes everything durable
        self.durable, self.touched = dict(self.model), set()
        self.fsck()
        self.check_log()
        self.rounds += 1
        if self.args.verbose:
            print(f"round {self.rounds}: {what}; {len(self.model)} files, "
                  f"{self.ops} ops so far", flush=True)

    def setup(self):
        os.makedirs(self.mnt, exist_ok=True)
        os.makedirs(os.path.join(self.origin, "sub"), exist_ok=True)
        self.origin_files = {
            "a": b"origin a\n" * 100,
            "sub/b": os.urandom(3 * self.args.block_size + 5),
            "empty": b"",
        }
        for rel, b in self.origin_files.items():
            with open(os.path.join(self.origin, rel), "wb") as f:
                f.write(b)
        self.cowfs("init", "--block-size", self.args.block_size, self.store)

    def run(self):
        self.setup()
        end = time.time() + self.args.seconds if self.args.seconds else None
        while True:
            if self.args.rounds and self.rounds >= self.args.rounds:
                break
            if end and time.time() >= end:
                break
            self.round()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.environ.get("COWFS_BIN",
                                                    "build/cowfs"))
    ap.add_argument("--rounds", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=0)
    ap.add_argument("--seed", type=int,
                    default=int(os.environ.get("TEST_SEED", "0")) or
                    random.randrange(1 << 30))
    ap.add_argument("--workdir")
    ap.add_argument("--block-size", type=int, default=4096)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    if not args.rounds and not args.seconds:
        args.rounds = 20
    args.bin = os.path.abspath(args.bin)
    own = args.workdir is None
    if own:
        args.workdir = tempfile.mkdtemp(prefix="cowfs-crashloop.")
    os.makedirs(args.workdir, exist_ok=True)
    # a private copy: a rebuild during a long run must not swap the binary
    private = os.path.join(args.workdir, "cowfs")
    shutil.copy2(args.bin, private)
    args.bin = private
    print(f"crashloop: seed {args.seed}, work directory {args.workdir}",
          flush=True)
    loop = Loop(args)
    status = 0
    try:
        loop.run()
    except (Failure, OSError, subprocess.SubprocessError) as e:
        print(f"crashloop: FAILED in round {loop.rounds + 1} (seed "
              f"{args.seed}): {e}", file=sys.stderr, flush=True)
        status = 1
    finally:
        if mounted(loop.mnt):
            subprocess.run(["fusermount3", "-u", "-z", loop.mnt],
                           capture_output=True)
            time.sleep(0.2)
    print(f"crashloop: {loop.rounds} rounds, {loop.bytes_verified} bytes "
          f"verified in {loop.files_verified} files, {loop.ops} operations, "
          f"seed {args.seed}", flush=True)
    if status == 0 and own:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
