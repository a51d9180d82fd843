"""The domain types stand alone: bwbpf/model.py imports nothing of bwbpf."""

from __future__ import annotations

import ast
import inspect

from bwbpf import config, limits, model


def test_the_domain_types_import_nothing_of_bwbpf() -> None:
    tree = ast.parse(inspect.getsource(model))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    assert not {m for m in imported if m and m.split(".")[0] == "bwbpf"}, imported


def test_a_slice_gives_the_quota_of_each_destination_class() -> None:
    cfg = config.parse(
        '[node]\ninterface = "lo"\n[[slice]]\nname = "a"\nid = 3\nmatch = { mark = 3 }\n'
        'normal = { limit = "5GB" }\nexempt = { limit = "7GB" }\n'
    )
    (s,) = cfg.slices
    assert limits.DCLASSES == ("normal", "exempt")
    assert s.quota(limits.DCLASS_NORMAL).limit_bytes == 5 * 10**9
    assert s.quota(limits.DCLASS_EXEMPT).limit_bytes == 7 * 10**9
    # The parser builds the model's types (and still names them for older imports).
    assert type(cfg) is model.Config and config.Slice is model.Slice
