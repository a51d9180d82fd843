"""``bwbpf stat``'s short way, the daemon's side: it answers with the stat document itself.

Made from the files, the document costs ``stat`` ~0.4 s at 10,000 slices: parsing the
saved ledger, dumping 20,000 HTB classes, unpickling the config. The daemon holds all of
that already, as of its last tick (the ledger's records, which ticks replace and never
change, and the config in force), so it serves the document on a Unix socket beside its
status file, ``<state_dir>/<interface>.stat.sock`` (mode 0600), with the live counters
read at the request, exactly as ``stat`` would add them.

One request per connection: ``stat <config digest>\\n``; the answer is the JSON document
and the end of the stream. The daemon answers only a ``stat`` whose config file is the
text it runs (``Config.digest``), so an edited but not reloaded file, or another file
naming the same interface, gets an empty answer, and ``stat`` reads the files as before;
so does a ``stat`` that finds no daemon, a stale socket, or no answer in time. The ceiling
shown is the one the daemon last applied (the ledger's record), which it compares with
HTB's at least every minute.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socketserver
import threading
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

from bwbpf import classid, datapath, heap, periods, report, status
from bwbpf.ledger import SliceRecord
from bwbpf.model import Config, Slice
from bwbpf.shaper import installed_rate
from bwbpf.statsocket import ASK_TIMEOUT_S, MAX_SOCKET_PATH, socket_path

log = logging.getLogger(__name__)

MAX_REQUEST = 256


class TickView(NamedTuple):
    """What the daemon knew at its last tick: its config and status, and the ledger's
    records (``Ledger.live_records``: an answer made while a tick runs may show some
    slices as of that tick, each of them whole)."""

    cfg: Config
    records: Mapping[str, SliceRecord]
    # status.DaemonStatus.summary() of this daemon.
    daemon: dict[str, Any]


def _ceilings(s: Slice, record: SliceRecord | None) -> dict[int, int | None]:
    """The ceiling in force of each of the slice's classes: the one the daemon last
    applied, as HTB holds it (whole bytes a second), as stat shows what it reads."""
    if record is None:
        return {}
    return {
        classid.slice_class(s.id, dclass): None
        if c.ceil_bps is None
        else installed_rate(c.ceil_bps)
        for dclass, c in enumerate(record.classes)
    }


# Holds the slices' place in the encoded document (JSON escapes the NULs).
_SLICES_HERE = "\0slices\0"


def _no_ceiling(_handle: int) -> int | None:
    return None


class Encoder:
    """The document as JSON text, byte for byte ``json.dumps(document, sort_keys=True)``,
    with each slice's text kept while what it is made of is the same (its config, its
    ledger record, its live counters): at 10,000 slices encoding them all costs ~0.2 s,
    and between two stats most slices are idle. Not thread-safe (``Answers`` locks)."""

    def __init__(self) -> None:
        self._texts: dict[str, tuple[Slice, SliceRecord | None, Any, Any, bytes]] = {}

    @property
    def keeps(self) -> bool:
        return bool(self._texts)

    def encode(
        self,
        view: TickView,
        live: Mapping[int, tuple[datapath.Usage, datapath.Usage]],
        errors: Mapping[str, int],
        attached: bool,
        now: float,
    ) -> bytes:
        cfg = view.cfg
        unsaved = periods.current_period(cfg.period, now, None)
        texts = {}
        pieces = []
        for s in cfg.all_slices():
            record = view.records.get(s.name)
            pair = live[s.id]
            # Only a slice the daemon saved nothing of depends on the time (its period).
            period = None if record is not None and record.live else unsaved
            kept = self._texts.get(s.name)
            if (
                kept is not None
                and kept[0] is s
                and kept[1] is record
                and kept[2] == pair
                and kept[3] == period
            ):
                text = kept[4]
            else:
                st = status.slice_view(record) if record is not None else None
                entry = report.slice_entry(
                    cfg.policy, s, pair, st, _ceilings(s, record).get, unsaved
                )
                text = json.dumps(entry, sort_keys=True).encode()  # ASCII: JSON escapes
            texts[s.name] = (s, record, pair, period, text)
            pieces.append(text)
            pieces.append(b", ")
        self._texts = texts
        # The rest of the document as report.document makes it, the slices' place held by
        # a string: the last of its kind in the text, as only "time" (a number) sorts after.
        rest = report.document(
            cfg,
            (),
            live,
            {},
            _no_ceiling,
            daemon=view.daemon,
            errors=errors,
            attached=attached,
            now=now,
        )
        rest["slices"] = _SLICES_HERE
        before, _, after = json.dumps(rest, sort_keys=True).rpartition(json.dumps(_SLICES_HERE))
        # One join of bytes: the answer (6.4 MB at 10,000 slices) is made once, not as a
        # string, again as a string with the rest, and then as bytes.
        del pieces[-1:]  # the separator after the last slice
        return b"".join([before.encode(), b"[", *pieces, b"]", after.encode()])


class Answers:
    """Answers one request at a time, from the kernel's counters and the last tick. The
    slices' texts (~6 MB at 10,000 slices) are kept only while stat keeps asking: after
    KEEP_S without a request they are let go, and the daemon's memory is as without."""

    KEEP_S = 10.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._encoder = Encoder()
        self._asked_at = 0.0

    def answer(self, view: TickView, now: float) -> bytes:
        cfg = view.cfg
        with self._lock, datapath.Counters(cfg.pin_dir) as counters:
            live = counters.read(s.id for s in cfg.all_slices())
            errors = counters.errors()
            attached = datapath.attached(cfg.interface)
            self._asked_at = time.monotonic()
            return self._encoder.encode(view, live, errors, attached, now)

    def forget_if_idle(self, monotonic_now: float) -> bool:
        """Let the kept texts go if nobody asked for KEEP_S; whether it did. Never waits
        for an answer being made (then they are let go at a later tick)."""
        if not self._encoder.keeps or monotonic_now - self._asked_at < self.KEEP_S:
            return False
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._encoder = Encoder()
        finally:
            self._lock.release()
        return True


class _Handler(socketserver.StreamRequestHandler):
    timeout = ASK_TIMEOUT_S
    server: _Server

    def handle(self) -> None:
        try:
            line = self.rfile.readline(MAX_REQUEST)
        except OSError:
            return
        words = line.split()
        view = self.server.view
        if len(words) != 2 or words[0] != b"stat" or view is None:
            return
        if words[1].decode("ascii", "replace") != view.cfg.digest:
            return  # another text than the daemon runs: stat reads the files
        try:
            self.wfile.write(self.server.answers.answer(view, time.time()))
        except Exception as exc:  # stat reads the files instead; the daemon goes on
            log.debug("stat socket: no answer (%s)", exc)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    view: TickView | None = None
    answers: Answers


class StatServer:
    """The socket, served from a thread of its own; ``update`` hands it each tick. The
    node page (bwbpf/nodepage.py) asks ``document`` for the same answer, made by the same
    ``Answers``: one set of kept slice texts, whoever asks."""

    def __init__(self) -> None:
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.path: str | None = None
        self.answers = Answers()
        # The last tick's view, kept whether or not the socket is served (a dry run
        # serves none, but its node page shows what it would do).
        self.view: TickView | None = None

    def document(self, now: float) -> bytes | None:
        """The stat document the socket would answer now; None before the first tick."""
        view = self.view
        return None if view is None else self.answers.answer(view, now)

    def serve(self, cfg: Config) -> None:
        """Listen at cfg's socket path (again, after a reload that moved it). Failing is a
        log line: stat then reads the files, as without a daemon."""
        path = socket_path(cfg)
        if self._server is not None and path == self.path:
            return
        self.close()
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            log.warning("%s: longer than a Unix socket path can be; stat reads the files", path)
            return
        staged = f"{path}.{os.getpid()}.tmp"
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)
            server = _Server(staged, _Handler, bind_and_activate=True)
            server.answers = self.answers
            server.view = self.view
            os.chmod(staged, 0o600)
            # In place at once, over a socket a killed daemon left.
            os.replace(staged, path)
        except OSError as exc:
            log.warning("%s: cannot listen (%s); stat reads the files", path, exc.strerror)
            with contextlib.suppress(OSError):
                os.unlink(staged)
            return
        self._server, self.path = server, path
        self._thread = threading.Thread(
            target=server.serve_forever, name="bwbpf-stat", kwargs={"poll_interval": 0.5}
        )
        self._thread.daemon = True
        self._thread.start()

    def update(self, view: TickView) -> None:
        """This tick's view for the answers; a socket someone removed is made again."""
        if self._server is not None and self.path is not None and not os.path.exists(self.path):
            log.warning("%s: removed; listening again", self.path)
            self.close()
            self.serve(view.cfg)
        self.view = view
        if self._server is not None:
            self._server.view = view
        if self.answers.forget_if_idle(time.monotonic()):
            heap.trim()

    def close(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self._server = self._thread = self.path = None
