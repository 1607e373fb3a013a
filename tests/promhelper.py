"""Test helpers for the control plane: a fake supervisor and a real Prometheus server.

- `FakeSup`: the attributes and methods hepfast.observe.metrics / hepfast.observe.admin use from
  hepfast.dataplane.supervisor.Supervisor, over a real `Counters` block the test fills by hand. Rule and target
  slots are deliberately not their positions, so a test catches code that indexes by position.
- `Prometheus`: starts the `prometheus` binary on 127.0.0.1 (free port, temp config and storage,
  1 s scrape interval), queries its HTTP API and stops it (terminate, then kill), bounded in time.
- `prometheus` fixture: a factory `prometheus(targets) -> Prometheus`; every server it started is
  stopped at teardown, even when the test fails. Skips with the reason when the binary is absent.
  Import it into a test module with `from tests.promhelper import prometheus  # noqa: F401`.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from hepfast.dataplane import counters as C

PROMETHEUS_MISSING = ("prometheus binary not on PATH (the test command installs it via "
                      "scripts/ensure-deps.sh: apt-get install prometheus)")


# ------------------------------------------------------------------------------ fake supervisor

class FakeSup:
    """A stand-in for hepfast.dataplane.supervisor.Supervisor with one listener, three rules, two destinations."""

    def __init__(self, workers: int = 2):
        self.counters = C.Counters(workers)
        self.compiled = SimpleNamespace(
            rule_names=["sip", "rtcp", "rest"],
            destinations=[
                SimpleNamespace(name="homer", mode="hash", transport="udp",
                                targets=[("127.0.0.1", 9061, socket.AF_INET),
                                         ("127.0.0.1", 9062, socket.AF_INET)]),
                SimpleNamespace(name="qos", mode="all", transport="udp",
                                targets=[("::1", 9063, socket.AF_INET6)]),
            ],
            listeners=[SimpleNamespace(name="agents", host="0.0.0.0", port=9060, transport="udp"),
                       SimpleNamespace(name="edge", host="127.0.0.1", port=0, transport="udp")],
            admin_listen="127.0.0.1:0",
        )
        self.bound = [("agents", "0.0.0.0", 9060), ("edge", "127.0.0.1", 40000)]
        self._rule_slots = {"sip": 5, "rtcp": 2, "rest": 9}
        self._target_slots = {("homer", "127.0.0.1", 9061): 7, ("homer", "127.0.0.1", 9062): 3,
                              ("qos", "::1", 9063): 11}
        self.generation = 1
        self.reload_counts = {"ok": 0, "error": 0}
        self.last_reload_error: str | None = None
        self.restarts = 0
        self.started_at = time.time() - 65.0
        self.alive = [True] * workers
        self.reload_result: tuple[bool, str] = (True, "generation 2")
        self.reload_calls = 0

    def rule_slot(self, name: str) -> int:
        return self._rule_slots[name]

    def target_slot(self, dest: str, host: str, port: int) -> int:
        return self._target_slots[(dest, host, port)]

    def listener_index(self, name: str) -> int:
        return [li.name for li in self.compiled.listeners].index(name)

    def workers_alive(self) -> list[dict]:
        return [{"index": i, "pid": 0, "alive": a, "generation": self.generation,
                 "heartbeat_age_s": 0.01} for i, a in enumerate(self.alive)]

    def healthy(self) -> tuple[bool, str]:
        for i, a in enumerate(self.alive):
            if not a:
                return False, f"worker {i} is not running"
        return True, "ok"

    def request_reload(self) -> tuple[bool, str]:
        self.reload_calls += 1
        ok, msg = self.reload_result
        if ok:
            self.generation += 1
            self.reload_counts["ok"] += 1
            self.last_reload_error = None
        else:
            self.reload_counts["error"] += 1
            self.last_reload_error = msg
        return ok, msg

    # -- filling counters the way workers do (one row each)

    def add(self, worker: int, offset: int, n: int) -> None:
        self.counters.rows[worker][offset] += n


# ------------------------------------------------------------------------------ Prometheus

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A real Prometheus scraping `targets` ("host:port") every `scrape_s` seconds."""

    def __init__(self, workdir: Path, targets: list[str], scrape_s: float = 1.0,
                 binary: str = "prometheus"):
        self.workdir = Path(workdir)
        self.targets = list(targets)
        self.scrape_s = scrape_s
        self.binary = binary
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log_path = self.workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Prometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "prometheus.yml"
        interval = f"{int(self.scrape_s * 1000)}ms"
        # JSON is valid YAML: no YAML writer needed.
        cfg.write_text(json.dumps({
            "global": {"scrape_interval": interval, "evaluation_interval": interval,
                       "scrape_timeout": interval},
            "scrape_configs": [{"job_name": "hepfast", "scrape_interval": interval,
                                "scrape_timeout": interval, "metrics_path": "/metrics",
                                "static_configs": [{"targets": self.targets}]}],
        }))
        last_err = ""
        for _attempt in range(3):       # a free port can be taken between probe and bind
            self.port = free_port()
            log = open(self.log_path, "wb")
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={cfg}",
                 f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
                 "--storage.tsdb.retention.time=1h"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    last_err = self.log_tail()
                    break
                try:
                    with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                        if r.status == 200:
                            return self
                except (urllib.error.URLError, OSError):
                    pass
                time.sleep(0.1)
            else:
                self.stop()
                raise RuntimeError(f"prometheus not ready after {timeout:.0f} s:\n"
                                   f"{self.log_tail()}")
        raise RuntimeError(f"prometheus exited at start:\n{last_err}")

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def api(self, path: str, **params) -> dict:
        q = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{q}", timeout=5) as r:
            doc = json.loads(r.read())
        if doc.get("status") != "success":
            raise RuntimeError(f"prometheus API {path}: {doc}")
        return doc["data"]

    def query(self, expr: str) -> list[tuple[dict, float]]:
        """Instant query: [(labels, value)] of a vector result."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def value(self, expr: str) -> float | None:
        """The single value of `expr`, None when the vector is empty."""
        res = self.query(expr)
        if not res:
            return None
        assert len(res) == 1, f"{expr}: expected one series, got {res}"
        return res[0][1]

    def scrape_health(self) -> list[dict]:
        return [{"url": t["scrapeUrl"], "health": t["health"], "error": t.get("lastError", "")}
                for t in self.api("targets")["activeTargets"]]

    def wait_value(self, expr: str, expected: float, timeout: float = 30.0) -> float | None:
        """Poll until `expr` equals `expected` (bounded); returns the last value seen."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.value(expr)
            if last is not None and abs(last - expected) < 1e-9:
                return last
            time.sleep(0.25)
        return last

    def wait_scraped(self, timeout: float = 30.0) -> None:
        """Until every target was scraped successfully at least once (bounded)."""
        deadline = time.monotonic() + timeout
        health = []
        while time.monotonic() < deadline:
            health = self.scrape_health()
            if health and all(h["health"] == "up" for h in health):
                return
            time.sleep(0.25)
        raise AssertionError(f"prometheus did not scrape every target within {timeout:.0f} s: "
                             f"{health}\n{self.log_tail()}")


@pytest.fixture
def prometheus(tmp_path):
    """Factory: prometheus(["127.0.0.1:PORT"], scrape_s=1.0) -> a started Prometheus."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip(PROMETHEUS_MISSING)
    started: list[Prometheus] = []

    def start(targets: list[str], scrape_s: float = 1.0) -> Prometheus:
        p = Prometheus(tmp_path / f"prometheus-{len(started)}", targets, scrape_s, binary)
        started.append(p)
        return p.start()

    try:
        yield start
    finally:
        for p in started:
            p.stop()
