"""One real SMTP conversation: send() to an aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import email
import email.policy
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from bwbpf.config import Notify
from bwbpf.notify import CappedClass, compose, send
from tests.helpers import REPO, free_port

START = 1704067200.0  # 2024-01-01 00:00:00 UTC


class Collect:
    """An aiosmtpd handler that keeps every envelope it accepts."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server() -> Iterator[tuple[Collect, int]]:
    handler = Collect()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def test_send_through_a_real_smtp_server(smtp_server: tuple[Collect, int]) -> None:
    handler, port = smtp_server
    notify = Notify(
        smtp_host="127.0.0.1",
        smtp_port=port,
        starttls=False,
        username=None,
        password=None,
        sendmail=None,
        sender="support@example.org",
        operator="ops@example.org",
        slice_address="{slice}@slices.example.org",
    )
    message = compose(
        notify,
        "alice",
        "node1.example.org",
        [CappedClass(1, 13_120_000_000, 1_500_000, 16_400_000_000)],
        START,
        START + 86400,
        START + 3600,
    )
    send(message, replace(notify, sendmail="/nonexistent/sendmail"))

    assert len(handler.envelopes) == 1
    envelope = handler.envelopes[0]
    assert envelope.mail_from == "support@example.org"
    assert envelope.rcpt_tos == ["alice@slices.example.org", "ops@example.org"]
    received = email.message_from_bytes(envelope.content, policy=email.policy.default)
    assert received["Subject"] == "bwbpf capped bandwidth of slice alice on node1.example.org"
    assert received["Message-ID"] == "<bwbpf.alice.1704067200@node1.example.org>"
    # SMTP carries CRLF line ends (RFC 5321 §2.3.8).
    assert received.get_content().replace("\r\n", "\n") == (
        "The slice alice has transmitted 13.1 GB from\n"
        "node1.example.org to exempt destinations\n"
        "since 2024-01-01 00:00:00 UTC.\n"
        "\n"
        "Its maximum exempt burst rate will be capped at 1.5Mbit/s\n"
        "until 2024-01-02 00:00:00 UTC.\n"
        "\n"
        "Please reduce the average exempt transmission rate\n"
        "of the slice to 16.4 GB per day.\n"
        "\n"
        "2024-01-01 01:00:00 UTC node1.example.org bwbpf alice\n"
    )


# Run by the test below in a process of its own, as the `bwbpf` command runs: OpenSSL kept
# out, then a mail sent the daemon's way (from a child) with and without STARTTLS.
CHILD_SENDS = """
import dataclasses
import sys
from bwbpf import openssl
openssl.keep_out()
from bwbpf import daemon, metrics, notify
from bwbpf.errors import Error
from bwbpf.model import Notify
plain = Notify(smtp_host="127.0.0.1", smtp_port=int(sys.argv[1]), starttls=False,
               username=None, password=None, sendmail=None, sender="support@example.org",
               operator="ops@example.org", slice_address="{slice}@slices.example.org")
capped = [notify.CappedClass(0, 10, 1000, 10)]
message = notify.compose(plain, "bob", "node1", capped, 0.0, 86400.0, 60.0)
notify.send_from_child(message, plain)
try:
    notify.send_from_child(message, dataclasses.replace(plain, starttls=True))
except Error as exc:
    print("starttls:", exc)
maps = open("/proc/self/maps").read()
print("libcrypto" if "libcrypto" in maps else "no libcrypto", "smtplib" in sys.modules)
"""


def test_the_daemons_mailer_sends_from_a_child_and_keeps_openssl_out(
    smtp_server: tuple[Collect, int],
) -> None:
    handler, port = smtp_server
    done = subprocess.run(
        [sys.executable, "-c", CHILD_SENDS, str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert len(handler.envelopes) == 1  # the plain one; the server offers no STARTTLS
    assert handler.envelopes[0].rcpt_tos == ["bob@slices.example.org", "ops@example.org"]
    starttls, memory = done.stdout.splitlines()
    # The child imported ssl to make its context, and said why it stopped, in one line.
    assert starttls == (
        f"starttls: mail via 127.0.0.1:{port} failed: STARTTLS extension not supported by server."
    )
    assert memory == "no libcrypto False"  # the daemon's process never loaded them
