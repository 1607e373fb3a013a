"""`hepfast top`: one frame (--once) against the admin API over a fake supervisor, the message and
exit code when nothing listens, and the interactive mode through a pseudo-terminal (q quits)."""
from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hepfast.dataplane import counters as C
from hepfast.wire import reasons
from hepfast.observe.admin import AdminServer
from hepfast.commands.top import render
from tests.promhelper import FakeSup, free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def served():
    sup = FakeSup(workers=2)
    sup.add(0, C.OFF_RECEIVED + 1, 1200)                      # agents sip
    sup.add(1, C.OFF_INVALID + C.N_INVALID + reasons.AUTH, 7)  # edge auth
    sup.add(0, C.OFF_RULE + 5, 1200)                          # rule sip
    sup.add(0, C.OFF_FORWARDED + 7, 900)                      # homer 127.0.0.1:9061
    sup.add(1, C.OFF_FORWARDED + 3, 300)                      # homer 127.0.0.1:9062
    sup.add(1, C.OFF_DROP + reasons.DROP_QUEUE_FULL, 12)
    sup.counters.rows[0][C.OFF_LAST_ERR + 11] = time.monotonic_ns()   # qos target failing
    admin = AdminServer(sup, "127.0.0.1:0", sampler=False)
    admin.start()
    try:
        yield sup, admin
    finally:
        admin.stop()


def hepfast(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "hepfast", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_once_prints_one_frame(served):
    sup, admin = served
    r = hepfast("top", "--once", "--admin", f"127.0.0.1:{admin.port}")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "\x1b[" not in out                                  # no escape codes
    assert f"127.0.0.1:{admin.port}" in out and "generation 1" in out
    assert "workers 2/2" in out and "healthy" in out
    lines = out.splitlines()
    agents = next(ln for ln in lines if ln.startswith("agents"))
    assert "0.0.0.0:9060" in agents and "1200" in agents
    edge = next(ln for ln in lines if ln.startswith("edge"))
    assert edge.split()[-2] == "7"                             # INVALID column
    sip = next(ln for ln in lines if ln.split()[:1] == ["sip"])
    assert sip.split()[-1] == "1200"
    t1 = next(ln for ln in lines if "127.0.0.1:9061" in ln)
    assert t1.split()[:4] == ["homer", "hash", "127.0.0.1:9061", "up"] and "900" in t1
    qos = next(ln for ln in lines if "[::1]:9063" in ln)
    assert "DOWN" in qos
    drop = next(ln for ln in lines if ln.startswith("queue_full"))
    assert drop.split()[-1] == "12"
    auth = next(ln for ln in lines if ln.startswith("auth"))
    assert auth.split()[-1] == "7"


def test_once_shows_unhealthy_and_reload_error(served):
    sup, admin = served
    sup.alive[0] = False
    sup.reload_counts["error"] = 1
    sup.last_reload_error = 'rules[0].forward[0]: unknown destination "homr"'
    r = hepfast("top", "--once", "--admin", f"127.0.0.1:{admin.port}")
    assert r.returncode == 0, r.stderr
    assert "UNHEALTHY: worker 0 is not running" in r.stdout
    assert "workers 1/2" in r.stdout
    assert 'last error: rules[0].forward[0]: unknown destination "homr"' in r.stdout


def test_unreachable_admin_exits_1_with_hint():
    port = free_port()          # nothing listens there
    r = hepfast("top", "--once", "--admin", f"127.0.0.1:{port}")
    assert r.returncode == 1
    assert "is hepfast running? admin.listen is" in r.stderr
    assert f"127.0.0.1:{port}" in r.stderr


def test_admin_address_from_config(served, tmp_path):
    _sup, admin = served
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[admin]\nlisten = "127.0.0.1:{admin.port}"\n'
                   '[[listeners]]\nname = "a"\nlisten = "127.0.0.1:0"\n'
                   '[destinations.d]\ntargets = ["127.0.0.1:9"]\n'
                   '[[rules]]\nname = "r"\nforward = ["d"]\n')
    r = hepfast("top", "--once", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert f"127.0.0.1:{admin.port}" in r.stdout


def test_render_handles_empty_sections():
    st = {"version": "x", "generation": 1, "uptime_s": 3725, "healthy": True, "health": "ok",
          "workers": [], "reloads": {"ok": 0, "error": 0, "last_error": None},
          "totals": {}, "listeners": [], "rules": [], "destinations": [],
          "dropped": {"rule": {"packets": 0, "rate": 0.0}}, "invalid": {}}
    out = render(st, "h:1")
    assert "up 1h02m05s" in out
    assert "DROPPED: none" in out and "INVALID: none" in out
    assert max(len(ln) for ln in render(st, "h:1", width=40).splitlines()) <= 40


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="no pseudo-terminals on this platform")
def test_interactive_redraws_and_quits_on_q(served):
    import fcntl
    import struct
    import termios

    _sup, admin = served
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "hepfast", "top", "--interval", "0.2",
                             "--admin", f"127.0.0.1:{admin.port}"], cwd=ROOT,
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 20
        # Two redraws (the clear-screen code twice) prove it refreshes.
        while out.count(b"\x1b[2J") < 2 and time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.5)
            if r:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
        assert out.count(b"\x1b[2J") >= 2, out[-2000:]
        assert b"127.0.0.1:9061" in out and b"q: quit" in out
        os.write(master, b"q")
        assert proc.wait(timeout=10) == 0
        # drain what it wrote on exit: it restores the cursor and the main screen
        end = time.monotonic() + 2
        while time.monotonic() < end:
            r, _, _ = select.select([master], [], [], 0.2)
            if not r:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        assert out.rstrip().endswith(b"\x1b[?25h\x1b[?1049l")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        os.close(master)


TOKEN = "top-test-token-31337"


@pytest.fixture
def guarded():
    sup = FakeSup(workers=1)
    sup.add(0, C.OFF_RECEIVED + 1, 42)
    admin = AdminServer(sup, "127.0.0.1:0", token=TOKEN, sampler=False)
    admin.start()
    try:
        yield admin
    finally:
        admin.stop()


def hepfast_env(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "HEPFAST_ADMIN_TOKEN"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "hepfast", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=30, env=env)


def test_token_required_says_how_to_give_it(guarded):
    r = hepfast_env("top", "--once", "--admin", f"127.0.0.1:{guarded.port}")
    assert r.returncode == 1
    assert "401" in r.stderr and "--token, HEPFAST_ADMIN_TOKEN or -c CONFIG" in r.stderr
    r = hepfast_env("top", "--once", "--admin", f"127.0.0.1:{guarded.port}", "--token", "nope")
    assert r.returncode == 1 and "the token sent is wrong" in r.stderr
    assert "nope" not in r.stderr


def test_token_from_option_environment_or_config(guarded, tmp_path):
    addr = f"127.0.0.1:{guarded.port}"
    r = hepfast_env("top", "--once", "--admin", addr, "--token", TOKEN)
    assert r.returncode == 0, r.stderr
    assert "agents" in r.stdout and "42" in r.stdout
    r = hepfast_env("top", "--once", "--admin", addr, env_extra={"HEPFAST_ADMIN_TOKEN": TOKEN})
    assert r.returncode == 0, r.stderr
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[admin]\nlisten = "{addr}"\ntoken_env = "TOP_TEST_TOKEN"\n'
                   '[[listeners]]\nname = "a"\nlisten = "127.0.0.1:0"\n'
                   '[destinations.d]\ntargets = ["127.0.0.1:9"]\n'
                   '[[rules]]\nname = "r"\nforward = ["d"]\n')
    r = hepfast_env("top", "--once", "-c", str(cfg), env_extra={"TOP_TEST_TOKEN": TOKEN})
    assert r.returncode == 0, r.stderr
    assert addr in r.stdout
    # --token wins over the environment
    r = hepfast_env("top", "--once", "--admin", addr, "--token", "wrong",
                    env_extra={"HEPFAST_ADMIN_TOKEN": TOKEN})
    assert r.returncode == 1
