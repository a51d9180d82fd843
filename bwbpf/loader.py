"""The short-lived process that compiles and loads the classifier, so that the process
that asked (the daemon, ``bwbpf up``) never maps bcc and LLVM (~140 MB resident, for good).

``run`` starts ``python -m bwbpf.loader`` and hands it, as JSON on stdin, everything it
needs: the pin directory and the match tables the caller computed from the config it
checked (the loader never reads the config file: it may have changed since). The loader
compiles bpf/egress.c with bcc, fills the maps, loads the program, pins the program and
its match maps as ``<name>@<program id>`` (datapath.generation_pin; bcc pins the counters
itself, after a counters map of another bwbpf layout was moved aside for the daemon to
account: datapath._check_pins), prints ``{"prog_id": N}`` and exits. The caller opens those pins
(datapath.Program.open). A failure comes back as ``{"error": "one line"}`` and exit 1; a
loader that hangs is killed after ``timeout_s``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bwbpf import bpfsys, datapath, matchkinds
from bwbpf.errors import Error, one_line

log = logging.getLogger(__name__)

# A compile takes ~1 s on an idle machine, several on a busy one or under software
# emulation; a loader still running after this is stuck. Below systemd's WatchdogSec (60 s
# in deploy/systemd/bwbpf.service), so that a reload stuck in it is a logged failure, not
# a daemon killed by systemd.
TIMEOUT_S = 45.0


# -- the request: what the caller hands the loader ------------------------------------------


def encode(pin_dir: str, tables: datapath.MatchTables, cflags: Iterable[str] = ()) -> str:
    """The loader's stdin: the pin directory and the match maps' contents, as JSON."""
    return json.dumps(
        {
            "pin_dir": pin_dir,
            "cflags": list(cflags),
            "flags": tables.flags,
            "cgroup_levels": tables.cgroup_levels,
            # JSON keys are strings: integer and prefix keys travel as pairs.
            "entries": {
                m.name: [
                    (str(k) if m.prefixes else k, v) for k, v in tables.entries[m.name].items()
                ]
                for m in matchkinds.MAPS
            },
            "exempt": [str(net) for net in tables.exempt],
        }
    )


def _key(m: matchkinds.MatchMap, key: Any) -> Any:
    return ipaddress.ip_network(key) if m.prefixes else int(key)


def decode(text: str) -> tuple[str, datapath.MatchTables, list[str]]:
    """(pin directory, match tables, extra cflags) from ``encode``'s JSON."""
    doc = json.loads(text)
    tables = datapath.MatchTables(
        flags=int(doc["flags"]),
        cgroup_levels=int(doc["cgroup_levels"]),
        entries={
            m.name: {_key(m, k): int(v) for k, v in doc["entries"][m.name]} for m in matchkinds.MAPS
        },
        exempt=tuple(ipaddress.ip_network(n) for n in doc["exempt"]),
        problems=(),
    )
    return str(doc["pin_dir"]), tables, [str(f) for f in doc["cflags"]]


# -- the caller's side -------------------------------------------------------------------------


def command() -> list[str]:
    return [sys.executable, "-m", "bwbpf.loader"]


def _environment() -> dict[str, str]:
    """The caller's environment, with this bwbpf first on the module path: the loader must
    be the same code as its caller, also when that runs from a source tree."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def run(
    pin_dir: str,
    tables: datapath.MatchTables,
    cflags: Iterable[str] = (),
    timeout_s: float = TIMEOUT_S,
    argv: Sequence[str] | None = None,
) -> int:
    """Load a program in a loader process; its id (pinned as ``prog@<id>``). Raises a
    one-line Error when the loader fails, is killed or runs past ``timeout_s``."""
    cmd = list(argv or command())
    try:
        # On a timeout subprocess.run kills the loader (SIGKILL) and reaps it.
        done = subprocess.run(
            cmd,
            input=encode(pin_dir, tables, cflags),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=_environment(),
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise Error(f"the classifier loader did not finish in {timeout_s:g} s; killed it") from None
    except OSError as exc:
        raise Error(f"cannot start the classifier loader {cmd[0]}: {exc.strerror}") from None
    if done.stderr.strip():
        log.debug("classifier loader said: %s", done.stderr.strip())
    return _prog_id(done)


def _prog_id(done: subprocess.CompletedProcess[str]) -> int:
    """The loaded program's id from the loader's reply, or the loader's failure as one line."""
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise Error(f"the classifier loader was killed by {name}")
    try:
        reply = json.loads(done.stdout)
    except ValueError:
        reply = {}
    if done.returncode == 0 and isinstance(reply.get("prog_id"), int):
        return int(reply["prog_id"])
    what = reply.get("error") or f"the classifier loader exited with status {done.returncode}"
    detail = _compiler_error(done.stderr)
    raise Error(one_line(f"{what} ({detail})" if detail else what))


def _compiler_error(stderr: str) -> str | None:
    """clang's first diagnostic, which libbcc prints straight to the loader's stderr: the
    reason a compile failed, where bcc's exception only says that it did."""
    for line in stderr.splitlines():
        if "error:" in line:
            return line.strip()
    return None


# -- the loader's side -------------------------------------------------------------------------


def load_and_pin(pin_dir: str, tables: datapath.MatchTables, cflags: Iterable[str] = ()) -> int:
    """Compile, fill, load and pin (maps first, the program last); the program's id."""

    def pin(bpf: Any, fd: int) -> None:
        prog_id = int(bpfsys.prog_info(fd).id)
        try:
            for name in datapath.MATCH_MAPS:
                bpfsys.obj_pin(bpf[name].map_fd, datapath.generation_pin(pin_dir, name, prog_id))
            bpfsys.obj_pin(fd, datapath.generation_pin(pin_dir, datapath.PROGRAM_PIN, prog_id))
        except OSError as exc:
            datapath.remove_generation(pin_dir, prog_id)
            raise Error(f"cannot pin the classifier's maps in {pin_dir}: {exc.strerror}") from None

    bpf, fd = datapath.build(pin_dir, tables, cflags, pin=pin)
    try:
        return int(bpfsys.prog_info(fd).id)
    finally:
        bpf.cleanup()


def main() -> int:
    # The reply goes to the real stdout; whatever bcc or clang print goes to stderr.
    reply_to = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    reply: dict[str, Any]
    try:
        pin_dir, tables, cflags = decode(sys.stdin.read())
        reply = {"prog_id": load_and_pin(pin_dir, tables, cflags)}
    except Exception as exc:  # any failure is the caller's one line, never a traceback
        reply = {"error": one_line(exc)}
    with reply_to:
        json.dump(reply, reply_to)
    return 0 if "prog_id" in reply else 1


if __name__ == "__main__":
    sys.exit(main())
