"""The node page: one HTML page and two JSON documents, served by the daemon's metrics
listener (bwbpf/metrics.py) beside the Prometheus exposition. Read-only: nothing here
changes the node, and every method but GET and HEAD is refused.

``/``
    The page (bwbpf/web/index.html: HTML, CSS and JavaScript in one file, nothing fetched
    from elsewhere), which draws itself from the two documents below.
``/api/status.json``
    The ``bwbpf stat --json`` document, the very bytes the stat socket answers
    (``statserver.StatServer.document``): no second way of building it, and no copy of
    any slice's data kept for the page.
``/api/history.json``
    ``historyview.document`` with the node's totals (``node=True``), from the history
    database opened read-only for the request (the daemon writes it in WAL mode, so
    reading meanwhile is safe). Parameters: ``res`` (a resolution of ``bwbpf history``,
    default ``hours``), ``since`` and ``until`` (as ``bwbpf history`` takes them), ``slice``
    (repeatable) and ``top``. Without ``slice`` or ``top`` no slice's rows are read: at
    10,000 slices the node's totals are the database's sums.

Anything else under ``/api/`` and ``/favicon.ico`` are 404; every other path is the
exposition, as it always was (``route`` returns None for it). Errors are one line of JSON,
``{"error": ..., "parameter": ...}`` (the parameter only for a bad query value).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

from bwbpf import historyview
from bwbpf.errors import Error, one_line
from bwbpf.history import Store
from bwbpf.model import SLICE_NAME, Config

log = logging.getLogger(__name__)

PAGE = "/"
STATUS = "/api/status.json"
HISTORY = "/api/history.json"
METHODS = ("GET", "HEAD")
JSON_TYPE = "application/json"
HTML_TYPE = "text/html; charset=utf-8"

# History queries: parameters, how many slices one may name, the largest top.
HISTORY_PARAMS = ("res", "since", "until", "slice", "top")
MAX_SLICES = 100
MAX_TOP = 1000
MAX_FIELDS = 2 * MAX_SLICES
_TOP = re.compile(r"[0-9]{1,6}")
# One history document built at a time: each holds a database connection and its rows,
# and a browser left open on many tabs must not multiply them in the daemon.
HISTORY_WAIT_S = 10.0


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    # Made with megabytes that are freed once it is sent (the stat document's text, a
    # history query's rows): the heap is trimmed after it (heap.trim).
    trim: bool = False


class QueryError(Exception):
    """A bad query value: 400, naming the parameter."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


@dataclass(frozen=True)
class HistoryQuery:
    res: str = "hours"
    since: str | None = None
    until: str | None = None
    slices: tuple[str, ...] = ()
    top: int | None = None


def route(target: str) -> tuple[str, str] | None:
    """The endpoint of a request target and its query string; None: the exposition."""
    parts = urlsplit(target)
    path = parts.path
    if path == PAGE:
        return PAGE, parts.query
    if path in (STATUS, HISTORY):
        return path, parts.query
    if path == "/api" or path.startswith("/api/") or path == "/favicon.ico":
        return "", parts.query  # not found
    return None


def parse_history_query(query: str) -> HistoryQuery:
    """The history query's values, checked for form (times are read with the history's
    time zone later); QueryError names the first bad parameter."""
    try:
        fields = parse_qsl(query, keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except ValueError:
        raise QueryError("query", f"query: more than {MAX_FIELDS} parameters") from None
    seen: dict[str, str] = {}
    slices: list[str] = []
    for key, value in fields:
        if key not in HISTORY_PARAMS:
            raise QueryError(
                key[:40], f"{key[:40]!r}: no such parameter ({', '.join(HISTORY_PARAMS)})"
            )
        if key == "slice":
            if not SLICE_NAME.fullmatch(value):
                raise QueryError("slice", f"slice {value[:70]!r}: not a slice name")
            if value not in slices:
                slices.append(value)
            continue
        if key in seen:
            raise QueryError(key, f"{key}: given more than once")
        seen[key] = value
    if len(slices) > MAX_SLICES:
        raise QueryError("slice", f"slice: more than {MAX_SLICES} slices")
    res = seen.get("res", "hours")
    if res not in historyview.CHOICES:
        raise QueryError("res", f"res {res[:40]!r}: not one of {', '.join(historyview.CHOICES)}")
    top = None
    if "top" in seen:
        text = seen["top"]
        if not _TOP.fullmatch(text) or not 1 <= int(text) <= MAX_TOP:
            raise QueryError("top", f"top {text[:40]!r}: not a number from 1 to {MAX_TOP}")
        top = int(text)
    for key in ("since", "until"):
        if key in seen and not 0 < len(seen[key]) <= 64:
            raise QueryError(key, f"{key}: empty or too long")
    return HistoryQuery(res, seen.get("since"), seen.get("until"), tuple(slices), top)


def host_allowed(host: str | None, listen_host: str | None) -> bool:
    """Whether a request's Host header may reach the page on this listener. A listener
    on loopback (the default) answers only Host names that are addresses or localhost:
    a web page a browser on the node (or behind an SSH tunnel to it) visits could
    otherwise point its own name at 127.0.0.1 (DNS rebinding) and read every slice's
    usage. A listener on another address is for whoever can reach it."""
    if listen_host is None or not _loopback(listen_host):
        return True
    if not host:
        return False
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else ""
    elif name.count(":") == 1:
        name = name.rpartition(":")[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def error(status: int, message: str, parameter: str | None = None) -> Response:
    doc: dict[str, Any] = {"error": one_line(message)}
    if parameter is not None:
        doc["parameter"] = parameter
    return Response(status, JSON_TYPE, json.dumps(doc).encode() + b"\n", _NO_STORE)


_NO_STORE = (("Cache-Control", "no-store"),)


# -- the page -------------------------------------------------------------------------------


class _Page:
    """index.html and its Content-Security-Policy, read once: the policy allows exactly the
    file's own style and script (by hash), fetches from this listener, and nothing else."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: tuple[bytes, str] | None = None

    def get(self) -> tuple[bytes, str]:
        with self._lock:
            if self._made is None:
                text = resources.files("bwbpf").joinpath("web/index.html").read_text("utf-8")
                self._made = (text.encode(), content_security_policy(text))
            return self._made


def _hashes(text: str, tag: str) -> str:
    found = re.findall(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL)
    return " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in found
    )


def content_security_policy(text: str) -> str:
    """The policy of a page whose styles and scripts are its own inline elements."""
    return (
        f"default-src 'none'; style-src {_hashes(text, 'style')};"
        f" script-src {_hashes(text, 'script')}; connect-src 'self'; img-src data:;"
        " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


_PAGE = _Page()


# -- the site --------------------------------------------------------------------------------


class Site:
    """What the endpoints answer from: the stat document of the last tick (``status(now)``,
    None before the first tick) and the config in force (``config()``)."""

    def __init__(
        self, status: Callable[[float], bytes | None], config: Callable[[], Config]
    ) -> None:
        self._status = status
        self._config = config
        self._history_slot = threading.BoundedSemaphore(1)

    def get(self, target: str, host: str | None, now: float) -> Response | None:
        """The answer to a GET of ``target``; None: the exposition's path."""
        found = route(target)
        if found is None:
            return None
        path, query = found
        cfg = self._config()
        listen = cfg.metrics.listen_host if cfg.metrics is not None else None
        if not host_allowed(host, listen):
            return error(403, f"Host {str(host)[:60]!r}: this listener answers its address")
        try:
            if path == PAGE:
                body, policy = _PAGE.get()
                return Response(
                    200,
                    HTML_TYPE,
                    body,
                    (
                        ("Cache-Control", "no-cache"),
                        ("Content-Security-Policy", policy),
                        ("X-Content-Type-Options", "nosniff"),
                        ("Referrer-Policy", "no-referrer"),
                    ),
                )
            if path == STATUS:
                return self.status(now)
            if path == HISTORY:
                return self.history(cfg, query, now)
            return error(404, f"{urlsplit(target).path[:80]}: no such page")
        except Exception as exc:  # the daemon goes on; the browser gets one line
            log.warning("node page: %s: %s", path or target[:80], one_line(exc))
            return error(500, one_line(exc))

    def status(self, now: float) -> Response:
        try:
            body = self._status(now)
        except (Error, OSError) as exc:
            return error(503, f"no status: {one_line(exc)}")
        if body is None:
            return error(503, "no status yet: the daemon has not finished its first tick")
        return Response(200, JSON_TYPE, body, _NO_STORE, trim=True)

    def history(self, cfg: Config, query: str, now: float) -> Response:
        try:
            q = parse_history_query(query)
        except QueryError as exc:
            return error(400, str(exc), exc.parameter)
        if not cfg.history.enabled:
            return error(404, "history is off ([history] enabled = false)")
        tz = ZoneInfo(cfg.history.timezone)
        try:
            since = historyview.parse_time(q.since, tz, now, "since") if q.since else None
        except Error as exc:
            return error(400, str(exc), "since")
        try:
            until = historyview.parse_time(q.until, tz, now, "until") if q.until else None
        except Error as exc:
            return error(400, str(exc), "until")
        if since is not None and since >= (now if until is None else until):
            return error(400, "since: must be before until (or now)", "since")
        if not self._history_slot.acquire(timeout=HISTORY_WAIT_S):
            return error(503, "busy: another history request is being answered")
        try:
            return self._history(cfg, q, since, until, now)
        finally:
            self._history_slot.release()

    def _history(
        self, cfg: Config, q: HistoryQuery, since: float | None, until: float | None, now: float
    ) -> Response:
        try:
            store = Store.open_readonly(cfg.history_path, cfg.interface)
        except Error as exc:
            return error(503, str(exc))
        try:
            configured = {s.name for s in cfg.all_slices()}
            unknown = [n for n in q.slices if n not in configured]
            if unknown:
                held = set(store.names())
                unknown = [n for n in unknown if n not in held]
                if unknown:
                    return error(
                        404, f"slice {unknown[0]!r}: neither configured nor in the history"
                    )
            names: tuple[str, ...] | None = q.slices or (() if q.top is not None else None)
            try:
                doc = historyview.document(
                    store,
                    cfg,
                    q.res,
                    now=now,
                    since=since,
                    until=until,
                    names=names,
                    top=q.top,
                    node=True,
                )
            except Error as exc:
                if str(exc).startswith("history "):
                    return error(503, str(exc))  # the database could not be read
                return error(400, str(exc), "since")
        finally:
            store.close()
        body = json.dumps(doc, separators=(",", ":")).encode()
        return Response(200, JSON_TYPE, body, _NO_STORE, trim=True)

    @staticmethod
    def not_allowed(method: str) -> Response:
        response = error(405, f"{method[:20]}: this listener is read-only (GET, HEAD)")
        return Response(
            response.status,
            response.content_type,
            response.body,
            (*response.headers, ("Allow", ", ".join(METHODS))),
        )
