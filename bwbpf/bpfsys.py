"""The few bpf(2) commands bwbpf issues itself, through ctypes.

bcc compiles and loads, in a short-lived loader process (bwbpf/loader.py); everything else
goes through these: opening pinned programs and maps without compiling anything (the
daemon and ``stat`` never load bcc or LLVM), element updates and deletes in the match
maps, batch reads of per-CPU arrays (one syscall for all slices instead of one per key)
and ``BPF_PROG_TEST_RUN``. Layouts follow
``union bpf_attr`` in include/uapi/linux/bpf.h.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from dataclasses import dataclass

from bwbpf.errors import Error

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24

BPF_MAP_TYPE_PERCPU_ARRAY = 6

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _ObjGet(ctypes.Structure):
    _fields_ = [
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
        ("path_fd", ctypes.c_int32),
    ]


class _Elem(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _Batch(ctypes.Structure):
    _fields_ = [
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _GetById(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint32),
        ("next_id", ctypes.c_uint32),
        ("open_flags", ctypes.c_uint32),
    ]


class _TestRun(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class _InfoByFd(ctypes.Structure):
    _fields_ = [
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    ]


class MapInfo(ctypes.Structure):
    """The head of struct bpf_map_info: all bwbpf needs to check a pinned map's shape."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(type, key size, value size, max entries): what a pinned map must agree on."""
        return (self.type, self.key_size, self.value_size, self.max_entries)


class ProgInfo(ctypes.Structure):
    """The head of struct bpf_prog_info: its type, id and tag, and the ids of the maps it
    uses (the kernel fills ``map_ids`` up to ``nr_map_ids`` and sets that to the count)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
    ]


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise Error(f"bpf(2) syscall number unknown for {platform.machine()}")
    ret = _libc.syscall(nr, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def possible_cpus() -> int:
    """Per-CPU map values have one slot per *possible* CPU, not per online one."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


def obj_get(path: str) -> int:
    """Open a pinned map or program; the caller closes the fd."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    attr = _ObjGet(pathname=ctypes.addressof(name))
    return _bpf(BPF_OBJ_GET, attr)


def obj_pin(fd: int, path: str) -> None:
    """Pin a map or program at path in bpffs (the path must not exist)."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    attr = _ObjGet(pathname=ctypes.addressof(name), bpf_fd=fd)
    _bpf(BPF_OBJ_PIN, attr)


def prog_get_fd_by_id(prog_id: int) -> int:
    """Open a loaded program by its kernel id (an attached filter's TCA_BPF_ID); the
    caller closes the fd."""
    return _bpf(BPF_PROG_GET_FD_BY_ID, _GetById(id=prog_id))


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    attr = _InfoByFd(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return info


def prog_info(fd: int) -> ProgInfo:
    info = ProgInfo()
    attr = _InfoByFd(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return info


def prog_map_ids(fd: int) -> list[int]:
    """The ids of the maps a loaded program uses (its verified references)."""
    count = prog_info(fd).nr_map_ids
    ids = (ctypes.c_uint32 * max(count, 1))()
    info = ProgInfo(nr_map_ids=count, map_ids=ctypes.addressof(ids))
    attr = _InfoByFd(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return list(ids[: min(count, info.nr_map_ids)])


def map_lookup(fd: int, key: ctypes._CData, value: ctypes._CData) -> bool:
    """Fill value from key; False when the key is absent."""
    attr = _Elem(map_fd=fd, key=ctypes.addressof(key), value=ctypes.addressof(value))
    return _bpf_unless_absent(BPF_MAP_LOOKUP_ELEM, attr)


def map_update(fd: int, key: ctypes._CData, value: ctypes._CData) -> None:
    attr = _Elem(map_fd=fd, key=ctypes.addressof(key), value=ctypes.addressof(value))
    _bpf(BPF_MAP_UPDATE_ELEM, attr)


def map_delete(fd: int, key: ctypes._CData) -> bool:
    """Delete key; False when it was absent."""
    attr = _Elem(map_fd=fd, key=ctypes.addressof(key))
    return _bpf_unless_absent(BPF_MAP_DELETE_ELEM, attr)


def _bpf_unless_absent(cmd: int, attr: ctypes.Structure) -> bool:
    """Run a map command on one key; False when the key is absent (ENOENT)."""
    try:
        _bpf(cmd, attr)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def percpu_array_read(fd: int, count: int, value_size: int, ncpus: int) -> memoryview:
    """The first ``count`` slots of a per-CPU array in one BPF_MAP_LOOKUP_BATCH call.

    Returns the raw values, slot-major then CPU, each value padded to 8 bytes as the kernel
    lays them out (bpf_percpu_array_copy).
    """
    stride = (value_size + 7) // 8 * 8
    keys = (ctypes.c_uint32 * count)()
    values = ctypes.create_string_buffer(count * ncpus * stride)
    out_batch = ctypes.c_uint32()
    attr = _Batch(
        in_batch=0,
        out_batch=ctypes.addressof(out_batch),
        keys=ctypes.addressof(keys),
        values=ctypes.addressof(values),
        count=count,
        map_fd=fd,
    )
    try:
        _bpf(BPF_MAP_LOOKUP_BATCH, attr)
    except OSError as exc:
        # ENOENT: the batch reached the end of the map, and what was read is valid.
        if exc.errno != errno.ENOENT:
            raise
    if attr.count != count:
        raise Error(f"batch read returned {attr.count} of {count} slots")
    return memoryview(values).cast("B")[: count * ncpus * stride]


CTX_OUT_SIZE = 512


@dataclass(frozen=True)
class TestRun:
    retval: int
    duration_ns: int
    ctx_out: bytes


def prog_test_run(prog_fd: int, packet: bytes, ctx: bytes = b"", repeat: int = 1) -> TestRun:
    """Run a tc program on a packet in the kernel (BPF_PROG_TEST_RUN); ``duration_ns`` is
    the kernel's average per run."""
    data_in = ctypes.create_string_buffer(packet, len(packet))
    data_out = ctypes.create_string_buffer(len(packet) + 256)
    ctx_in = ctypes.create_string_buffer(ctx, len(ctx)) if ctx else None
    # The kernel copies its whole struct __sk_buff out, and fails with ENOSPC (after
    # running) when ctx_out is smaller than that: give it room to spare.
    ctx_out = ctypes.create_string_buffer(CTX_OUT_SIZE) if ctx else None
    attr = _TestRun(
        prog_fd=prog_fd,
        data_size_in=len(packet),
        data_size_out=len(data_out),
        data_in=ctypes.addressof(data_in),
        data_out=ctypes.addressof(data_out),
        repeat=repeat,
        ctx_size_in=len(ctx),
        ctx_size_out=CTX_OUT_SIZE if ctx else 0,
        ctx_in=ctypes.addressof(ctx_in) if ctx_in is not None else 0,
        ctx_out=ctypes.addressof(ctx_out) if ctx_out is not None else 0,
    )
    _bpf(BPF_PROG_TEST_RUN, attr)
    return TestRun(attr.retval, attr.duration, bytes(ctx_out.raw) if ctx_out is not None else b"")
