"""The TOML configurations the benchmarks load: slices matched by mark, exempt prefixes."""

from __future__ import annotations

from collections.abc import Sequence

from bwbpf.config import Network

SLICES = 10_000
# The quota every slice of daemon_config gets unless told otherwise: far from its limit, so
# that no ceiling moves while the benchmark runs.
ROOMY_QUOTA = 'normal = { limit = "10GB", max_rate = "100mbit" }'


def toml_config(bpffs: str, exempt: Sequence[Network], slices: Sequence[str]) -> str:
    prefixes = ",\n".join(f'  "{net}"' for net in exempt)
    return (
        f'[node]\ninterface = "lo"\nbpffs = "{bpffs}"\n'
        f"[exempt]\nprefixes = [\n{prefixes}\n]\n" + "".join(slices)
    )


def slice_toml(slice_id: int, match: str) -> str:
    return f'[[slice]]\nname = "s{slice_id}"\nid = {slice_id}\nmatch = {{ {match} }}\n'


def slice_name(slice_id: int) -> str:
    """The name slice_toml gives a slice."""
    return f"s{slice_id}"


def daemon_config(
    ifname: str,
    bpffs: str,
    tmp: str,
    slices: int,
    *,
    tick: str | None = None,
    quota: str = ROOMY_QUOTA,
    quotas: dict[int, str] | None = None,
    listen: str = "",
    history: str = "",
) -> str:
    """Slices 1..``slices`` matched by mark = id, each with ``quota`` (``quotas`` overrides
    it for some ids); state, status and the metrics textfile under ``tmp``, the metrics
    (and node page) server on ``listen`` (none by default). ``tick`` as the config spells
    it; None keeps the default. ``history``: the lines of a ``[history]`` section (none: its
    defaults)."""
    head = (
        f'[node]\ninterface = "{ifname}"\nbpffs = "{bpffs}"\nstate_dir = "{tmp}/state"\n'
        'line_rate = "10gbit"\nnode_cap = "10gbit"\n'
        + (f'tick = "{tick}"\n' if tick else "")
        + f'[metrics]\nlisten = "{listen}"\ntextfile = "{tmp}/bwbpf.prom"\n'
        '[quota]\nperiod = "1d"\n' + (f"[history]\n{history}\n" if history else "")
    )
    quotas = quotas or {}
    return head + "".join(
        slice_toml(i, f"mark = {i}") + quotas.get(i, quota) + "\n" for i in range(1, slices + 1)
    )
