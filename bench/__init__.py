"""bwbpf's performance benchmarks; ``bench/run.py`` runs them (``make bench``).

Each module holds one benchmark (datapath, counters, netlink, tick, daemon) or what several
share (results, configs, topology, testrun, procfs). Every figure is a ratio to a baseline
measured in the same run; nothing is asserted.
"""
