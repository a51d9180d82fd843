"""HTB classes created and deleted off the daemon's loop, so that it ticks on while a reload
adds or removes thousands of slices.

Changing a class costs the kernel the same whatever the tree, but creating or deleting one
walks every class of the qdisc (the reverse binding of filters to classes, tc_bind_tclass):
on this machine creating 20,005 classes took 26-40 s and deleting them 27 s, all of it in
the kernel, where changing every one of them took 0.2 s. So the daemon changes classes in
its loop and leaves creations and deletions to a ``ClassWork``: a thread of its own, with a
netlink socket of its own, sending them in chunks. The kernel takes each request under its
lock on its own, so the tick's requests go in between.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from bwbpf.errors import one_line
from bwbpf.shaper import Shaper, log_removed
from bwbpf.tree import ClassSpec

# Requests per chunk: a cancel waits for one chunk at most (~0.5 s at 20,000 classes).
CHUNK = 256


class ClassWork:
    """Create ``create`` (parents before children), then delete ``delete`` ((handle,
    parent), leaves before parents) on one interface: in a thread after ``start()``, or in
    the caller with ``run()``. ``wake`` is called from the thread when it ends."""

    def __init__(
        self,
        ifname: str,
        create: Sequence[ClassSpec] = (),
        delete: Sequence[tuple[int, int]] = (),
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.ifname = ifname
        self.create = list(create)
        self.delete = list(delete)
        # The first failure, as one line; None when every request went through.
        self.error: str | None = None
        self._wake = wake
        self._cancel = threading.Event()
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.run, name=f"bwbpf classes {self.ifname}", daemon=True
        )
        self._thread.start()

    def run(self) -> None:
        try:
            if self.create or self.delete:
                with Shaper(self.ifname) as shaper:
                    for i in range(0, len(self.create), CHUNK):
                        if self.cancelled:
                            return
                        shaper.put(self.create[i : i + CHUNK])
                    deleted = 0
                    try:
                        for i in range(0, len(self.delete), CHUNK):
                            if self.cancelled:
                                return
                            shaper.delete(self.delete[i : i + CHUNK])
                            deleted = i + CHUNK
                    finally:
                        log_removed(self.ifname, self.delete[:deleted])
        except Exception as exc:  # reported by the daemon's loop, which reads self.error
            self.error = one_line(exc)
        finally:
            self._finished.set()
            if self._wake is not None:
                self._wake()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop after the chunk in flight; what was sent stays done."""
        self._cancel.set()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
