"""sd_notify without libsystemd: the protocol against a fake NOTIFY_SOCKET, and a real
`hepfast run` that says READY=1 once its workers are up and STOPPING=1 when it stops."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from hepfast.observe import sdnotify

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def notify_socket(tmp_path):
    """A unix datagram socket standing in for systemd's; yields (address for NOTIFY_SOCKET,
    socket). The path is kept short: sun_path holds 107 bytes."""
    path = Path("/tmp") / f"hf-notify-{uuid.uuid4().hex[:12]}.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    try:
        yield str(path), s
    finally:
        s.close()
        path.unlink(missing_ok=True)


def recv_until(s: socket.socket, key: str, timeout: float) -> list[dict]:
    """Messages (as dicts of KEY=VALUE) up to and including the first that sets `key`."""
    end = time.monotonic() + timeout
    got = []
    while time.monotonic() < end:
        s.settimeout(max(0.01, end - time.monotonic()))
        try:
            data = s.recv(4096)
        except socket.timeout:
            break
        msg = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        got.append(msg)
        if key in msg:
            return got
    raise AssertionError(f"no {key} within {timeout} s; got {got}")


def test_notify_path_socket(notify_socket):
    addr, s = notify_socket
    assert sdnotify.notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": addr}) is True
    s.settimeout(5)
    assert s.recv(4096) == b"READY=1\nSTATUS=up"


def test_notify_abstract_socket():
    name = f"hepfast-test-{uuid.uuid4().hex}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(b"\0" + name.encode())
    try:
        assert sdnotify.notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name}) is True
        s.settimeout(5)
        assert s.recv(4096) == b"STOPPING=1"
    finally:
        s.close()


def test_notify_without_systemd_is_a_no_op(tmp_path):
    assert sdnotify.notify("READY=1", {}) is False
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": ""}) is False
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"}) is False
    # a socket that is gone: False, never an exception
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False


def test_reloading_carries_monotonic_usec(notify_socket, monkeypatch):
    addr, s = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", addr)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading()
    s.settimeout(5)
    lines = s.recv(4096).decode().splitlines()
    assert lines[0] == "RELOADING=1"
    usec = int(lines[1].removeprefix("MONOTONIC_USEC="))
    assert before <= usec <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_run_notifies_ready_once_workers_are_up(tmp_path, notify_socket):
    addr, s = notify_socket
    cfg = tmp_path / "hepfast.toml"
    cfg.write_text(textwrap.dedent("""
        [switch]
        workers = 2
        [[listeners]]
        name = "agents"
        listen = "127.0.0.1:0"
        [destinations.homer]
        targets = ["127.0.0.1:9"]
        [[rules]]
        name = "all"
        forward = ["homer"]
        """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEPFAST_")}
    env.update(PYTHONPATH=str(ROOT), NOTIFY_SOCKET=addr)
    err = open(tmp_path / "run.err", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "hepfast", "run", "-c", str(cfg),
                             "--no-admin", "--quiet"], stdout=subprocess.PIPE, stderr=err,
                            text=True, env=env, cwd=ROOT)
    try:
        msgs = recv_until(s, "READY", timeout=60)
        ready = msgs[-1]
        assert ready["READY"] == "1"
        assert ready["MAINPID"] == str(proc.pid)
        assert ready["STATUS"] == "running, 2 workers"
        # READY comes after the workers are up: the switch already said it is running
        err.seek(0)
        assert "hepfast running: 2 workers" in err.read()
        proc.send_signal(signal.SIGTERM)
        msgs = recv_until(s, "STOPPING", timeout=30)
        assert msgs[-1]["STOPPING"] == "1"
        assert all("READY" not in m for m in msgs[:-1])     # said once
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        err.close()


UNIT = ROOT / "contrib" / "hepfast.service"


def _unit_options() -> dict[str, list[str]]:
    opts: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            k, v = line.split("=", 1)
            opts.setdefault(k, []).append(v)
    return opts


def test_unit_runs_notify_reload_and_config_in_etc():
    o = _unit_options()
    assert o["Type"] == ["notify"]
    assert o["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert o["Environment"] == ["HEPFAST_CONFIG=/etc/hepfast/hepfast.toml"]
    assert o["ExecStart"][0].endswith("hepfast run --quiet")
    assert o["RestartPreventExitStatus"] == ["2"]          # a config error: do not loop
    for hardening in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp",
                      "RestrictAddressFamilies", "SystemCallFilter"):
        assert hardening in o, hardening


def test_unit_is_valid_for_systemd(tmp_path):
    import shutil

    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed")
    exe = tmp_path / "hepfast"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    unit = tmp_path / "hepfast.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/hepfast", str(exe)))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Unknown" not in r.stderr and "ignoring" not in r.stderr.lower(), r.stderr
