"""cowfs as the system mounts it: mount(8) with -t fuse.cowfs, an fstab line
(mount -T with a temporary fstab), mount.fuse3 called the way systemd and
mount(8) call it, the mount.fuse.cowfs helper, systemd's fstab generator,
the example unit, meson install and the Debian package.

mount(8) runs its helpers with a fixed PATH (/usr/local/sbin:/usr/local/
bin:/usr/sbin:/usr/bin:/sbin:/bin), so the mounts run in a private mount
namespace (unshare -m) where a temporary directory holding a 'cowfs'
symlink to the binary under test is bind-mounted on /usr/local/bin.  The
machine's own /usr/local/bin and mount table are not touched."""

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run, harness, is_mounted, sanitizer_env, cowfs_binary

pytestmark = [pytest.mark.needs_store,
              pytest.mark.skipif(os.geteuid() != 0,
                                 reason="needs root: unshare -m, mount(8)")]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def ns(tmp_path):
    """ns(script) runs a shell script in a private mount namespace whose
    PATH for mount helpers finds the cowfs under test; returns the
    CompletedProcess.  $COWFS is the binary."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "cowfs").symlink_to(cowfs_binary())
    (bindir / "mount.fuse.cowfs").symlink_to(cowfs_binary())

    def go(script, check=True, timeout=120):
        full = ("set -e; mount --bind " + shlex.quote(str(bindir)) +
                " /usr/local/bin; COWFS=/usr/local/bin/cowfs; " + script)
        p = run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                 full], check=False, timeout=timeout,
                env=sanitizer_env(tmp_path))
        if check:
            assert p.returncode == 0, \
                f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p
    return go


@pytest.fixture
def store(tmp_path):
    s = tmp_path / "store"
    run([cowfs_binary(), "init", s])
    (tmp_path / "mnt").mkdir()
    return s


def mountinfo_line(text, mnt):
    for ln in text.splitlines():
        f = ln.split()
        if len(f) > 4 and f[4] == str(mnt):
            return ln
    return None


def test_fstab_line(ns, store, tmp_path):
    mnt, log = tmp_path / "mnt", tmp_path / "daemon.log"
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# a comment\n"
        f"{store} {mnt} fuse.cowfs defaults,nofail,_netdev,noauto,"
        "x-systemd.automount,x-systemd.requires=network.target,"
        f"x-systemd.mount-timeout=30,commit=2,logfile={log},allow_other"
        " 0 0\n")
    p = ns(f"mount -T {fstab} {mnt}; cat /proc/self/mountinfo; "
           f"echo hello > {mnt}/f; "
           f"$COWFS status --json {mnt} > {tmp_path}/status.json; "
           f"umount {mnt}")
    ln = mountinfo_line(p.stdout, mnt)
    assert ln and "fuse.cowfs" in ln and f" {store} " in ln, p.stdout
    assert "allow_other" in ln
    s = json.loads((tmp_path / "status.json").read_text())
    assert s["log"] == str(log) and s["store"] == str(store)
    # umount(8) returned before the daemon saved; cowfs mount waits
    m2 = tmp_path / "m2"
    harness("harness_mount", store, m2, log)
    try:
        assert (m2 / "f").read_text() == "hello\n"
    finally:
        harness("harness_umount", m2)
    assert "error" not in log.read_text().lower()


def test_mount_t_ro_and_origin(ns, store, tmp_path):
    mnt = tmp_path / "mnt"
    org = tmp_path / "origin"
    org.mkdir()
    (org / "hello.txt").write_text("from the host\n")
    (tmp_path / "m2").mkdir()
    p = ns(f"mount -t fuse.cowfs -o ro,allow_other {store} {mnt}; "
           f"if touch {mnt}/x 2>{tmp_path}/err; then echo WROTE; fi; "
           f"$COWFS status --json {mnt}; umount {mnt}; "
           f"mount -t fuse.cowfs -o origin={org},commit=1 "
           f"{tmp_path}/store2 {tmp_path}/m2; cat {tmp_path}/m2/hello.txt; "
           f"echo more >> {tmp_path}/m2/hello.txt; "
           f"$COWFS umount {tmp_path}/m2")
    assert "WROTE" not in p.stdout
    assert "Read-only file system" in (tmp_path / "err").read_text()
    assert '"read_only": true' in p.stdout
    assert "from the host" in p.stdout
    assert (org / "hello.txt").read_text() == "from the host\n"


def test_mount_fuse3_as_systemd_calls_it(ns, store, tmp_path):
    """systemd's mount units and mount(8) end in mount.fuse3, which passes
    x-systemd.* options through when called directly."""
    mnt = tmp_path / "mnt"
    p = ns(f"/sbin/mount.fuse3 {store} {mnt} -t cowfs -o "
           "rw,x-systemd.device-timeout=3,nofail,_netdev,comment=x; "
           f"grep -c ' {mnt} ' /proc/self/mountinfo; "
           f"echo ok > {mnt}/f; $COWFS umount {mnt}")
    assert p.stdout.strip() == "1", p.stdout + p.stderr


def test_mount_helper_name(ns, store, tmp_path):
    """Installed as /sbin/mount.fuse.cowfs (a symlink to cowfs), it takes
    mount(8)'s helper arguments: SOURCE TARGET [-sfnv] [-o OPTS] [-t TYPE]."""
    mnt = tmp_path / "mnt"
    p = ns(f"/usr/local/bin/mount.fuse.cowfs {store} {mnt} -n -s "
           "-o rw,nofail,_netdev,x-systemd.after=x.service,commit=3 "
           "-t fuse.cowfs; "
           f"grep ' {mnt} ' /proc/self/mountinfo; $COWFS umount {mnt}")
    assert "fuse.cowfs" in p.stdout, p.stdout + p.stderr
    # and a bad option of its own is a usage error
    p = ns(f"/usr/local/bin/mount.fuse.cowfs {store} {mnt} -o commit=x",
           check=False)
    assert p.returncode == 2 and "invalid commit interval 'x'" in p.stderr


@pytest.mark.skipif(not os.path.exists(
    "/lib/systemd/system-generators/systemd-fstab-generator"),
    reason="no systemd-fstab-generator")
def test_systemd_fstab_generator(tmp_path):
    fstab = tmp_path / "fstab"
    fstab.write_text("/var/lib/cowfs/store /srv/cowfs fuse.cowfs "
                     "allow_other,nofail,commit=5 0 0\n")
    out = tmp_path / "gen"
    for d in ("normal", "early", "late"):
        (out / d).mkdir(parents=True)
    env = dict(os.environ, SYSTEMD_FSTAB=str(fstab),
               SYSTEMD_LOG_LEVEL="warning")
    run(["/lib/systemd/system-generators/systemd-fstab-generator",
         out / "normal", out / "early", out / "late"], env=env)
    unit = (out / "normal" / "srv-cowfs.mount").read_text()
    assert "What=/var/lib/cowfs/store" in unit
    assert "Where=/srv/cowfs" in unit
    assert "Type=fuse.cowfs" in unit
    assert "Options=allow_other,nofail,commit=5" in unit


def test_example_unit_and_fstab():
    unit = (REPO / "contrib" / "srv-cowfs.mount").read_text()
    assert "Type=fuse.cowfs" in unit and "Where=/srv/cowfs" in unit
    if shutil.which("systemd-escape"):
        name = run(["systemd-escape", "-p", "--suffix=mount",
                    "/srv/cowfs"]).stdout.strip()
        assert name == "srv-cowfs.mount"
    for ln in (REPO / "contrib" / "fstab.example").read_text().splitlines():
        if ln.strip() and not ln.startswith("#"):
            assert len(ln.split()) == 6 and ln.split()[2] == "fuse.cowfs"


def test_meson_install(tmp_path):
    build = Path(cowfs_binary()).parent
    if not (build / "build.ninja").exists():
        pytest.skip("COWFS_BIN is not in a meson build directory")
    dest = tmp_path / "dest"
    run(["meson", "install", "-C", build, "--no-rebuild", "--destdir", dest,
         "--quiet"])
    prefix = run(["meson", "introspect", "--buildoptions", build]).stdout
    opts = {o["name"]: o["value"] for o in json.loads(prefix)}
    root = dest / opts["prefix"].lstrip("/")
    assert (root / opts["bindir"] / "cowfs").is_file()
    helper = root / opts["sbindir"] / "mount.fuse.cowfs"
    assert helper.is_symlink()
    assert os.readlink(helper) == os.path.join(opts["prefix"], opts["bindir"],
                                               "cowfs")
    assert (root / opts["mandir"] / "man1" / "cowfs.1").is_file()
    assert (root / opts["datadir"] / "bash-completion" / "completions" /
            "cowfs").is_file()
    ex = root / opts["datadir"] / "doc" / "cowfs" / "examples"
    assert (ex / "srv-cowfs.mount").is_file()
    assert (ex / "fstab.example").is_file()


@pytest.mark.timeout(600)
@pytest.mark.skipif(not shutil.which("dpkg-buildpackage"),
                    reason="no dpkg-buildpackage")
@pytest.mark.skipif(os.environ.get("COWFS_SKIP_DEB") == "1",
                    reason="COWFS_SKIP_DEB=1")
@pytest.mark.skipif("ASAN_OPTIONS" in os.environ,
                    reason="once is enough: not again in the sanitizer pass")
def test_debian_package(tmp_path, ns):
    """dpkg-buildpackage -us -uc -b on a copy of the tree builds a .deb
    whose files, extracted, mount a store through mount(8)."""
    src = tmp_path / "pkg" / "cowfs-0.1.0"
    files = run(["git", "-C", REPO, "ls-files", "--cached", "--others",
                 "--exclude-standard"]).stdout.split("\n")
    for f in files:
        if f and not f.startswith("build") and (REPO / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, src / f)
    env = dict(os.environ, DEB_BUILD_OPTIONS="nocheck parallel=2")
    t0 = time.monotonic()
    p = run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, check=False,
            env=env, timeout=600)
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    debs = list((tmp_path / "pkg").glob("cowfs_*.deb"))
    assert len(debs) == 1, debs
    listing = run(["dpkg-deb", "-c", debs[0]]).stdout
    for f in ("./usr/bin/cowfs", "./usr/sbin/mount.fuse.cowfs",
              "./usr/share/man/man1/cowfs.1.gz",
              "./usr/share/bash-completion/completions/cowfs",
              "./usr/share/doc/cowfs/examples/srv-cowfs.mount"):
        assert f in listing, listing
    info = run(["dpkg-deb", "-f", debs[0], "Depends"]).stdout
    assert "fuse3" in info and "libfuse3" in info
    # the package's own binary mounts through mount(8)
    x = tmp_path / "x"
    run(["dpkg-deb", "-x", debs[0], x])
    b = x / "usr" / "bin" / "cowfs"
    run([b, "init", tmp_path / "s"])
    (tmp_path / "m").mkdir()
    bindir = tmp_path / "debbin"
    bindir.mkdir()
    (bindir / "cowfs").symlink_to(b)
    p = run(["unshare", "-m", "--propagation", "private", "sh", "-c",
             f"set -e; mount --bind {bindir} /usr/local/bin; "
             f"mount -t fuse.cowfs {tmp_path}/s {tmp_path}/m; "
             f"echo deb > {tmp_path}/m/f; cat {tmp_path}/m/f; "
             f"cowfs umount {tmp_path}/m"], check=False)
    assert p.returncode == 0 and p.stdout == "deb\n", p.stdout + p.stderr
    print(f"dpkg-buildpackage took {took:.1f} s")


def test_bash_completion():
    comp = REPO / "contrib" / "cowfs.bash-completion"

    def complete(*words):
        script = (f"source {shlex.quote(str(comp))}; "
                  f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)}); "
                  f"COMP_CWORD={len(words) - 1}; _cowfs; "
                  'printf "%s\\n" "${COMPREPLY[@]}"')
        return run(["bash", "-c", script]).stdout.split()
    assert complete("cowfs", "st") == ["status"]
    assert set(complete("cowfs", "")) >= {"init", "mount", "umount", "clone",
                                          "detach", "du", "df", "status",
                                          "fsck", "help"}
    assert complete("cowfs", "du", "--h") == ["--human-readable", "--help"]
    assert "commit=" in complete("cowfs", "mount", "-o", "")
    assert complete("cowfs", "help", "cl") == ["clone"]
