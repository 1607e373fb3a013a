"""SIP scanning for the slow path: the twin of ext/wire/sipscan.pxd, rule for rule.

The data plane scans SIP payloads in C (sipscan.pxd); tests compare the two on the corpus and on
random input, so this module follows the same small grammar with the same index steps rather than
a full SIP parser. Invariants:
- Nothing here raises on arbitrary bytes; "not SIP" is `{}` (sip_summary) or all-None fields.
- A message is SIP when its first line is a status line (`SIP/2.0 DDD` then end of line or a space,
  first digit 1..6) or a request line (`TOKEN SP URI SP SIP/2.0`, exactly two spaces).
- Only the header section is read: lines after the first, up to the first empty line. A line is
  cut at LF, one trailing CR dropped. Lines starting with SP/HTAB (folding) and lines without a
  colon are skipped. Header names compare case-insensitively, blanks before the colon ignored;
  values are trimmed of SP/HTAB. The first occurrence of a header decides (an empty value is
  absent, later duplicates are not looked at).
- Users and domains come from the URI: `<...>` when present (after a quoted display name), else up
  to the first `;`. Schemes sip/sips (user before `@`, cut at `:`; domain after it, up to `;`,
  `?` or `:`, or a bracketed IPv6 reference) and tel (user up to `;`, no domain). Empty = absent.
- CSeq: the method is what follows the sequence number (`1*DIGIT 1*blank method`, up to the next
  blank); another shape is absent. User agent: the User-Agent header, or when the message has
  none the Server header (responses usually carry Server).
- `header_values` (the sip_header key) reads every occurrence of one header, by full or compact
  name (COMPACT), each value trimmed as above; empty values are left out.
Text values are decoded as UTF-8 with errors="replace".
"""
from __future__ import annotations

from hepfast.constants import SIP_WANT

_TOKEN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
_BLANK = (0x20, 0x09)

FIELDS = ("sip_method", "sip_status", "sip_call_id", "sip_from_user", "sip_to_user",
          "sip_ruri_user", "sip_ruri_domain", "sip_cseq_method", "sip_user_agent")

# Header names -> which slot (the compact forms are RFC 3261 section 7.3.3): Call-ID, From, To,
# CSeq, User-Agent, Server.
_HEADERS = {b"call-id": 0, b"i": 0, b"from": 1, b"f": 1, b"to": 2, b"t": 2, b"cseq": 3,
            b"user-agent": 4, b"server": 5}
# sip_header names: compact form -> full name, and back (RFC 3261 7.3.3 and the registered
# compact forms of later RFCs), all lower case.
COMPACT = {b"i": b"call-id", b"f": b"from", b"t": b"to", b"m": b"contact", b"v": b"via",
           b"l": b"content-length", b"c": b"content-type", b"k": b"supported", b"s": b"subject",
           b"e": b"content-encoding", b"o": b"event", b"u": b"allow-events", b"r": b"refer-to",
           b"b": b"referred-by", b"x": b"session-expires", b"a": b"accept-contact",
           b"j": b"reject-contact", b"d": b"request-disposition", b"y": b"identity",
           b"n": b"identity-info"}
COMPACT_OF = {full: short for short, full in COMPACT.items()}
# want bits (hepfast.constants.SIP_WANT, the plan's sip_want) -> the slots of _scan_headers
_WANT_SLOTS = ((SIP_WANT["call_id"], (0,)), (SIP_WANT["from"], (1,)), (SIP_WANT["to"], (2,)),
               (SIP_WANT["cseq"], (3,)), (SIP_WANT["user_agent"], (4, 5)))
WANT_ALL = sum(SIP_WANT.values())


def _line_end(p: bytes, pos: int, n: int) -> tuple[int, int]:
    """(end of the line's content, start of the next line) for the line starting at pos."""
    lf = p.find(b"\n", pos, n)
    nxt = n if lf < 0 else lf + 1
    end = n if lf < 0 else lf
    if end > pos and p[end - 1] == 0x0D:
        end -= 1
    return end, nxt


def _start_line(p: bytes, a: int, b: int) -> tuple[int, int, int, int, int]:
    """(kind, status, method_end, uri_start, uri_end) of the first line [a, b): kind 1 = request,
    2 = response, 0 = not SIP."""
    if b - a >= 11 and p[a:a + 8] == b"SIP/2.0 ":
        d0, d1, d2 = p[a + 8], p[a + 9], p[a + 10]
        if 0x31 <= d0 <= 0x36 and 0x30 <= d1 <= 0x39 and 0x30 <= d2 <= 0x39 \
                and (b - a == 11 or p[a + 11] == 0x20):
            return 2, (d0 - 0x30) * 100 + (d1 - 0x30) * 10 + (d2 - 0x30), 0, 0, 0
        return 0, 0, 0, 0, 0
    sp1 = p.find(b" ", a, b)
    if sp1 <= a:
        return 0, 0, 0, 0, 0
    for i in range(a, sp1):
        if p[i] not in _TOKEN:
            return 0, 0, 0, 0, 0
    sp2 = p.find(b" ", sp1 + 1, b)
    if sp2 <= sp1 + 1:
        return 0, 0, 0, 0, 0
    if b - (sp2 + 1) != 7 or p[sp2 + 1:b] != b"SIP/2.0":
        return 0, 0, 0, 0, 0
    return 1, 0, sp1, sp1 + 1, sp2


def _lower_eq(p: bytes, s: int, e: int, word: bytes) -> bool:
    return e - s == len(word) and p[s:e].lower() == word


def _find(p: bytes, s: int, e: int, c: bytes) -> int:
    return p.find(c, s, e) if s < e else -1


def _uri(p: bytes, s: int, e: int) -> tuple[int, int, int, int]:
    """(user_start, user_end, domain_start, domain_end) of a URI in [s, e); empty windows when
    absent."""
    colon = _find(p, s, e, b":")
    if colon < 0:
        return 0, 0, 0, 0
    r = colon + 1
    if _lower_eq(p, s, colon, b"tel"):
        ue = _find(p, r, e, b";")
        return r, (e if ue < 0 else ue), 0, 0
    if not (_lower_eq(p, s, colon, b"sip") or _lower_eq(p, s, colon, b"sips")):
        return 0, 0, 0, 0
    at = _find(p, r, e, b"@")
    if at >= 0:
        us = r
        ue = _find(p, r, at, b":")
        if ue < 0:
            ue = at
        hs = at + 1
    else:
        us = ue = 0
        hs = r
    if hs < e and p[hs] == 0x5B:               # "[" IPv6 reference: the domain keeps brackets
        close = _find(p, hs, e, b"]")
        he = e if close < 0 else close + 1
    else:
        he = hs
        while he < e and p[he] not in (0x3B, 0x3F, 0x3A):   # ; ? :
            he += 1
    return us, ue, hs, he


def _name_addr_user(p: bytes, s: int, e: int) -> tuple[int, int]:
    """User window of a From/To value [s, e)."""
    i = s
    if i < e and p[i] == 0x22:                 # quoted display name, backslash escapes
        i += 1
        while i < e and p[i] != 0x22:
            i += 2 if p[i] == 0x5C else 1
        if i >= e:
            return 0, 0
        i += 1
    lt = _find(p, i, e, b"<")
    if lt >= 0:
        us = lt + 1
        ue = _find(p, us, e, b">")
        if ue < 0:
            ue = e
    else:
        us = i
        ue = _find(p, us, e, b";")
        if ue < 0:
            ue = e
    u = _uri(p, us, ue)
    return u[0], u[1]


def _next_header(p: bytes, pos: int, n: int) -> tuple[int, tuple[int, int, int, int] | None]:
    """(position after the line, (name start, name end, value start, value end)) of the next
    header line from pos, or (pos, None) at the empty line / the end. Folded continuation lines
    and lines without a colon are skipped; the name loses blanks before the colon, the value is
    trimmed of SP/HTAB. Twin of sipscan.pxd sip_next_header."""
    while pos < n:
        a = pos
        b, pos = _line_end(p, a, n)
        if b == a:
            return pos, None                   # the empty line: end of headers
        if p[a] in _BLANK:
            continue                           # folded continuation line
        colon = _find(p, a, b, b":")
        if colon < 0:
            continue
        ne = colon
        while ne > a and p[ne - 1] in _BLANK:
            ne -= 1
        vs, ve = colon + 1, b
        while vs < ve and p[vs] in _BLANK:
            vs += 1
        while ve > vs and p[ve - 1] in _BLANK:
            ve -= 1
        return pos, (a, ne, vs, ve)
    return pos, None


def _scan_headers(p: bytes, pos: int, n: int, want: int) -> list[tuple[int, int] | None]:
    """Value windows of Call-ID, From, To, CSeq, User-Agent, Server (slots 0..5) in the header
    section from pos, for the SIP_WANT bits in `want` (User-Agent brings Server); stops once
    every wanted slot but Server is found."""
    found: list[tuple[int, int] | None] = [None] * 6
    slots = {i for bit, idx in _WANT_SLOTS if want & bit for i in idx}
    need = slots - {5}
    while need:
        pos, h = _next_header(p, pos, n)
        if h is None:
            break
        a, ne, vs, ve = h
        idx = _HEADERS.get(p[a:ne].lower()) if ne - a <= 10 else None
        if idx is None or idx not in slots or found[idx] is not None:
            continue
        found[idx] = (vs, ve)
        need.discard(idx)
    return found


def _cseq_method(p: bytes, s: int, e: int) -> tuple[int, int]:
    """Method window of a CSeq value [s, e) (`1*DIGIT 1*blank method`), (0, 0) otherwise."""
    i = s
    while i < e and 0x30 <= p[i] <= 0x39:
        i += 1
    if i == s or i >= e or p[i] not in _BLANK:
        return 0, 0
    while i < e and p[i] in _BLANK:
        i += 1
    ms = i
    while i < e and p[i] not in _BLANK:
        i += 1
    return ms, i


def header_values(payload, name: bytes) -> list[bytes]:
    """Every value of the header `name` (lower case, full form; its compact form counts too) in
    a SIP payload's header section, in order, empty values left out; [] when not SIP. What the
    sip_header match key reads (ext/plan/matcher.pxd _header_match)."""
    try:
        p = bytes(payload)
    except TypeError:
        return []
    n = len(p)
    if n == 0:
        return []
    b, pos = _line_end(p, 0, n)
    if _start_line(p, 0, b)[0] == 0:
        return []
    short = COMPACT_OF.get(name)
    out = []
    while True:
        pos, h = _next_header(p, pos, n)
        if h is None:
            return out
        a, ne, vs, ve = h
        hn = p[a:ne].lower()
        if (hn == name or (short is not None and hn == short)) and ve > vs:
            out.append(p[vs:ve])


def _text(p: bytes, s: int, e: int) -> str | None:
    return p[s:e].decode("utf-8", "replace") if e > s else None


def sip_fields(payload) -> dict:
    """All SIP match fields (FIELDS); every value None when the payload is not SIP."""
    out = dict.fromkeys(FIELDS)
    try:
        p = bytes(payload)
    except TypeError:
        return out
    n = len(p)
    if n == 0:
        return out
    b, nxt = _line_end(p, 0, n)
    kind, status, mend, us, ue = _start_line(p, 0, b)
    if kind == 0:
        return out
    if kind == 2:
        out["sip_status"] = status
    else:
        out["sip_method"] = _text(p, 0, mend)
        ru = _uri(p, us, ue)
        out["sip_ruri_user"] = _text(p, ru[0], ru[1])
        out["sip_ruri_domain"] = _text(p, ru[2], ru[3])
    cid, frm, to, cseq, ua, server = _scan_headers(p, nxt, n, WANT_ALL)
    if cid is not None:
        out["sip_call_id"] = _text(p, *cid)
    if frm is not None:
        out["sip_from_user"] = _text(p, *_name_addr_user(p, *frm))
    if to is not None:
        out["sip_to_user"] = _text(p, *_name_addr_user(p, *to))
    if cseq is not None:
        out["sip_cseq_method"] = _text(p, *_cseq_method(p, *cseq))
    if ua is not None:
        out["sip_user_agent"] = _text(p, *ua)
    elif server is not None:
        out["sip_user_agent"] = _text(p, *server)
    return out


def sip_summary(payload) -> dict:
    """The SIP part of a `hepfast decode` object: {"sip_method"} or {"sip_status"}, plus
    "sip_call_id" (None when absent); {} when the payload is not SIP."""
    f = sip_fields(payload)
    if f["sip_method"] is not None:
        return {"sip_method": f["sip_method"], "sip_call_id": f["sip_call_id"]}
    if f["sip_status"] is not None:
        return {"sip_status": f["sip_status"], "sip_call_id": f["sip_call_id"]}
    return {}


def call_id(payload) -> bytes | None:
    """The Call-ID (full or compact `i:` header) of a SIP payload, or None. The fast path of the
    call key: the first line is skipped, not checked (the proto type already says SIP)."""
    try:
        p = bytes(payload)
    except TypeError:
        return None
    n = len(p)
    if n == 0:
        return None
    _b, nxt = _line_end(p, 0, n)
    w = _scan_headers(p, nxt, n, SIP_WANT["call_id"])[0]
    if w is None or w[1] <= w[0]:
        return None
    return p[w[0]:w[1]]


def from_user(payload) -> str | None:
    return sip_fields(payload)["sip_from_user"]


def to_user(payload) -> str | None:
    return sip_fields(payload)["sip_to_user"]


def ruri(payload) -> tuple[str | None, str | None]:
    """(user, domain) of the Request-URI; (None, None) for responses and non-SIP."""
    f = sip_fields(payload)
    return f["sip_ruri_user"], f["sip_ruri_domain"]
