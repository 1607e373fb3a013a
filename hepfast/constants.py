"""The numbers both languages share, defined once.

Everything here is read by Python directly and written into C at build time:
scripts/gen_constants.py turns it (plus the chunk table of hepfast.wire.chunks) into
ext/generated/constants.pxd, a set of `cdef enum` blocks and a `constants()` function that
each compiled module exposes as `CONSTANTS`. tests/test_constants.py compares every compiled
module's CONSTANTS with this file, so a stale build or a hand-kept copy fails the suite.

Pure data: no imports from the rest of hepfast (the worker process and the build script import it).
"""
from __future__ import annotations

# --- why a datagram is refused before routing: hepfast_packets_invalid_total{reason} ----------
# short..version and chunks are the codec's own results (hep_parse_lim); auth and acl are
# decided by the worker.
INVALID_NAMES = (
    "ok", "short", "magic", "length", "chunk", "version", "auth", "acl", "chunks",
    # compressed payloads (chunk 0x0010), refused when the plan needs to read them: one that
    # inflates past INFLATE_MAX bytes (a bomb), one that is not a whole zlib or gzip stream.
    "compressed_too_big", "compressed_corrupt",
)
INVALID = {n: i for i, n in enumerate(INVALID_NAMES)}

# --- why a valid packet (or one copy of it) was not forwarded: hepfast_packets_dropped_total ---
DROP_NAMES = (
    "rule", "no_route", "sample", "rate_limit", "queue_full", "send_error", "too_big",
    "unconvertible", "duplicate", "call_rate_limit",
)
DROP = {n: i for i, n in enumerate(DROP_NAMES)}
# Drop reasons that concern one destination (labelled with it); the others concern the packet.
DEST_DROPS = ("queue_full", "send_error", "too_big", "unconvertible")

# --- why a stream connection was closed: hepfast_connections_closed_total{reason} -------------
# tls_handshake: a TLS handshake that failed (not TLS, a protocol error, a close in the middle) or
# did not complete within the listener's message_timeout; tls_verify: the client's certificate
# was missing (tls_verify_client = "required") or did not verify against tls_ca.
CONN_CLOSE_NAMES = (
    "eof", "error", "invalid", "too_big", "stalled", "idle", "limit", "stop",
    "tls_handshake", "tls_verify",
)
CONN_CLOSE = {n: i for i, n in enumerate(CONN_CLOSE_NAMES)}

# --- what a destination does with payloads (destinations.NAME.payload) -----------------------
PAYLOAD_NAMES = ("keep", "inflate", "compress")
PAYLOAD = {n: i for i, n in enumerate(PAYLOAD_NAMES)}

# --- destination modes and egress kinds ---------------------------------------------------------
MODE_NAMES = ("hash", "all", "failover", "roundrobin")
MODE = {n: i for i, n in enumerate(MODE_NAMES)}
# How a worker hands a copy to a target: its own UDP socket (sendmmsg), or a shared-memory ring
# read by the destination's egress process.
EGRESS_NAMES = ("udp", "ring")
EGRESS = {n: i for i, n in enumerate(EGRESS_NAMES)}

# --- HEP proto_family byte: 2 is AF_INET everywhere; AF_INET6 is 10 on Linux, 24/28/30 on the BSDs
# and macOS (agents send their own platform's value).
FAMILY_INET = (2,)
FAMILY_INET6 = (10, 24, 28, 30)

# --- fixed capacities of the data plane (checked by the plan compiler, naming the field) -------
MAX_LISTENERS = 16
MAX_RULES = 256          # rules in one config
MAX_RULE_SLOTS = 512     # rule counter slots in a run (names keep their slot across reloads)
MAX_DESTINATIONS = 64
MAX_TARGETS = 256        # targets in one config
MAX_TARGET_SLOTS = 1024  # target counter slots in a run
MAX_EGRESS = 32          # ring-fed destinations (one egress process each)
MAX_DEST_SLOTS = 256     # destination counter slots in a run
MAX_WORKERS = 256
MAX_SKIP = 256           # chunk keys one rule may delete or replace
MAX_SET_BYTES = 60000    # pre-encoded bytes one rule's `set` may add
MAX_BATCH = 1024
DEFAULT_MAX_CHUNKS = 512  # chunks per HEPv3 packet before it is refused (reason "chunks")
SLOT_BYTES = 65536       # one receive slot: the largest UDP datagram
INFLATE_MAX = 65536      # bytes a compressed payload may inflate to (more: a bomb, refused)
MAX_DEDUP_SLOTS = 1 << 26   # switch.dedup_slots bound (8 bytes each)
MAX_CALL_SLOTS = 1 << 26    # switch.call_slots bound

# --- the shared counter block: one row of uint64 per worker (and per egress process) ----------
# Header words.
H_PID = 0
H_HEARTBEAT = 1          # CLOCK_MONOTONIC ns of the last loop iteration
H_GENERATION = 2         # plan generation the worker runs
H_BATCHES = 3            # recvmmsg calls that returned packets
H_DATAGRAMS = 4          # datagrams read, valid or not
H_COPIES = 5             # copies queued for sending (fan-out counts each)
H_ROUTED = 6             # accepted packets that at least one rule or the default forwarded
H_STATE = 7              # 0 starting, 1 running, 2 draining, 3 exited
H_RESTARTS = 8           # (row 0 only) workers replaced after a crash
H_REFUSED = 9            # last plan generation this worker could not take (0: none)
H_DRAIN_LEFT = 10        # datagrams left in the sockets when the drain timed out
H_SEEN = 11              # the wanted generation the worker last acted on (took or refused)
HEADER = 16

N_INVALID = 16           # room for INVALID_NAMES
N_CONN = 16              # per listener: open (gauge), accepted, then closed by CONN_CLOSE_NAMES
N_DROP = 16              # room for DROP_NAMES

OFF_RECEIVED = HEADER                                    # [listener][proto_type 0..255]
OFF_INVALID = OFF_RECEIVED + MAX_LISTENERS * 256         # [listener][invalid reason]
OFF_OVERFLOW = OFF_INVALID + MAX_LISTENERS * N_INVALID   # [listener] kernel drops (SO_RXQ_OVFL)
OFF_RULE = OFF_OVERFLOW + MAX_LISTENERS                  # [rule slot]
OFF_DROP = OFF_RULE + MAX_RULE_SLOTS                     # [drop reason] (packet-level)
OFF_DEST_DROP = OFF_DROP + N_DROP                        # [dest slot][drop reason]
OFF_FORWARDED = OFF_DEST_DROP + MAX_DEST_SLOTS * N_DROP  # [target slot]
OFF_SEND_ERR = OFF_FORWARDED + MAX_TARGET_SLOTS          # [target slot] copies lost to errors
OFF_LAST_ERR = OFF_SEND_ERR + MAX_TARGET_SLOTS           # [target slot] monotonic ns, last error
OFF_LAST_OK = OFF_LAST_ERR + MAX_TARGET_SLOTS            # [target slot] monotonic ns, last send
OFF_QUEUED = OFF_LAST_OK + MAX_TARGET_SLOTS              # [target slot] copies put in a ring
OFF_LAST_ERRNO = OFF_QUEUED + MAX_TARGET_SLOTS           # [target slot] errno of the last error
OFF_CONN = OFF_LAST_ERRNO + MAX_TARGET_SLOTS             # [listener][N_CONN] stream connections
# --- guard (dedup, rate limits, compressed payloads: hepfast.dataplane.guard) ---------------
N_GUARD = 8
G_DEDUP_FULL = 0         # dedup lookups that found no room (the packet was forwarded)
G_CALLS_FULL = 1         # call-rate lookups that found no room (the packet was forwarded)
G_INFLATED = 2           # compressed payloads inflated (to route, dedup, or an inflate copy)
G_COMPRESSED = 3         # copies whose payload was compressed for a `payload = "compress"` dest
OFF_GUARD = OFF_CONN + MAX_LISTENERS * N_CONN            # [N_GUARD]
STRIDE = OFF_GUARD + N_GUARD

# --- rule tables (hepfast.plan.tables documents the layout) -------------------------------------
KEY_NAMES = (
    "listener", "hep_version", "proto_type", "ip_family", "ip_proto", "src_ip", "dst_ip",
    "src_port", "dst_port", "capture_id", "node_name", "correlation_id", "sip_method",
    "sip_status", "sip_call_id", "sip_from_user", "sip_to_user", "sip_ruri_user",
    "sip_ruri_domain",
    # string patterns and SIP headers (issue 14 A)
    "sip_cseq_method", "sip_user_agent", "sip_header", "correlation_id_field",
)
KEY = {n: i for i, n in enumerate(KEY_NAMES)}
NKEYS = len(KEY_NAMES)
RULE_FLAGS = {"drop": 1, "continue": 2, "has_rewrite": 4, "needs_sip": 8, "has_sample": 16}
RULE_FLAGS["has_guard"] = 32     # dedup, rate_limit or rate_limit_calls (hepfast.dataplane.guard)

# --- string patterns, SIP headers and call keys (issue 14 A; hepfast.plan.tables) -----------------
# Glob tokens of the pattern table (`pat_blob` uint16): 0..255 a literal byte, then these two.
GLOB_ANY = 256           # "?": exactly one byte
GLOB_STAR = 257          # "*": any run of bytes, also none
MAX_PATTERN_LEN = 128    # bytes of one pattern as written
MAX_PATTERNS = 4096      # glob patterns in one config (exact values are hashes: not counted)
MAX_CONDS = 8            # sip_header / correlation_id_field tables in one rule
MAX_HEADER_NAME = 64     # bytes of a sip_header name
MAX_KEY_FIELD = 16       # call_key_field / correlation_id_field.field: -16..15
# Which SIP headers the scanner looks for (sip_info; the plan's `sip_want` is their union over
# the rules, so a header no rule needs is never searched for).
SIP_WANT = {"call_id": 1, "from": 2, "to": 4, "cseq": 8, "user_agent": 16}
# Not a header but a summary: the scanner reads the whole header section and keeps a 64-bit
# bloom of its header names, so sip_header rules skip packets without their header. The plan asks
# for it when sip_header rules sit beside keys that scan the headers anyway.
SIP_WANT_NAMES = 32
# Per destination: what mode = "hash" keys on (Destination.call_key).
CALL_KEY_NAMES = ("call_id", "correlation_id", "src_ip", "capture_id")
CALL_KEY = {n: i for i, n in enumerate(CALL_KEY_NAMES)}


def c_enums() -> dict[str, dict[str, int]]:
    """What scripts/gen_constants.py writes into C: {enum block comment: {C name: value}}."""
    counters = {k: v for k, v in globals().items()
                if k.isupper() and (k.startswith(("H_", "OFF_", "G_")) or k in (
                    "HEADER", "STRIDE", "N_INVALID", "N_DROP", "N_CONN", "N_GUARD"))}
    limits = {k: v for k, v in globals().items()
              if k.startswith(("MAX_", "DEFAULT_MAX_")) or k in ("SLOT_BYTES", "INFLATE_MAX")}
    assert len(INVALID_NAMES) <= N_INVALID and len(DROP_NAMES) <= N_DROP
    assert len(CONN_CLOSE_NAMES) + 2 <= N_CONN
    return {
        "invalid reasons (hepfast_packets_invalid_total)":
            {f"R_{n.upper()}": i for i, n in enumerate(INVALID_NAMES)},
        "drop reasons (hepfast_packets_dropped_total)":
            {f"D_{n.upper()}": i for i, n in enumerate(DROP_NAMES)},
        "connection close reasons": {f"C_{n.upper()}": i for i, n in enumerate(CONN_CLOSE_NAMES)},
        "destination modes": {f"M_{n.upper()}": i for i, n in enumerate(MODE_NAMES)},
        "payload modes": {f"P_{n.upper()}": i for i, n in enumerate(PAYLOAD_NAMES)},
        "egress kinds": {f"E_{n.upper()}": i for i, n in enumerate(EGRESS_NAMES)},
        "capacities": limits,
        "counter block layout (uint64 words)": counters,
        "match keys": {**{f"K_{n.upper()}": i for i, n in enumerate(KEY_NAMES)},
                       "NKEYS": NKEYS},
        "rule flags": {f"RF_{n.upper()}": v for n, v in RULE_FLAGS.items()},
        "patterns, SIP headers, call keys": {
            "GLOB_ANY": GLOB_ANY, "GLOB_STAR": GLOB_STAR,
            **{f"SW_{n.upper()}": v for n, v in SIP_WANT.items()}, "SW_NAMES": SIP_WANT_NAMES,
            **{f"CK_{n.upper()}": i for i, n in enumerate(CALL_KEY_NAMES)}},
    }
