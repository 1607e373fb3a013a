"""The run directory: the files a supervisor shares with its workers and egress processes.

One directory per `hepfast run`, mode 0700, on tmpfs (/dev/shm) when there is one, so the shared
mappings are memory, not disk:

- `ctl`: the control block, int64 words (CTL_*): the generation wanted, the supervisor's pid.
- `counters`: the counter block, one row of constants.STRIDE uint64 per worker, then one per
  egress slot; each row has one writer (hepfast.dataplane.counters.Counters).
- `plan-<G>.bin`: the plan of generation G (hepfast.plan.format), mode 0600; only the live one
  and, during a reload, the candidate exist.
- `ring-<D>-<W>`: the shared-memory ring worker W fills for the ring-fed destination with
  counter slot D (ext/egress/hepring.h), read by that destination's egress process.
- `w<W>.err`: why worker W refused a generation ("<G> <message>").
- `guard`: the switch-wide dedup, rate-limit and call tables every worker maps
  (hepfast.dataplane.guard, ext/dataplane/hepguard.h); created once, kept across reloads.

Imports only the standard library, numpy and hepfast.constants / hepfast.dataplane.counters.
"""
from __future__ import annotations

import mmap
import os
import shutil
import tempfile

import numpy as np

from hepfast.dataplane.counters import Counters

CTL_GENERATION = 0
CTL_SUPERVISOR = 1
CTL_EPOCH = 2            # +1 whenever CTL_GENERATION is set: workers echo it (H_SEEN)
CTL_WORDS = 512

RING_HEADER = 4096


def default_base() -> str | None:
    """/dev/shm when writable, else None (the system temp dir)."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def fs_type(path: str) -> str:
    """The filesystem type of the mount holding path ("tmpfs", "ext4", ...; "" unknown)."""
    best, kind = "", ""
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, kind = mnt, parts[2]
    except OSError:
        return ""
    return kind


def create(prefix: str = "hepfast-", base: str | None = None) -> str:
    """A fresh run directory under `base` (switch.run_dir), else under default_base()."""
    path = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=base or default_base())
    os.chmod(path, 0o700)
    return path


def remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def remove_stale(prefix: str = "hepfast-", base: str | None = None) -> list[str]:
    """Run directories left by a supervisor that was killed (its pid is gone), under `base`
    (default: /dev/shm)."""
    gone = []
    base = base or "/dev/shm"
    if not os.path.isdir(base):
        return gone
    for name in os.listdir(base):
        if not name.startswith(prefix):
            continue
        try:
            pid = int(name[len(prefix):].split("-", 1)[0])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        remove(os.path.join(base, name))
        gone.append(name)
    return gone


class Mapped:
    """A shared file mapping with a numpy view (`arr`)."""

    def __init__(self, path: str, dtype, create_bytes: int = 0):
        flags = os.O_RDWR | (os.O_CREAT if create_bytes else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create_bytes:
                os.ftruncate(fd, create_bytes)
            self.mm = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED)
        finally:
            os.close(fd)
        self.arr = np.frombuffer(self.mm, dtype=dtype)


def make_ctl(rundir: str) -> Mapped:
    return Mapped(os.path.join(rundir, "ctl"), np.int64, CTL_WORDS * 8)


def map_ctl(rundir: str) -> Mapped:
    return Mapped(os.path.join(rundir, "ctl"), np.int64)


def make_counters(rundir: str, rows: int) -> Counters:
    return Counters(rows, path=os.path.join(rundir, "counters"), create=True)


def map_counters(rundir: str) -> Counters:
    return Counters(0, path=os.path.join(rundir, "counters"), create=False)


def plan_path(rundir: str, generation: int) -> str:
    return os.path.join(rundir, f"plan-{generation}.bin")


def guard_path(rundir: str) -> str:
    return os.path.join(rundir, "guard")


def ring_path(rundir: str, dest_slot: int, worker: int) -> str:
    return os.path.join(rundir, f"ring-{dest_slot}-{worker}")


def create_ring(path: str, size: int) -> None:
    """A formatted ring file of `size` data bytes (rounded up to a power of two)."""
    from hepfast.egress._ring import format_ring

    size = 1 << max(16, (int(size) - 1).bit_length())
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, RING_HEADER + size)
        mm = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED)
    finally:
        os.close(fd)
    try:
        format_ring(mm, size)
    finally:
        mm.close()


def ring_size(path: str) -> int:
    return os.path.getsize(path) - RING_HEADER


def ring_used(path: str) -> tuple[int, int]:
    """(bytes in flight, data size) of a ring file, read from its header (head at offset 64,
    tail at 128, size at 8): the supervisor's view, whatever state the egress process is in."""
    fd = os.open(path, os.O_RDONLY)
    try:
        hdr = os.pread(fd, 136, 0)
    finally:
        os.close(fd)
    size, head, tail = (int.from_bytes(hdr[o:o + 8], "little") for o in (8, 64, 128))
    return max(0, head - tail), size


def map_ring(path: str):
    """(file object, writable shared mmap) of a ring file."""
    f = open(path, "r+b")
    return f, mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED)


def write_error(rundir: str, worker: int, generation: int, message: str) -> None:
    tmp = os.path.join(rundir, f"w{worker}.err.tmp")
    with open(tmp, "w") as f:
        f.write(f"{generation} {message}")
    os.replace(tmp, os.path.join(rundir, f"w{worker}.err"))


def read_error(rundir: str, worker: int, generation: int) -> str | None:
    try:
        with open(os.path.join(rundir, f"w{worker}.err")) as f:
            g, _, msg = f.read().partition(" ")
    except OSError:
        return None
    return msg if g == str(generation) else None
