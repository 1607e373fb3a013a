"""The README's first command (`make demo`): real packets through the real switch, counted.

1. local sinks on the bundled config's destination targets,
2. `hepfast run` on the bundled default config (hepfast/config/default.toml),
3. `hepfast replay synthetic:...` sends complete calls (SIP, RTCP reports, log lines) to it,
4. a table of what each rule, destination target and sink saw, and the switch's accounting.

It stops by itself. Ports are the bundled config's (9060 in, 9161-9163 out, 9096 admin); if one is
taken, it says which and how to free it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = "synthetic:calls=200,cps=100,ipv6=0.2,capture_id=2001,rtcp=2,log=1,seed=7"


def _env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def main() -> int:
    from hepfast.config import load_config
    from hepfast.plan import compile_config
    from hepfast.tools.sink import Sink
    from hepfast.config import DEFAULT_CONFIG_PATH

    cfg_path = DEFAULT_CONFIG_PATH
    compiled = compile_config(load_config(cfg_path))
    listen = compiled.listeners[0]
    print(f"== hepfast demo: bundled config {cfg_path}")
    sinks = {}
    try:
        for d in compiled.destinations:
            for t in d.targets:
                sinks[(d.name, t.host, t.port)] = Sink((t.host, t.port), keep=False).start(
                    timeout=120)
    except OSError as exc:
        print(f"error: cannot open a sink: {exc}. Another program uses the demo's ports "
              f"(9161-9163): stop it, or edit hepfast/config/default.toml.", file=sys.stderr)
        for s in sinks.values():
            s.close()
        return 1
    print(f"   sinks listening on {', '.join(f'{h}:{p}' for _, h, p in sinks)}")
    sw = subprocess.Popen([sys.executable, "-m", "hepfast", "run", "--quiet"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        if not _wait_running(sw):
            return 1
        to = f"{listen.host}:{listen.port}"
        print(f"== replaying {SPEC} to {to}")
        rp = subprocess.run([sys.executable, "-m", "hepfast", "replay", SPEC, "--to", to,
                             "--rate", "5000"], env=_env(), timeout=120,
                            stdout=subprocess.PIPE, text=True)
        replay = json.loads(rp.stdout.strip().splitlines()[-1]) if rp.stdout.strip() else {}
        print(f"   replay: {replay}")
        for s in sinks.values():
            s.wait_quiet(0.5, timeout=10)
        metrics = _scrape(compiled)
    finally:
        if sw.poll() is None:
            sw.send_signal(signal.SIGTERM)
        out, err = sw.communicate(timeout=20)
        for s in sinks.values():
            s.close()
    summary = json.loads(out.strip().splitlines()[-1])
    _table(summary, sinks, replay)
    if metrics:
        print("\n== a Prometheus scrape of the admin endpoint (GET /metrics), hepfast_ lines:")
        for line in metrics:
            print("   " + line)
    ok = summary["datagrams"] == replay.get("sent") and \
        summary["forwarded_total"] == sum(s.received for s in sinks.values())
    print("\n" + ("OK: every packet sent was received, and every packet forwarded arrived."
                  if ok else "MISMATCH: see the table above."))
    return 0 if ok else 1


def _wait_running(sw) -> bool:
    end = time.monotonic() + 20
    lines = []
    while time.monotonic() < end:
        line = sw.stderr.readline()
        if not line:
            break
        lines.append(line.rstrip())
        print("   switch: " + line.rstrip())
        if "hepfast running" in line:
            return True
    print("error: the switch did not start:\n" + "\n".join(lines), file=sys.stderr)
    print("if a port is in use (9060, 9096), stop what uses it or edit hepfast/config/default.toml",
          file=sys.stderr)
    return False


def _scrape(compiled) -> list[str]:
    host, port = compiled.admin_listen
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=3) as r:
            text = r.read().decode()
    except OSError:
        return []
    keep = ("hepfast_packets_received_total", "hepfast_packets_forwarded_total",
            "hepfast_rule_packets_total", "hepfast_packets_dropped_total")
    return [ln for ln in text.splitlines()
            if ln.startswith(keep) and not ln.endswith((" 0.0", " 0"))]


def _table(summary: dict, sinks: dict, replay: dict) -> None:
    print("\n== what the switch did")
    print(f"   sent by replay      {replay.get('sent', '?'):>8}")
    print(f"   datagrams received  {summary['datagrams']:>8}")
    print(f"   invalid             {summary['invalid_total']:>8}  {summary['invalid'] or ''}")
    print(f"   dropped             {summary['dropped_total']:>8}  {summary['dropped'] or ''}")
    print(f"   forwarded (copies)  {summary['forwarded_total']:>8}")
    print("\n   rule                packets")
    for name, n in summary["rules"].items():
        print(f"   {name:<18}{n:>9}")
    print("\n   destination/target                 forwarded   sink received")
    for (dest, host, port), s in sinks.items():
        key = f"{dest}/{host}:{port}"
        print(f"   {key:<34}{summary['forwarded'].get(key, 0):>10}{s.received:>16}")


if __name__ == "__main__":
    raise SystemExit(main())
