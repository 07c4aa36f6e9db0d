"""The cowfs command as an experienced Linux user drives it: GNU options
(anywhere, -h for human-readable sizes on du/df, --help everywhere, exit 2
for usage errors), messages naming the path at fault, sizes with units,
cowfs status, progress on a terminal only, syslog logging of a daemonized
cowfs, and the daemon's life cycle (SIGTERM on a relative mount point, a
mount right after an unmount, a failed final save)."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import (run, harness, is_mounted, sanitizer_env, Mount,
                      make_mount_dir, cowfs_binary)

pytestmark = pytest.mark.needs_store

HELPERS = Path(__file__).resolve().parent / "helpers"
COMMANDS = ["init", "mount", "umount", "clone", "detach", "du", "df",
            "status", "fsck", "help"]


def on_pty(cmd, env=None, timeout=120):
    """Run a shell command line on a pseudo-terminal (script(1)); returns
    (exit status, everything it wrote to the terminal)."""
    p = subprocess.run(["script", "-qec", cmd, "/dev/null"],
                       capture_output=True, text=True, timeout=timeout,
                       env=env, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout + p.stderr


def wait_gone(pid, secs=30):
    end = time.monotonic() + secs
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------------
# options and messages


def test_options_after_operands(mount):
    mount.p("f").write_bytes(b"x" * 100_000)
    p = mount.cowfs("df", mount.mnt, "--bytes")
    assert p.returncode == 0, p.stderr
    assert "logical:" in p.stdout and "100000 bytes" in p.stdout
    p = mount.cowfs("du", mount.p("f"), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)[0]["logical"] == 100_000
    p = mount.cowfs("clone", mount.p("f"), mount.p("g"), "--quiet")
    assert p.returncode == 0, p.stderr
    # '--' ends the options: a file named like an option
    mount.p("-b").write_bytes(b"y")
    p = mount.cowfs("du", "--bytes", "--", mount.p("-b"))
    assert p.returncode == 0, p.stderr


def test_h_is_human_readable_on_du_df(mount):
    mount.p("f").write_bytes(os.urandom(3 << 20))
    for cmd in ("du", "df"):
        p = mount.cowfs(cmd, "-h", mount.mnt)
        assert p.returncode == 0, p.stderr
        assert "usage" not in p.stdout
        assert "MiB" in p.stdout or "3.0M" in p.stdout, p.stdout
        p = mount.cowfs(cmd, mount.mnt, "--human-readable")
        assert p.returncode == 0 and "usage" not in p.stdout, p.stderr
    # and -b wins back exact counts
    p = mount.cowfs("du", "-h", "-b", mount.p("f"))
    assert str(3 << 20) in p.stdout


def test_df_sizes_have_units(mount):
    mount.p("f").write_bytes(b"z" * 70_000)
    run(["cp", "--reflink=never", mount.p("f"), mount.p("g")])
    p = mount.cowfs("df", mount.mnt, check=True)
    lines = dict(ln.split(":", 1) for ln in p.stdout.splitlines())
    for key in ("logical", "physical", "shared", "metadata"):
        assert "bytes" in lines[key], p.stdout
    assert "blocks of 64 KiB" in lines["physical"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_everywhere(tmp_path, cmd):
    p = run([cowfs_binary(), cmd, "--help"], check=False,
            env=sanitizer_env(tmp_path))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: cowfs " + cmd), p.stdout
    # anywhere among the operands
    if cmd not in ("help",):
        p = run([cowfs_binary(), cmd, "x", "--help"], check=False,
                env=sanitizer_env(tmp_path))
        assert p.returncode == 0 and "usage: cowfs" in p.stdout, p.stderr


@pytest.mark.parametrize("args", [
    ["mount", "-o", "commit=abc", "S", "M"],
    ["mount", "-o", "commit=0", "S", "M"],
    ["mount", "-o", "logfile=", "S", "M"],
    ["mount", "-o"],
    ["du", "--bogus", "x"],
    ["df", "-x", "x"],
    ["df"],
    ["df", "a", "b"],
    ["status"],
    ["status", "--frob", "m"],
    ["clone", "a"],
    ["clone", "-z", "a", "b"],
    ["detach"],
    ["detach", "--nope", "x"],
    ["umount", "--nope", "x"],
    ["umount", "a", "b"],
    ["fsck", "--repiar", "s"],
    ["init", "--block-size", "3K", "s"],
    ["help", "a", "b"],
    ["nosuchcommand"],
])
def test_usage_errors_exit_2(tmp_path, args):
    p = run([cowfs_binary(), *args], check=False, cwd=tmp_path,
            env=sanitizer_env(tmp_path))
    assert p.returncode == 2, f"{args}: {p.returncode} {p.stderr}"
    first = p.stderr.splitlines()[0]
    assert first.startswith("cowfs: "), p.stderr
    assert "Try 'cowfs" in p.stderr
    assert not list(tmp_path.glob("*san.*"))


def test_bad_commit_names_the_value(tmp_path):
    """-o commit=abc printed a freed string (use after free)."""
    for bad in ("abc", "9999999", "12x"):
        p = run([cowfs_binary(), "mount", "-o", f"ro,commit={bad},allow_other",
                 tmp_path, tmp_path], check=False, env=sanitizer_env(tmp_path))
        assert p.returncode == 2
        assert f"invalid commit interval '{bad}'" in p.stderr, p.stderr
    assert not list(tmp_path.glob("*san.*"))


def test_detach_outside_mount_is_one_error(tmp_path):
    d = tmp_path / "tree"
    for i in range(20):
        (d / str(i)).mkdir(parents=True)
        (d / str(i) / "f").write_bytes(b"x")
    p = run([cowfs_binary(), "detach", d], check=False,
            env=sanitizer_env(tmp_path))
    assert p.returncode == 1
    assert p.stderr.splitlines() == [
        f"cowfs: detach: '{d}': not inside a cowfs mount"], p.stderr


def test_detach_outside_then_inside(mount, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "f").write_bytes(os.urandom(200_000))
    mount.cowfs("clone", tmp_path / "o", mount.p("c"), check=True)
    p = mount.cowfs("detach", tmp_path / "o", mount.p("c"))
    assert p.returncode == 1
    assert len(p.stderr.splitlines()) == 1, p.stderr
    assert "200000 bytes" in p.stdout, p.stdout


def test_clone_errors_name_the_path_at_fault(mount, tmp_path):
    mount.p("f").write_bytes(b"x")
    p = mount.cowfs("clone", mount.p("f"), mount.p("nodir", "x"))
    assert p.returncode == 1
    assert p.stderr == f"cowfs: clone: '{mount.p('nodir', 'x')}': " \
        "No such file or directory\n", p.stderr
    p = mount.cowfs("clone", mount.p("missing"), mount.p("x"))
    assert p.stderr == f"cowfs: clone: '{mount.p('missing')}': " \
        "No such file or directory\n", p.stderr


@pytest.fixture
def host_dir():
    d = Path(tempfile.mkdtemp(prefix="cowfs-cli-host.", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    run(["rm", "-rf", d], check=False)


def test_clone_by_reference_refusals_name_dst_or_src(host_dir, mount_factory,
                                                     user):
    m = mount_factory("p", opts="allow_other")
    os.chmod(m.mnt, 0o777)
    (host_dir / "public").write_bytes(b"everyone")
    (host_dir / "secret").write_bytes(b"root")
    os.chmod(host_dir / "secret", 0o600)
    (m.mnt / "rootonly").mkdir(mode=0o755)
    dst = m.mnt / "rootonly" / "x"
    p = user.run([m.bin, "clone", host_dir / "public", dst])
    assert p.returncode == 1
    assert p.stderr == f"cowfs: clone: '{dst}': Permission denied\n", p.stderr
    p = user.run([m.bin, "clone", host_dir / "secret", m.mnt / "y"])
    assert p.returncode == 1
    assert p.stderr == (f"cowfs: clone: '{host_dir / 'secret'}': "
                        "Permission denied\n"), p.stderr


def test_clone_from_another_mount_says_exdev(mount_factory):
    a = mount_factory("a")
    b = mount_factory("b")
    a.p("f").write_bytes(b"data")
    p = b.cowfs("clone", a.p("f"), b.p("g"))
    assert p.returncode == 1
    assert p.stderr.startswith(f"cowfs: clone: '{a.p('f')}': on another "
                               "filesystem"), p.stderr


# --------------------------------------------------------------------------
# status


def test_status(mount):
    mount.p("big").write_bytes(os.urandom(1 << 20))
    mount.cowfs("clone", mount.p("big"), mount.p("copy"), check=True)
    with open(mount.p("copy"), "r+b") as f:
        f.write(b"y" * 4096)
    p = mount.cowfs("status", "--json", mount.mnt, check=True)
    s = json.loads(p.stdout)
    assert s["pid"] == mount.daemon_pid()
    assert s["store"] == str(mount.store.resolve())
    assert s["log"] == str(mount.log)
    assert s["block_size"] == 65536 and s["origin"] is None
    assert s["files"] == 2 and s["dirs"] == 1 and s["inodes"] == 3
    assert s["shared_files"] == 2
    assert s["logical"] == 2 << 20
    assert s["physical"] == (1 << 20) + 65536
    assert s["shared"] == (1 << 20) - 65536
    assert s["metadata"] == os.path.getsize(mount.store / "cowfs.meta")
    os.sync()
    objs = sum(os.stat(os.path.join(dp, f)).st_blocks * 512
               for dp, _, fs in os.walk(mount.store / "objects") for f in fs)
    assert s["host_bytes"] == objs
    assert 0 <= s["uptime"] < 600
    p = mount.cowfs("status", mount.mnt, "-b", check=True)
    for key in ("store:", "block size:", "origin:", "daemon pid:", "log:",
                "uptime:", "inodes:", "logical:", "physical:", "shared:",
                "host usage:", "metadata:"):
        assert key in p.stdout, p.stdout
    assert f"daemon pid:    {mount.daemon_pid()}\n" in p.stdout
    p = mount.cowfs("status", "/tmp")
    assert p.returncode == 1 and "not inside a cowfs mount" in p.stderr


def test_status_origin(mount_factory, tmp_path):
    org = tmp_path / "origin"
    org.mkdir()
    (org / "f").write_bytes(b"x" * 5000)
    m = mount_factory("o", init=False, do_mount=False)
    m.mnt.mkdir(exist_ok=True)
    run([m.bin, "mount", "--origin", org, "-o",
         f"logfile={m.log}", m.store, m.mnt], env=m.env)
    s = json.loads(m.cowfs("status", "--json", m.mnt, check=True).stdout)
    assert s["origin"] == str(org)
    assert s["origin_files"] == 1 and s["shared_files"] == 1


# --------------------------------------------------------------------------
# progress


def test_progress_only_on_a_terminal(host_dir, mount):
    for i in range(300):
        (host_dir / f"f{i}").write_bytes(os.urandom(20_000))
    b = shlex.quote(mount.bin)
    rc, out = on_pty(f"{b} clone {host_dir} {mount.p('c')}")
    assert rc == 0, out
    assert "clone: by reference: 301 entries, 300 files, 5.7 MiB" in out, out
    assert "ETA" in out or "done in" in out
    rc, out = on_pty(f"{b} detach {mount.p('c')}")
    assert rc == 0, out
    assert "detach: 300/300 files, 5.7 MiB/5.7 MiB (100%)" in out, out
    assert "6000000 bytes copied from origins into the store (5.7 MiB)" in out
    # quiet, and in a pipe: nothing but the result
    mount.cowfs("clone", host_dir, mount.p("d"), check=True)
    rc, out = on_pty(f"{b} detach --quiet {mount.p('d')}")
    assert "detach:" not in out and "6000000 bytes" in out, out
    mount.cowfs("clone", host_dir, mount.p("e"), check=True)
    p = mount.cowfs("detach", mount.p("e"), check=True)
    assert p.stderr == "", p.stderr
    p = mount.cowfs("clone", host_dir, mount.p("g"), check=True)
    assert p.stderr == "" and p.stdout == ""


def test_fsck_progress_on_a_terminal(mount):
    """fsck of a store that takes a second or so to check: on a terminal
    it shows the store's totals and the elapsed time."""
    os.mkdir(mount.p("t"))
    for i in range(4000):
        mount.p("t", f"f{i}").write_bytes(b"%d" % i)
    n = 0

    def grow(k):
        nonlocal n
        for i in range(n, n + k):
            mount.cowfs("clone", mount.p("t"), mount.p(f"c{i}"), check=True)
        n += k
    grow(40)
    mount.umount()
    # the line shows after half a second: double the store (from 160 000
    # inodes) until fsck takes a second, however fast loading has become
    for _ in range(4):
        t0 = time.monotonic()
        mount.cowfs("fsck", mount.store, check=True)
        if time.monotonic() - t0 >= 1.0:
            break
        mount.mount()
        grow(n)
        mount.umount()
    rc, out = on_pty(f"{shlex.quote(mount.bin)} fsck {mount.store}")
    assert rc == 0, out
    assert f"fsck: checking '{mount.store}' (metadata " in out, out
    assert "objects" in out and "elapsed" in out
    # the phase: still loading, or how far the check is and its ETA
    assert "loading metadata" in out or re.search(r"\d+%, ETA \d", out), out
    p = mount.cowfs("fsck", mount.store)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    rc, out = on_pty(f"{shlex.quote(mount.bin)} fsck -q {mount.store}")
    assert "checking" not in out, out
    mount.mount()


# --------------------------------------------------------------------------
# the daemon


def test_sigterm_on_relative_mountpoint_unmounts(mount_factory):
    m = mount_factory("t", do_mount=False)
    m.mnt.mkdir(exist_ok=True)
    rel = os.path.relpath(m.mnt, m.base)
    run([m.bin, "mount", "-o", f"logfile={m.log}", "store", rel],
        cwd=m.base, env=m.env)
    assert is_mounted(m.mnt)
    m.p("f").write_bytes(b"kept")
    pid = m.daemon_pid()
    os.kill(pid, signal.SIGTERM)
    assert wait_gone(pid), "the daemon did not exit on SIGTERM"
    assert not is_mounted(m.mnt), "SIGTERM left a dead mount"
    os.stat(m.mnt)      # not ENOTCONN
    m.mount()
    assert m.p("f").read_bytes() == b"kept"


def test_mount_waits_for_a_saving_daemon(mount):
    for i in range(50):
        mount.p(f"f{i}").write_bytes(b"x")
    pid = mount.daemon_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        run(["fusermount3", "-u", mount.mnt])
        assert not is_mounted(mount.mnt)
        p = subprocess.Popen([mount.bin, "mount", "-o", f"logfile={mount.log}",
                              mount.store, mount.mnt], env=mount.env,
                             stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert p.poll() is None, "mount did not wait: " + p.stderr.read()
    finally:
        os.kill(pid, signal.SIGCONT)
    rc = p.wait(timeout=60)
    err = p.stderr.read()
    assert rc == 0, err
    assert f"waiting for the store's previous daemon (pid {pid})" in err
    assert wait_gone(pid)
    assert is_mounted(mount.mnt)
    assert mount.p("f49").read_bytes() == b"x"


@pytest.fixture
def small_tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    d = tmp_path / "tmpfs"
    d.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", d])
    yield d
    run(["umount", "-l", d], check=False)


def test_umount_reports_a_failed_final_save(small_tmpfs, mnt_root, cowfs_bin,
                                            request):
    m = Mount(small_tmpfs, make_mount_dir(mnt_root, request.node.name),
              "commit=3600", cowfs_bin)
    m.log = small_tmpfs.parent / "daemon.log"
    m.init()
    m.mount()
    try:
        # many metadata changes, committed only at unmount
        for i in range(2000):
            os.mkdir(m.p(f"directory-with-a-long-name-{i:05d}"))
        # the store's disk is full: the checkpoint and the commit fail
        with open(small_tmpfs / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        p = run([m.bin, "umount", m.mnt], check=False, env=m.env, timeout=120)
        assert not is_mounted(m.mnt)
        assert p.returncode == 1, p.stdout + p.stderr
        assert f"cowfs: umount: '{m.mnt}': the daemon could not save" in \
            p.stderr, p.stderr
        assert "No space left on device" in p.stderr
    finally:
        if is_mounted(m.mnt):
            run(["fusermount3", "-u", "-z", m.mnt], check=False)
    # a good stop reads as one again
    os.unlink(small_tmpfs / "filler")
    m.mount()
    p = run([m.bin, "umount", m.mnt], check=False, env=m.env)
    assert p.returncode == 0, p.stderr


def test_umount_reports_clean_stop(mount):
    p = mount.cowfs("umount", mount.mnt)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert (mount.store / "lock").read_text().splitlines()[1] == "stop 0"
    mount.mount()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for unshare -m")
def test_daemon_logs_to_syslog(tmp_path):
    """Daemonized without logfile=, the daemon's lines go to syslog with
    facility daemon and ident cowfs: here a private /dev/log in a private
    mount namespace; the line is the EIO of a changed origin."""
    b = cowfs_binary()
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "f").write_bytes(b"origin data")
    (tmp_path / "m").mkdir()
    store, mnt, org = tmp_path / "s", tmp_path / "m", tmp_path / "o"
    script = (f"{b} mount --origin {org} {store} {mnt} || exit 9; "
              f"touch {org}/f; cat {mnt}/f; "
              f"{b} umount {mnt} || exit 8")
    p = run(["unshare", "-m", "--propagation", "private", sys.executable,
             HELPERS / "syslog_ns.py", tmp_path, "1", script], check=False,
            env=sanitizer_env(tmp_path), timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Input/output error" in p.stderr
    msgs = [eval(ln) for ln in p.stdout.splitlines()]
    hits = [x for x in msgs if b"changed since it was cloned" in x]
    assert hits, msgs
    # <PRI>: facility daemon (3), ident cowfs with its pid
    pri = int(hits[0][1:hits[0].index(b">")])
    assert pri >> 3 == 3, hits
    assert pri & 7 == 4, hits       # LOG_WARNING
    assert b" cowfs[" in hits[0] and str(org / "f").encode() in hits[0]
    assert not list(tmp_path.glob("*san.*"))


def test_foreground_logs_to_stderr(mount_factory):
    m = mount_factory("f", do_mount=False)
    m.mnt.mkdir(exist_ok=True)
    p = subprocess.Popen([m.bin, "mount", "-f", m.store, m.mnt], env=m.env,
                         stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            if is_mounted(m.mnt):
                break
            time.sleep(0.05)
        s = json.loads(m.cowfs("status", "--json", m.mnt, check=True).stdout)
        assert s["log"] == "stderr" and s["pid"] == p.pid
    finally:
        run(["fusermount3", "-u", m.mnt], check=False)
        p.wait(timeout=60)
    assert p.returncode == 0, p.stderr.read()
