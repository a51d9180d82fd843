"""Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
it reads commands on fd 3 and writes answers and events on fd 4, each a JSON message ending
in a NUL), with nothing but the standard library: navigate, then read what the page says
of itself."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CHROMIUM = "chromium"


def available() -> bool:
    return shutil.which(CHROMIUM) is not None


class Browser:
    """One Chromium process (``prefix`` runs it, e.g. nsenter into a namespace) and one tab."""

    def __init__(self, prefix: Sequence[str], profile: Path) -> None:
        to_chromium, self._commands = os.pipe()
        self._events, from_chromium = os.pipe()

        def pipes() -> None:
            # In the child: the protocol's two fds where Chromium looks for them, by way of
            # fds above both (either pipe end may itself be 3 or 4). dup2 makes them
            # inheritable; every other fd of this process is close-on-exec.
            up = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_chromium, from_chromium)]
            os.dup2(up[0], 3)
            os.dup2(up[1], 4)

        cmd = [
            *prefix,
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-extensions",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--window-size=1280,900",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=pipes,
            close_fds=False,
        )
        os.close(to_chromium)
        os.close(from_chromium)
        self._buffer = b""
        self._id = 0
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
        self.session = attached["sessionId"]

    def call(self, method: str, params: dict[str, Any] | None = None, session: bool = False) -> Any:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._read()
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._events, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self._buffer += chunk
        text, _, self._buffer = self._buffer.partition(b"\0")
        message: dict[str, Any] = json.loads(text)
        return message

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True
        )
        return result.get("result", {}).get("value")

    def load(self, url: str, ready: str, timeout_s: float = 60.0) -> Any:
        """Navigate to ``url``; the first non-empty value of the ``ready`` expression."""
        self.evaluate("document.body && (document.body.dataset.firstRenderMs = '')")
        self.call("Page.navigate", {"url": url}, session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.evaluate(ready)
            if value:
                return value
            time.sleep(0.02)
        raise RuntimeError(f"{url}: not ready after {timeout_s:.0f} s")

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self.call("Browser.close")
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self._commands)
        os.close(self._events)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
