"""Another bwbpf version for the upgrade tests: this tree's code built for another number of
counter slots (``limits.MAX_SLICE_ID``), so that its C gets other -D sizes
(``datapath.cflags``) and its pinned counters map another layout, which it also reads.

    python -m tests.integration.oldbwbpf SLOTS [bwbpf arguments...]

runs the bwbpf command line (``up``, ``run``, ``stat``...) with MAX_SLICE_ID = SLOTS - 1,
set before any module that sizes something from it is imported; its loader process is this
module again, with the same SLOTS.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    slots, args = int(argv[0]), argv[1:]
    from bwbpf import limits

    limits.MAX_SLICE_ID = limits.MAX_SLICES = slots - 1
    from bwbpf import loader

    if args == ["loader"]:
        return loader.main()
    # The loader runs with the caller's environment, which puts this tree first on the
    # module path (loader._environment): tests.integration is found from there.
    loader.command = lambda: [sys.executable, "-m", __spec__.name, str(slots), "loader"]
    from bwbpf.cli import main as cli

    return int(cli.main(args=args, prog_name="bwbpf", standalone_mode=True) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
