"""Keeping OpenSSL out of bwbpf's processes, and letting it in where a mail needs it.

``http.server`` imports ``http.client``, which imports ``ssl`` only to offer HTTPS, and
``hashlib`` loads OpenSSL's ``_hashlib``: libcrypto and the modules made on it are 4 MB
resident in every process that imports them, in the daemon's for its whole life, and no
bwbpf process uses them. Both standard modules are written to do without (http.client
imports ssl in a ``try``; hashlib falls back to Python's own sha256), so the ``bwbpf``
command marks these modules unavailable before it imports anything else. Only a mail through
an SMTP server speaks TLS (STARTTLS); it is sent from a child process, which lets them in.
"""

from __future__ import annotations

import sys

# The modules whose import maps libcrypto. A None in sys.modules makes `import` raise
# ImportError, which is what their importers expect where OpenSSL is missing.
MODULES = ("ssl", "_ssl", "_hashlib")


def keep_out() -> None:
    """Mark OpenSSL's modules unavailable in this process (those not imported yet)."""
    for name in MODULES:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def let_in() -> None:
    """Undo ``keep_out``: the next import of these modules loads them."""
    for name in MODULES:
        if name in sys.modules and sys.modules[name] is None:
            del sys.modules[name]


def main() -> None:
    """The ``bwbpf`` command: ``bwbpf.cli.main`` without OpenSSL."""
    keep_out()
    from bwbpf.cli import main as cli_main

    cli_main()
