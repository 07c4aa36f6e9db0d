"""The shell harness (scripts/lib.sh) the suite mounts and unmounts with,
checked against the kernel's mount table while other mounts come and go
(as they do when other test runs share the machine).

harness_umount first asks harness_is_mounted whether there is anything to
unmount; a wrong "no" leaves the store mounted and the daemon running, and
the next mount of the store fails or the test's "still mounted" assertion
fires.  The churn runs in a private mount namespace (unshare -m): the
machine's mount table is not touched, and whatever the script leaves
mounted goes with the namespace."""

import os

import pytest

from conftest import LIB_SH, is_mounted, run, wait_exit

pytestmark = [pytest.mark.needs_store,
              pytest.mark.skipif(os.geteuid() != 0,
                                 reason="needs root: unshare -m, tmpfs")]

ROUNDS = 20
OTHERS = 30

# $1 lib.sh, $2 the cowfs mount point, $3 a work directory.  Each round:
# OTHERS tmpfs mounts, then a bind of the cowfs mount made after them (so
# listed after them), then the tmpfs mounts go in the background while the
# harness is asked about the bind, again and again.
CHURN = r"""
. "$1"
mnt=$2 w=$3
checks=0 missed=0 listed=0
for r in $(seq 1 "$ROUNDS"); do
	for k in $(seq 1 "$OTHERS"); do
		mkdir -p "$w/o$k"
		mount -t tmpfs other "$w/o$k"
	done
	mkdir -p "$w/t"
	mount --bind "$mnt" "$w/t"
	( for k in $(seq 1 "$OTHERS"); do umount "$w/o$k"; done ) &
	churn=$!
	while :; do
		checks=$((checks + 1))
		harness_is_mounted "$w/t" || missed=$((missed + 1))
		harness_mounts_under "$w" | grep -qx "$w/t" ||
			listed=$((listed + 1))
		kill -0 "$churn" 2>/dev/null || break
	done
	wait "$churn"
	umount "$w/t"
done
echo "checks=$checks missed=$missed not_listed=$listed"
"""


def test_mount_table_read_while_others_unmount(mount, tmp_path):
    """harness_is_mounted and harness_mounts_under see a live FUSE mount
    every time, however many mounts listed before it go meanwhile."""
    w = tmp_path / "w"
    w.mkdir()
    env = dict(os.environ, ROUNDS=str(ROUNDS), OTHERS=str(OTHERS))
    p = run(["unshare", "-m", "--propagation", "private", "bash", "-c",
             CHURN, "churn", LIB_SH, mount.mnt, w], env=env, timeout=240)
    counts = dict(kv.split("=") for kv in p.stdout.split())
    assert int(counts["checks"]) >= ROUNDS, p.stdout
    assert (counts["missed"], counts["not_listed"]) == ("0", "0"), \
        f"the harness lost a live mount: {p.stdout}"
    # the mount itself is untouched (the binds were in the namespace)
    assert (mount.mnt / "after").write_text("x") == 1


def test_busy_unmount_names_holder(mount):
    """An unmount that fails because a file in the mount is open says
    which process holds what (the harness falls back to a lazy unmount,
    and the daemon exits once the file is closed)."""
    mnt = os.path.realpath(mount.mnt)
    pid = mount.daemon_pid()
    f = open(mount.p("held"), "w")
    fd = f.fileno()
    try:
        with pytest.raises(AssertionError) as ei:
            mount.umount()
    finally:
        f.close()
    msg = str(ei.value)
    assert f"unmount of {mount.mnt} failed" in msg, msg
    assert f"held by /proc/{os.getpid()}/fd/{fd} -> {mnt}/held" \
        in msg, msg
    assert not is_mounted(mount.mnt)
    # the lazily detached daemon goes once the last file is closed; the
    # fixture's fsck must not race its save
    if not wait_exit(pid, 60):
        pytest.fail(f"daemon {pid} still running 60 s after the close")
