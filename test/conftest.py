"""pytest fixtures for the cowfs integration suite.

Every test that mounts gets its own store, mount point and daemon log.  The
mount and unmount go through the shell harness in scripts/lib.sh (the same
one scripts/test.sh and scripts/demo.sh use).  At teardown, whatever
happened in the test, the store is unmounted, `cowfs fsck` must find it
clean (when the binary has fsck), and the daemon log must not mention an
error or a sanitizer report.

Environment:
  COWFS_BIN       the cowfs binary (default: build/cowfs in the repo)
  COWFS_MNT_ROOT  a directory (mode 755) to make mount points in; default a
                  fresh /tmp/cowfs-mnt.* removed at the end.  Mount points
                  are not under pytest's tmp_path because that is mode 700
                  and the non-root test user must reach them.
  COWFS_TEST_WRITEBACK=0
                  mount with -o nowriteback_cache: writes go through to the
                  daemon synchronously instead of the kernel's writeback
                  cache (the default); scripts/test.sh runs the core data
                  tests once more this way
  COWFS_TEST_BACKEND=host
                  run the suite against plain host directories instead of
                  cowfs mounts: a check of the tests themselves against
                  ext4 (remounts and fsck become no-ops; tests that need a
                  real store skip).
"""

import errno
import hashlib
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LIB_SH = REPO / "scripts" / "lib.sh"
BAD_LOG = re.compile(
    r"error|sanitizer|runtime error|AddressSanitizer|LeakSanitizer", re.I)
HOST_BACKEND = os.environ.get("COWFS_TEST_BACKEND") == "host"
NO_WRITEBACK = os.environ.get("COWFS_TEST_WRITEBACK") == "0"
TEST_USER = "cowfstest"


def cowfs_binary():
    return os.environ.get("COWFS_BIN") or str(REPO / "build" / "cowfs")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "mount_opts(*opts): extra -o options for the mount fixture")
    config.addinivalue_line(
        "markers", "block_size(size): --block-size for the mount fixture's "
        "store")
    config.addinivalue_line(
        "markers", "needs_store: skip with COWFS_TEST_BACKEND=host")
    config.addinivalue_line(
        "markers", "timeout(seconds): watchdog limit for the test's mounts")


def pytest_collection_modifyitems(config, items):
    if not HOST_BACKEND:
        return
    skip = pytest.mark.skip(reason="needs a real cowfs store")
    for item in items:
        if item.get_closest_marker("needs_store"):
            item.add_marker(skip)


# --------------------------------------------------------------------------
# running things


def run(args, check=True, timeout=300, **kw):
    """subprocess.run with text output captured; on check failure the
    assertion message carries the output."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    p = subprocess.run([str(a) for a in args], timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))}: exit {p.returncode}\n"
            f"stdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def harness(func, *args, env=None, check=True, timeout=300):
    """Call a scripts/lib.sh function."""
    return run(["bash", "-c", '. "$0" && "$@"', LIB_SH, func, *args],
               env=env, check=check, timeout=timeout)


def mounted_points():
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4]
            out.append(re.sub(r"\\([0-7]{3})",
                              lambda m: chr(int(m.group(1), 8)), mp))
    return out


def is_mounted(path):
    return os.path.realpath(path) in mounted_points()


_fsck_supported = {}


def fsck_supported(binary):
    if binary not in _fsck_supported:
        try:
            p = run([binary, "help", "fsck"], check=False, timeout=30)
            _fsck_supported[binary] = p.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            _fsck_supported[binary] = False
    return _fsck_supported[binary]


def built_with(binary, feature):
    """Whether the binary's libfuse allows a feature ("FUSE passthrough",
    "O_TMPFILE"), as its --version says."""
    p = run([binary, "--version"], check=False, timeout=30)
    return f"{feature}: yes" in p.stdout


def sanitizer_env(base, env=None):
    """The environment for cowfs processes of one test: sanitizer reports
    (if this is a sanitizer build) go to files under base, checked at
    teardown."""
    env = dict(os.environ if env is None else env)
    env["COWFS_BIN"] = cowfs_binary()
    for var, name in (("ASAN_OPTIONS", "asan"), ("UBSAN_OPTIONS", "ubsan")):
        if var in env:
            env[var] = env[var] + f":log_path={base}/{name}"
    return env


def sanitizer_reports(base):
    out = []
    for p in sorted(Path(base).glob("*san.*")):
        if p.is_file() and p.stat().st_size:
            out.append(f"--- {p}\n{p.read_text(errors='replace')}")
    return out


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------
# mounts


class Mount:
    """A store, a mount point and a daemon log.

    .store, .mnt, .log are Paths; .p(*parts) is a path inside the mount."""

    def __init__(self, base, mnt, opts="", binary=None):
        self.base = Path(base)
        self.store = self.base / "store"
        self.mnt = Path(mnt)
        self.log = self.base / "daemon.log"
        self.opts = opts
        self.bin = binary or cowfs_binary()
        self.env = sanitizer_env(self.base)
        self.host = HOST_BACKEND

    def p(self, *parts):
        return self.mnt.joinpath(*parts)

    def cowfs(self, *args, check=False, timeout=300):
        return run([self.bin, *args], check=check, timeout=timeout,
                   env=self.env)

    def init(self, block_size=None):
        if self.host:
            return
        args = ["init"]
        if block_size:
            args += ["--block-size", str(block_size)]
        self.cowfs(*args, self.store, check=True)

    def mount(self, opts=None):
        if opts is not None:
            self.opts = opts
        if self.host:
            self.mnt.mkdir(parents=True, exist_ok=True)
            return
        opts = self.opts
        if NO_WRITEBACK:
            opts = f"{opts},nowriteback_cache" if opts else "nowriteback_cache"
        harness("harness_mount", self.store, self.mnt, self.log, opts,
                env=self.env)
        assert is_mounted(self.mnt), f"{self.mnt} not mounted"

    def umount(self):
        if self.host:
            return
        p = harness("harness_umount", self.mnt, env=self.env, check=False)
        if is_mounted(self.mnt):
            raise AssertionError(f"{self.mnt} still mounted (harness exit "
                                 f"{p.returncode})\n" + self.why_busy(p))
        assert p.returncode == 0, \
            f"unmount of {self.mnt} failed:\n" + self.why_busy(p)

    def why_busy(self, p):
        """What a failed unmount leaves to go on: the harness's output
        (which names the processes that kept the mount busy), the mount
        table's lines for the mount point, whether the daemon still runs,
        and the end of its log."""
        pid = self.daemon_pid()
        alive = False
        if pid:
            try:
                os.kill(pid, 0)
                alive = True
            except OSError:
                pass
        mnt = os.path.realpath(self.mnt)
        lines = [ln for ln in Path("/proc/self/mountinfo").read_text()
                 .splitlines() if f" {mnt} " in ln]
        log = self.log_text().splitlines()[-15:]
        return (f"harness stdout: {p.stdout}\nharness stderr: {p.stderr}\n"
                f"mountinfo: {lines}\n"
                f"daemon {pid}: {'running' if alive else 'gone'}\n"
                "daemon log (end):\n" + "\n".join(log))

    def remount(self, opts=None):
        self.umount()
        self.mount(opts)

    def fsck(self):
        """Run cowfs fsck on the (unmounted) store; None when the binary
        has no fsck yet."""
        if self.host or not fsck_supported(self.bin):
            return None
        return self.cowfs("fsck", self.store)

    def daemon_pid(self):
        """The daemon's pid from STORE/lock, or None."""
        try:
            txt = (self.store / "lock").read_text().strip()
            return int(txt.split()[0]) if txt else None
        except (OSError, ValueError, IndexError):
            return None

    def log_text(self):
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def problems(self):
        """Teardown checks: unmount, fsck, daemon log, sanitizer reports.
        Returns a list of messages (empty when all is well)."""
        msgs = []
        if not self.host:
            try:
                self.umount()
            except Exception as e:  # noqa: BLE001 - report, keep cleaning
                msgs.append(f"unmount: {e}")
                if is_mounted(self.mnt):
                    run(["fusermount3", "-u", "-z", self.mnt], check=False)
            if not is_mounted(self.mnt) and self.store.exists():
                p = self.fsck()
                if p is not None and p.returncode != 0:
                    msgs.append(f"cowfs fsck {self.store}: exit "
                                f"{p.returncode}\n{p.stdout}{p.stderr}")
            log = self.log_text()
            bad = [ln for ln in log.splitlines() if BAD_LOG.search(ln)]
            if bad:
                msgs.append("daemon log has error/sanitizer lines:\n"
                            + "\n".join(bad[:40])
                            + f"\n--- whole log {self.log}:\n" + log[-20000:])
        msgs += sanitizer_reports(self.base)
        return msgs


class Watchdog:
    """Ends a hung test: after `seconds`, record every live daemon's thread
    backtraces (gdb, if installed) and SIGKILL it, so that whatever waits
    on the mount gets ENOTCONN instead of hanging the suite.  Default
    COWFS_TEST_TIMEOUT (300 s) or the test's timeout(SECONDS) marker."""

    def __init__(self, mounts, seconds):
        self.mounts = mounts        # a list, read when the timer fires
        self.report = []
        self.timer = threading.Timer(seconds, self.fire)
        self.timer.daemon = True
        self.seconds = seconds
        self.timer.start()

    def fire(self):
        self.report.append(f"watchdog: test still running after "
                           f"{self.seconds} s; killing its daemons")
        for m in list(self.mounts):
            pid = m.daemon_pid() if not m.host else None
            if not pid or not is_mounted(m.mnt):
                continue
            bt = ""
            if shutil.which("gdb"):
                try:
                    bt = run(["gdb", "-p", pid, "-batch", "-ex",
                              "thread apply all bt 25"], check=False,
                             timeout=120).stdout
                    bt = "\n".join(ln for ln in bt.splitlines()
                                   if ln.startswith(("#", "Thread")))
                except (OSError, subprocess.TimeoutExpired):
                    bt = "(gdb failed)"
            self.report.append(f"daemon {pid} of {m.mnt} hung; "
                               f"backtraces:\n{bt}")
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def cancel(self):
        self.timer.cancel()


def timeout_for(request, default=None):
    mk = request.node.get_closest_marker("timeout")
    if mk:
        return float(mk.args[0])
    return float(os.environ.get("COWFS_TEST_TIMEOUT") or default or 300)


def make_mount_dir(mnt_root, name):
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:60]
    d = tempfile.mkdtemp(prefix=name + ".", dir=mnt_root)
    os.chmod(d, 0o755)
    return Path(d)


@pytest.fixture(scope="session")
def cowfs_bin():
    b = cowfs_binary()
    if not HOST_BACKEND and not os.access(b, os.X_OK):
        pytest.fail(f"cowfs binary {b} missing: build first or set "
                    "COWFS_BIN")
    return b


@pytest.fixture(scope="session")
def mnt_root():
    root = os.environ.get("COWFS_MNT_ROOT")
    made = False
    if root:
        os.makedirs(root, exist_ok=True)
    else:
        root = tempfile.mkdtemp(prefix="cowfs-mnt.", dir="/tmp")
        made = True
    os.chmod(root, 0o755)
    yield Path(root)
    # Anything a test could not unmount.
    harness("harness_cleanup_under", root, check=False)
    if made:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def mount_factory(tmp_path, mnt_root, cowfs_bin, request):
    """Make more mounts: mount_factory(name, opts='', block_size=None,
    init=True, do_mount=True).  All are checked at teardown."""
    made = []
    dog = Watchdog(made, timeout_for(request))

    def factory(name="m", opts="", block_size=None, init=True,
                do_mount=True):
        base = tmp_path / name
        base.mkdir()
        m = Mount(base, make_mount_dir(mnt_root, request.node.name + "-"
                                       + name), opts, cowfs_bin)
        made.append(m)
        if init:
            m.init(block_size)
        if do_mount:
            m.mount()
        return m

    yield factory
    dog.cancel()
    msgs = list(dog.report)
    for m in reversed(made):
        msgs += m.problems()
    if msgs:
        pytest.fail("\n".join(msgs), pytrace=False)


@pytest.fixture
def mount(mount_factory, request):
    """A fresh store mounted for this test.  Markers: mount_opts(...),
    block_size(N)."""
    mk = request.node.get_closest_marker("mount_opts")
    opts = ",".join(mk.args) if mk else ""
    bk = request.node.get_closest_marker("block_size")
    return mount_factory("m", opts=opts,
                         block_size=bk.args[0] if bk else None)


@pytest.fixture
def ref(tmp_path):
    """A plain host (ext4) directory to compare behaviour with."""
    d = tmp_path / "ref"
    d.mkdir()
    return d


# --------------------------------------------------------------------------
# an unprivileged user


class User:
    def __init__(self, name):
        pw = pwd.getpwnam(name)
        self.name = name
        self.uid = pw.pw_uid
        self.gid = pw.pw_gid

    def cmd(self, args):
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}",
                "--clear-groups", "--", *map(str, args)]

    def run(self, args, check=False, **kw):
        kw.setdefault("cwd", "/")
        return run(self.cmd(args), check=check, **kw)

    def py(self, code):
        """Run Python code as the user; returns its stdout stripped."""
        p = self.run(["/usr/bin/python3", "-I", "-c", code])
        assert p.returncode == 0, f"as {self.name}: {code}\n{p.stderr}"
        return p.stdout.strip()

    def errno_of(self, stmt):
        """Run one Python statement (os, errno available) as the user;
        returns 'OK' or the errno name it failed with."""
        code = ("import os, errno, sys\n"
                "try:\n"
                f"    {stmt}\n"
                "except OSError as e:\n"
                "    print(errno.errorcode.get(e.errno, e.errno))\n"
                "else:\n"
                "    print('OK')\n")
        return self.py(code)


@pytest.fixture(scope="session")
def user():
    if os.geteuid() != 0:
        pytest.skip("needs root to create the test user")
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        run(["useradd", "--no-create-home", "--user-group", "--shell",
             "/usr/sbin/nologin", TEST_USER], check=False)
    return User(TEST_USER)


# --------------------------------------------------------------------------
# comparing trees


def proc_status(pid, key):
    """A size field of /proc/PID/status (VmRSS, VmData...), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no " + key)


def fsync_path(path):
    """fsync a file or directory (in the mount: commits the journal)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def wait_exit(pid, seconds):
    """Wait up to seconds for process pid to be gone; whether it is."""
    end = time.monotonic() + seconds
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(0.05)


def kill_daemon(store, mnt):
    """A real crash: kill -9 the daemon serving store (pid from
    STORE/lock), wait until it is gone, and detach its dead mount."""
    txt = (Path(store) / "lock").read_text().split()
    assert txt, "no daemon pid in STORE/lock"
    pid = int(txt[0])
    os.kill(pid, signal.SIGKILL)
    wait_exit(pid, 10)
    run(["fusermount3", "-u", "-z", mnt], check=False)
    assert not is_mounted(mnt)


def tree_snapshot(root, times=False, inodes=False, dir_sizes=False):
    """A comparable description of everything under root: per relative
    path its type, mode, owner, size, nlink, content hash or link target,
    and its user./trusted./security. xattrs."""
    root = Path(root)
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = os.lstat(p)
            ent = {
                "mode": oct(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
                "nlink": st.st_nlink,
            }
            if stat.S_ISREG(st.st_mode):
                ent["size"] = st.st_size
                ent["sha256"] = sha256_file(p)
            elif stat.S_ISLNK(st.st_mode):
                ent["size"] = st.st_size
                ent["target"] = os.readlink(p)
            elif stat.S_ISDIR(st.st_mode):
                if dir_sizes:
                    ent["size"] = st.st_size
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                ent["rdev"] = st.st_rdev
            if times:
                ent["mtime_ns"] = st.st_mtime_ns
                ent["ctime_ns"] = st.st_ctime_ns
            if inodes:
                ent["ino"] = st.st_ino
            ent["xattrs"] = xattrs_of(p)
            snap[rel] = ent
    return snap


def xattrs_of(p):
    out = {}
    try:
        names = os.listxattr(p, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return out
        raise
    for n in sorted(names):
        if n.startswith("system."):
            continue
        out[n] = os.getxattr(p, n, follow_symlinks=False).hex()
    return out
