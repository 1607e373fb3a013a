"""Process lifecycle and counters that tell the truth, with real `hepfast run` processes.

- children die with the supervisor; a second switch on a served address is refused;
- SIGTERM drains what the kernel holds; only the live plan file exists, owner-only;
- reload requests that arrive while one is in progress share its result;
- no collector: copies are send errors, not "forwarded"; hash skips a dead target;
- a packet a rewrite makes too big is dropped as too_big and does not fail a target over;
- a target a reload removed keeps its counts in the totals.
"""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from hepfast.tools.sink import Sink
from hepfast.wire import codec
from tests.switchhelp import corpus_messages, ROOT, SwitchProcess, check_accounting, free_udp_port


def sip_corpus(n: int | None = None) -> list[bytes]:
    return corpus_messages("kamailio", sip_only=True, limit=n)


def cfg(targets: list[int], *, mode: str = "hash", workers: int = 1, listen: str = "127.0.0.1:0",
        extra_dest: str = "", rules: str = "", switch: str = "") -> str:
    tl = ", ".join(f'"127.0.0.1:{p}"' for p in targets)
    return f"""
        [switch]
        workers = {workers}
        {switch}
        [admin]
        listen = "127.0.0.1:0"
        [[listeners]]
        name = "agents"
        listen = "{listen}"
        [destinations.d]
        targets = [{tl}]
        mode = "{mode}"
        {extra_dest}
        {rules or '[[rules]]' + chr(10) + 'name = "all"' + chr(10) + 'forward = ["d"]'}
        """


def admin(sw: SwitchProcess) -> str:
    for line in sw.stderr().splitlines():
        if line.startswith("admin http://"):
            return line.split()[1].rsplit("/", 1)[0]
    raise AssertionError(sw.stderr())


def status(sw: SwitchProcess) -> dict:
    with urllib.request.urlopen(admin(sw) + "/status", timeout=10) as r:
        return json.loads(r.read())


def wait_until(pred, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def sink():
    s = Sink("127.0.0.1:0").start(timeout=60)
    yield s
    s.close()


def test_children_exit_when_the_supervisor_dies(tmp_path, sink):
    sw = SwitchProcess(tmp_path, cfg([sink.port], workers=2, extra_dest="""
        [destinations.rec]
        transport = "file"
        path = "%s"
        """ % (tmp_path / "rec")), workers=2)
    try:
        st = status(sw)
        pids = [w["pid"] for w in st["workers"]]
        pids += [d["egress"]["pid"] for d in st["destinations"] if d.get("egress")]
        assert len(pids) == 3 and all(alive(p) for p in pids)
        rundirs = glob.glob(f"/dev/shm/hepfast-{sw.proc.pid}-*")
        os.kill(sw.proc.pid, signal.SIGKILL)
        sw.proc.wait(10)
        wait_until(lambda: not any(alive(p) for p in pids), 10, "the children to exit")
    finally:
        sw.kill()
    # The next switch removes what the killed one left behind.
    sw2 = SwitchProcess(tmp_path, cfg([sink.port]), workers=1)
    try:
        assert rundirs and not any(os.path.exists(d) for d in rundirs)
    finally:
        sw2.stop()


def test_a_second_switch_on_a_served_address_is_refused(tmp_path, sink):
    port = free_udp_port()
    first = SwitchProcess(tmp_path, cfg([sink.port], listen=f"127.0.0.1:{port}"), workers=1)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "hepfast", "run", "-c", str(first.cfg), "--no-admin",
             "--duration", "1"], capture_output=True, text=True, timeout=60, cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert second.returncode != 0
        assert "already served by another process" in second.stderr, second.stderr
        assert "--allow-shared-port" in second.stderr
        shared = subprocess.run(
            [sys.executable, "-m", "hepfast", "run", "-c", str(first.cfg), "--no-admin",
             "--duration", "0.5", "--allow-shared-port", "-q"], capture_output=True, text=True,
            timeout=60, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert shared.returncode == 0, shared.stderr
        first.stop()
    finally:
        first.kill()


def test_sigterm_forwards_what_the_kernel_holds(tmp_path, sink):
    """Datagrams queued in the socket when the stop comes are forwarded, not dropped."""
    pkts = sip_corpus(500)
    sw = SwitchProcess(tmp_path, cfg([sink.port]), workers=1)
    try:
        wpid = status(sw)["workers"][0]["pid"]
        os.kill(wpid, signal.SIGSTOP)
        try:
            sw.send(pkts)                       # all wait in the worker's socket
            sw.proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)                     # the supervisor has asked the worker to stop
        finally:
            os.kill(wpid, signal.SIGCONT)
        out, _ = sw.proc.communicate(timeout=30)
        assert sw.proc.returncode == 0, sw.stderr()
        summary = json.loads(out.strip().splitlines()[-1])
    finally:
        sw.kill()
    assert summary["datagrams"] == len(pkts) and summary["unread_at_stop"] == 0
    assert sink.wait_for(len(pkts), timeout=30)
    check_accounting(summary)


def test_only_the_live_plan_exists_readable_by_the_owner(tmp_path, sink):
    sw = SwitchProcess(tmp_path, cfg([sink.port], workers=2), workers=2)
    try:
        (rundir,) = glob.glob(f"/dev/shm/hepfast-{sw.proc.pid}-*")
        for _ in range(20):
            code = urllib.request.urlopen(urllib.request.Request(
                admin(sw) + "/reload", method="POST", data=b""), timeout=30).status
            assert code == 200
        plans = sorted(os.listdir(rundir))
        assert [p for p in plans if p.startswith("plan-")] == ["plan-21.bin"]
        assert os.stat(rundir).st_mode & 0o777 == 0o700
        for name in plans:
            assert os.stat(os.path.join(rundir, name)).st_mode & 0o077 == 0, name
        summary = sw.stop()
    finally:
        sw.kill()
    assert summary["reloads"] == {"ok": 20, "error": 0}
    assert not os.path.exists(rundir)


def test_reload_requests_in_progress_share_its_result(tmp_path, sink):
    sw = SwitchProcess(tmp_path, cfg([sink.port]), workers=1)
    try:
        base = admin(sw)
        wpid = status(sw)["workers"][0]["pid"]
        answers: list[int] = []

        def post():
            req = urllib.request.Request(base + "/reload", method="POST", data=b"")
            with urllib.request.urlopen(req, timeout=60) as r:
                answers.append(r.status)

        os.kill(wpid, signal.SIGSTOP)           # the first reload waits for this worker
        try:
            threads = [threading.Thread(target=post) for _ in range(5)]
            for t in threads:
                t.start()
            # All five are waiting for a result (the first one's reload is in progress).
            wait_until(lambda: status(sw)["reloads"]["waiting"] == 5, 30, "five waiting requests")
            assert status(sw)["reloads"]["in_progress"]
        finally:
            os.kill(wpid, signal.SIGCONT)
        for t in threads:
            t.join(60)
        summary = sw.stop()
    finally:
        sw.kill()
    assert answers == [200] * 5
    assert summary["reloads"]["error"] == 0
    assert 1 <= summary["reloads"]["ok"] <= 2             # five requests, at most two reloads


def test_no_collector_counts_send_errors_not_forwarded(tmp_path):
    dead = free_udp_port()
    pkts = sip_corpus()
    sw = SwitchProcess(tmp_path, cfg([dead]), workers=1)
    t0 = time.monotonic()
    try:
        sw.send(pkts * 2)
        summary = sw.stop()
    finally:
        sw.kill()
    elapsed = time.monotonic() - t0
    fwd = summary["forwarded"][f"d/127.0.0.1:{dead}"]
    err = summary["dropped_by_destination"]["d"]["send_error"]
    assert fwd + err == 2 * len(pkts)
    # What the kernel took before each ICMP error came back: a batch per re-probe (1 s).
    assert fwd <= 64 * (2 + int(elapsed)), summary
    check_accounting(summary)


def test_hash_skips_a_dead_target(tmp_path, sink):
    dead = free_udp_port()
    pkts = sip_corpus()
    sw = SwitchProcess(tmp_path, cfg([sink.port, dead]), workers=1)
    t0 = time.monotonic()
    try:
        sw.send(pkts)
        sink.wait_quiet(0.3, timeout=30)
        summary = sw.stop()
    finally:
        sw.kill()
    elapsed = time.monotonic() - t0
    err = summary["dropped_by_destination"].get("d", {}).get("send_error", 0)
    assert sink.received + err + summary["forwarded"][f"d/127.0.0.1:{dead}"] == len(pkts)
    # Calls of the dead target moved to the live one; lost: the copies in flight at each probe.
    assert err + summary["forwarded"][f"d/127.0.0.1:{dead}"] <= 64 * (2 + int(elapsed))
    assert sink.received >= len(pkts) - 64 * (2 + int(elapsed))
    check_accounting(summary)


def _marked_large(pkt: bytes) -> bytes:
    """capture id 777 and a 7000-byte payload: fine as it is, too big once the rule below adds
    its 59 KB of chunks."""
    return codec.rewrite(pkt, {"capture_id": 777, "payload": b"x" * 7000})


def test_too_big_is_dropped_and_does_not_fail_over(tmp_path):
    primary = Sink("127.0.0.1:0").start(timeout=60)
    secondary = Sink("127.0.0.1:0").start(timeout=60)
    pkts = sip_corpus(200)
    big = [_marked_large(p) for p in pkts[:20]]
    rules = f"""
        [[rules]]
        name = "grow"
        match.capture_id = 777
        set.node_name = "{'n' * 58000}"
        set.correlation_id = "{'c' * 1000}"
        forward = ["d"]
        [[rules]]
        name = "rest"
        forward = ["d"]
        """
    sw = SwitchProcess(tmp_path, cfg([primary.port, secondary.port], mode="failover",
                                     rules=rules), workers=1)
    try:
        mixed = [x for pair in zip(big, pkts[:20], strict=True) for x in pair] + pkts[20:]
        sw.send(mixed)
        assert primary.wait_for(len(pkts), timeout=30)
        summary = sw.stop()
    finally:
        sw.kill()
        primary.close()
        secondary.close()
    assert summary["dropped_by_destination"]["d"] == {"too_big": len(big)}
    assert secondary.received == 0
    assert sorted(primary.packets) == sorted(pkts)        # every normal one, none moved
    check_accounting(summary)


def test_a_removed_target_keeps_its_counts(tmp_path):
    a = Sink("127.0.0.1:0").start(timeout=60)
    b = Sink("127.0.0.1:0").start(timeout=60)
    pkts = sip_corpus(100)
    sw = SwitchProcess(tmp_path, cfg([a.port]), workers=1)
    try:
        sw.send(pkts)
        assert a.wait_for(len(pkts), timeout=30)
        sw.cfg.write_text(sw.cfg.read_text().replace(str(a.port), str(b.port)))
        req = urllib.request.Request(admin(sw) + "/reload", method="POST", data=b"")
        assert urllib.request.urlopen(req, timeout=30).status == 200
        sw.send(pkts)
        assert b.wait_for(len(pkts), timeout=30)
        with urllib.request.urlopen(admin(sw) + "/metrics", timeout=10) as r:
            metrics = r.read().decode()
        summary = sw.stop()
    finally:
        sw.kill()
        a.close()
        b.close()
    assert summary["forwarded"][f"d/127.0.0.1:{a.port}"] == len(pkts)
    assert summary["forwarded"][f"d/127.0.0.1:{b.port}"] == len(pkts)
    assert summary["forwarded_total"] == 2 * len(pkts)
    assert f'hepfast_packets_forwarded_total{{destination="d",target="127.0.0.1:{a.port}"}} ' \
        f'{len(pkts)}.0' in metrics
    check_accounting(summary)


def test_target_down_and_back_are_logged_with_the_error(tmp_path):
    port = free_udp_port()
    pkts = sip_corpus(100)
    sw = SwitchProcess(tmp_path, cfg([port]), workers=1)
    try:
        sw.send(pkts)
        wait_until(lambda: f"target d/127.0.0.1:{port} is down: Connection refused"
                   in sw.stderr(), 15, "the down event")
        back = Sink(("127.0.0.1", port)).start(timeout=60)
        try:
            # Past the 1 s hold-down the next copies probe the target again and get through.
            def probe_until_back() -> bool:
                sw.send(pkts[:10])
                return f"target d/127.0.0.1:{port} is back" in sw.stderr()
            wait_until(probe_until_back, 20, "the back event")
            assert back.received > 0
        finally:
            back.close()
        summary = sw.stop()
    finally:
        sw.kill()
    check_accounting(summary)


def test_periodic_counters_line_when_not_on_a_terminal(tmp_path, sink):
    sw = SwitchProcess(tmp_path, cfg([sink.port]), workers=1, extra=["--summary-every", "0.5"])
    try:
        sw.send(sip_corpus(30))
        assert sink.wait_for(30, timeout=30)
        wait_until(lambda: "received 30 forwarded 30" in sw.stderr(), 15, "a counters line")
        sw.stop()
    finally:
        sw.kill()


@pytest.mark.parametrize("change,field", [("workers", "switch.workers"),
                                          ("admin", "admin.listen")])
def test_reload_that_needs_a_restart_is_refused_with_the_reason(tmp_path, sink, change, field):
    sw = SwitchProcess(tmp_path, cfg([sink.port]), workers=None)   # the config decides
    try:
        text = sw.cfg.read_text()
        if change == "workers":
            text = text.replace("workers = 1", "workers = 2")
        else:
            text = text.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{free_udp_port()}"',
                                1)
        sw.cfg.write_text(text)
        req = urllib.request.Request(admin(sw) + "/reload", method="POST", data=b"")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        body = err.value.read().decode()
        assert field in body and "restart" in body, body
        summary = sw.stop()
    finally:
        sw.kill()
    assert summary["reloads"] == {"ok": 0, "error": 1}
