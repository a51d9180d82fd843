"""One real SMTP conversation: send() to an aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from bwbpf.config import Notify
from bwbpf.notify import CappedClass, compose, send
from tests.helpers import free_port

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
