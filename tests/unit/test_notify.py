"""The capped-slice mail: its content, header safety, and the two ways of sending it."""

from __future__ import annotations

import smtplib
import subprocess
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path
from typing import Any, ClassVar

import pytest

from bwbpf.config import Notify
from bwbpf.errors import Error
from bwbpf.notify import CappedClass, compose, recipients, send

NORMAL, EXEMPT = 0, 1
START = 1704067200.0  # 2024-01-01 00:00:00 UTC
END = START + 86400
NOW = START + 12 * 3600 + 34 * 60 + 56
HOST = "node1.example.org"

NOTIFY = Notify(
    smtp_host=None,
    smtp_port=25,
    starttls=False,
    username=None,
    password=None,
    sendmail="/usr/sbin/sendmail",
    sender="support@example.org",
    operator="ops@example.org",
    slice_address="{slice}@slices.example.org",
)
CAPPED_NORMAL = CappedClass(NORMAL, 4_400_000_000, 370_370, 5_400_000_000)
CAPPED_EXEMPT = CappedClass(EXEMPT, 13_120_000_000, 1_500_000, 16_400_000_000)

NORMAL_PARAGRAPH = """\
The slice alice has transmitted 4.4 GB from
node1.example.org to normal destinations
since 2024-01-01 00:00:00 UTC.

Its maximum normal burst rate will be capped at 370.37Kbit/s
until 2024-01-02 00:00:00 UTC.

Please reduce the average normal transmission rate
of the slice to 5.4 GB per day.
"""
EXEMPT_PARAGRAPH = """\
The slice alice has transmitted 13.1 GB from
node1.example.org to exempt destinations
since 2024-01-01 00:00:00 UTC.

Its maximum exempt burst rate will be capped at 1.5Mbit/s
until 2024-01-02 00:00:00 UTC.

Please reduce the average exempt transmission rate
of the slice to 16.4 GB per day.
"""
FOOTER = "2024-01-01 12:34:56 UTC node1.example.org bwbpf alice\n"


def message(**overrides: Any) -> EmailMessage:
    args: dict[str, Any] = {
        "notify": NOTIFY,
        "slice_name": "alice",
        "hostname": HOST,
        "classes": [CAPPED_NORMAL],
        "period_start": START,
        "period_end": END,
        "now": NOW,
    }
    args.update(overrides)
    return compose(**args)


def test_headers() -> None:
    m = message()
    assert m["From"] == "support@example.org"
    assert m["To"] == "alice@slices.example.org, ops@example.org"
    assert m["Subject"] == "bwbpf capped bandwidth of slice alice on node1.example.org"
    assert m["Date"] == "Mon, 01 Jan 2024 12:34:56 +0000"
    assert m["Message-ID"] == "<bwbpf.alice.1704067200@node1.example.org>"
    assert m["Auto-Submitted"] == "auto-generated"
    assert m.get_content_type() == "text/plain"


def test_one_class() -> None:
    assert message().get_content() == NORMAL_PARAGRAPH + "\n" + FOOTER


def test_both_classes_in_one_message_normal_first() -> None:
    m = message(classes=[CAPPED_EXEMPT, CAPPED_NORMAL])
    assert m.get_content() == NORMAL_PARAGRAPH + "\n" + EXEMPT_PARAGRAPH + "\n" + FOOTER


def test_other_period_lengths_are_spelled_out() -> None:
    body = message(period_end=START + 7 * 86400).get_content()
    assert "of the slice to 5.4 GB per 7 days.\n" in body
    assert "until 2024-01-08 00:00:00 UTC.\n" in body
    assert "per hour." in message(period_end=START + 3600).get_content()


def test_operator_is_optional() -> None:
    assert message(notify=replace(NOTIFY, operator=None))["To"] == "alice@slices.example.org"


def test_operator_listed_once_if_it_is_the_slice_address() -> None:
    notify = replace(NOTIFY, operator="alice@slices.example.org")
    assert recipients(notify, "alice") == ("alice@slices.example.org",)


def test_default_slice_mails_only_the_operator() -> None:
    assert recipients(NOTIFY, "default") == ("ops@example.org",)
    assert recipients(replace(NOTIFY, operator=None), "default") == ()
    with pytest.raises(Error, match="nobody to mail about slice default"):
        message(notify=replace(NOTIFY, operator=None), slice_name="default")


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        pytest.param(
            {"slice_name": "alice\r\nBcc: victim@example.com"},
            "slice name is not usable",
            id="crlf-in-slice",
        ),
        pytest.param({"slice_name": "alice\n"}, "slice name is not usable", id="trailing-newline"),
        pytest.param({"slice_name": "a b"}, "slice name is not usable", id="space-in-slice"),
        pytest.param(
            {"hostname": "node1\r\nBcc: victim@example.com"},
            "host name is not usable",
            id="crlf-in-hostname",
        ),
        pytest.param({"hostname": "node1\n"}, "host name is not usable", id="newline-hostname"),
        pytest.param(
            {"notify": replace(NOTIFY, sender="support@example.org\r\nBcc: v@example.com")},
            "notify.from is not a plain mail address",
            id="crlf-in-sender",
        ),
        pytest.param(
            {"notify": replace(NOTIFY, operator="ops@example.org, victim@example.com")},
            "notify.operator is not a plain mail address",
            id="second-address-in-operator",
        ),
        pytest.param(
            {"notify": replace(NOTIFY, operator="Ops <ops@example.org>")},
            "notify.operator is not a plain mail address",
            id="display-name",
        ),
        pytest.param(
            {"notify": replace(NOTIFY, operator="ops@example.org\n")},
            "notify.operator is not a plain mail address",
            id="trailing-newline-operator",
        ),
        pytest.param(
            {"notify": replace(NOTIFY, slice_address="{slice}@slices.example.org\nBcc: v@x.org")},
            "notify.slice_address is not a plain mail address",
            id="newline-in-slice-address",
        ),
        pytest.param(
            {"notify": replace(NOTIFY, slice_address="{slice}")},
            "notify.slice_address is not a plain mail address",
            id="no-domain",
        ),
        pytest.param(
            {"notify": replace(NOTIFY, sender='"a b"@example.org')},
            "notify.from is not a plain mail address",
            id="quoted-local-part",
        ),
        pytest.param(
            {"notify": replace(NOTIFY, sender="a..b@example.org")},
            "notify.from is not a plain mail address",
            id="double-dot",
        ),
        pytest.param({"classes": []}, "no capped class", id="no-classes"),
        pytest.param(
            {"classes": [CAPPED_NORMAL, CAPPED_NORMAL]}, "distinct dclasses", id="same-class-twice"
        ),
        pytest.param({"classes": [replace(CAPPED_NORMAL, dclass=2)]}, "0..1", id="bad-dclass"),
    ],
)
def test_rejects_what_could_inject_a_header(overrides: dict[str, Any], error: str) -> None:
    with pytest.raises(Error, match=error):
        message(**overrides)


def test_slice_names_allowed_by_config_compose() -> None:
    m = message(slice_name="team-a.b_1")
    assert m["To"] == "team-a.b_1@slices.example.org, ops@example.org"


FAKE_SENDMAIL = """#!/bin/sh
printf '%s\\n' "$@" > "{out}.args"
cat > "{out}.message"
exit {status}
"""


def fake_sendmail(tmp_path: Path, status: int = 0, stderr: str = "") -> tuple[Path, Path]:
    out = tmp_path / "sent"
    script = tmp_path / "sendmail"
    body = FAKE_SENDMAIL.format(out=out, status=status)
    if stderr:
        body = body.replace("exit", f"printf '{stderr}' >&2\nexit")
    script.write_text(body)
    script.chmod(0o755)
    return script, out


def test_send_via_sendmail(tmp_path: Path) -> None:
    script, out = fake_sendmail(tmp_path)
    m = message(classes=[CAPPED_NORMAL, CAPPED_EXEMPT])
    send(m, replace(NOTIFY, sendmail=str(script)))
    assert Path(f"{out}.args").read_text() == "-t\n-oi\n"
    assert Path(f"{out}.message").read_bytes() == m.as_bytes()


def test_sendmail_failure_is_one_line(tmp_path: Path) -> None:
    script, _ = fake_sendmail(tmp_path, status=75, stderr="\\nqueue full\\nmore detail\\n")
    with pytest.raises(Error) as info:
        send(message(), replace(NOTIFY, sendmail=str(script)))
    assert str(info.value) == f"mail via {script} failed: exit status 75: queue full"


def test_missing_sendmail(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-sendmail"
    with pytest.raises(Error) as info:
        send(message(), replace(NOTIFY, sendmail=str(missing)))
    assert str(info.value) == f"mail via {missing} failed: No such file or directory"


def test_sendmail_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(*args: Any, **kwargs: Any) -> None:
        raise subprocess.TimeoutExpired(args[0], kwargs["timeout"])

    monkeypatch.setattr(subprocess, "run", hang)
    with pytest.raises(Error) as info:
        send(message(), NOTIFY)
    assert str(info.value) == "mail via /usr/sbin/sendmail failed: no answer in 30 s"


def test_nothing_configured() -> None:
    with pytest.raises(Error, match="neither an SMTP server nor sendmail"):
        send(message(), replace(NOTIFY, sendmail=None))


class FakeSMTP:
    """Records what send() asks of smtplib.SMTP; ``fail`` makes one step raise."""

    calls: ClassVar[list[tuple[str, Any]]] = []
    fail: ClassVar[dict[str, BaseException]] = {}

    def __init__(self, host: str, port: int, timeout: float) -> None:
        FakeSMTP.calls.append(("connect", (host, port, timeout)))
        self._maybe_fail("connect")

    def _maybe_fail(self, step: str) -> None:
        if step in FakeSMTP.fail:
            raise FakeSMTP.fail[step]

    def __enter__(self) -> FakeSMTP:
        return self

    def __exit__(self, *exc: object) -> None:
        FakeSMTP.calls.append(("quit", None))

    def starttls(self, context: Any) -> None:
        FakeSMTP.calls.append(("starttls", context is not None))
        self._maybe_fail("starttls")

    def login(self, user: str, password: str) -> None:
        FakeSMTP.calls.append(("login", (user, password)))
        self._maybe_fail("login")

    def send_message(self, m: EmailMessage) -> dict[str, Any]:
        FakeSMTP.calls.append(("send_message", m["Message-ID"]))
        self._maybe_fail("send_message")
        return {}


@pytest.fixture
def fake_smtp(monkeypatch: pytest.MonkeyPatch) -> type[FakeSMTP]:
    FakeSMTP.calls = []
    FakeSMTP.fail = {}
    monkeypatch.setattr(smtplib, "SMTP", FakeSMTP)
    return FakeSMTP


SMTP = replace(NOTIFY, smtp_host="mail.example.org", smtp_port=587, sendmail=None)


def test_smtp_starttls_and_login_in_order(fake_smtp: type[FakeSMTP]) -> None:
    notify = replace(SMTP, starttls=True, username="bwbpf", password="secret")
    send(message(), notify)
    assert fake_smtp.calls == [
        ("connect", ("mail.example.org", 587, 30.0)),
        ("starttls", True),
        ("login", ("bwbpf", "secret")),
        ("send_message", "<bwbpf.alice.1704067200@node1.example.org>"),
        ("quit", None),
    ]


def test_smtp_plain(fake_smtp: type[FakeSMTP]) -> None:
    send(message(), SMTP)
    assert [name for name, _ in fake_smtp.calls] == ["connect", "send_message", "quit"]


def test_smtp_wins_over_sendmail(fake_smtp: type[FakeSMTP]) -> None:
    send(message(), replace(SMTP, sendmail="/nonexistent/sendmail"))
    assert [name for name, _ in fake_smtp.calls] == ["connect", "send_message", "quit"]


@pytest.mark.parametrize(
    ("step", "exc", "error"),
    [
        pytest.param(
            "connect",
            ConnectionRefusedError(111, "Connection refused"),
            "mail via mail.example.org:587 failed: [Errno 111] Connection refused",
            id="refused",
        ),
        pytest.param(
            "connect",
            TimeoutError("timed out"),
            "mail via mail.example.org:587 failed: timed out",
            id="timeout",
        ),
        pytest.param(
            "starttls",
            smtplib.SMTPNotSupportedError("STARTTLS extension not supported by server."),
            "mail via mail.example.org:587 failed: STARTTLS extension not supported by server.",
            id="no-starttls",
        ),
        pytest.param(
            "login",
            smtplib.SMTPAuthenticationError(535, b"5.7.8 Authentication failed\nsecond line"),
            "mail via mail.example.org:587 failed: 535 5.7.8 Authentication failed",
            id="bad-login",
        ),
        pytest.param(
            "send_message",
            smtplib.SMTPRecipientsRefused({"alice@slices.example.org": (550, b"no such user")}),
            "mail via mail.example.org:587 failed: every recipient refused: "
            "{'alice@slices.example.org': (550, b'no such user')}",
            id="recipients-refused",
        ),
        pytest.param(
            "send_message",
            smtplib.SMTPServerDisconnected("Connection unexpectedly closed"),
            "mail via mail.example.org:587 failed: Connection unexpectedly closed",
            id="disconnected",
        ),
    ],
)
def test_smtp_failures_are_one_line_errors(
    fake_smtp: type[FakeSMTP], step: str, exc: BaseException, error: str
) -> None:
    fake_smtp.fail = {step: exc}
    notify = replace(SMTP, starttls=True, username="bwbpf", password="secret")
    with pytest.raises(Error) as info:
        send(message(), notify)
    assert str(info.value) == error
