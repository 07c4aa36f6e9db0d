"""Run a command with a private /dev/log, and print what it logged.

    unshare -m --propagation private python3 syslog_ns.py WORKDIR SECONDS CMD...

Must run in a private mount namespace (as root): binds a tmpfs copy of
/dev over /dev (device nodes bind-mounted from the real one) with a unix
datagram socket at /dev/log, runs CMD through /bin/sh, keeps listening for
SECONDS after CMD exits, and prints every datagram received, one a line,
as repr() of the raw bytes.  The machine's own /dev is not touched.
"""
import os
import socket
import subprocess
import sys
import time

work, secs, cmd = sys.argv[1], float(sys.argv[2]), sys.argv[3]
dev = os.path.join(work, "dev")
os.makedirs(dev, exist_ok=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", dev],
               check=True)
for name in ("null", "zero", "full", "random", "urandom", "tty", "fuse"):
    src = os.path.join("/dev", name)
    if os.path.exists(src):
        open(os.path.join(dev, name), "w").close()
        subprocess.run(["mount", "--bind", src, os.path.join(dev, name)],
                       check=True)
for name in ("pts", "shm"):
    os.mkdir(os.path.join(dev, name))
os.symlink("/proc/self/fd", os.path.join(dev, "fd"))
subprocess.run(["mount", "--rbind", dev, "/dev"], check=True)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind("/dev/log")
os.chmod("/dev/log", 0o666)
sock.settimeout(0.2)
p = subprocess.Popen(["/bin/sh", "-c", cmd])
got = []
deadline = None
while True:
    try:
        got.append(sock.recv(65536))
    except socket.timeout:
        pass
    if deadline is None and p.poll() is not None:
        deadline = time.monotonic() + secs
    if deadline is not None and time.monotonic() > deadline:
        break
for g in got:
    print(repr(g))
sys.exit(p.returncode)
