"""A real agent: Kamailio's siptrace sends HEPv3 to hepfast (over UDP and over TCP) while SIPp
places calls through Kamailio; every message Kamailio traced reaches the collector behind
hepfast, byte for byte as hepfast received it.

Kamailio (Debian `kamailio`) and SIPp (Debian `sip-tester`) are installed by the test command
(scripts/ensure-deps.sh); the tests skip with the reason when they are absent. Everything runs on
loopback with ephemeral ports and stops by itself.
"""
from __future__ import annotations

import collections
import os
import shutil
import socket
import subprocess
import time

import pytest

from hepfast.tools.sink import Sink
from hepfast.wire import codec
from tests.switchhelp import SwitchProcess, check_accounting, free_udp_port

MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"
CALLS = 25

pytestmark = pytest.mark.skipif(
    not (shutil.which("kamailio") and shutil.which("sipp") and os.path.isdir(MODULES)),
    reason="kamailio and sipp are not installed (scripts/ensure-deps.sh installs them)")


def kamailio_config(sip_port: int, hep_port: int, transport: str) -> str:
    return f"""#!KAMAILIO
debug=1
log_stderror=yes
children=1
tcp_children=1
listen=udp:127.0.0.1:{sip_port}
listen=tcp:127.0.0.1:{sip_port}
mpath="{MODULES}/"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "siptrace.so"
modparam("siptrace", "duplicate_uri", "sip:127.0.0.1:{hep_port};transport={transport}")
modparam("siptrace", "hep_mode_on", 1)
modparam("siptrace", "hep_version", 3)
modparam("siptrace", "hep_capture_id", 4711)
modparam("siptrace", "trace_to_database", 0)
modparam("siptrace", "trace_on", 1)
request_route {{
    sip_trace();
    if ($rm == "ACK") exit;
    sl_send_reply("200", "OK");
}}
"""


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_kamailio_siptrace_through_hepfast(tmp_path, transport):
    sink = Sink("127.0.0.1:0").start(timeout=60)
    hep_port, sip_port, sipp_port = free_udp_port(), free_udp_port(), free_udp_port()
    sw = SwitchProcess(tmp_path, f"""
        [switch]
        workers = 2
        [[listeners]]
        name = "kamailio"
        listen = "127.0.0.1:{hep_port}"
        transport = "{transport}"
        [destinations.collector]
        targets = ["127.0.0.1:{sink.port}"]
        [[rules]]
        name = "all"
        forward = ["collector"]
        """, workers=2, extra=["--no-admin"])
    cfg = tmp_path / "kamailio.cfg"
    cfg.write_text(kamailio_config(sip_port, hep_port, transport))
    kam = subprocess.Popen(["kamailio", "-f", str(cfg), "-DD", "-E", "-w", str(tmp_path)],
                           stdout=subprocess.DEVNULL, stderr=open(tmp_path / "kam.log", "w"))
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:             # up once its TCP port answers
            try:
                socket.create_connection(("127.0.0.1", sip_port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.3)
        sipp = subprocess.run(
            ["sipp", "-sn", "uac", f"127.0.0.1:{sip_port}", "-m", str(CALLS), "-r", "50",
             "-i", "127.0.0.1", "-p", str(sipp_port), "-nostdin", "-timeout", "60",
             "-trace_stat", "-stf", str(tmp_path / "sipp.csv")],
            capture_output=True, text=True, timeout=90, cwd=tmp_path)
        assert sipp.returncode == 0, sipp.stdout[-2000:] + sipp.stderr[-2000:]
        kam.terminate()                                # closes its TCP connection to us
        kam.wait(20)
        # Each call: INVITE, ACK and BYE pass Kamailio's request route and are traced.
        assert sink.wait_for(3 * CALLS, timeout=30), sink.received
        sink.wait_quiet(0.5, timeout=10)
        summary = sw.stop()
    finally:
        if kam.poll() is None:
            kam.kill()
        sw.kill()
        sink.close()
    log = (tmp_path / "kam.log").read_text()
    assert "ERROR" not in log, log[-3000:]
    assert summary["datagrams"] == summary["received"] == sink.received == 3 * CALLS
    assert summary["invalid_total"] == 0
    methods = collections.defaultdict(list)
    for raw in sink.packets:
        p = codec.decode(raw)
        assert p.version == 3 and p.capture_id == 4711 and p.proto_type == 1
        assert p.src_port == sipp_port and p.dst_port == sip_port
        rec = p.to_dict()
        methods[rec["sip_call_id"]].append(rec["sip_method"])
    assert len(methods) == CALLS
    assert all(sorted(m) == ["ACK", "BYE", "INVITE"] for m in methods.values()), methods
    if transport == "tcp":
        assert summary["connections"]["kamailio"]["accepted"] >= 1
        assert summary["connections"]["kamailio"]["closed"].get("invalid", 0) == 0
    check_accounting(summary)
