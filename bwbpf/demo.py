"""`make demo`: three slices in network namespaces, the daemon with a two-minute period,
`bwbpf stat` as it goes, one slice capped and its mail delivered to a loopback SMTP server.
Everything it creates is removed at the end, also on Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

BWBPF = str(Path(sys.executable).parent / "bwbpf")
DURATION_S = 45


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60)


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


@contextlib.contextmanager
def namespaces() -> Iterator[tuple[str, str, str, int]]:
    """A sender namespace whose veth bwbpf shapes, and a receiver namespace."""
    tag = uuid.uuid4().hex[:6]
    src, dst, veth_a, veth_b = f"bwdS{tag}", f"bwdD{tag}", f"bwdA{tag}", f"bwdB{tag}"
    octet = random.randint(1, 254)
    try:
        sh("ip", "netns", "add", src)
        sh("ip", "netns", "add", dst)
        sh(
            "ip",
            "link",
            "add",
            veth_a,
            "netns",
            src,
            "type",
            "veth",
            "peer",
            "name",
            veth_b,
            "netns",
            dst,
        )
        for host in (1, 10, 11, 12):
            sh("ip", "-n", src, "addr", "add", f"10.251.{octet}.{host}/24", "dev", veth_a)
        for host in (2, 200):
            sh("ip", "-n", dst, "addr", "add", f"10.251.{octet}.{host}/24", "dev", veth_b)
        for ns, dev in ((src, veth_a), (dst, veth_b)):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield src, dst, veth_a, octet
    finally:
        sh("ip", "netns", "del", src, check=False)
        sh("ip", "netns", "del", dst, check=False)


def config_text(veth: str, octet: int, state_dir: str, smtp_port: int) -> str:
    return f"""
[node]
interface = "{veth}"
line_rate = "1gbit"
node_cap = "100mbit"
tick = "2s"
state_dir = "{state_dir}"

[quota]
policy = "smooth"
period = "2m"

[exempt]
prefixes = ["10.251.{octet}.128/25"]   # the receiver's .200 address is "research network"

[notify]
smtp = "127.0.0.1:{smtp_port}"
from = "bwbpf@demo.example"
operator = "ops@demo.example"
slice_address = "{{slice}}@slices.demo.example"

[[slice]]
name = "alice"          # small budget: capped within the demo
id = 1
match = {{ src = ["10.251.{octet}.10/32"] }}
normal = {{ limit = "20MB", threshold = 0.8 }}

[[slice]]
name = "bob"            # sends to an exempt destination: its normal budget is untouched
id = 2
match = {{ src = ["10.251.{octet}.11/32"] }}
normal = {{ limit = "20MB" }}
exempt = {{ limit = "2GB" }}

[[slice]]
name = "carol"          # a large budget: never capped
id = 3
match = {{ src = ["10.251.{octet}.12/32"] }}
normal = {{ limit = "500MB" }}
"""


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root (BPF, tc, network namespaces)", file=sys.stderr)
        return 1
    import mailbox

    port = 8025
    workdir = tempfile.mkdtemp(prefix="bwbpf-demo-")
    maildir = Path(workdir) / "mail"
    procs: list[subprocess.Popen[bytes]] = []
    cfg = Path(workdir) / "bwbpf.toml"
    stop = False

    def interrupted(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    try:
        with namespaces() as (src, dst, veth, octet):

            def in_src(*cmd: str) -> list[str]:
                return ["nsenter", f"--net=/run/netns/{src}", *cmd]

            def in_dst(*cmd: str) -> list[str]:
                return ["nsenter", f"--net=/run/netns/{dst}", *cmd]

            # The SMTP server (aiosmtpd, into a Maildir) runs in the daemon's namespace, whose
            # loopback is its own.
            procs.append(
                subprocess.Popen(
                    in_src(
                        sys.executable,
                        "-m",
                        "aiosmtpd",
                        "-n",
                        "-l",
                        f"127.0.0.1:{port}",
                        "-c",
                        "aiosmtpd.handlers.Mailbox",
                        str(maildir),
                    ),
                    stderr=subprocess.DEVNULL,
                )
            )
            cfg.write_text(config_text(veth, octet, workdir + "/state", port))
            say(f"config {cfg}: three slices on {veth}, 2-minute period, 2 s tick")
            print(sh(*in_src(BWBPF, "check", "-c", str(cfg))).stdout.strip())
            daemon = subprocess.Popen(in_src(BWBPF, "-v", "run", "-c", str(cfg)))
            procs.append(daemon)
            time.sleep(3)
            say(
                "traffic: alice and carol to a normal destination, bob to an exempt one, "
                "8 Mbit/s each (iperf3, UDP)"
            )
            for i, (host, target) in enumerate(((10, 2), (11, 200), (12, 2))):
                port_i = str(5301 + i)
                # Bound to its address: an unbound UDP server answers from the primary one.
                server_ip = f"10.251.{octet}.{target}"
                procs.append(
                    subprocess.Popen(
                        in_dst("iperf3", "-s", "-p", port_i, "-B", server_ip),
                        stdout=subprocess.DEVNULL,
                    )
                )
                time.sleep(0.3)
                procs.append(
                    subprocess.Popen(
                        in_src(
                            "iperf3",
                            "-c",
                            f"10.251.{octet}.{target}",
                            "-p",
                            port_i,
                            "-u",
                            "-b",
                            "8M",
                            "-t",
                            str(DURATION_S),
                            "-B",
                            f"10.251.{octet}.{host}",
                        ),
                        stdout=subprocess.DEVNULL,
                    )
                )
            started = time.time()
            while not stop and time.time() - started < DURATION_S:
                time.sleep(5)
                say(f"bwbpf stat  (t = {time.time() - started:.0f} s)")
                print(sh(*in_src(BWBPF, "stat", "-c", str(cfg)), check=False).stdout.rstrip())
            doc = json.loads(sh(*in_src(BWBPF, "stat", "--json", "-c", str(cfg))).stdout)
            capped = [s["name"] for s in doc["slices"] if s["capped"]]
            say(f"capped slices: {', '.join(capped) or 'none'}")
            mails = list(mailbox.Maildir(str(maildir), create=False)) if maildir.exists() else []
            say(f"mail received by the SMTP server on 127.0.0.1:{port}: {len(mails)}")
            for m in mails:
                print(m.as_string())
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        # The namespaces are gone by now, and with them the device; the pins stay: remove.
        sh(BWBPF, "down", "-c", str(cfg), check=False)
        shutil.rmtree(workdir, ignore_errors=True)
        say("cleaned up: namespaces, pins, daemon, SMTP server, temporary files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
