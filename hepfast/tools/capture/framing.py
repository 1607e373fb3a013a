"""Stream framing: HEPv3 by its length field, SIP by Content-Length, and the HEP messages of
any capture file."""
from __future__ import annotations

from collections.abc import Iterator

from hepfast.tools.capture.common import SIP_MAX_BODY, SIP_MAX_HEADERS, Datagram, StreamError
from hepfast.tools.capture.hepraw import read_hepraw
from hepfast.tools.capture.reader import file_kind
from hepfast.tools.capture.reassembly import read_capture

# ------------------------------------------------------------------------------------- streams

def split_hep_stream(buf) -> tuple[list[bytes], bytes]:
    """Complete HEPv3 messages at the start of a TCP stream buffer, and the remainder.
    Raises StreamError on bad magic or a length below 6: the caller closes the connection."""
    b = bytes(buf)
    msgs: list[bytes] = []
    pos, n = 0, len(b)
    while n - pos >= 6:
        if b[pos:pos + 4] != b"HEP3":
            raise StreamError(f"not a HEPv3 stream at byte {pos} (starts {b[pos:pos + 4]!r})")
        ln = (b[pos + 4] << 8) | b[pos + 5]
        if ln < 6:
            raise StreamError(f"HEPv3 length {ln} < 6 at byte {pos}")
        if n - pos < ln:
            break
        msgs.append(b[pos:pos + ln])
        pos += ln
    if n - pos < 6 and b"HEP3"[:min(4, n - pos)] != b[pos:pos + 4]:
        raise StreamError(f"not a HEPv3 stream at byte {pos} (starts {b[pos:pos + 4]!r})")
    return msgs, b[pos:]


def _content_length(headers: bytes) -> int:
    """Content-Length (or compact `l`) of a SIP header section; 0 when absent."""
    for line in headers.split(b"\n")[1:]:
        if line[:1] in (b" ", b"\t"):
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        if name.rstrip(b" \t").lower() in (b"content-length", b"l"):
            v = value.strip(b" \t\r")
            if not v.isdigit():
                raise StreamError(f"bad SIP Content-Length {v[:20]!r}")
            n = int(v)
            if n > SIP_MAX_BODY:
                raise StreamError(f"SIP Content-Length {n} is too large")
            return n
    return 0


def split_sip_stream(buf) -> tuple[list[bytes], bytes]:
    """Complete SIP messages at the start of a TCP stream buffer, and the remainder. Keep-alive
    CRLFs between messages are dropped. Raises StreamError when the stream cannot be framed (no
    end of headers within SIP_MAX_HEADERS bytes, a bad Content-Length)."""
    b = bytes(buf)
    msgs: list[bytes] = []
    pos, n = 0, len(b)
    while pos < n:
        while pos < n and b[pos] in (13, 10):   # RFC 5626 keep-alives: CRLFCRLF ping, CRLF pong
            pos += 1
        if pos >= n:
            break
        end = b.find(b"\r\n\r\n", pos)
        if end < 0:
            if n - pos > SIP_MAX_HEADERS:
                raise StreamError(f"no end of SIP headers in {n - pos} bytes")
            break
        if end - pos > SIP_MAX_HEADERS:
            raise StreamError(f"SIP header section of {end - pos} bytes is too large")
        body_at = end + 4
        clen = _content_length(b[pos:end])
        if n - body_at < clen:
            break
        msgs.append(b[pos:body_at + clen])
        pos = body_at + clen
    return msgs, b[pos:]


# ------------------------------------------------------------------------------------- HEP

def looks_like_hep(data: bytes) -> bool:
    """A UDP payload that is plausibly HEP: "HEP3", or a v1/v2 header with a known family,
    a known IP protocol and room for its addresses."""
    if data[:4] == b"HEP3":
        return True
    if len(data) < 16 or data[0] not in (1, 2):
        return False
    fam = data[2]
    if fam == 2:
        alen = 4
    elif fam in (10, 24, 28, 30):
        alen = 16
    else:
        return False
    if data[3] not in (6, 17, 132, 22):
        return False
    return len(data) >= 8 + 2 * alen + (12 if data[0] == 2 else 0)


def iter_hep_messages(path) -> Iterator[tuple[Datagram | None, bytes]]:
    """HEP messages of a .hepraw (datagram None) or of a pcap/pcapng: UDP payloads on any port
    that look like HEP, and HEPv3 framed out of TCP streams (per flow direction; a stream that
    breaks framing is dropped until a segment starts with "HEP3" again). Decided by content."""
    if file_kind(path) == "hepraw":
        for rec in read_hepraw(path):
            yield None, rec
        return
    streams: dict[tuple, bytes] = {}
    for dg in read_capture(path):
        if dg.ip_proto == 17:
            if looks_like_hep(dg.data):
                yield dg, dg.data
            continue
        key = (dg.src_ip, dg.src_port, dg.dst_ip, dg.dst_port)
        buf = streams.get(key, b"")
        if not buf and b"HEP3"[:len(dg.data[:4])] != dg.data[:4]:
            continue                           # not (or no longer) at a message boundary
        try:
            msgs, rest = split_hep_stream(buf + dg.data)
        except StreamError:
            streams.pop(key, None)
            continue
        streams[key] = rest
        for m in msgs:
            yield dg, m
