"""The mail a slice (and the operator) gets when its quota caps it, and sending it.

``compose`` is pure: one message per slice per period, one paragraph per capped class,
worded as the reference bwmon's was. Every value that reaches a header is checked against
a strict pattern first, so a slice name or a configured address cannot add a header
(``\\r\\nBcc: ...``); ``email.policy.default`` would refuse a line break too, this says
which value was wrong. ``send`` hands the message to an SMTP server or to sendmail and
turns any failure into one ``bwbpf.Error`` line; the daemon logs it and tries again at the
next tick, marking the slice notified only after a send that worked.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate

from bwbpf import heap, openssl
from bwbpf.errors import Error
from bwbpf.limits import DCLASSES, DEFAULT_SLICE_NAME
from bwbpf.model import SLICE_NAME, Notify
from bwbpf.units import format_bytes, format_duration, format_rate

# RFC 5322 dot-atom local part and an LDH domain (one label allowed: "root@localhost").
# No quoted local parts, comments, display names, commas, spaces or line breaks: nothing a
# header parser could split into a second address or a second header.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*")
# Host names as gethostname(2) returns them; '_' is tolerated (it is common, and harmless).
HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_-]{1,63})*")
SEND_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class CappedClass:
    """What the mail says about one capped destination class.

    ``limit_bytes`` is the budget to quote: ``policy.byte_limit()``, which for the average
    policy is ``avg_rate × period / 8`` rather than the configured limit.
    """

    dclass: int
    used_bytes: int
    ceil_bps: int
    limit_bytes: int


def check_address(address: str, what: str) -> str:
    """``address`` if it is a plain ``local@domain``, else ``bwbpf.Error``."""
    if not isinstance(address, str) or len(address) > 254 or not ADDRESS.fullmatch(address):
        raise Error(f"{what} is not a plain mail address: {address!r}")
    return address


def recipients(notify: Notify, slice_name: str) -> tuple[str, ...]:
    """Who is told about a slice: its own address and the operator's.

    The default slice (unclassified traffic) belongs to nobody, so only the operator hears
    of it; with no operator configured the result is empty and nobody is mailed.
    """
    _check_slice(slice_name)
    to: list[str] = []
    if slice_name != DEFAULT_SLICE_NAME:
        address = notify.slice_address.replace("{slice}", slice_name)
        to.append(check_address(address, "notify.slice_address"))
    if notify.operator:
        operator = check_address(notify.operator, "notify.operator")
        if operator not in to:
            to.append(operator)
    return tuple(to)


def compose(
    notify: Notify,
    slice_name: str,
    hostname: str,
    classes: Sequence[CappedClass],
    period_start: float,
    period_end: float,
    now: float,
) -> EmailMessage:
    """The one message telling a slice that its classes in ``classes`` are capped."""
    to = recipients(notify, slice_name)
    if not to:
        raise Error(f"nobody to mail about slice {slice_name}: no operator address configured")
    sender = check_address(notify.sender, "notify.from")
    if not isinstance(hostname, str) or not HOSTNAME.fullmatch(hostname):
        raise Error(f"host name is not usable in a mail header: {hostname!r}")
    if not classes:
        raise Error(f"no capped class to tell slice {slice_name} about")
    dclasses = [c.dclass for c in classes]
    if len(set(dclasses)) != len(dclasses) or not all(0 <= d < len(DCLASSES) for d in dclasses):
        raise Error(f"classes must be distinct dclasses 0..{len(DCLASSES) - 1}: {dclasses}")

    period = format_duration(round(period_end - period_start))
    # "per day", not "per 1 day".
    period = period.removeprefix("1 ")
    paragraphs = []
    for c in sorted(classes, key=lambda c: c.dclass):
        name = DCLASSES[c.dclass]
        paragraphs.append(
            f"The slice {slice_name} has transmitted {format_bytes(c.used_bytes)} from\n"
            f"{hostname} to {name} destinations\n"
            f"since {_utc(period_start)}.\n"
            "\n"
            f"Its maximum {name} burst rate will be capped at {format_rate(c.ceil_bps)}/s\n"
            f"until {_utc(period_end)}.\n"
            "\n"
            f"Please reduce the average {name} transmission rate\n"
            f"of the slice to {format_bytes(c.limit_bytes)} per {period}.\n"
        )
    footer = f"{_utc(now)} {hostname} bwbpf {slice_name}\n"

    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = f"bwbpf capped bandwidth of slice {slice_name} on {hostname}"
    message["Date"] = formatdate(now, usegmt=True)
    # One message per slice per period: the id says which, and a retry reuses it.
    message["Message-ID"] = f"<bwbpf.{slice_name}.{int(period_start)}@{hostname}>"
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies, please
    message.set_content("\n".join(paragraphs) + "\n" + footer)
    return message


def send(message: EmailMessage, notify: Notify, timeout: float = SEND_TIMEOUT_S) -> None:
    """Deliver through ``notify.smtp_host`` if set, else through ``notify.sendmail``.

    Raises ``bwbpf.Error`` with one line on any failure. Recipients an SMTP server refuses
    while accepting others are not an error: trying again would mail the others twice.
    """
    if notify.smtp_host:
        _send_smtp(message, notify, timeout)
    elif notify.sendmail:
        _send_sendmail(message, notify.sendmail, timeout)
    else:
        raise Error("notify: neither an SMTP server nor sendmail is configured")


def send_from_child(message: EmailMessage, notify: Notify, timeout: float = SEND_TIMEOUT_S) -> None:
    """``send`` in a forked child (the daemon's mailer): the SMTP client and OpenSSL it
    imports, 4 MB resident, never enter the daemon, which sends a few mails a day."""
    heap.isolated(lambda: send(message, notify, timeout), what="the process sending the mail")


def _send_smtp(message: EmailMessage, notify: Notify, timeout: float) -> None:
    # Here, not at the top: only this needs them (see bwbpf/openssl.py).
    openssl.let_in()
    import smtplib
    import ssl

    where = f"{notify.smtp_host}:{notify.smtp_port}"
    try:
        with smtplib.SMTP(notify.smtp_host or "", notify.smtp_port, timeout=timeout) as smtp:
            if notify.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if notify.username:
                smtp.login(notify.username, notify.password or "")
            smtp.send_message(message)
    except smtplib.SMTPResponseException as exc:
        text = (
            exc.smtp_error.decode(errors="replace")
            if isinstance(exc.smtp_error, bytes)
            else exc.smtp_error
        )
        raise Error(f"mail via {where} failed: {exc.smtp_code} {_line(str(text))}") from exc
    except smtplib.SMTPRecipientsRefused as exc:
        raise Error(f"mail via {where} failed: every recipient refused: {_line(str(exc))}") from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise Error(f"mail via {where} failed: {_line(str(exc)) or type(exc).__name__}") from exc


def _send_sendmail(message: EmailMessage, sendmail: str, timeout: float) -> None:
    try:
        # -t: recipients from the headers; -oi: a line with a lone "." does not end input.
        subprocess.run(
            [sendmail, "-t", "-oi"],
            input=message.as_bytes(),
            check=True,
            timeout=timeout,
            capture_output=True,
        )
    except subprocess.CalledProcessError as exc:
        said = _line(exc.stderr.decode(errors="replace")) if exc.stderr else ""
        raise Error(
            f"mail via {sendmail} failed: exit status {exc.returncode}"
            + (f": {said}" if said else "")
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise Error(f"mail via {sendmail} failed: no answer in {timeout:g} s") from exc
    except OSError as exc:
        raise Error(f"mail via {sendmail} failed: {exc.strerror or exc}") from exc


def _check_slice(slice_name: str) -> None:
    # fullmatch: the pattern ends in "$", which match() lets a trailing "\n" through.
    if not isinstance(slice_name, str) or not SLICE_NAME.fullmatch(slice_name):
        raise Error(f"slice name is not usable in a mail: {slice_name!r}")


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _line(text: str) -> str:
    """The first non-empty line of a server's or program's message."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""
