"""A user other than root: init, mount, clone, clone by reference, du, df,
status and umount, all through the setuid fusermount3.

On a stock Debian /dev/fuse is mode 0666.  Where it is not open to users
(this test machine has 0600), the test runs in a private mount namespace
whose /dev/fuse is a bind mount of a user-accessible node for the same
device (10, 229) made on a private tmpfs; the real /dev is untouched."""

import json
import os
import shlex
import stat

import pytest

from conftest import run, cowfs_binary, sanitizer_env

pytestmark = [pytest.mark.needs_store,
              pytest.mark.skipif(os.geteuid() != 0,
                                 reason="needs root to set up the user")]


def test_rootless_user(tmp_path, user):
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, user.uid, user.gid)
    os.chmod(tmp_path, 0o755)
    for p in tmp_path.parents:
        if str(p).startswith("/tmp/") and p != p.parent:
            os.chmod(p, os.stat(p).st_mode | 0o005)
    host = home / "project"
    b = cowfs_binary()
    open_to_users = stat.S_IMODE(os.stat("/dev/fuse").st_mode) & 0o006 == 0o006
    setup = ""
    if not open_to_users:
        dev = tmp_path / "dev"
        dev.mkdir()
        setup = (f"mount -t tmpfs -o mode=755 tmpfs {dev}; "
                 f"mknod -m 666 {dev}/fuse c 10 229; "
                 f"mount --bind {dev}/fuse /dev/fuse; ")
    steps = [
        f"mkdir -p {host}/src {home}/mnt",
        f"echo 'int main(void) {{ return 0; }}' > {host}/src/main.c",
        f"head -c 300000 /dev/urandom > {host}/data.bin",
        f"{b} init {home}/store",
        f"{b} mount {home}/store {home}/mnt",
        f"grep ' {home}/mnt ' /proc/self/mountinfo",
        f"cp {host}/data.bin {home}/mnt/data.bin",
        f"{b} clone {home}/mnt/data.bin {home}/mnt/copy.bin",
        f"{b} clone {host} {home}/mnt/byref",
        f"echo change >> {home}/mnt/byref/src/main.c",
        f"cmp {host}/data.bin {home}/mnt/byref/data.bin",
        f"{b} du --json {home}/mnt/data.bin {home}/mnt/byref",
        f"{b} df --json {home}/mnt",
        f"{b} status --json {home}/mnt",
        f"{b} umount {home}/mnt",
        f"! grep ' {home}/mnt ' /proc/self/mountinfo",
        f"{b} fsck {home}/store",
    ]
    as_user = " && ".join(steps)
    script = (setup + "exec " + " ".join(shlex.quote(a) for a in user.cmd(
        ["sh", "-c", "set -e; " + as_user])))
    p = run(["unshare", "-m", "--propagation", "private", "sh", "-c",
             "set -e; " + script], check=False, env=sanitizer_env(tmp_path),
            timeout=300, cwd="/")
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    mi = next(ln for ln in lines if " fuse.cowfs " in ln)
    assert f"user_id={user.uid}" in mi, mi
    objs = [json.loads(ln) for ln in lines if ln.startswith("{")]
    df, status = objs[0], objs[1]
    assert df["shared"] >= 300000 - 65536
    assert status["pid"] > 0 and status["log"] == "syslog"
    du = json.loads("\n".join(
        lines[lines.index("["):lines.index("]") + 1]))
    assert du[0]["logical"] == 300000
    assert du[1]["files"] == 2
    assert "0 problem(s)" in p.stdout
    # the store belongs to the user
    st = os.stat(home / "store" / "cowfs.meta")
    assert st.st_uid == user.uid
    assert (host / "src" / "main.c").read_text() == \
        "int main(void) { return 0; }\n"
