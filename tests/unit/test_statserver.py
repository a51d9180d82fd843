"""The daemon's stat answer is byte for byte the document stat makes from the files, and
the slices it keeps encoded follow every change of what they are made of."""

from __future__ import annotations

import json
from collections.abc import Mapping

from bwbpf import config, report, statserver, status
from bwbpf.datapath import Usage
from bwbpf.ledger import ClassRecord, SliceRecord, slice_json

TEXT = """
[node]
interface = "lo"
[quota]
policy = "smooth"
[[slice]]
name = "alice"
id = 5
match = { mark = 5 }
normal = { limit = "1GB", max_rate = "10mbit" }
[[slice]]
name = "bob"
id = 6
match = { mark = 6 }
[[slice]]
name = "carol"
id = 7
match = { mark = 7 }
"""
NOW = 1_800_000_000.25
ERRORS = {"truncated": 2, "counter_lookup": 0, "slice_out_of_range": 0}


def _record(
    name: str, used: int, last: int, capped: bool = False, live: bool = True
) -> SliceRecord:
    normal = ClassRecord(
        used, used // 100, (last, last // 100), capped, 1_000_000 if capped else 10_000_000
    )
    exempt = ClassRecord(0, 0, None, False, None)
    return SliceRecord(name, NOW - 3600, NOW + 82800, live, capped, NOW - 1, (normal, exempt))


def _live(cfg: config.Config, extra: int = 0) -> dict[int, tuple[Usage, Usage]]:
    return {s.id: (Usage(5000 + s.id + extra, 50), Usage(0, 0)) for s in cfg.all_slices()}


def _expected(view: statserver.TickView, live: Mapping[int, tuple[Usage, Usage]]) -> bytes:
    cfg = view.cfg
    ceilings: dict[int, int | None] = {}
    for s in cfg.all_slices():
        record = view.records.get(s.name)
        if record is not None:
            ceilings.update(statserver._ceilings(s, record))
    # What stat makes of the same records read back from the state file.
    saved = status.slices(cfg, {n: json.loads(slice_json(r)) for n, r in view.records.items()})
    doc = report.document(
        cfg,
        cfg.all_slices(),
        live,
        saved,
        ceilings.get,
        daemon=view.daemon,
        errors=ERRORS,
        attached=True,
        now=NOW,
    )
    return json.dumps(doc, sort_keys=True).encode()


def test_the_answer_is_the_document_as_json_makes_it() -> None:
    cfg = config.parse(TEXT, check_interface=False)
    # alice capped, bob saved but not live (removed then added back), carol never ticked.
    records = {
        "default": _record("default", 10, 4000),
        "alice": _record("alice", 900_000_000, 5000, capped=True),
        "bob": _record("bob", 7, 5000, live=False),
    }
    view = statserver.TickView(cfg, records, {"pid": 42, "running": True, "problems": ["x"]})
    live = _live(cfg)
    got = statserver.Encoder().encode(view, live, ERRORS, True, NOW)
    assert got == _expected(view, live)
    doc = json.loads(got)
    by_name = {s["name"]: s for s in doc["slices"]}
    alice = by_name["alice"]["classes"]["normal"]
    # 900 MB saved plus what the kernel counted since the tick (5005 - 5000 bytes).
    assert alice["bytes"] == 900_000_005 and alice["capped"] and alice["ceil_bps"] == 1_000_000
    # Mailed this period (the records made here are notified when capped); carol, never
    # ticked, has no mail to have had.
    assert by_name["alice"]["notified"] and not by_name["carol"]["notified"]


def test_kept_slices_follow_their_counters_records_and_config() -> None:
    cfg = config.parse(TEXT, check_interface=False)
    records = {s.name: _record(s.name, 100, 5000) for s in cfg.all_slices()}
    view = statserver.TickView(cfg, records, {"pid": 42})
    encoder = statserver.Encoder()
    encoder.encode(view, _live(cfg), ERRORS, True, NOW)
    # New counters for every slice, then a new record for one, then a reloaded config.
    live = _live(cfg, extra=300)
    assert encoder.encode(view, live, ERRORS, True, NOW) == _expected(view, live)
    records = {**records, "bob": _record("bob", 999, 5000, capped=True)}
    view = statserver.TickView(cfg, records, {"pid": 42})
    assert encoder.encode(view, live, ERRORS, True, NOW) == _expected(view, live)
    reloaded = config.parse(TEXT.replace('limit = "1GB"', 'limit = "2GB"'), check_interface=False)
    view = statserver.TickView(reloaded, records, {"pid": 42})
    got = encoder.encode(view, live, ERRORS, True, NOW)
    assert got == _expected(view, live)
    assert b'"limit_bytes": 2000000000' in got


def test_the_kept_texts_go_when_nobody_asks() -> None:
    cfg = config.parse(TEXT, check_interface=False)
    view = statserver.TickView(cfg, {}, {"pid": 42})
    answers = statserver.Answers()
    assert not answers.forget_if_idle(1e9)  # nothing kept
    answers._encoder.encode(view, _live(cfg), ERRORS, True, NOW)
    answers._asked_at = 100.0
    assert not answers.forget_if_idle(100.0 + answers.KEEP_S - 1)
    assert answers._encoder.keeps
    assert answers.forget_if_idle(100.0 + answers.KEEP_S)
    assert not answers._encoder.keeps
