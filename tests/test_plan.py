"""The plan: what the supervisor compiles once and every worker maps read-only.

- the plan file round-trips every table and field, read-only;
- limits of the data plane are refused by `check` and by reload, naming the field;
- a target given as a host name: workers send where the supervisor resolved it, and a changed
  answer plus a reload moves every worker together (a resolver stub that only the supervisor
  consults: HEPFAST_RESOLVE_FILE);
- no worker imports the config module or a TOML parser;
- a generation a worker cannot take is a reload error (metrics, log, reload response) and every
  worker keeps forwarding on the old one.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from hepfast import constants as K
from hepfast.plan.compile import compile_text
from hepfast.plan.emit import Slots, write_plan_for
from hepfast.plan.format import RULE_ARRAYS, PlanError, read_plan
from hepfast.tools.sink import Sink

from tests.switchhelp import corpus_messages, ROOT, SwitchProcess, check_accounting

CONFIG = """
[switch]
workers = 2
max_chunks = 100
[[listeners]]
name = "agents"
listen = "127.0.0.1:0"
allow = ["127.0.0.0/8", "::1/128"]
auth_key = "k"
[destinations.homer]
targets = ["127.0.0.1:9161", "[::1]:9162"]
[destinations.rec]
transport = "file"
path = "/tmp/x"
keep = 3
[[rules]]
name = "sip"
match.proto_type = ["sip"]
match.src_ip = ["10.0.0.0/8"]
set.capture_id = 7
forward = ["homer", "rec"]
[[rules]]
name = "rest"
drop = true
"""


def test_plan_file_round_trip(tmp_path):
    c = compile_text(CONFIG)
    slots = Slots()
    plan = write_plan_for(c, str(tmp_path / "p.bin"), generation=5, slots=slots)
    assert (os.stat(tmp_path / "p.bin").st_mode & 0o777) == 0o600
    for name in RULE_ARRAYS:
        a, b = getattr(c, name), getattr(plan, name)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), name
        assert not b.flags.writeable, name
    assert plan.generation == 5 and plan.max_chunks == 100 and plan.batch == c.batch
    assert plan.rule_names == ["sip", "rest"]
    assert plan.rule_slots == [slots.rules.slots["sip"], slots.rules.slots["rest"]]
    li = plan.listeners[0]
    assert li.auth_key == b"k" and np.array_equal(li.allow, c.listeners[0].allow)
    homer, rec = plan.destinations
    assert [(t.host, t.port) for t in homer.targets] == [("127.0.0.1", 9161), ("::1", 9162)]
    assert homer.egress == K.EGRESS["udp"] and rec.egress == K.EGRESS["ring"]
    assert rec.settings["path"] == "/tmp/x" and rec.settings["keep"] == 3
    assert rec.egress_slot == 0 and homer.egress_slot == -1
    assert len({t.slot for d in plan.destinations for t in d.targets}) == 3


def test_plan_file_refuses_garbage(tmp_path):
    p = tmp_path / "bad.bin"
    p.write_bytes(b"not a plan at all")
    with pytest.raises(PlanError, match="not a hepfast plan"):
        read_plan(str(p))
    c = compile_text(CONFIG)
    write_plan_for(c, str(p))
    p.write_bytes(p.read_bytes()[:200])         # truncated: arrays run past the end
    with pytest.raises(PlanError):
        read_plan(str(p))


def test_slots_are_stable_and_never_reused():
    slots = Slots()
    c1 = compile_text(CONFIG)
    first = slots.assign(c1)
    c2 = compile_text(CONFIG.replace('name = "rest"', 'name = "other"'))
    second = slots.assign(c2)
    assert second["rules"][0] == first["rules"][0]              # "sip" kept its slot
    assert second["rules"][1] not in first["rules"]            # "other" got a new one
    small = Slots()
    small.rules.capacity = 2
    small.assign(c1)
    with pytest.raises(ValueError, match="restart hepfast"):
        small.assign(c2)


def _rules(n: int, dest: str = "d") -> str:
    return "".join(f'[[rules]]\nname = "r{i}"\nforward = ["{dest}"]\n' for i in range(n))


def _config_over(limit: str) -> tuple[str, str]:
    """A config over one data-plane limit, and the field the error must name."""
    lst = '[[listeners]]\nname = "l0"\nlisten = "127.0.0.1:0"\n'
    dst = '[destinations.d]\ntargets = ["127.0.0.1:9"]\n'
    if limit == "listeners":
        many = "".join(f'[[listeners]]\nname = "l{i}"\nlisten = "127.0.0.1:{20000 + i}"\n'
                       for i in range(K.MAX_LISTENERS + 1))
        return many + dst + _rules(1), f"listeners[{K.MAX_LISTENERS}]"
    if limit == "rules":
        return lst + dst + _rules(K.MAX_RULES + 1), f"rules[{K.MAX_RULES}]"
    if limit == "destinations":
        many = "".join(f'[destinations.d{i}]\ntargets = ["127.0.0.1:{1000 + i}"]\n'
                       for i in range(K.MAX_DESTINATIONS + 1))
        return lst + many + _rules(1, "d0"), f"destinations.d{K.MAX_DESTINATIONS}"
    if limit == "targets":
        per = 100
        many = ""
        for i in range(K.MAX_TARGETS // per + 1):
            targets = ", ".join(f'"127.0.0.1:{1000 + i * per + j}"' for j in range(per))
            many += f"[destinations.d{i}]\ntargets = [{targets}]\n"
        n = K.MAX_TARGETS
        return lst + many + _rules(1, "d0"), f"destinations.d{n // per}.targets[{n % per}]"
    if limit == "set":
        big = "x" * 30000
        rule = (f'[[rules]]\nname = "r"\nset.node_name = "{big}"\n'
                f'set.correlation_id = "{big}"\nforward = ["d"]\n')
        return lst + dst + rule, "rules[0].set"
    raise AssertionError(limit)


@pytest.mark.parametrize("limit", ["listeners", "rules", "destinations", "targets", "set"])
def test_limits_are_refused_by_check_naming_the_field(tmp_path, limit):
    text, field = _config_over(limit)
    cfg = tmp_path / "over.toml"
    cfg.write_text(text)
    res = subprocess.run([sys.executable, "-m", "hepfast", "check", "-c", str(cfg)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 2, res.stdout + res.stderr
    assert field in res.stderr and "at most" in res.stderr, res.stderr


def _admin_url(sw: SwitchProcess) -> str:
    for line in sw.stderr().splitlines():
        if line.startswith("admin http://"):
            return line.split()[1].rsplit("/", 1)[0]
    raise AssertionError(sw.stderr())


def _post(url: str) -> tuple[int, str]:
    req = urllib.request.Request(url, method="POST", data=b"")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _metric(url: str, name: str, **labels) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in /metrics")


def _sip_corpus(n: int) -> list[bytes]:
    return corpus_messages("kamailio", sip_only=True, limit=n)


def _switch_config(targets: str, extra: str = "") -> str:
    return f"""
        [switch]
        workers = 2
        {extra}
        [admin]
        listen = "127.0.0.1:0"
        [[listeners]]
        name = "agents"
        listen = "127.0.0.1:0"
        [destinations.d]
        targets = [{targets}]
        [[rules]]
        name = "all"
        forward = ["d"]
        """


def test_limit_on_reload_is_refused_and_the_switch_keeps_running(tmp_path, corpus_dir):
    sink = Sink("127.0.0.1:0").start(timeout=60)
    good = _switch_config(f'"127.0.0.1:{sink.port}"')
    sw = SwitchProcess(tmp_path, good, workers=2)
    try:
        base = _admin_url(sw)
        sw.cfg.write_text(sw.cfg.read_text() + _rules(K.MAX_RULES))    # one too many
        code, body = _post(base + "/reload")
        assert code != 200 and f"rules[{K.MAX_RULES}]" in body, body
        pkts = _sip_corpus(50)
        sw.send(pkts)
        assert sink.wait_for(len(pkts), timeout=30)
        assert _metric(base, "hepfast_config_reloads_total", result="error") == 1
        summary = sw.stop()
    finally:
        sw.kill()
        sink.close()
    assert summary["generation"] == 1
    check_accounting(summary)


def test_dns_is_resolved_by_the_supervisor_and_a_reload_moves_every_worker(tmp_path,
                                                                          corpus_dir):
    a = Sink("127.0.0.2:0").start(timeout=60)
    b = Sink(("127.0.0.3", a.port)).start(timeout=60)
    hosts = tmp_path / "hosts"
    hosts.write_text("collector.hepfast.test 127.0.0.2\n")
    report = tmp_path / "modules"
    env = {"HEPFAST_RESOLVE_FILE": str(hosts), "HEPFAST_REPORT_MODULES": str(report)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        sw = SwitchProcess(tmp_path, _switch_config(f'"collector.hepfast.test:{a.port}"'),
                           workers=2)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        base = _admin_url(sw)
        pkts = _sip_corpus(200)
        chunks = [pkts[i::4] for i in range(4)]             # several flows
        for c in chunks[:2]:
            sw.send(c)
        assert a.wait_for(100, timeout=30)
        hosts.write_text("collector.hepfast.test 127.0.0.3\n")   # the answer changes
        code, body = _post(base + "/reload")
        assert code == 200, body
        for c in chunks[2:]:
            sw.send(c)
        assert b.wait_for(100, timeout=30)
        summary = sw.stop()
    finally:
        sw.kill()
        a.close()
        b.close()
    assert a.received == 100 and b.received == 100
    assert sorted(a.packets + b.packets) == sorted(pkts)
    # The target kept its counter slot (keyed by the configured name): one series, all counted.
    assert sum(v for k, v in summary["forwarded"].items() if k.startswith("d/")) == 200
    check_accounting(summary)
    reports = list(tmp_path.glob("modules.*"))
    assert len(reports) >= 2                               # both workers reported
    for r in reports:
        mods = set(r.read_text().split())
        assert "hepfast.dataplane._worker" in mods
        assert not {"tomllib", "tomli"} & mods
        assert not [m for m in mods if m == "hepfast.config" or m.startswith("hepfast.config.")]


def test_a_generation_a_worker_refuses_is_a_reload_error(tmp_path, corpus_dir):
    a = Sink("127.0.0.1:0").start(timeout=60)
    b = Sink("127.0.0.1:0").start(timeout=60)
    os.environ["HEPFAST_FAULT"] = "refuse:2:1"             # worker 1 refuses generation 2
    try:
        sw = SwitchProcess(tmp_path, _switch_config(f'"127.0.0.1:{a.port}"'), workers=2)
    finally:
        os.environ.pop("HEPFAST_FAULT")
    try:
        base = _admin_url(sw)
        sw.cfg.write_text(sw.cfg.read_text().replace(str(a.port), str(b.port)))
        code, body = _post(base + "/reload")
        assert code != 200 and "refuses generation 2" in body, body
        assert _metric(base, "hepfast_config_reloads_total", result="error") == 1
        assert _metric(base, "hepfast_config_reloads_total", result="ok") == 0
        with urllib.request.urlopen(base + "/status", timeout=10) as r:
            status = json.loads(r.read())
        assert {w["generation"] for w in status["workers"]} == {1}
        pkts = _sip_corpus(120)
        for i in range(4):
            sw.send(pkts[i::4])
        assert a.wait_for(len(pkts), timeout=30)           # still the old destination
        summary = sw.stop()
    finally:
        sw.kill()
        a.close()
        b.close()
    assert b.received == 0 and summary["generation"] == 1
    assert "refuses generation 2" in sw.stderr()
    assert summary["reloads"] == {"ok": 0, "error": 1}
    check_accounting(summary)


def test_workers_are_not_forked_copies(tmp_path):
    """A worker is a fresh interpreter started with only its sockets: its command line says so
    and it holds no descriptor of the supervisor's other sockets (admin, other workers)."""
    sink = Sink("127.0.0.1:0").start(timeout=60)
    sw = SwitchProcess(tmp_path, _switch_config(f'"127.0.0.1:{sink.port}"'), workers=2)
    try:
        base = _admin_url(sw)
        with urllib.request.urlopen(base + "/status", timeout=10) as r:
            workers = json.loads(r.read())["workers"]
        for w in workers:
            cmd = Path(f"/proc/{w['pid']}/cmdline").read_bytes().split(b"\0")
            assert b"hepfast.dataplane.worker" in cmd
            socks = [os.readlink(f"/proc/{w['pid']}/fd/{fd}")
                     for fd in os.listdir(f"/proc/{w['pid']}/fd")]
            # its own listener socket, its target socket(s), nothing else of the supervisor's
            assert sum(1 for s in socks if s.startswith("socket:")) <= 3, socks
        sw.stop()
    finally:
        sw.kill()
        sink.close()
