"""hepfast.observe.admin (the admin HTTP API over a fake supervisor), hepfast.observe.redact, the
admin checks of hepfast.config.validate, and hepfast.observe.log.

Real HTTP on 127.0.0.1 with an ephemeral port; the rate sampler runs on a fake clock the test
advances, so rates are exact without any sleeping. Connection limits and timeouts are tested with
raw sockets and small limits; every wait is bounded.
"""
from __future__ import annotations

import io
import json
import logging
import os
import socket
import urllib.error
import urllib.request

import pytest

from hepfast.dataplane import counters as C
from hepfast.wire import reasons
from hepfast.observe.admin import AdminServer, parse_listen
from hepfast.observe.log import RateLimitedLogger, setup_logging
from tests.promhelper import FakeSup


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def sup():
    return FakeSup(workers=2)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def admin(sup, clock):
    a = AdminServer(sup, "127.0.0.1:0", sampler=False, clock=clock)
    a.start()
    try:
        yield a
    finally:
        a.stop()


def http(admin, path, method="GET", data=None, headers=None):
    """(status, headers, body text) without raising on 4xx/5xx."""
    req = urllib.request.Request(f"{admin.url}{path}", method=method, data=data,
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


def test_port_zero_gets_a_real_port(admin):
    assert admin.port > 0
    assert admin.url == f"http://127.0.0.1:{admin.port}"


def test_metrics_endpoint(admin, sup):
    sup.add(0, C.OFF_RECEIVED + 1, 7)
    sup.add(1, C.OFF_RECEIVED + 1, 3)
    code, headers, body = http(admin, "/metrics")
    assert code == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert 'hepfast_packets_received_total{listener="agents",proto_type="sip"} 10.0' in body
    assert "process_cpu_seconds_total" in body
    sup.add(0, C.OFF_RECEIVED + 1, 5)                  # read at scrape time, not cached
    assert 'proto_type="sip"} 15.0' in http(admin, "/metrics")[2]


def test_healthz(admin, sup):
    assert http(admin, "/healthz")[:1] == (200,)
    assert http(admin, "/healthz")[2].strip() == "ok"
    sup.alive[1] = False
    code, _, body = http(admin, "/healthz")
    assert code == 503
    assert "worker 1 is not running" in body
    sup.alive[1] = True
    assert http(admin, "/healthz")[0] == 200


def test_status_document(admin, sup):
    sup.add(0, C.OFF_RECEIVED + 0 * 256 + 1, 8)              # agents sip
    sup.add(1, C.OFF_RECEIVED + 1 * 256 + 5, 2)              # edge rtcp
    sup.add(0, C.OFF_INVALID + 1 * C.N_INVALID + reasons.ACL, 3)
    sup.add(0, C.OFF_RULE + 5, 8)                            # "sip"
    sup.add(1, C.OFF_FORWARDED + 7, 5)                       # homer 127.0.0.1:9061
    sup.add(0, C.OFF_FORWARDED + 3, 3)                       # homer 127.0.0.1:9062
    sup.add(1, C.OFF_DROP + reasons.DROP_RULE, 2)
    sup.generation = 3
    sup.reload_counts = {"ok": 2, "error": 1}
    sup.last_reload_error = 'rules[0].forward[0]: unknown destination "homr"'
    sup.restarts = 1
    code, headers, body = http(admin, "/status")
    assert code == 200
    assert headers["Content-Type"] == "application/json"
    st = json.loads(body)
    assert st["generation"] == 3
    assert st["healthy"] is True and st["health"] == "ok"
    assert 64 < st["uptime_s"] < 3600
    assert [w["index"] for w in st["workers"]] == [0, 1]
    assert st["restarts"] == 1
    assert st["reloads"] == {"ok": 2, "error": 1,
                             "last_error": 'rules[0].forward[0]: unknown destination "homr"',
                             "in_progress": False, "waiting": 0}
    lis = {li["name"]: li for li in st["listeners"]}
    assert lis["agents"]["received"] == 8 and lis["agents"]["proto_types"] == {"sip": 8}
    assert lis["edge"]["received"] == 2 and lis["edge"]["invalid"] == 3
    assert lis["edge"]["address"] == "127.0.0.1:40000"       # the bound port, not 0
    assert {r["name"]: r["packets"] for r in st["rules"]} == {"sip": 8, "rtcp": 0, "rest": 0}
    dests = {d["name"]: d for d in st["destinations"]}
    assert dests["homer"]["packets"] == 8
    assert [(t["target"], t["packets"], t["up"]) for t in dests["homer"]["targets"]] == \
        [("127.0.0.1:9061", 5, True), ("127.0.0.1:9062", 3, True)]
    assert dests["qos"]["targets"][0]["target"] == "[::1]:9063"
    assert st["dropped"]["rule"]["packets"] == 2
    assert st["invalid"]["acl"]["packets"] == 3
    assert st["totals"]["received"] == 10 and st["totals"]["forwarded"] == 8


def test_status_rates(admin, sup, clock):
    sup.add(0, C.OFF_RECEIVED + 1, 100)
    admin.sample()                                      # reference at t=1000
    clock.t += 2.0
    sup.add(0, C.OFF_RECEIVED + 1, 300)                 # +400 in 2 s over two workers
    sup.add(1, C.OFF_RECEIVED + 1, 100)
    sup.add(1, C.OFF_RULE + 2, 50)                      # rtcp: 25/s
    sup.add(0, C.OFF_FORWARDED + 11, 10)                # qos: 5/s
    sup.add(0, C.OFF_DROP + reasons.DROP_NO_ROUTE, 6)   # 3/s
    st = json.loads(http(admin, "/status")[2])
    assert st["rate_window_s"] == 2.0
    lis = {li["name"]: li for li in st["listeners"]}
    assert lis["agents"]["received_rate"] == 200.0
    assert lis["edge"]["received_rate"] == 0.0
    assert {r["name"]: r["rate"] for r in st["rules"]}["rtcp"] == 25.0
    dests = {d["name"]: d for d in st["destinations"]}
    assert dests["qos"]["rate"] == 5.0 and dests["qos"]["targets"][0]["rate"] == 5.0
    assert st["dropped"]["no_route"] == {"packets": 6, "rate": 3.0}


def test_status_target_down(admin, sup):
    import time
    slot = sup.target_slot("homer", "127.0.0.1", 9061)
    sup.add(1, C.OFF_SEND_ERR + slot, 4)
    sup.counters.rows[1][C.OFF_LAST_ERR + slot] = time.monotonic_ns()
    st = json.loads(http(admin, "/status")[2])
    t = st["destinations"][0]["targets"][0]
    assert t["target"] == "127.0.0.1:9061"
    assert t["up"] is False and t["send_errors"] == 4
    assert 0 <= t["last_error_age_s"] < 60


def test_reload_ok(admin, sup):
    code, _, body = http(admin, "/reload", method="POST", data=b"")
    assert code == 200
    assert "generation 2" in body
    assert sup.reload_calls == 1
    st = json.loads(http(admin, "/status")[2])
    assert st["generation"] == 2 and st["reloads"]["ok"] == 1
    assert 'hepfast_config_reloads_total{result="ok"} 1.0' in http(admin, "/metrics")[2]


def test_reload_error_names_the_field(admin, sup):
    sup.reload_result = (False, 'rules[2].forward[0]: unknown destination "homr"')
    code, _, body = http(admin, "/reload", method="POST", data=b"")
    assert code == 400
    assert 'rules[2].forward[0]: unknown destination "homr"' in body
    assert "previous config keeps running" in body
    st = json.loads(http(admin, "/status")[2])
    assert st["generation"] == 1
    assert st["reloads"]["error"] == 1
    assert "rules[2].forward[0]" in st["reloads"]["last_error"]
    assert 'hepfast_config_reloads_total{result="error"} 1.0' in http(admin, "/metrics")[2]


def test_handler_error_answers_500_and_keeps_serving(admin, sup, caplog):
    def boom():
        raise RuntimeError("supervisor exploded")
    sup.request_reload = boom
    with caplog.at_level(logging.ERROR, logger="hepfast.observe.admin"):
        code, _, body = http(admin, "/reload", method="POST", data=b"")
    assert code == 500 and "supervisor exploded" in body
    assert http(admin, "/healthz")[0] == 200


def test_unknown_path_and_wrong_method(admin):
    code, _, body = http(admin, "/nope")
    assert code == 404 and "/metrics" in body
    code, headers, _ = http(admin, "/reload")
    assert code == 405 and headers["Allow"] == "POST"
    code, headers, _ = http(admin, "/status", method="POST", data=b"")
    assert code == 405 and headers["Allow"] == "GET"


def test_stop_releases_the_port(sup):
    a = AdminServer(sup, "127.0.0.1:0", sampler=True, sample_s=0.05)
    a.start()
    port = a.port
    assert http(a, "/healthz")[0] == 200
    a.stop()
    with socket.socket() as s:
        with pytest.raises(OSError):
            s.settimeout(1)
            s.connect(("127.0.0.1", port))


def test_address_in_use_says_what_to_change(sup):
    a = AdminServer(sup, "127.0.0.1:0", sampler=False)
    a.start()
    try:
        b = AdminServer(sup, f"127.0.0.1:{a.port}", sampler=False)
        with pytest.raises(OSError, match="admin.listen"):
            b.start()
    finally:
        a.stop()


def test_ipv6_listen(sup):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support")
    a = AdminServer(sup, "[::1]:0", sampler=False)
    try:
        a.start()
    except OSError as exc:
        pytest.skip(f"cannot bind [::1]: {exc}")
    try:
        assert a.url.startswith("http://[::1]:")
        assert http(a, "/healthz")[0] == 200
    finally:
        a.stop()


def test_parse_listen():
    assert parse_listen("127.0.0.1:9096") == ("127.0.0.1", 9096)
    assert parse_listen("[::1]:9096") == ("::1", 9096)
    assert parse_listen(("0.0.0.0", 0)) == ("0.0.0.0", 0)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen("localhost")


# ------------------------------------------------------------------------------ token, Host, Origin

TOKEN = "t0ken-for-tests-9f3a"


@pytest.fixture
def guarded(sup, clock):
    """An admin API with a token, and a tight connection limit and timeout."""
    a = AdminServer(sup, "127.0.0.1:0", token=TOKEN, sampler=False, clock=clock,
                    max_connections=4, timeout_s=0.5)
    a.start()
    try:
        yield a
    finally:
        a.stop()


def bearer(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def test_status_and_reload_need_the_token(guarded, sup):
    for path, method in (("/status", "GET"), ("/reload", "POST")):
        data = b"" if method == "POST" else None
        code, headers, body = http(guarded, path, method, data)
        assert code == 401, (path, body)
        assert headers["WWW-Authenticate"] == 'Bearer realm="hepfast admin"'
        assert "admin.token" in body and "Authorization: Bearer" in body
        code, headers, body = http(guarded, path, method, data, bearer("wrong-token"))
        assert code == 401 and "wrong" in body
        assert 'error="invalid_token"' in headers["WWW-Authenticate"]
        code, headers, body = http(guarded, path, method, data, {"Authorization": TOKEN})
        assert code == 401                                   # the scheme is required
    assert sup.reload_calls == 0
    assert http(guarded, "/status", headers=bearer())[0] == 200
    assert http(guarded, "/reload", "POST", b"", bearer())[0] == 200
    assert sup.reload_calls == 1


def test_healthz_and_metrics_open_by_default(guarded):
    assert http(guarded, "/healthz")[0] == 200
    code, _, body = http(guarded, "/metrics")
    assert code == 200 and "hepfast_config_reloads_total" in body


def test_metrics_auth_puts_metrics_behind_the_token(sup):
    a = AdminServer(sup, "127.0.0.1:0", token=TOKEN, metrics_auth=True, sampler=False)
    a.start()
    try:
        assert http(a, "/metrics")[0] == 401
        code, _, body = http(a, "/metrics", headers=bearer())
        assert code == 200 and "hepfast_config_reloads_total" in body
        assert http(a, "/healthz")[0] == 200                 # probes never need the token
    finally:
        a.stop()


def _config(admin_lines: str, listener_lines: str = "") -> str:
    return ("[admin]\n" + admin_lines + "\n[[listeners]]\nname = \"a\"\n"
            "listen = \"127.0.0.1:0\"\n" + listener_lines + "\n[destinations.d]\n"
            "targets = [\"127.0.0.1:9\"]\n[[rules]]\nname = \"r\"\nforward = [\"d\"]\n")


def test_token_comes_from_the_running_config_and_rotates(sup, monkeypatch):
    from hepfast.config import parse_config

    monkeypatch.delenv("HEPFAST_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("HEPFAST_TEST_ADMIN_TOKEN", "from-the-environment-1")
    sup.compiled.config = parse_config(_config('listen = "127.0.0.1:0"\n'
                                               'token_env = "HEPFAST_TEST_ADMIN_TOKEN"'))
    a = AdminServer(sup, "127.0.0.1:0", sampler=False)
    a.start()
    try:
        assert http(a, "/status")[0] == 401
        assert http(a, "/status", headers=bearer("from-the-environment-1"))[0] == 200
        # a reload publishes a new config: its token is the one in force at once
        sup.compiled.config = parse_config(_config('listen = "127.0.0.1:0"\n'
                                                   'token = "rotated-token-2"\n'
                                                   'metrics_auth = true'))
        assert http(a, "/status", headers=bearer("from-the-environment-1"))[0] == 401
        assert http(a, "/status", headers=bearer("rotated-token-2"))[0] == 200
        assert http(a, "/metrics")[0] == 401
    finally:
        a.stop()


def raw(admin, request: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes as they are, read until the server closes or stops sending (bounded)."""
    with socket.create_connection(("127.0.0.1", admin.port), timeout=timeout) as s:
        s.sendall(request)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out:
                head, _, body = out.partition(b"\r\n\r\n")
                n = [int(ln.split(b":")[1]) for ln in head.split(b"\r\n")
                     if ln.lower().startswith(b"content-length:")]
                if n and len(body) >= n[0]:
                    break
        return out


def test_host_must_be_loopback_on_a_loopback_listener(guarded):
    port = guarded.port
    ok = [f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}",
          "127.0.0.1", "localhost", f"127.1.2.3:{port}"]
    bad = [f"evil.example:{port}", "evil.example", f"127.0.0.1:{port + 1}", f"10.0.0.1:{port}",
           f"localhost.evil.example:{port}", "[::1", f"127.0.0.1:{port}:1"]
    for host in ok:
        assert http(guarded, "/healthz", headers={"Host": host})[0] == 200, host
    for host in bad:
        code, _, body = http(guarded, "/healthz", headers={"Host": host})
        assert code == 403, host
        assert "not this admin API" in body
    # the token does not excuse a foreign Host (a rebound page could have learnt it)
    assert http(guarded, "/status", headers={"Host": "evil.example", **bearer()})[0] == 403
    # no Host at all (HTTP/1.0 tools): a browser always sends one, so this is no rebinding
    assert raw(guarded, b"GET /healthz HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200")


def test_cross_site_form_post_to_reload_is_refused(admin, sup):
    """No token configured (loopback only): the Origin check alone stops a web page."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{admin.port + 1}",
                   f"https://127.0.0.1:{admin.port}"):
        code, _, body = http(admin, "/reload", "POST", b"a=b", {**form, "Origin": origin})
        assert code == 403 and "cross-origin" in body, origin
    # foreign Host and Origin together (what a rebound page sends)
    code, _, _ = http(admin, "/reload", "POST", b"a=b",
                      {**form, "Origin": "http://evil.example", "Host": "evil.example"})
    assert code == 403
    assert sup.reload_calls == 0
    code, _, _ = http(admin, "/reload", "POST", b"",
                      {"Origin": f"http://127.0.0.1:{admin.port}"})       # its own origin
    assert code == 200 and sup.reload_calls == 1


def test_body_limits(admin, sup):
    big = raw(admin, b"POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 9999999\r\n"
                     b"\r\n")
    assert big.startswith(b"HTTP/1.1 413")
    chunked = raw(admin, b"POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 411")
    assert sup.reload_calls == 0


# ------------------------------------------------------------------------------ bounded resources

def _conn_threads() -> int:
    import threading
    return sum(1 for t in threading.enumerate() if t.name == "hepfast-admin-conn")


def _wait_closed(s: socket.socket, timeout: float = 10.0) -> bytes:
    """What the server sent before closing `s` (bounded); raises if it is still open."""
    import time
    s.settimeout(0.2)
    out = b""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk
    raise AssertionError(f"the server kept the connection open for {timeout} s")


def test_half_sent_request_is_dropped(guarded):
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=5) as s:
        s.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")        # never finished
        assert _wait_closed(s) == b""
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=5) as s:
        pass                                                              # idle: not a byte
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=5) as s:
        assert _wait_closed(s) == b""


def test_trickled_request_is_dropped_by_the_whole_request_deadline(guarded):
    """One byte at a time, each well within a per-read timeout: the deadline is per request."""
    import time
    req = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 400 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=5) as s:
        sent = 0
        try:
            for i in range(len(req)):
                s.send(req[i:i + 1])
                sent += 1
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _wait_closed(s)
    assert sent < len(req), "the server waited for the whole trickled request"
    assert b"200 OK" not in answer


def test_connections_are_bounded_and_recover(guarded):
    held = [socket.create_connection(("127.0.0.1", guarded.port), timeout=5) for _ in range(4)]
    try:
        for s in held:
            s.sendall(b"GET /status HTTP/1.1\r\n")                       # half-sent
        import time
        end = time.monotonic() + 10
        while _conn_threads() < 4 and time.monotonic() < end:
            time.sleep(0.01)
        extra = [socket.create_connection(("127.0.0.1", guarded.port), timeout=5)
                 for _ in range(20)]
        answers = []
        for s in extra:
            try:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            answers.append(_wait_closed(s))
            s.close()
        assert _conn_threads() <= 4
        # each extra connection was answered 503 (or closed before it could be): never served
        assert all(a.startswith(b"HTTP/1.1 503") or a == b"" for a in answers), answers
        assert guarded.refused >= 1
        assert any(a.startswith(b"HTTP/1.1 503") for a in answers)
        # the held ones time out, and the API serves again
        for s in held:
            assert _wait_closed(s) == b""
    finally:
        for s in held:
            s.close()
    assert http(guarded, "/healthz")[0] == 200


def test_keep_alive_serves_several_requests(guarded):
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=5) as s:
        f = s.makefile("rb")
        for _ in range(3):
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert f.readline().startswith(b"HTTP/1.1 200")
            while f.readline() not in (b"\r\n", b""):
                pass
            assert f.read(3) == b"ok\n"


# ------------------------------------------------------------------------------ secrets

def test_secrets_masked_in_reload_answer_status_and_log(sup, tmp_path, caplog, monkeypatch):
    from hepfast.config import parse_config

    monkeypatch.delenv("HEPFAST_ADMIN_TOKEN", raising=False)
    cfg = tmp_path / "hepfast.toml"
    text = _config('listen = "127.0.0.1:0"\ntoken = "admin-token-0042"',
                   'auth_key = "agent-key-7731"')
    cfg.write_text(text)
    sup.config_path = cfg
    sup.compiled.config = parse_config(text)
    # a refused file's own secrets are masked too (here: a DSN password it introduces)
    cfg.write_text(text + '[destinations.pg]\ntransport = "postgres"\n'
                   'dsn = "postgresql://homer:pg-pass-5521@db/homer"\n')
    sup.reload_result = (False, 'listeners[0].auth_key: "agent-key-7731" is wrong; '
                                'destinations.pg.dsn: cannot reach '
                                'postgresql://homer:pg-pass-5521@db/homer')
    a = AdminServer(sup, "127.0.0.1:0", sampler=False)
    a.start()
    try:
        with caplog.at_level(logging.DEBUG, logger="hepfast.observe.admin"):
            code, _, body = http(a, "/reload", "POST", b"", bearer("admin-token-0042"))
            st = http(a, "/status", headers=bearer("admin-token-0042"))[2]

            def boom():
                raise RuntimeError("lost admin-token-0042 and agent-key-7731")
            sup.request_reload = boom
            code500, _, body500 = http(a, "/reload", "POST", b"", bearer("admin-token-0042"))
    finally:
        a.stop()
    assert code == 400 and "listeners[0].auth_key" in body and "***" in body
    assert json.loads(st)["reloads"]["last_error"].count("***") == 2
    assert code500 == 500 and "***" in body500
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "lost ***" in logged
    for secret in ("agent-key-7731", "pg-pass-5521", "admin-token-0042"):
        assert secret not in body and secret not in st and secret not in body500, secret
        assert secret not in logged, secret


def test_mask_secrets_and_redact():
    from hepfast.observe.redact import mask_secrets, redact, secrets_of

    assert mask_secrets("key s3cr3t-key here", ["s3cr3t-key"]) == "key *** here"
    assert mask_secrets("postgresql://homer:hunter2@db:5432/homer") == \
        "postgresql://homer:***@db:5432/homer"
    assert mask_secrets('auth_key = "abc123" and token=xyz; Authorization: Bearer QWE.rty') == \
        'auth_key = "***" and token=***; Authorization: Bearer ***'
    assert mask_secrets("host=db password=hunter2 dbname=x") == "host=db password=*** dbname=x"
    # the field names themselves are not secrets: errors stay readable
    assert mask_secrets("admin.token: set a token") == "admin.token: set a token"
    doc = {"listeners": [{"name": "a", "auth_key": "k1"}],
           "destinations": {"pg": {"dsn": "postgresql://u:pw9@h/db", "auth_key": ""}},
           "admin": {"token": "tk", "token_env": "NOPE_UNSET_VAR"}, "note": "k1 leaked"}
    assert redact(doc, ["k1"]) == {
        "listeners": [{"name": "a", "auth_key": "***"}],
        "destinations": {"pg": {"dsn": "postgresql://u:***@h/db", "auth_key": ""}},
        "admin": {"token": "***", "token_env": "NOPE_UNSET_VAR"}, "note": "*** leaked"}
    assert sorted(secrets_of(doc, environ={})) == ["k1", "pw9", "tk"]
    assert "sekrit" in secrets_of({"admin": {"token_env": "T"}}, environ={"T": "sekrit"})
    assert secrets_of({}, environ={"HEPFAST_ADMIN_TOKEN": "envtok"}) == ["envtok"]


def test_secret_filter_masks_message_args_and_traceback():
    from hepfast.observe.redact import SecretFilter

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    logger = logging.getLogger("hepfast.test.redact")
    h = Keep()
    h.addFilter(SecretFilter(lambda: ["k-123"]))
    logger.addHandler(h)
    logger.propagate = False
    try:
        logger.error("refused key %s", "k-123")
        try:
            raise ValueError("bad key k-123")
        except ValueError:
            logger.exception("reload failed")
    finally:
        logger.removeHandler(h)
        logger.propagate = True
    assert records[0] == "refused key ***"
    assert "reload failed | Traceback" in records[1] and "bad key ***" in records[1]
    assert all("k-123" not in r for r in records)


# ------------------------------------------------------------------------------ config checks

@pytest.mark.parametrize("admin_lines,path,words", [
    ('listen = "0.0.0.0:9096"', "admin.token", "not a loopback address"),
    ('listen = "[::]:9096"', "admin.token", "not a loopback address"),
    ('listen = "10.1.2.3:9096"\ntoken = ""', "admin.token", "set admin.token"),
    ('listen = "127.0.0.1:9096"\ntoken = "has space"', "admin.token", "printable ASCII"),
    ('listen = "127.0.0.1:9096"\ntoken_env = "HEPFAST_TEST_UNSET_VAR"', "admin.token_env",
     "HEPFAST_TEST_UNSET_VAR is not set"),
    ('listen = "127.0.0.1:9096"\ntoken_env = "not a name"', "admin.token_env",
     "not an environment variable name"),
    ('listen = "127.0.0.1:9096"\nmetrics_auth = true', "admin.metrics_auth", "no token"),
])
def test_admin_config_refused_naming_the_field(admin_lines, path, words, monkeypatch):
    from hepfast.config import ConfigError, parse_config

    monkeypatch.delenv("HEPFAST_TEST_UNSET_VAR", raising=False)
    monkeypatch.delenv("HEPFAST_ADMIN_TOKEN", raising=False)
    with pytest.raises(ConfigError) as ei:
        parse_config(_config(admin_lines))
    assert str(ei.value).startswith(f"{path}: ")
    assert words in str(ei.value)
    assert "has space" not in str(ei.value)                  # the value is never quoted


def test_admin_config_accepted(monkeypatch):
    from hepfast.config import parse_config
    from hepfast.config.validate import admin_token

    monkeypatch.delenv("HEPFAST_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("HEPFAST_TEST_TOKEN_VAR", "env-token-1")
    cfg = parse_config(_config('listen = "0.0.0.0:9096"\ntoken_env = "HEPFAST_TEST_TOKEN_VAR"'))
    assert admin_token(cfg.admin) == "env-token-1"
    cfg = parse_config(_config('listen = "[::]:9096"\ntoken = "file-token-2"'))
    assert admin_token(cfg.admin) == "file-token-2"
    assert admin_token(parse_config(_config('listen = "localhost:9096"')).admin) == ""
    # HEPFAST_ADMIN_TOKEN replaces admin.token (hepfast.config.env), before overrides or after
    monkeypatch.setenv("HEPFAST_ADMIN_TOKEN", "deploy-token-3")
    cfg = parse_config(_config('listen = "0.0.0.0:9096"'))
    assert admin_token(cfg.admin) == "deploy-token-3"
    cfg = parse_config(_config('listen = "0.0.0.0:9096"\ntoken = "file-token-2"'))
    assert admin_token(cfg.admin) == "deploy-token-3"


def test_non_loopback_without_token_refuses_to_start(sup):
    from hepfast.config import ConfigError

    a = AdminServer(sup, "0.0.0.0:0", sampler=False)
    with pytest.raises(ConfigError, match="^admin.token: "):
        a.start()
    assert a._httpd is None                                  # nothing was bound


# ------------------------------------------------------------------------------ hepfast.observe.log

@pytest.fixture
def restore_root_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_setup_logging_one_line_per_event(restore_root_logging):
    buf = io.StringIO()
    setup_logging(json=False, level="info", stream=buf)
    setup_logging(json=False, level="info", stream=buf)      # replaces, does not stack
    log = logging.getLogger("hepfast.test")
    log.info("first\nsecond")
    log.debug("hidden at info")
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("with traceback")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("INFO hepfast.test: first\\nsecond")
    assert "ValueError: bad" in lines[1] and "ERROR" in lines[1]


def test_setup_logging_json(restore_root_logging):
    buf = io.StringIO()
    setup_logging(json=True, level="debug", stream=buf)
    logging.getLogger("hepfast.test").warning("target %s down", "10.0.0.1:9060",
                                              extra={"target": "10.0.0.1:9060"})
    doc = json.loads(buf.getvalue())
    assert doc["level"] == "warning" and doc["logger"] == "hepfast.test"
    assert doc["msg"] == "target 10.0.0.1:9060 down"
    assert doc["target"] == "10.0.0.1:9060"
    assert doc["ts"].endswith("Z")


def test_setup_logging_bad_level(restore_root_logging):
    with pytest.raises(ValueError, match="unknown log level"):
        setup_logging(level="loud")


def test_rate_limited_logger(caplog):
    clock = Clock(0.0)
    rl = RateLimitedLogger("hepfast.test.rl", burst=3, interval=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="hepfast.test.rl"):
        written = [rl.warning("bad-src", "bad packet from %s", "10.0.0.9") for _ in range(10)]
        assert written == [True] * 3 + [False] * 7
        assert rl.warning("other", "another key") is True           # keys are independent
        assert rl.suppressed("bad-src") == 7
        clock.t = 10.5                                              # next window
        assert rl.warning("bad-src", "bad packet from %s", "10.0.0.9") is True
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs.count("bad packet from 10.0.0.9") == 4
    assert "7 similar messages suppressed (bad-src)" in msgs
    # the report comes before the first line of the new window
    assert msgs.index("7 similar messages suppressed (bad-src)") == len(msgs) - 2


def test_rate_limited_flush_and_key_bound(caplog):
    clock = Clock(0.0)
    rl = RateLimitedLogger("hepfast.test.rl2", burst=1, interval=60.0, max_keys=4, clock=clock)
    with caplog.at_level(logging.INFO, logger="hepfast.test.rl2"):
        for i in range(4):
            rl.info(("send_error", i), "x")
            rl.info(("send_error", i), "x")                          # suppressed
        clock.t = 1.0
        rl.info(("send_error", 99), "x")                             # evicts the oldest
        assert len(rl._keys) <= 4
        total = rl.flush()
    msgs = [r.getMessage() for r in caplog.records]
    assert 0 < total < 4                    # some were reported at eviction, the rest by flush
    assert sum(int(m.split()[0]) for m in msgs if "similar messages suppressed" in m) == 4
    assert rl.flush() == 0                                           # nothing pending twice


def test_install_log_filter_covers_every_logger(restore_root_logging):
    from hepfast.observe.redact import install_log_filter, remove_log_filter

    buf = io.StringIO()
    setup_logging(json=True, level="info", stream=buf)
    f = install_log_filter(lambda: ["dsn-pass-77"])
    logging.getLogger("hepfast.dataplane.supervisor").error("reload refused: %s",
                                                            "cannot reach pg dsn-pass-77")
    remove_log_filter(f)
    logging.getLogger("hepfast.dataplane.supervisor").error("after removal dsn-pass-77")
    first, second = buf.getvalue().splitlines()
    assert json.loads(first)["msg"] == "reload refused: cannot reach pg ***"
    assert "dsn-pass-77" in second                      # removed: proves the filter did it


# ------------------------------------------------------------------------------ with a real switch

def test_token_and_masking_with_a_real_switch(tmp_path, monkeypatch):
    """`hepfast run` with a token: the supervisor's own config decides, and a refused reload
    whose file holds a new secret answers with that secret masked."""
    import sys

    from tests.switchhelp import SwitchProcess

    if sys.platform != "linux":
        pytest.skip("recvmmsg/sendmmsg: Linux only")
    monkeypatch.delenv("HEPFAST_ADMIN_TOKEN", raising=False)
    conf = """
        [switch]
        workers = 1
        [admin]
        listen = "127.0.0.1:0"
        token = "run-token-6061"
        [[listeners]]
        name = "agents"
        listen = "127.0.0.1:0"
        auth_key = "{key}"
        allow = [{allow}]
        [destinations.d]
        targets = ["127.0.0.1:9"]
        [[rules]]
        name = "r"
        forward = ["d"]
        """
    sw = SwitchProcess(tmp_path, conf.format(key="agent-key-1", allow=""))
    try:
        base = next(ln.split()[1].rsplit("/", 1)[0] for ln in sw.stderr().splitlines()
                    if ln.startswith("admin http://"))

        def call(path, method="GET", token=None):
            req = urllib.request.Request(base + path, method=method,
                                         data=b"" if method == "POST" else None,
                                         headers=bearer(token) if token else {})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        assert call("/status")[0] == 401
        assert call("/reload", "POST")[0] == 401
        import time
        end = time.monotonic() + 30             # a busy machine can start workers slowly
        while call("/healthz")[0] != 200 and time.monotonic() < end:
            time.sleep(0.1)
        assert call("/healthz")[0] == 200       # no token needed
        code, body = call("/status", token="run-token-6061")
        assert code == 200 and json.loads(body)["generation"] == 1
        # a refused file whose error quotes its new key (pasted into the wrong field): the
        # answer and /status name the field and mask the key
        sw.cfg.write_text(conf.format(key="new-agent-key-2", allow='"new-agent-key-2"'))
        code, body = call("/reload", "POST", token="run-token-6061")
        assert code == 400 and "listeners[0].allow[0]" in body and "***" in body, body
        code, st = call("/status", token="run-token-6061")
        assert code == 200 and json.loads(st)["reloads"]["error"] == 1
        assert "***" in json.loads(st)["reloads"]["last_error"]
        end = time.monotonic() + 10
        while "reload refused" not in sw.stderr() and time.monotonic() < end:
            time.sleep(0.05)
        log = sw.stderr()
        assert "reload refused" in log and "listeners[0].allow[0]" in log
        for secret in ("run-token-6061", "agent-key-1", "new-agent-key-2"):
            assert secret not in body and secret not in st and secret not in log, secret
        assert sw.stop()["reloads"] == {"ok": 0, "error": 1}
    finally:
        sw.kill()


def test_run_refuses_a_non_loopback_admin_without_token(tmp_path):
    import subprocess
    import sys

    from tests.switchhelp import ROOT

    cfg = tmp_path / "open.toml"
    cfg.write_text(_config('listen = "0.0.0.0:0"'))
    env = {k: v for k, v in os.environ.items() if k != "HEPFAST_ADMIN_TOKEN"}
    r = subprocess.run([sys.executable, "-m", "hepfast", "run", "-c", str(cfg), "--quiet"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2, r.stderr
    assert "admin.token: " in r.stderr and "not a loopback address" in r.stderr
    assert "hepfast running" not in r.stderr
