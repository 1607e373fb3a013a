"""The HOMER 7 data schema: which table a HEP packet goes to, its row, the DDL, the partitions.

This is the schema heplify-server writes and homer-app reads (docs/postgres.md):
`hep_proto_<type>_<profile>` tables with the columns id (bigserial), sid, create_date
(timestamptz), protocol_header (jsonb), data_header (jsonb), raw; SIP (proto type 1) goes to
`hep_proto_1_call`, `hep_proto_1_registration` or `hep_proto_1_default` by the CSeq method, every
other proto type N to `hep_proto_N_default`. The JSON keys are heplify-server's:
- protocol_header: protocolFamily, protocol, srcIp, dstIp, srcPort, dstPort, timeSeconds,
  timeUseconds, payloadType, captureId (the node name, else the capture id as text),
  correlation_id (the chunk, else for SIP the Call-ID). heplify-server also stores the agent's
  auth key as capturePass; hepfast does not (it is a secret).
- data_header, SIP: its default header list ruri_user, ruri_domain, from_user, from_tag,
  to_user, to_tag, callid, cseq, method (the request method, or the status code of a response),
  user_agent ("" when absent); other types: node, proto.
Like heplify-server, SIP whose Call-ID or CSeq cannot be found, and other types without a
correlation id or payload, are not stored (`row_of` returns None).

Rows are encoded straight into PostgreSQL's binary COPY format (one `bytes` per row, the
columns sid, create_date, protocol_header, data_header, raw), so the writer only joins them.
The JSON objects are written with their keys in jsonb's own order (shorter keys first, then
bytewise): the stored jsonb is the same in any order, but the server then finds them sorted and
skips sorting each object (about a tenth of its COPY time, bench/postgres_bench.py). `row_of` is
the reference of the compiled encoder (ext/egress/_pgrow.pyx), which must write the same bytes.
Tables are partitioned by range of create_date in PARTITION_SECONDS slices named
`<table>_YYYYmmdd_HHMM` (UTC start), heplify-server's rotator names.
"""
from __future__ import annotations

import socket
import struct
import time
from typing import NamedTuple

import msgspec

from hepfast.wire import codec
from hepfast.wire.sip import FIELDS, sip_fields

COLUMNS = ("sid", "create_date", "protocol_header", "data_header", "raw")
SIP_KEYS = ("ruri_user", "ruri_domain", "from_user", "from_tag", "to_user", "to_tag", "callid",
            "cseq", "method", "user_agent")
PROTOCOL_KEYS = ("protocolFamily", "protocol", "srcIp", "dstIp", "srcPort", "dstPort",
                 "timeSeconds", "timeUseconds", "payloadType", "captureId", "correlation_id")
PROTO_NAMES = {1: "sip", 5: "rtcp", 34: "rtpagent", 35: "rtcpxr", 38: "horaclifix", 53: "dns",
               100: "log"}
CALL_METHODS = frozenset({"INVITE", "ACK", "BYE", "CANCEL", "UPDATE", "PRACK", "REFER", "INFO",
                          "NOTIFY"})
PARTITION_SECONDS = 3600
BATCH_TABLE = "hepfast_batches"

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
COPY_TRAILER = struct.pack("!h", -1)
_PG_EPOCH_S = 946684800                       # 2000-01-01T00:00:00Z, binary timestamp origin
_ROW_HEAD = struct.pack("!h", len(COLUMNS))
_I32 = struct.Struct("!i").pack
_TS = struct.Struct("!iq").pack
_json = msgspec.json.Encoder().encode
# The compiled twin of sip_fields (ext/wire/sipscan.pxd; tests/test_sip.py holds them equal),
# when the compiled codec is the one in use.
_sip_scan = getattr(codec.get_impl(codec.IMPL), "sip_scan", None)


class Row(NamedTuple):
    table: str
    ts_us: int          # create_date, microseconds since the Unix epoch (UTC)
    data: bytes         # one binary COPY tuple


def _clean(s: str | None) -> str:
    """Text PostgreSQL accepts in varchar and jsonb (no NUL)."""
    if not s:
        return ""
    return s.replace("\x00", "") if "\x00" in s else s


def _sip_extra(payload: bytes) -> dict:
    """CSeq (value and method), User-Agent and the From/To tags: the data_header fields that
    hepfast.wire.sip.sip_fields does not scan for (it serves rule matching)."""
    out = {"cseq": "", "cseq_method": "", "user_agent": "", "from_tag": "", "to_tag": ""}
    head = payload.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        key = name.strip().lower()
        if key == b"cseq":
            v = value.strip().decode("utf-8", "replace")
            out["cseq"] = v
            out["cseq_method"] = v.rpartition(" ")[2].upper()
        elif key == b"user-agent":
            out["user_agent"] = value.strip().decode("utf-8", "replace")
        elif key in (b"from", b"f", b"to", b"t"):
            which = "from_tag" if key in (b"from", b"f") else "to_tag"
            if out[which]:
                continue
            # the tag parameter after the name-addr (a tag inside <...> belongs to the URI)
            rest = value.rpartition(b">")[2] if b">" in value else value
            for param in rest.split(b";")[1:]:
                k, _, v = param.partition(b"=")
                if k.strip().lower() == b"tag":
                    out[which] = v.strip().decode("utf-8", "replace")
                    break
    return out


def _fields(payload: bytes) -> dict:
    if _sip_scan is not None:
        return _sip_scan(payload) or dict.fromkeys(FIELDS)
    return sip_fields(payload)


def _ip(raw: bytes | None) -> str:
    if raw is None or len(raw) not in (4, 16):
        return ""
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def sip_data_header(payload: bytes) -> tuple[dict, str] | None:
    """(data_header, CSeq method) of a SIP payload, or None when it has no Call-ID or CSeq."""
    f = _fields(payload)
    cid = f["sip_call_id"]
    if not cid:
        return None
    x = _sip_extra(payload)
    if len(x["cseq_method"]) < 3:
        return None
    method = f["sip_method"] or (str(f["sip_status"]) if f["sip_status"] is not None else "")
    dh = {"cseq": x["cseq"], "callid": cid, "method": method, "to_tag": x["to_tag"],
          "to_user": f["sip_to_user"] or "", "from_tag": x["from_tag"],
          "from_user": f["sip_from_user"] or "", "ruri_user": f["sip_ruri_user"] or "",
          "user_agent": x["user_agent"], "ruri_domain": f["sip_ruri_domain"] or ""}
    return {k: _clean(v) for k, v in dh.items()}, x["cseq_method"]


def sip_table(cseq_method: str) -> str:
    if cseq_method in CALL_METHODS:
        return "hep_proto_1_call"
    if cseq_method == "REGISTER":
        return "hep_proto_1_registration"
    return "hep_proto_1_default"


def row_of(data, now: float | None = None) -> Row | None:
    """The HOMER 7 row of one HEP packet, or None when heplify-server would not store it
    (undecodable, SIP without Call-ID/CSeq, other types without correlation id or payload)."""
    try:
        p = codec.decode(data)
    except codec.HepError:
        return None
    ptype = p.proto_type or 0
    payload = p.payload
    if ptype == 0 or not payload or p.compressed:
        return None
    cid = _clean(p.correlation_id_raw.decode("utf-8", "replace")) if p.correlation_id_raw \
        else ""
    node = _clean(p.node_name_raw.decode("utf-8", "replace")) if p.node_name_raw else ""
    if not node:
        node = str(p.capture_id or 0)
    if ptype == 1:
        sip = sip_data_header(payload)
        if sip is None:
            return None
        dh, cseq_method = sip
        table = sip_table(cseq_method)
        sid = dh["callid"]
        if not cid:
            cid = sid
    else:
        if not cid:
            return None
        table = f"hep_proto_{ptype}_default"
        sid = cid
        dh = {"node": node, "proto": PROTO_NAMES.get(ptype, str(ptype))}
    tsec, tusec = p.timestamp or 0, p.timestamp_us or 0
    if tsec == 0 and tusec == 0:
        t = time.time() if now is None else now
        tsec, tusec = int(t), int((t % 1) * 1e6)
    ph = {"dstIp": _ip(p.dst_addr), "srcIp": _ip(p.src_addr), "dstPort": p.dst_port or 0,
          "srcPort": p.src_port or 0, "protocol": p.proto_id or 0, "captureId": node,
          "payloadType": ptype, "timeSeconds": tsec, "timeUseconds": tusec,
          "correlation_id": cid, "protocolFamily": p.proto_family or 0}
    ts_us = tsec * 1_000_000 + tusec
    return Row(table, ts_us, encode_row(sid, ts_us, ph, dh,
                                        _clean(payload.decode("utf-8", "replace"))))


def encode_row(sid: str, ts_us: int, protocol_header: dict, data_header: dict,
               raw: str) -> bytes:
    """One binary COPY tuple of COLUMNS (jsonb in its binary form: version 1, then the text)."""
    s = sid.encode()
    ph = _json(protocol_header)
    dh = _json(data_header)
    r = raw.encode()
    return b"".join((_ROW_HEAD, _I32(len(s)), s, _TS(8, ts_us - _PG_EPOCH_S * 1_000_000),
                     _I32(len(ph) + 1), b"\x01", ph, _I32(len(dh) + 1), b"\x01", dh,
                     _I32(len(r)), r))


# ------------------------------------------------------------------------------------ DDL

def is_sip_table(table: str) -> bool:
    return table.startswith("hep_proto_1_")


def table_ddl(table: str) -> list[str]:
    """CREATE TABLE (partitioned by create_date) and its indexes, heplify-server's columns and
    the indexes its rotator creates (here on the parent, so every partition inherits them)."""
    out = [f"CREATE TABLE IF NOT EXISTS {table} ("
           "id BIGSERIAL NOT NULL, sid varchar NOT NULL, "
           "create_date timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL, "
           "protocol_header jsonb NOT NULL, data_header jsonb NOT NULL, raw varchar NOT NULL"
           ") PARTITION BY RANGE (create_date)",
           f"CREATE INDEX IF NOT EXISTS {table}_create_date ON {table} (create_date)",
           f"CREATE INDEX IF NOT EXISTS {table}_sid ON {table} (sid)"]
    keys = [("protocol_header", "srcIp"), ("protocol_header", "dstIp"),
            ("protocol_header", "correlation_id")]
    if is_sip_table(table):
        keys += [("data_header", k) for k in ("ruri_domain", "ruri_user", "from_user",
                                              "to_user", "callid", "method")]
    for col, key in keys:
        out.append(f"CREATE INDEX IF NOT EXISTS {table}_{key.lower()} ON {table} "
                   f"(({col}->>'{key}'))")
    return out


BATCH_DDL = (f"CREATE TABLE IF NOT EXISTS {BATCH_TABLE} (batch_id text PRIMARY KEY, "
             "destination text NOT NULL, rows integer NOT NULL, "
             "committed_at timestamp with time zone DEFAULT now() NOT NULL)")


def partition_start(ts_us: int) -> int:
    """Start (Unix seconds) of the partition slice holding a create_date."""
    s = ts_us // 1_000_000
    return s - s % PARTITION_SECONDS


def partition_name(table: str, start: int) -> str:
    return f"{table}_{time.strftime('%Y%m%d_%H%M', time.gmtime(start))}"


def partition_ddl(table: str, start: int) -> str:
    def iso(t: int) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(t))
    return (f"CREATE TABLE IF NOT EXISTS {partition_name(table, start)} PARTITION OF {table} "
            f"FOR VALUES FROM ('{iso(start)}') TO ('{iso(start + PARTITION_SECONDS)}')")


def partition_end_of(name: str) -> int | None:
    """End (Unix seconds) of a partition named by partition_name, None for other names."""
    tail = name[-13:]
    if len(name) < 14 or name[-14] != "_" or tail[8] != "_":
        return None
    try:
        tm = time.strptime(tail, "%Y%m%d_%H%M")
    except ValueError:
        return None
    import calendar

    return calendar.timegm(tm) + PARTITION_SECONDS
