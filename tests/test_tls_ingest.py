"""HEP over TLS into a real `hepfast run` (OpenSSL in the worker's epoll loop), with certificates
this test makes with the `openssl` command: TLS in -> switch -> TLS out -> `hepfast sink`
byte-identical whatever the read boundaries; client certificates verified (a client without
one, or with one from another CA, refused and counted while a good client keeps flowing);
garbage, a close in the middle and a stalled handshake closing only their own connection,
counted; a reload serving a new server certificate to new connections; `hepfast replay
--transport tls` against the listener."""
from __future__ import annotations

import collections
import json
import os
import random
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hepfast.tools.sink import Sink
from tests.switchhelp import ROOT, SwitchProcess, check_accounting, corpus_messages
from tests.test_tcp_ingest import send_cut


# ------------------------------------------------------------------------- certificates

def _openssl() -> str:
    exe = shutil.which("openssl")
    if exe is None:
        pytest.skip("openssl not installed")
    return exe


def make_certs(d: Path) -> dict[str, str]:
    """A CA with a server certificate (localhost, 127.0.0.1) and a second one (same names, for
    the reload test), a good client certificate, and a client certificate of another CA."""
    o = _openssl()

    def run(*args):
        subprocess.run([o, *args], check=True, cwd=d, capture_output=True)

    for ca in ("ca", "other-ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            f"/CN=hepfast test {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.crt")
    for name, ca, ext in (("server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
                          ("server2", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
                          ("client", "ca", "extendedKeyUsage=clientAuth"),
                          ("stranger", "other-ca", "extendedKeyUsage=clientAuth")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
        (d / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", f"{name}.ext")
    return {p.name: str(p) for p in d.iterdir() if p.suffix in (".crt", ".key")}


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, str]:
    return make_certs(tmp_path_factory.mktemp("certs"))


def client_context(certs, who: str | None = "client") -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=certs["ca.crt"])
    if who is not None:
        ctx.load_cert_chain(certs[f"{who}.crt"], certs[f"{who}.key"])
    return ctx


def tls_connect(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def refused(port: int, ctx: ssl.SSLContext, probe: bytes) -> bool:
    """Connect and send `probe`: True when the server ends the connection (in the handshake,
    or, TLS 1.3, at the first read after it: the client's handshake ends before the server has
    checked its certificate)."""
    try:
        s = tls_connect(port, ctx)
    except (ssl.SSLError, OSError):
        return True
    try:
        s.settimeout(10)
        s.sendall(probe)
        return s.recv(1) == b""
    except (ssl.SSLError, OSError):
        return True
    finally:
        s.close()


def closed_by_peer(s: socket.socket, timeout: float = 10.0) -> bool:
    """True once the server has closed the connection within `timeout` (what it sent before,
    a handshake flight or an alert, is read and ignored)."""
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            s.settimeout(max(0.01, end - time.monotonic()))
            if s.recv(65536) == b"":
                return True
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        pass
    return False


def client_hello() -> bytes:
    """The first flight of a TLS client (its ClientHello), made in memory: sent alone on a raw
    socket it starts a handshake that never goes on."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


# ------------------------------------------------------------------------- configuration

def listener(certs, *, verify: str | None = None, cert: str = "server", extra: str = "") -> str:
    lines = [f'tls_cert = "{certs[f"{cert}.crt"]}"', f'tls_key = "{certs[f"{cert}.key"]}"',
             f'tls_ca = "{certs["ca.crt"]}"']
    if verify is not None:
        lines.append(f'tls_verify_client = "{verify}"')
    return "\n        ".join(lines) + "\n        " + extra


def config(certs, destination: str, *, workers: int = 1, verify: str | None = None,
           cert: str = "server", extra: str = "") -> str:
    return f"""
        [switch]
        workers = {workers}
        [[listeners]]
        name = "tls"
        listen = "127.0.0.1:0"
        transport = "tls"
        {listener(certs, verify=verify, cert=cert, extra=extra)}
        [destinations.out]
        {destination}
        [[rules]]
        name = "all"
        forward = ["out"]
        """


@pytest.fixture
def sink():
    s = Sink("127.0.0.1:0").start(timeout=120)
    yield s
    s.close()


def udp_out(port: int) -> str:
    return f'targets = ["127.0.0.1:{port}"]'


def read_hepraw(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        out.append(data[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out


# ------------------------------------------------------------------------- end to end

def test_tls_in_and_out_byte_identical_at_any_read_boundary(tmp_path, certs):
    """Three agents with client certificates send the corpus over TLS, cut at random byte
    boundaries (1 byte up to several messages per write), to two workers; a tls destination
    with a client certificate carries it to `hepfast sink --listen tls:` that requires one:
    every message arrives byte-identical, each agent's in the order it sent them."""
    pkts = corpus_messages()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    raw = tmp_path / "got.hepraw"
    sinkp = subprocess.Popen(
        [sys.executable, "-m", "hepfast", "sink", "--listen", "tls:127.0.0.1:0",
         "--tls-cert", certs["server2.crt"], "--tls-key", certs["server2.key"],
         "--tls-ca", certs["ca.crt"], "--raw", str(raw), "--timeout", "300", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    sw = None
    try:
        line = sinkp.stderr.readline()
        assert line.startswith("listening on tls:127.0.0.1:"), line
        out_port = int(line.rsplit(":", 1)[1])
        dest = (f'transport = "tls"\ntargets = ["127.0.0.1:{out_port}"]\n'
                f'tls_ca = "{certs["ca.crt"]}"\ntls_cert = "{certs["client.crt"]}"\n'
                f'tls_key = "{certs["client.key"]}"\ntls_server_name = "localhost"\n'
                f'mode = "hash"')
        text = config(certs, dest, workers=2).replace(
            "[switch]", '[admin]\n        listen = "127.0.0.1:0"\n        [switch]')
        sw = SwitchProcess(tmp_path, text, workers=2)
        rng = random.Random(11)
        conns = [tls_connect(sw.ports["tls"], client_context(certs)) for _ in range(3)]
        streams = [pkts[i::3] for i in range(3)]        # each agent its own share, in order
        for s, mine in zip(conns, streams, strict=True):
            send_cut(s, b"".join(mine), rng)
        for s in conns:
            s.close()
        total = len(pkts)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and forwarded(sw, "out") < total:
            time.sleep(0.2)
        assert forwarded(sw, "out") == total
        summary = sw.stop(timeout=60)
    finally:
        if sw is not None:
            sw.kill()
        time.sleep(0.5)
        if sinkp.poll() is None:
            sinkp.send_signal(signal.SIGTERM)
        out, _ = sinkp.communicate(timeout=60)
    got = read_hepraw(raw)
    assert collections.Counter(got) == collections.Counter(pkts)
    if len(set(pkts)) == len(pkts):
        # per agent: in the order it sent them (one connection is one worker's, one ring)
        owner = {m: i for i, mine in enumerate(streams) for m in mine}
        for i, mine in enumerate(streams):
            assert [m for m in got if owner[m] == i] == mine
    sink_summary = json.loads(out.strip().splitlines()[-1])
    assert sink_summary["received"] == total and sink_summary["invalid"] == 0
    c = summary["connections"]["tls"]
    assert c["accepted"] == 3 and c["closed"] == {"eof": 3}, c
    assert summary["datagrams"] == total and summary["invalid_total"] == 0
    check_accounting(summary)


def forwarded(sw, destination: str) -> int:
    """hepfast_packets_forwarded_total of a destination, summed over its targets (/metrics)."""
    import urllib.request

    url = next(ln.split()[1] for ln in sw.stderr().splitlines() if ln.startswith("admin http://"))
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return int(sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                   if ln.startswith("hepfast_packets_forwarded_total{")
                   and f'destination="{destination}"' in ln))


def test_client_certificates_verified_refused_and_counted(tmp_path, certs, sink):
    """tls_ca set: verification required by default. A client without a certificate and one
    whose certificate another CA signed are refused and counted as tls_verify; a good client on
    another connection keeps flowing before, during and after."""
    pkts = corpus_messages(limit=400)
    sw = SwitchProcess(tmp_path, config(certs, udp_out(sink.port)), workers=1,
                       extra=["--no-admin"])
    try:
        port = sw.ports["tls"]
        good = tls_connect(port, client_context(certs))
        good.sendall(b"".join(pkts[:100]))
        assert refused(port, client_context(certs, None), pkts[0])
        good.sendall(b"".join(pkts[100:200]))
        assert refused(port, client_context(certs, "stranger"), pkts[0])
        good.sendall(b"".join(pkts[200:]))
        assert sink.wait_for(len(pkts), timeout=30)
        good.close()
        sink.wait_quiet(0.3, timeout=10)
        summary = sw.stop()
    finally:
        sw.kill()
    assert collections.Counter(sink.packets) == collections.Counter(pkts)
    assert summary["connections"]["tls"]["closed"] == {"tls_verify": 2, "eof": 1}
    assert summary["invalid_total"] == 0
    check_accounting(summary)


def test_optional_verification_takes_clients_without_a_certificate(tmp_path, certs, sink):
    """tls_verify_client = "optional": no certificate is fine, a certificate that does not
    verify is not."""
    pkts = corpus_messages(limit=50)
    sw = SwitchProcess(tmp_path, config(certs, udp_out(sink.port), verify="optional"),
                       workers=1, extra=["--no-admin"])
    try:
        port = sw.ports["tls"]
        anon = tls_connect(port, client_context(certs, None))
        anon.sendall(b"".join(pkts))
        assert sink.wait_for(len(pkts), timeout=30)
        assert refused(port, client_context(certs, "stranger"), pkts[0])
        anon.close()
        summary = sw.stop()
    finally:
        sw.kill()
    assert summary["connections"]["tls"]["closed"] == {"tls_verify": 1, "eof": 1}


def test_hostile_peers_close_only_their_own_connection(tmp_path, certs, sink):
    """Garbage instead of a ClientHello, half a ClientHello then a close, a stalled handshake,
    raw bytes in the middle of a TLS stream, a bad HEP magic inside TLS: each closes its own
    connection, counted; the good agent's messages all arrive."""
    pkts = corpus_messages(limit=300)
    sw = SwitchProcess(tmp_path, config(certs, udp_out(sink.port),
                                        extra="message_timeout = 1.0"),
                       workers=1, extra=["--no-admin"])
    hello = client_hello()
    try:
        port = sw.ports["tls"]
        good = tls_connect(port, client_context(certs))
        good.sendall(b"".join(pkts[:100]))

        garbage = socket.create_connection(("127.0.0.1", port), timeout=10)
        garbage.sendall(b"GARBAGE, NOT A CLIENT HELLO\r\n" * 20)
        assert closed_by_peer(garbage)

        half = socket.create_connection(("127.0.0.1", port), timeout=10)
        half.sendall(hello[:len(hello) // 2])
        half.close()                                   # a close in the middle of a handshake

        t0 = time.monotonic()
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)   # says nothing
        stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
        stalled.sendall(hello)                         # a ClientHello, then nothing more
        good.sendall(b"".join(pkts[100:200]))
        assert closed_by_peer(silent) and closed_by_peer(stalled)
        assert 0.9 <= time.monotonic() - t0 < 5.0      # message_timeout, with the sweep's step

        mid = tls_connect(port, client_context(certs))
        mid.sendall(pkts[0])
        socket.socket.send(mid, b"\x17\x03\x03\x00\x20" + bytes(32))   # a forged record
        assert closed_by_peer(mid)

        badhep = tls_connect(port, client_context(certs))
        badhep.sendall(pkts[1] + b"NOT HEP AT ALL")
        assert closed_by_peer(badhep)

        good.sendall(b"".join(pkts[200:]))
        assert sink.wait_for(len(pkts) + 2, timeout=30)
        good.close()
        sink.wait_quiet(0.3, timeout=10)
        summary = sw.stop()
    finally:
        sw.kill()
    assert collections.Counter(sink.packets) == collections.Counter(pkts + pkts[:2])
    closed = summary["connections"]["tls"]["closed"]
    assert closed == {"tls_handshake": 4, "error": 1, "invalid": 1, "eof": 1}, closed
    assert summary["invalid"] == {"magic": 1}
    check_accounting(summary)


def test_mutated_handshakes_never_crash_the_worker(tmp_path, certs, sink):
    """Sixty connections with a ClientHello mutated at random (bytes flipped, cut, repeated,
    junk after it), closed at once or left to time out: none takes the worker down (no
    restart), each is closed and counted, and a good agent keeps flowing."""
    pkts = corpus_messages(limit=120)
    sw = SwitchProcess(tmp_path, config(certs, udp_out(sink.port),
                                        extra="message_timeout = 0.5"),
                       workers=1, extra=["--no-admin"])
    hello = client_hello()
    rng = random.Random(5)
    try:
        port = sw.ports["tls"]
        good = tls_connect(port, client_context(certs))
        hostile = []
        for i in range(60):
            m = bytearray(hello)
            for _ in range(rng.randint(1, 8)):
                m[rng.randrange(len(m))] = rng.randrange(256)
            how = i % 4
            if how == 1:
                m = m[:rng.randrange(5, len(m))]
            elif how == 2:
                m = m + m
            elif how == 3:
                m = m + bytes(rng.randrange(256) for _ in range(rng.randint(1, 3000)))
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(bytes(m))
            if rng.random() < 0.5:
                s.close()
            else:
                hostile.append(s)
            if i % 20 == 0:
                good.sendall(b"".join(pkts[i:i + 20]))
        for s in hostile:
            assert closed_by_peer(s)
        good.sendall(b"".join(pkts[60:]))
        assert sink.wait_for(len(pkts), timeout=30)
        good.close()
        sink.wait_quiet(0.3, timeout=10)
        summary = sw.stop()
    finally:
        sw.kill()
    assert collections.Counter(sink.packets) == collections.Counter(pkts)
    assert summary["restarts"] == 0
    c = summary["connections"]["tls"]
    assert c["accepted"] == 61 and c["open"] == 0
    assert sum(c["closed"].values()) == 61 and c["closed"]["eof"] >= 1
    assert set(c["closed"]) <= {"tls_handshake", "tls_verify", "eof", "error"}, c


def test_reload_serves_a_new_certificate_to_new_connections(tmp_path, certs, sink):
    """A reload that changes tls_cert/tls_key: connections made after it get the new
    certificate; one made before keeps its session and keeps flowing."""
    pkts = corpus_messages(limit=60)
    sw = SwitchProcess(tmp_path, config(certs, udp_out(sink.port)), workers=1,
                       extra=["--no-admin"])

    def der(name: str) -> bytes:
        return ssl.PEM_cert_to_DER_cert(Path(certs[f"{name}.crt"]).read_text())

    try:
        port = sw.ports["tls"]
        old = tls_connect(port, client_context(certs))
        assert old.getpeercert(binary_form=True) == der("server")
        old.sendall(b"".join(pkts[:20]))
        assert sink.wait_for(20, timeout=30)
        sw.cfg.write_text(sw.cfg.read_text().replace(certs["server.crt"], certs["server2.crt"])
                          .replace(certs["server.key"], certs["server2.key"]))
        sw.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "reloaded" not in sw.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "reloaded" in sw.stderr(), sw.stderr()
        new = tls_connect(port, client_context(certs))
        assert new.getpeercert(binary_form=True) == der("server2")
        new.sendall(b"".join(pkts[20:40]))
        old.sendall(b"".join(pkts[40:]))               # the old session still works
        assert sink.wait_for(len(pkts), timeout=30)
        old.close()
        new.close()
        summary = sw.stop()
    finally:
        sw.kill()
    assert collections.Counter(sink.packets) == collections.Counter(pkts)
    assert summary["connections"]["tls"]["closed"] == {"eof": 2}


def test_reload_rereads_a_certificate_renewed_in_place(tmp_path, certs, sink):
    """The same paths, new contents (a renewal): a reload serves the new certificate."""
    for ext in ("crt", "key"):
        shutil.copy(certs[f"server.{ext}"], tmp_path / f"live.{ext}")
    files = dict(certs, **{"live.crt": str(tmp_path / "live.crt"),
                           "live.key": str(tmp_path / "live.key")})
    sw = SwitchProcess(tmp_path, config(files, udp_out(sink.port), cert="live"), workers=1,
                       extra=["--no-admin"])

    def der(name: str) -> bytes:
        return ssl.PEM_cert_to_DER_cert(Path(certs[f"{name}.crt"]).read_text())

    try:
        port = sw.ports["tls"]
        first = tls_connect(port, client_context(certs))
        assert first.getpeercert(binary_form=True) == der("server")
        first.close()
        for ext in ("crt", "key"):
            shutil.copy(certs[f"server2.{ext}"], tmp_path / f"live.{ext}")
        sw.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "reloaded" not in sw.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "reloaded" in sw.stderr(), sw.stderr()
        second = tls_connect(port, client_context(certs))
        assert second.getpeercert(binary_form=True) == der("server2")
        second.close()
        sw.stop()
    finally:
        sw.kill()


def test_replay_over_tls_into_a_tls_listener(tmp_path, certs, sink):
    """`hepfast replay --transport tls` with a client certificate: the switch receives exactly
    what replay says it sent, and forwards it."""
    sw = SwitchProcess(tmp_path, config(certs, udp_out(sink.port)), workers=1,
                       extra=["--no-admin"])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        rep = subprocess.run(
            [sys.executable, "-m", "hepfast", "replay", "synthetic:calls=50,cps=1000",
             "--to", f"127.0.0.1:{sw.ports['tls']}", "--transport", "tls", "--quiet",
             "--tls-ca", certs["ca.crt"], "--tls-cert", certs["client.crt"],
             "--tls-key", certs["client.key"], "--tls-server-name", "localhost"],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
        assert rep.returncode == 0, rep.stderr
        sent = json.loads(rep.stdout.strip().splitlines()[-1])
        assert sent["sent"] > 0 and sent["errors"] == 0
        assert sink.wait_for(sent["sent"], timeout=30)
        summary = sw.stop()
    finally:
        sw.kill()
    assert summary["received"] == sent["sent"] == len(sink.packets)
    assert summary["connections"]["tls"]["closed"] == {"eof": 1}
    check_accounting(summary)


# ------------------------------------------------------------------------- configuration

def _compile(certs, body: str):
    from hepfast.plan.compile import compile_text

    return compile_text(f"""
[[listeners]]
name = "a"
listen = "127.0.0.1:9443"
{body}
[destinations.c]
targets = ["127.0.0.1:9"]
[[rules]]
name = "all"
forward = ["c"]
""")


@pytest.mark.parametrize("body, field", [
    ('transport = "tcp"\ntls_cert = "{server.crt}"', "tls_cert"),
    ('transport = "udp"\ntls_min_version = "1.3"', "tls_min_version"),
    ('transport = "udp"\nmax_reads = 5', "max_reads"),
    ('transport = "tls"\ntls_key = "{server.key}"', "tls_cert"),
    ('transport = "tls"\ntls_cert = "{server.crt}"', "tls_key"),
    ('transport = "tls"\ntls_cert = "/nonexistent.crt"\ntls_key = "{server.key}"', "tls_cert"),
    ('transport = "tls"\ntls_cert = "{server.key}"\ntls_key = "{server.key}"', "tls_cert"),
    ('transport = "tls"\ntls_cert = "{server.crt}"\ntls_key = "{client.key}"', "tls_key"),
    ('transport = "tls"\ntls_cert = "{server.crt}"\ntls_key = "{server.crt}"', "tls_key"),
    ('transport = "tls"\ntls_cert = "{server.crt}"\ntls_key = "{server.key}"\n'
     'tls_ca = "{server.key}"', "tls_ca"),
    ('transport = "tls"\ntls_cert = "{server.crt}"\ntls_key = "{server.key}"\n'
     'tls_verify_client = "required"', "tls_verify_client"),
])
def test_listener_tls_keys_are_checked(certs, body, field):
    from hepfast.config import ConfigError

    with pytest.raises(ConfigError) as ei:
        _compile(certs, body.format(**{k.split(".")[0]: _Files(certs, k.split(".")[0])
                                       for k in certs}))
    assert f"listeners[0].{field}" in str(ei.value)


class _Files:
    """"{server.crt}" in a parametrized body: the file made for this run."""

    def __init__(self, certs, stem):
        self.certs, self.stem = certs, stem

    def __getattr__(self, ext):
        return self.certs[f"{self.stem}.{ext}"]


def test_listener_tls_defaults_and_plan(certs):
    """verify_client defaults to required with a CA and none without; the plan carries
    absolute paths and the mode for the workers."""
    from hepfast.plan.emit import _listener_tls

    base = f'transport = "tls"\ntls_cert = "{certs["server.crt"]}"\n' \
           f'tls_key = "{certs["server.key"]}"'
    c = _compile(certs, base)
    assert c.config.listeners[0].verify_client == "none"
    assert _listener_tls(c.config.listeners[0])["tls_verify"] == 0
    c = _compile(certs, base + f'\ntls_ca = "{certs["ca.crt"]}"\ntls_min_version = "1.3"')
    lc = c.config.listeners[0]
    assert lc.verify_client == "required"
    t = _listener_tls(lc)
    cert, ca, verify, version = t["tls_cert"], t["tls_ca"], t["tls_verify"], t["tls_min_version"]
    assert os.path.isabs(cert) and ca == certs["ca.crt"] and verify == 2 and version == "1.3"


def test_check_names_the_field_of_a_bad_key(tmp_path, certs):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f"""
[[listeners]]
name = "agents"
listen = "127.0.0.1:9443"
transport = "tls"
tls_cert = "{certs["server.crt"]}"
tls_key = "{certs["client.key"]}"
[destinations.c]
targets = ["127.0.0.1:9"]
[[rules]]
name = "all"
forward = ["c"]
""")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "hepfast", "check", "-c", str(cfg)],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert r.returncode == 2
    assert "listeners[0].tls_key" in r.stderr and "not the key of tls_cert" in r.stderr


def test_minimum_version_1_3_refuses_tls_1_2(tmp_path, certs, sink):
    sw = SwitchProcess(tmp_path, config(certs, udp_out(sink.port), verify="none",
                                        extra='tls_min_version = "1.3"'),
                       workers=1, extra=["--no-admin"])
    try:
        ctx = client_context(certs, None)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, OSError)):
            tls_connect(sw.ports["tls"], ctx).recv(1)
        ok = tls_connect(sw.ports["tls"], client_context(certs, None))
        assert ok.version() == "TLSv1.3"
        ok.close()
        summary = sw.stop()
    finally:
        sw.kill()
    assert summary["connections"]["tls"]["closed"] == {"tls_handshake": 1, "eof": 1}
