"""bwbpf: per-slice egress accounting and byte quotas with eBPF and HTB."""

from bwbpf.errors import ConfigError, Error

__version__ = "0.1.0"
__all__ = ["ConfigError", "Error", "__version__"]
