"""The configuration schema (design.md section 2, a contract): frozen msgspec Structs.

Unknown keys are errors at every level (`forbid_unknown_fields`): a typo never silently means
"default". Match values are kept as written (scalars or lists); hepfast.config.values says what
each value means, hepfast.config.validate checks what types cannot, hepfast.plan compiles.
"""
from __future__ import annotations

import os
import re
from typing import Annotated, Literal, Union

import msgspec

LISTENER_TRANSPORTS = ("udp", "tcp", "tls")
DESTINATION_TRANSPORTS = ("udp", "tcp", "tls", "file", "pcap", "parquet", "postgres")
# Destinations with targets (host:port) and those that store to `path` or `dsn`.
NETWORK_TRANSPORTS = ("udp", "tcp", "tls")
PATH_TRANSPORTS = ("file", "pcap", "parquet")
MODES = ("hash", "all", "failover", "roundrobin")

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]*$")

# Scalars are accepted wherever a list is, as a list of one (`match.proto_type = "sip"`).
StrList = Union[list[str], str, None]
IntStrList = Union[list[Union[int, str]], int, str, None]


class _Base(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


MiB = 1 << 20


class Switch(_Base):
    workers: Annotated[int, msgspec.Meta(ge=1, le=256)] = msgspec.field(
        default_factory=lambda: os.cpu_count() or 1)
    batch: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 64
    default: str = "drop"
    # "packet": every datagram may go to any worker (a reuseport program picks one), so a single
    # busy agent uses every core; "flow": the kernel's flow hash keeps a sender on one worker.
    spread: Literal["packet", "flow"] = "packet"
    # Socket buffers asked of the kernel per listening socket / per target socket (bytes).
    rcvbuf: Annotated[int, msgspec.Meta(ge=65536, le=1 << 31)] = 64 * MiB
    sndbuf: Annotated[int, msgspec.Meta(ge=65536, le=1 << 31)] = 4 * MiB
    # On SIGTERM: how long workers keep draining their sockets, egress processes their rings.
    drain_timeout: Annotated[float, msgspec.Meta(ge=0, le=600)] = 2.0
    # Chunks per HEPv3 packet before it is refused (reason "chunks"); real agents send < 30.
    max_chunks: Annotated[int, msgspec.Meta(ge=16, le=16384)] = 512
    # Guard tables shared by all workers (hepfast.dataplane.guard), sized at start: slots of the
    # dedup table and of the call-decision table of rate_limit_calls (rounded up to a power of
    # two, 8 bytes each), and how long a call's decision is kept after its last packet (s).
    dedup_slots: Annotated[int, msgspec.Meta(ge=1024, le=1 << 26)] = 1 << 20
    call_slots: Annotated[int, msgspec.Meta(ge=1024, le=1 << 26)] = 1 << 18
    call_idle_timeout: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 300.0
    # Where the run directory (the tables and rings workers share) is made: "" = /dev/shm, else
    # the system temp dir. A tmpfs of its own (enough room for the rings; huge=within_size puts
    # the guard tables and rings on 2 MiB pages). Fixed at start.
    run_dir: str = ""


class Admin(_Base):
    listen: str = "127.0.0.1:9096"
    # Bearer token for POST /reload and /status (and /metrics when metrics_auth); required when
    # listen is not a loopback address. token_env names an environment variable holding it.
    token: str = ""
    token_env: str = ""
    metrics_auth: bool = False


class Listener(_Base):
    name: str
    listen: str
    transport: Literal["udp", "tcp", "tls"] = "udp"
    auth_key: str = ""
    allow: list[str] = []
    # Stream listeners (tcp, tls): framing by the HEPv3 length field. A message larger than
    # max_message, or one that does not complete within message_timeout seconds or max_reads
    # reads (a fragmented or stalled sender), closes its connection; so does idle_timeout
    # seconds without data. At most max_connections connections (over all workers).
    max_message: Annotated[int, msgspec.Meta(ge=64, le=65535)] = 65535
    message_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    max_reads: Annotated[int, msgspec.Meta(ge=1, le=100000)] = 64
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=1000000)] = 10000
    idle_timeout: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 300.0
    # tls: the server's certificate chain and key (PEM, both required); tls_ca: a CA file client
    # certificates are verified against; tls_verify_client: "none", "optional" (a certificate,
    # when sent, must verify) or "required" (default "required" with tls_ca, else "none");
    # tls_min_version: the oldest TLS version accepted. A handshake must complete within
    # message_timeout.
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    tls_verify_client: Literal["none", "optional", "required"] | None = None
    tls_min_version: Literal["1.2", "1.3"] = "1.2"

    @property
    def verify_client(self) -> str:
        """tls_verify_client with its default applied."""
        return self.tls_verify_client or ("required" if self.tls_ca else "none")

    # Drop copies of a message seen within dedup_window_ms on any listener that dedups, before
    # the rules (hepfast.dataplane.guard: the identity is payload, addresses, ports, proto type).
    dedup: bool = False
    dedup_window_ms: Annotated[int, msgspec.Meta(ge=1, le=600_000)] = 500


class Destination(_Base):
    targets: list[str] = []
    transport: Literal["udp", "tcp", "tls", "file", "pcap", "parquet", "postgres"] = "udp"
    mode: Literal["hash", "all", "failover", "roundrobin"] = "hash"
    hep_version: Literal[2, 3] = 3
    path: str | None = None          # file, pcap, parquet: a directory
    dsn: str | None = None           # postgres: "postgresql://user:password@host/db"
    dsn_env: str | None = None       # postgres: or the environment variable holding the DSN
    # postgres: rows per COPY transaction, the longest a row waits for one (s), rows waiting at
    # most (more are dropped as queue_full), days of partitions kept (0: keep all).
    batch_rows: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 5000
    flush_seconds: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    queue_rows: Annotated[int, msgspec.Meta(ge=1, le=100_000_000)] = 200_000
    retention_days: Annotated[int, msgspec.Meta(ge=0, le=3650)] = 7
    # postgres: connections writing batches in parallel (one COPY transaction each).
    writers: Annotated[int, msgspec.Meta(ge=1, le=16)] = 2
    # Ring-fed destinations (everything but udp): bytes of the shared-memory ring per worker
    # (at least 256 KiB, so that any 64 KiB packet fits).
    ring_bytes: Annotated[int, msgspec.Meta(ge=262144, le=1 << 32)] = 64 * MiB
    # Rotating files (file, pcap): a new file past rotate_bytes or rotate_seconds; keep at most
    # `keep` finished files (0: keep all).
    rotate_bytes: Annotated[int, msgspec.Meta(ge=4096)] = 256 * MiB
    rotate_seconds: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    keep: Annotated[int, msgspec.Meta(ge=0)] = 24
    # pcap: write the HEP packets themselves (UDP port 9060) instead of the packets they carry.
    encapsulate: bool = False
    # parquet: rows per row group (also written after flush_seconds), bytes of finished files
    # kept (0: no limit; retention_days bounds their age).
    row_group_rows: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 65536
    retention_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0
    # The auth key on the copies this destination receives: replaced when auth_key is set,
    # removed with strip_auth_key.
    auth_key: str = ""
    strip_auth_key: bool = False
    # Streams (tcp, tls; hepfast.egress.stream): TCP keepalive idle seconds (0: off), packets and
    # bytes waiting in memory per target, a spool directory for what does not fit or cannot be
    # sent (None: drop it as queue_full) and its size bound, the reconnect backoff's bounds.
    keepalive: Annotated[float, msgspec.Meta(ge=0, le=7200)] = 15.0
    queue_packets: Annotated[int, msgspec.Meta(ge=1, le=100_000_000)] = 100_000
    queue_bytes: Annotated[int, msgspec.Meta(ge=65536, le=1 << 40)] = 64 * MiB
    spool: str | None = None
    spool_max_bytes: Annotated[int, msgspec.Meta(ge=1 << 20)] = 1024 * MiB
    reconnect_min_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 0.5
    reconnect_max_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    # tls: the name the server's certificate must carry (default: the target's host), the CA
    # file (default: the system's), a client certificate and its key, and whether to verify.
    tls_server_name: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_verify: bool = True
    # mode = "hash": what the target choice keys on (issue 14 A). call_id: the SIP Call-ID, else
    # the correlation id; correlation_id: the other way round; src_ip, capture_id: those chunks;
    # without one, the flow. call_key_separator/call_key_field take one field of the Call-ID /
    # correlation id (0-based, negative from the end; too few fields: the whole value).
    call_key: Literal["call_id", "correlation_id", "src_ip", "capture_id"] = "call_id"
    call_key_separator: str = ""
    call_key_field: int = 0
    # Compressed payloads (chunk 0x0010) on this destination's copies: as received ("keep"),
    # inflated into a plain payload chunk 0x000f ("inflate"), or plain payloads compressed
    # into 0x0010 with zlib ("compress").
    payload: Literal["keep", "inflate", "compress"] = "keep"


# --- issue 14 A: SIP header and correlation-id field conditions (match.sip_header,
# match.correlation_id_field): a table or a list of tables, AND across them.
class HeaderMatch(_Base):
    name: str                       # header name, any case; compact forms are the same header
    value: StrList = None           # exact values or globs; any occurrence of the header matching


class FieldMatch(_Base):
    separator: str                  # one ASCII character, e.g. "@"
    field: int                      # 0-based field index; negative counts from the end (-1 last)
    value: StrList = None           # exact values or globs for that field


HeaderMatches = Union[HeaderMatch, list[HeaderMatch], None]
FieldMatches = Union[FieldMatch, list[FieldMatch], None]
CALL_KEYS = ("call_id", "correlation_id", "src_ip", "capture_id")


class Match(_Base):
    listener: StrList = None
    hep_version: IntStrList = None
    proto_type: IntStrList = None
    ip_family: IntStrList = None
    ip_proto: IntStrList = None
    src_ip: StrList = None
    dst_ip: StrList = None
    src_port: IntStrList = None
    dst_port: IntStrList = None
    capture_id: IntStrList = None
    node_name: StrList = None
    correlation_id: StrList = None
    sip_method: StrList = None
    sip_status: IntStrList = None
    sip_call_id: StrList = None
    sip_from_user: StrList = None
    sip_to_user: StrList = None
    sip_ruri_user: StrList = None
    sip_ruri_domain: StrList = None
    # issue 14 A (keep in the order of hepfast.constants.KEY_NAMES)
    sip_cseq_method: StrList = None
    sip_user_agent: StrList = None
    sip_header: HeaderMatches = None
    correlation_id_field: FieldMatches = None


# In the order of the data plane's key enumeration (hepfast/plan/, ext/plan/matcher.pxd).
MATCH_KEYS = tuple(Match.__struct_fields__)


class Rule(_Base):
    name: str
    match: Match = Match()
    set: dict[str, Union[int, str]] = {}
    delete: list[Union[str, int]] = []
    forward: list[str] = []
    drop: bool = False
    continue_: bool = msgspec.field(default=False, name="continue")
    sample: float | None = None
    # Guards (hepfast.dataplane.guard), applied to the packets this rule takes: drop copies seen
    # within dedup_window_ms; at most rate_limit packets per second over the whole switch
    # (burst at once, default a tenth of the rate); at most rate_limit_calls new calls per
    # second (burst_calls at once), later packets of a refused call dropped too.
    dedup: bool = False
    dedup_window_ms: Annotated[int, msgspec.Meta(ge=1, le=600_000)] = 500
    rate_limit: Annotated[float, msgspec.Meta(gt=0, le=100_000_000)] | None = None
    burst: Annotated[int, msgspec.Meta(ge=1, le=100_000_000)] | None = None
    rate_limit_calls: Annotated[float, msgspec.Meta(gt=0, le=1_000_000)] | None = None
    burst_calls: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None


class Config(_Base):
    switch: Switch = msgspec.field(default_factory=Switch)
    admin: Admin = Admin()
    listeners: list[Listener] = []
    destinations: dict[str, Destination] = {}
    rules: list[Rule] = []
