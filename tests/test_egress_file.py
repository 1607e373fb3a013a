"""The file destination (hepfast.egress.file) and the egress process loop (hepfast.egress.process).

Records reach the egress the way they do in production: pushed into a real ring, read as a
Batch, written from the ring with writev. Clocks are injected (no sleeping), and the disk-full
case runs in a child process under a file-size limit.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hepfast.egress import EGRESS_KINDS, Egress
from hepfast.egress._ring import Ring
from hepfast.egress.file import FileEgress
from hepfast.egress.process import run_egress
from hepfast.egress.ring import RING_MIN_BYTES, create_ring


def read_hepraw(path):
    try:
        from hepfast.tools.capture import read_hepraw as impl
    except ImportError:
        from hepfast.capture import read_hepraw as impl
    return list(impl(path))


def packet(i: int, n: int = 500) -> bytes:
    return (f"pkt{i:06d}".encode() * (n // 9 + 1))[:n]


class Clock:
    """Wall and monotonic time that only move when told."""

    def __init__(self):
        self.wall = 1_800_000_000.0
        self.mono = 1000.0

    def time(self):
        return self.wall

    def monotonic(self):
        return self.mono

    def advance(self, s):
        self.wall += s
        self.mono += s


@pytest.fixture
def rings():
    made = []

    def make(size=RING_MIN_BYTES):
        fd, m = create_ring(size, "egress-test")
        r = Ring(m)
        made.append((fd, m, r))
        return r
    yield make
    for fd, m, r in made:
        r.close()
        m.close()
        os.close(fd)


def send(ring, egress, packets, first_meta=0):
    """Push `packets`, publish, and hand them to the egress batch by batch; returns accepted."""
    for i, p in enumerate(packets):
        assert ring.push(p, first_meta + i) == 0
    ring.publish()
    accepted = 0
    for _ in range(len(packets) + 1):
        b = ring.read(1024)
        if b.count == 0:
            ring.release(b)
            break
        accepted += egress.send_batch(b)
        ring.release(b)
    assert ring.used == 0
    return accepted


def records_of(files):
    out = []
    for f in files:
        out.extend(read_hepraw(f))
    return out


def test_file_is_the_registered_kind():
    assert EGRESS_KINDS["file"] is FileEgress
    assert issubclass(FileEgress, Egress) and FileEgress.kind == "file"


def test_rotation_by_size_keeps_at_most_keep_whole_files(rings, tmp_path):
    ring = rings()
    out = tmp_path / "out"
    eg = FileEgress("cap", out, rotate_bytes=10_000, rotate_seconds=0, keep=3)
    eg.open()
    assert oct(out.stat().st_mode & 0o777) == oct(0o750)
    packets = [packet(i) for i in range(400)]
    accepted = 0
    for start in range(0, 400, 10):                 # batches of 10 records, 5040 bytes each
        accepted += send(ring, eg, packets[start:start + 10], start)
    assert accepted == 400
    assert eg.current_file is None                  # 400 * 504 bytes: the last batch rotated
    eg.close()
    files = eg.finished_files()
    assert len(files) == 3
    assert sorted(os.listdir(out)) == [os.path.basename(f) for f in files]   # names sort in time
    assert not list(out.glob("*.part"))
    # each file: two batches (10,080 bytes >= 10,000); the survivors are the last 60 records
    for f in files:
        assert os.path.getsize(f) == 20 * 504
    assert records_of(files) == packets[-60:]
    m = eg.metrics()
    assert m["files_written_total"] == 20 and m["files_deleted_total"] == 17
    assert m["bytes_written_total"] == 400 * 504 and m["records_written_total"] == 400
    assert m["records_failed_total"] == 0 and m["up"] == 1.0


def test_rotation_by_time_with_an_injected_clock(rings, tmp_path):
    ring, clock = rings(), Clock()
    eg = FileEgress("t", tmp_path, rotate_bytes=0, rotate_seconds=60, keep=None,
                    clock=clock.time, monotonic=clock.monotonic)
    eg.open()
    send(ring, eg, [packet(0)], 0)
    first = eg.current_file
    assert first is not None and first.endswith(".hepraw.part")
    clock.advance(30)
    send(ring, eg, [packet(1)], 1)
    assert eg.current_file == first                 # 30 s old: same file
    eg.flush()
    assert eg.current_file == first
    clock.advance(31)
    eg.flush()                                      # idle: the 61 s old file is finished
    assert eg.current_file is None
    assert eg.finished_files() == [first[:-len(".part")]]
    send(ring, eg, [packet(2)], 2)
    second = eg.current_file
    assert second is not None and second != first
    clock.advance(3600)
    send(ring, eg, [packet(3)], 3)                  # the batch finds the file too old first
    third = eg.current_file
    assert third not in (None, second)
    eg.close()
    files = eg.finished_files()
    assert [os.path.basename(f) for f in files] == sorted(os.listdir(tmp_path))
    assert [os.path.basename(f) for f in files] == [
        "t-20270115T080000Z-000000.hepraw",         # wall clock of each file's opening
        "t-20270115T080101Z-000001.hepraw",
        "t-20270115T090101Z-000002.hepraw",
    ]
    assert [read_hepraw(f) for f in files] == [[packet(0), packet(1)], [packet(2)], [packet(3)]]


def test_part_file_renamed_on_close_and_seq_continues_after_restart(rings, tmp_path):
    ring, clock = rings(), Clock()
    eg = FileEgress("c", tmp_path, rotate_bytes=0, rotate_seconds=0, keep=5,
                    clock=clock.time, monotonic=clock.monotonic)
    eg.open()
    send(ring, eg, [packet(i) for i in range(5)])
    part = Path(eg.current_file)
    assert part.exists() and part.name.endswith(".hepraw.part")
    assert eg.finished_files() == []
    assert eg.metrics()["current_file_bytes"] == 5 * 504
    eg.close()
    assert not part.exists()
    final = part.with_name(part.name[:-len(".part")])
    assert read_hepraw(final) == [packet(i) for i in range(5)]
    # a restart in the same second does not reuse the name
    eg2 = FileEgress("c", tmp_path, rotate_bytes=0, rotate_seconds=0, keep=5,
                     clock=clock.time, monotonic=clock.monotonic)
    eg2.open()
    send(ring, eg2, [packet(9)])
    eg2.close()
    assert len(eg2.finished_files()) == 2
    assert read_hepraw(eg2.finished_files()[1]) == [packet(9)]


def test_part_file_left_by_a_crash_is_cut_to_whole_records_and_finished(tmp_path):
    whole = b"".join(len(p).to_bytes(4, "big") + p for p in (packet(1), packet(2)))
    (tmp_path / "x-20270101T000000Z-000007.hepraw.part").write_bytes(whole + b"\0\0\1\0abc")
    (tmp_path / "x-20270101T000001Z-000008.hepraw.part").write_bytes(b"\0\0")
    (tmp_path / "other.txt").write_text("not ours")
    eg = FileEgress("x", tmp_path, rotate_bytes=0, rotate_seconds=0, keep=10)
    eg.open()
    assert eg.metrics()["files_recovered_total"] == 1
    files = eg.finished_files()
    assert [os.path.basename(f) for f in files] == ["x-20270101T000000Z-000007.hepraw"]
    assert Path(files[0]).read_bytes() == whole
    assert sorted(os.listdir(tmp_path)) == ["other.txt", "x-20270101T000000Z-000007.hepraw"]
    eg.close()


def test_unwritable_directory_goes_down_and_recovers(rings, tmp_path):
    """The target path sits under a regular file (fails for root too): health down with the
    reason, records counted as failed, no exception; once the obstacle is gone the next retry
    (driven by the idle flush, not by traffic) brings it back."""
    ring, clock = rings(), Clock()
    blocker = tmp_path / "mnt"
    blocker.write_text("a file where a directory should be")
    eg = FileEgress("d", blocker / "hep", rotate_bytes=0, rotate_seconds=0, keep=3,
                    retry_s=1.0, clock=clock.time, monotonic=clock.monotonic)
    eg.open()
    up, detail = eg.health()
    assert not up
    assert str(blocker) in detail and "Not a directory" in detail
    assert send(ring, eg, [packet(i) for i in range(7)]) == 0
    assert eg.metrics()["records_failed_total"] == 7 and eg.metrics()["up"] == 0.0
    blocker.unlink()
    eg.flush()                                      # before retry_s: no attempt yet
    assert not eg.health()[0]
    assert send(ring, eg, [packet(7)]) == 0
    clock.advance(1.0)
    eg.flush()
    up, detail = eg.health()
    assert up, detail
    assert send(ring, eg, [packet(i) for i in range(8, 12)]) == 4
    eg.close()
    assert oct((blocker / "hep").stat().st_mode & 0o777) == oct(0o750)
    assert records_of(eg.finished_files()) == [packet(i) for i in range(8, 12)]
    m = eg.metrics()
    assert m["records_failed_total"] == 8 and m["records_written_total"] == 4


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_goes_down(rings, tmp_path):
    ring = rings()
    out = tmp_path / "ro"
    out.mkdir(mode=0o500)
    eg = FileEgress("r", out, rotate_bytes=0, rotate_seconds=0, keep=3)
    eg.open()
    assert send(ring, eg, [packet(0)]) == 0
    up, detail = eg.health()
    assert not up and "Permission denied" in detail
    eg.close()


DISK_FULL = r"""
import json, os, resource, signal, sys
from hepfast.egress._ring import Ring
from hepfast.egress.file import FileEgress
from hepfast.egress.ring import create_ring

out = sys.argv[1]
now = [1000.0]
fd, m = create_ring(1 << 20, "diskfull")
ring = Ring(m)
eg = FileEgress("f", out, rotate_bytes=0, rotate_seconds=0, keep=None, retry_s=1.0,
                monotonic=lambda: now[0])
eg.open()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, hard))    # the "disk" holds 20,000 bytes

def batch(first, n):
    for i in range(first, first + n):
        assert ring.push((f"r{i:05d}".encode() * 100)[:500], i) == 0
    ring.publish()
    b = ring.read(1024)
    assert b.count == n
    k = eg.send_batch(b)
    ring.release(b)
    return list(range(first, first + k))

accepted = []
for first in range(0, 100, 10):
    accepted += batch(first, 10)
down = eg.health()
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
now[0] += 1.0
eg.flush()
accepted += batch(100, 10)
up = eg.health()
eg.close()
print(json.dumps({"accepted": accepted, "down": down, "up": up, "metrics": eg.metrics(),
                  "files": eg.finished_files()}))
"""


def test_disk_full_cuts_the_file_to_whole_records_and_recovers(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(sys.modules["hepfast"].__file__).resolve().parents[1])] + sys.path)
    run = subprocess.run([sys.executable, "-c", DISK_FULL, str(tmp_path / "out")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    r = json.loads(run.stdout)
    accepted = r["accepted"]
    # 20,000 bytes hold 39 whole 504-byte records; the 40th is cut off mid-record
    assert accepted == list(range(39)) + list(range(100, 110))
    assert r["down"][0] is False and "File too large" in r["down"][1]
    assert r["up"][0] is True
    assert r["metrics"]["records_failed_total"] == 110 - len(accepted)
    assert r["metrics"]["records_written_total"] == len(accepted)
    files = r["files"]
    assert len(files) == 2 and os.path.getsize(files[0]) == 39 * 504
    want = [(f"r{i:05d}".encode() * 100)[:500] for i in accepted]
    assert records_of(files) == want


class CountingEgress(Egress):
    """Accepts every `accept_every`-th record of each batch (all of them with 1)."""

    def __init__(self, accept_every=1, on_send=None):
        super().__init__("count")
        self.accept_every = accept_every
        self.on_send = on_send
        self.seen: list[tuple[int, bytes]] = []
        self.calls: list[str] = []

    def open(self):
        self.calls.append("open")

    def send_batch(self, batch):
        self.seen.extend((m, bytes(v)) for m, v in batch)
        if self.on_send:
            self.on_send()
        return (batch.count + self.accept_every - 1) // self.accept_every

    def flush(self):
        self.calls.append("flush")

    def health(self):
        return True, ""

    def close(self):
        self.calls.append("close")

    def metrics(self):
        return {}


def fill(ring, first, n):
    for i in range(first, first + n):
        assert ring.push(packet(i, 40 + i % 50), i) == 0
    ring.publish()


def test_run_egress_drains_two_rings_into_files_on_stop(rings, tmp_path):
    a, b = rings(1 << 18), rings(1 << 18)
    fill(a, 0, 600)
    fill(b, 10_000, 900)
    eg = FileEgress("two", tmp_path, rotate_bytes=16_000, rotate_seconds=0, keep=0)   # 0: all
    forwarded, errors = [], []
    totals = run_egress(eg, [a, b], on_forwarded=forwarded.append, on_error=errors.append,
                        should_stop=lambda: True)
    assert totals["forwarded"] == sum(forwarded) == 1500
    assert totals["errors"] == sum(errors) == 0 and totals["drained"] == 1500
    assert totals["left_bytes"] == 0 and a.used == 0 and b.used == 0
    assert a.consumed == 600 and b.consumed == 900
    assert eg.current_file is None and not list(tmp_path.glob("*.part"))
    got = records_of(eg.finished_files())
    assert len(got) == 1500
    from_a = [p for p in got if int(p[3:9]) < 10_000]
    from_b = [p for p in got if int(p[3:9]) >= 10_000]
    assert from_a == [packet(i, 40 + i % 50) for i in range(600)]          # each ring in order
    assert from_b == [packet(i, 40 + i % 50) for i in range(10_000, 10_900)]


def test_run_egress_counts_what_the_destination_refused(rings):
    a, b = rings(), rings()
    fill(a, 0, 10)
    fill(b, 100, 7)
    eg = CountingEgress(accept_every=2)
    forwarded, errors = [], []
    totals = run_egress(eg, [a, b], on_forwarded=forwarded.append, on_error=errors.append,
                        should_stop=lambda: True)
    assert (totals["forwarded"], totals["errors"]) == (5 + 4, 5 + 3)
    assert (sum(forwarded), sum(errors)) == (9, 8)
    assert sorted(m for m, _ in eg.seen) == list(range(10)) + list(range(100, 107))
    assert eg.calls[0] == "open" and eg.calls[-2:] == ["flush", "close"]


def test_run_egress_round_robin_idle_backoff_and_stop(rings):
    a, b = rings(), rings()
    eg = CountingEgress()
    sleeps = []
    state = {"n": 0}

    def should_stop():
        state["n"] += 1
        if state["n"] == 3:
            fill(a, 0, 3)                           # traffic after two idle passes
            fill(b, 50, 2)
        return state["n"] > 6

    totals = run_egress(eg, [a, b], should_stop=should_stop, sleep=sleeps.append,
                        idle_sleep_s=0.005, max_idle_sleep_s=0.010)
    assert totals["forwarded"] == 5 and totals["drained"] == 0
    assert [m for m, _ in eg.seen] == [0, 1, 2, 50, 51]     # one batch per ring per pass
    # idle doubles up to the cap, traffic resets it
    assert sleeps == [0.005, 0.01, 0.005, 0.01, 0.01]
    assert eg.calls.count("flush") == len(sleeps) + 1 and eg.calls[-1] == "close"


def test_run_egress_drain_is_bounded_by_its_deadline(rings):
    """A producer that never stops: the drain ends at the deadline and reports what is left."""
    ring = rings()
    fill(ring, 0, 1)
    now = [0.0]
    seq = [1]

    def refill():
        fill(ring, seq[0], 1)
        seq[0] += 1
        now[0] += 1.0

    eg = CountingEgress(on_send=refill)
    totals = run_egress(eg, [ring], should_stop=lambda: True, drain_deadline_s=5.0,
                        monotonic=lambda: now[0])
    assert totals["drained"] == 5 and totals["forwarded"] == 5    # passes at t=0..4
    assert totals["left_bytes"] == ring.used > 0
    assert eg.calls[-1] == "close"


def test_run_egress_releases_and_closes_when_the_destination_raises(rings):
    ring = rings()
    fill(ring, 0, 4)

    class Broken(CountingEgress):
        def send_batch(self, batch):
            raise RuntimeError("bug")

    eg = Broken()
    errors = []
    with pytest.raises(RuntimeError, match="bug"):
        run_egress(eg, [ring], on_error=errors.append, should_stop=lambda: False)
    assert errors == [4] and ring.used == 0 and ring.consumed == 4
    assert eg.calls[-1] == "close"
