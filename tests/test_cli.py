"""The `hepfast` command as an operator meets it: version, help, the bundled config, one style of
configuration errors in check and run, warnings, environment overrides, JSON logs."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hepfast.config import DEFAULT_CONFIG_PATH, ConfigError, parse_config
from hepfast.config.env import apply_env_overrides, config_path

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict | None = None, timeout: float = 60,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith("HEPFAST_")}
    e.update(PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "hepfast", *args], capture_output=True,
                          text=True, timeout=timeout, env=e, cwd=cwd or ROOT)


def write(tmp_path: Path, text: str, name: str = "hepfast.toml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


GOOD = """
    [switch]
    workers = 1
    [[listeners]]
    name = "agents"
    listen = "127.0.0.1:0"
    [destinations.homer]
    targets = ["127.0.0.1:9"]
    [[rules]]
    name = "all"
    forward = ["homer"]
    """


# ------------------------------------------------------------------ version and help

def test_version_matches_the_package_metadata():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    import hepfast

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert hepfast.__version__ == declared
    r = cli("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"hepfast {declared} (codec: ")


def test_help_speaks_to_operators():
    r = cli("--help")
    assert r.returncode == 0
    text = r.stdout
    assert "hepfast/commands" not in text and "subcommand per module" not in text
    for needle in ("getting started:", "hepfast config > hepfast.toml", "hepfast check -c",
                   "HEPFAST_CONFIG", "HEPFAST_ADMIN_TOKEN", "HEPFAST_NODE_NAME", "docs/"):
        assert needle in text, needle
    for cmd in ("run", "check", "config", "decode", "replay", "sink", "top"):
        assert f"\n    {cmd} " in text, cmd


def test_no_command_shows_help_and_a_hint():
    r = cli()
    assert r.returncode == 2
    assert "the following arguments are required" not in r.stderr
    assert "getting started:" in r.stderr and "name a command" in r.stderr


# ------------------------------------------------------------------ the bundled config

def test_config_prints_the_bundled_file(tmp_path):
    r = cli("config")
    assert r.returncode == 0
    assert r.stdout == DEFAULT_CONFIG_PATH.read_text()
    assert cli("config", "--path").stdout.strip() == str(DEFAULT_CONFIG_PATH)
    out = tmp_path / "copy.toml"
    r = cli("config", "-o", str(out))
    assert r.returncode == 0 and out.read_text() == DEFAULT_CONFIG_PATH.read_text()
    out.write_text("# mine\n")
    r = cli("config", "-o", str(out))
    assert r.returncode == 1 and "--force" in r.stderr and out.read_text() == "# mine\n"
    assert cli("config", "-o", str(out), "--force").returncode == 0
    assert out.read_text() == DEFAULT_CONFIG_PATH.read_text()
    # and the copy is a valid starting point
    r = cli("check", "-c", str(out))
    assert r.returncode == 0, r.stderr


def test_check_without_c_checks_the_bundled_file(tmp_path):
    r = cli("check", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip().endswith(f"ok: {DEFAULT_CONFIG_PATH} (the bundled default config)")


def test_check_uses_hepfast_config(tmp_path):
    cfg = write(tmp_path, GOOD)
    r = cli("check", env={"HEPFAST_CONFIG": str(cfg)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip().endswith(f"ok: {cfg}")
    # -c wins over the variable
    r = cli("check", "-c", str(cfg), env={"HEPFAST_CONFIG": str(tmp_path / "missing.toml")})
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------ errors in one style

BAD = {
    "toml": ("[switch\nworkers = 1\n", "not valid TOML: "),
    "field": (GOOD.replace('forward = ["homer"]', 'forward = ["homr"]'),
              'rules[0].forward[0]: unknown destination "homr"'),
    "type": (GOOD.replace("workers = 1", 'workers = "two"'), "switch.workers: "),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_check_and_run_report_config_errors_alike(tmp_path, kind):
    text, expected = BAD[kind]
    cfg = write(tmp_path, text)
    c = cli("check", "-c", str(cfg))
    r = cli("run", "-c", str(cfg), "--no-admin", "--duration", "5")
    assert c.returncode == 2 and r.returncode == 2
    line = c.stderr.splitlines()[0]
    assert line.startswith(f"error: {cfg}: {expected}"), line
    assert line.count(str(cfg)) == 1                        # the file is named once
    assert r.stderr.splitlines()[0] == line                  # run says exactly the same
    assert f"hepfast check -c {cfg}" in r.stderr             # and what to do next


def test_missing_file_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "nope.toml"
    for args in (("check", "-c", str(missing)), ("run", "-c", str(missing), "--no-admin")):
        r = cli(*args)
        assert r.returncode == 2
        first = r.stderr.splitlines()[0]
        assert first == f"error: {missing}: cannot read: No such file or directory", first


def test_unsupported_transport_is_reported_before_other_mistakes(tmp_path, monkeypatch, capsys):
    # Every transport of the schema is implemented now: the mechanism is tested with a version
    # that would listen on udp and tcp only.
    from hepfast import cli as hcli
    from hepfast.config import validate

    monkeypatch.setattr(validate, "IMPLEMENTED_LISTENER_TRANSPORTS", ("udp", "tcp"))
    text = GOOD.replace('listen = "127.0.0.1:0"', 'listen = "127.0.0.1:0"\ntransport = "tls"')
    text = text.replace('forward = ["homer"]', 'forward = ["homr"]')     # a second mistake
    assert hcli.main(["check", "-c", str(write(tmp_path, text))]) == 2
    assert "listeners[0].transport: transport tls is not supported yet" in \
        capsys.readouterr().err
    # also before type errors and unknown keys, which the schema finds before validation
    for other in ('workers = "two"', "wokers = 1"):
        bad = write(tmp_path, text.replace("workers = 1", other), "other.toml")
        for cmd in (["check", "-c", str(bad)], ["run", "-c", str(bad), "--no-admin"]):
            assert hcli.main(cmd) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"error: {bad}: listeners[0].transport: transport tls "
                                  "is not supported yet"), err


def test_config_that_sends_nothing_passes_with_a_warning(tmp_path):
    cfg = write(tmp_path, GOOD.replace('forward = ["homer"]', "drop = true"))
    r = cli("check", "-c", str(cfg))
    assert r.returncode == 0
    assert "no rule forwards anything and switch.default is \"drop\"" in r.stderr
    assert "destinations.homer: no rule forwards to it" in r.stderr
    assert r.stdout.rstrip().endswith(f"ok with warnings: {cfg}")
    # the same config passing to a default destination is fine
    fine = write(tmp_path, GOOD.replace('forward = ["homer"]', "drop = true").replace(
        "workers = 1", 'workers = 1\ndefault = "homer"'), "fine.toml")
    r = cli("check", "-c", str(fine))
    assert r.returncode == 0 and "warning" not in r.stderr
    assert r.stdout.rstrip().endswith(f"ok: {fine}")


# ------------------------------------------------------------------ environment overrides

NODE = GOOD.replace('forward = ["homer"]', 'set.node_name = "$HEPFAST_NODE_NAME"\n'
                                            'set.capture_id = 7\nforward = ["homer"]')


def test_env_overrides_token_and_node_name():
    cfg = parse_config(textwrap.dedent(NODE))
    out = apply_env_overrides(cfg, {"HEPFAST_ADMIN_TOKEN": "s3cret", "HEPFAST_NODE_NAME": "edge-7"})
    assert out.admin.token == "s3cret"
    assert out.rules[0].set == {"node_name": "edge-7", "capture_id": 7}
    assert cfg.rules[0].set["node_name"] == "$HEPFAST_NODE_NAME"         # the input is unchanged
    assert apply_env_overrides(out, {"HEPFAST_ADMIN_TOKEN": "s3cret",
                                     "HEPFAST_NODE_NAME": "other"}) == out   # idempotent
    braces = parse_config(textwrap.dedent(NODE.replace("$HEPFAST_NODE_NAME",
                                                       "${HEPFAST_NODE_NAME}")))
    assert apply_env_overrides(braces, {"HEPFAST_NODE_NAME": "n"}).rules[0].set["node_name"] == "n"
    # nothing to do: the same object back
    plain = parse_config(textwrap.dedent(GOOD))
    assert apply_env_overrides(plain, {}) is plain


def test_env_node_name_unset_names_the_rule_key():
    cfg = parse_config(textwrap.dedent(NODE))
    with pytest.raises(ConfigError) as ei:
        apply_env_overrides(cfg, {})
    assert ei.value.path == "rules[0].set.node_name"
    assert "HEPFAST_NODE_NAME" in ei.value.message and "export" in ei.value.message
    # only the exact reference is expanded, never a string that merely contains it
    partial = parse_config(textwrap.dedent(NODE.replace('"$HEPFAST_NODE_NAME"',
                                                        '"edge-$HEPFAST_NODE_NAME"')))
    assert apply_env_overrides(partial, {}).rules[0].set["node_name"] == "edge-$HEPFAST_NODE_NAME"


def test_config_path_order():
    assert config_path("a.toml", {"HEPFAST_CONFIG": "b.toml"}) == "a.toml"
    assert config_path(None, {"HEPFAST_CONFIG": "b.toml"}) == "b.toml"
    assert config_path(None, {"HEPFAST_CONFIG": ""}) is None
    assert config_path(None, {}) is None


def test_check_applies_the_environment(tmp_path):
    cfg = write(tmp_path, NODE)
    r = cli("check", "-c", str(cfg), env={"HEPFAST_NODE_NAME": "edge-7"})
    assert r.returncode == 0, r.stderr
    assert "set node_name='edge-7'" in r.stdout
    r = cli("check", "-c", str(cfg))
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: {cfg}: rules[0].set.node_name: refers to "
                               "$HEPFAST_NODE_NAME")


# ------------------------------------------------------------------ logs

def test_run_log_json_makes_every_line_json(tmp_path):
    cfg = write(tmp_path, GOOD)
    r = cli("run", "-c", str(cfg), "--no-admin", "--duration", "1", "--log-json")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    docs = [json.loads(ln) for ln in lines]                  # raises on a plain-text line
    msgs = [d["msg"] for d in docs]
    assert any(m.startswith("listening agents udp 127.0.0.1:") for m in msgs), msgs
    listening = next(d for d in docs if d["msg"].startswith("listening"))
    assert listening["listener"] == "agents" and listening["port"] > 0
    assert any(m.startswith("hepfast running: 1 workers") for m in msgs)
    assert json.loads(r.stdout.splitlines()[-1])["generation"] >= 1
    # errors too
    bad = write(tmp_path, BAD["field"][0], "bad.toml")
    r = cli("run", "-c", str(bad), "--log-json")
    assert r.returncode == 2
    docs = [json.loads(ln) for ln in r.stderr.splitlines()]
    assert docs[0]["level"] == "error" and docs[0]["config"] == str(bad)
    assert docs[0]["msg"].startswith(f"error: {bad}: rules[0].forward[0]")


def test_run_plain_startup_lines_are_unchanged(tmp_path):
    """Scripts (and tests/switchhelp.py) read these lines: plain text without a log prefix."""
    cfg = write(tmp_path, GOOD)
    r = cli("run", "-c", str(cfg), "--no-admin", "--duration", "1")
    assert r.returncode == 0, r.stderr
    starts = [ln for ln in r.stderr.splitlines() if ln.startswith(("listening ", "hepfast running"))]
    assert len(starts) == 2, r.stderr


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_clear_the_live_line_on_a_terminal(restore_root_logging):
    import logging

    from hepfast.observe import log

    tty = FakeTty()
    log.setup_logging(stream=tty)
    log.live_line("rx 10/s fwd 10/s", stream=tty)
    logging.getLogger("hepfast.test").warning("target 10.0.0.1:9060 down")
    log.live_line("rx 12/s fwd 12/s", stream=tty)
    log.live_end(stream=tty)
    # the warning starts on a cleared line, ends with a newline, and the live line comes back
    assert re.fullmatch(r"\r\x1b\[2Krx 10/s fwd 10/s"
                        r"\r\x1b\[2K\S+ WARNING hepfast\.test: target 10\.0\.0\.1:9060 down\n"
                        r"rx 10/s fwd 10/s"
                        r"\r\x1b\[2Krx 12/s fwd 12/s\n", tty.getvalue()), repr(tty.getvalue())
    # not a terminal: no escape codes at all
    plain = io.StringIO()
    log.setup_logging(stream=plain)
    logging.getLogger("hepfast.test").warning("x")
    assert "\x1b" not in plain.getvalue() and "\r" not in plain.getvalue()


def test_say_plain_and_json(restore_root_logging):
    from hepfast.observe import log

    buf = io.StringIO()
    log.setup_logging(stream=buf)
    log.say("listening agents udp 0.0.0.0:9060", listener="agents")
    assert buf.getvalue() == "listening agents udp 0.0.0.0:9060\n"
    buf = io.StringIO()
    log.setup_logging(json=True, stream=buf)
    log.say("listening agents udp 0.0.0.0:9060", listener="agents")
    log.say("error: x", level="error")
    a, b = (json.loads(ln) for ln in buf.getvalue().splitlines())
    assert a["msg"] == "listening agents udp 0.0.0.0:9060" and a["listener"] == "agents"
    assert a["level"] == "info" and b["level"] == "error"


def test_summary_line():
    from hepfast.observe.log import summary_line

    s = {"generation": 3, "datagrams": 1500, "received": 1490, "forwarded_total": 2900,
         "invalid_total": 10, "invalid": {"length": 7, "auth": 3},
         "dropped_total": 40, "dropped": {"no_route": 40, "sample": 0},
         "send_errors": {"homer/10.0.0.1:9060": 2}, "overflows": 0, "restarts": 1}
    line = summary_line(s)
    assert "\n" not in line
    assert line.startswith("counters gen 3: datagrams 1500 received 1490 forwarded 2900")
    assert "invalid 10 (auth 3, length 7)" in line
    assert "dropped 40 (no_route 40)" in line and "sample" not in line
    assert "send_errors 2" in line and "restarts 1" in line and "overflows" not in line
    prev = dict(s, datagrams=300, forwarded_total=500, invalid_total=10, dropped_total=10)
    line = summary_line(s, prev, 60.0)
    assert line.endswith("| last 60 s: rx 20/s fwd 40/s invalid 0/s dropped 0/s")
    quiet = summary_line({"generation": 1})
    assert quiet == "counters gen 1: datagrams 0 received 0 forwarded 0 invalid 0 dropped 0"


@pytest.fixture
def restore_root_logging():
    import logging

    from hepfast.observe import log

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    log._State.json, log._State.stream = False, None
    log._Live.text, log._Live.stream = "", None


def test_run_applies_hepfast_node_name(tmp_path):
    """The switch itself (not only check) expands "$HEPFAST_NODE_NAME" in a rule's set."""
    import signal
    import socket
    import time

    from hepfast.tools.sink import Sink
    from hepfast.wire import codec
    from hepfast.wire.chunks import encode_packet

    with Sink("127.0.0.1:0").start(timeout=60) as sink:
        cfg = write(tmp_path, NODE.replace("127.0.0.1:9", f"127.0.0.1:{sink.port}"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEPFAST_")}
        env.update(PYTHONPATH=str(ROOT), HEPFAST_NODE_NAME="edge-7")
        err = open(tmp_path / "run.err", "w+")
        proc = subprocess.Popen([sys.executable, "-m", "hepfast", "run", "-c", str(cfg),
                                 "--no-admin", "--quiet"], stdout=subprocess.PIPE, stderr=err,
                                text=True, env=env, cwd=ROOT)
        try:
            port, end = None, time.monotonic() + 30
            while port is None and time.monotonic() < end and proc.poll() is None:
                err.seek(0)
                for ln in err.read().splitlines():
                    if ln.startswith("listening agents udp "):
                        port = int(ln.rsplit(":", 1)[1])
                time.sleep(0.05)
            assert port, f"no listening line: {(tmp_path / 'run.err').read_text()}"
            pkt = encode_packet([(0, 1, b"\x02"), (0, 11, b"\x01"), (0, 15, b"OPTIONS x")])
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(pkt, ("127.0.0.1", port))
            s.close()
            assert sink.wait_for(1, timeout=20)
            got = codec.decode(sink.packets[0])
            assert got.node_name == "edge-7" and got.capture_id == 7
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
            assert proc.returncode == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            err.close()
