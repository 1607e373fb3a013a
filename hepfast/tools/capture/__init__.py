"""Capture files in and out: pcap, pcapng and .hepraw, with UDP datagrams and reassembled TCP.

Pure Python (stdlib only): this is the cold path of `hepfast decode` and `hepfast replay`, and the
way tests build pcaps. Invariants:
- Readers never raise on bad content: a truncated or garbage frame, an IP fragment other than the
  first, an unknown link type or protocol is skipped. Only a file that is not pcap/pcapng at all
  raises CaptureError (a message saying what the file looks like), and I/O errors are OSError.
- TCP is reassembled per direction of each flow (src, sport, dst, dport): only new in-order bytes
  are delivered (retransmitted bytes dropped, out-of-order segments held, bounded per flow), one
  Datagram per segment that advances the stream.
- `split_hep_stream` / `split_sip_stream` only frame; a stream that cannot be framed raises
  StreamError and the caller closes it (hep-protocol.md section 4: nobody resyncs mid-stream).
"""

from hepfast.tools.capture.common import (  # noqa: F401
    _ETH_VLAN,
    _IPV6_EXT,
    _PCAP_MAGICS,
    _PCAPNG_SHB,
    _RAW_LINKTYPES,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    SIP_MAX_BODY,
    SIP_MAX_HEADERS,
    TCP_ACK,
    TCP_FIN,
    TCP_MAX_PENDING_BYTES,
    TCP_MAX_PENDING_SEGMENTS,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    CaptureError,
    Datagram,
    StreamError,
    TcpSegment,
)
from hepfast.tools.capture.framing import (  # noqa: F401
    _content_length,
    iter_hep_messages,
    looks_like_hep,
    split_hep_stream,
    split_sip_stream,
)
from hepfast.tools.capture.hepraw import (  # noqa: F401
    read_hepraw,
    write_hepraw,
)
from hepfast.tools.capture.reader import (  # noqa: F401
    _frames,
    _ipv4,
    _ipv6,
    _l3,
    _packets,
    _pcap_frames,
    _pcapng_frames,
    _Seg,
    _tsresol,
    file_kind,
)
from hepfast.tools.capture.reassembly import (  # noqa: F401
    TcpReassembler,
    _Flow,
    _rel,
    read_capture,
)
from hepfast.tools.capture.writer import (  # noqa: F401
    _csum,
    build_frame,
    tcp_datagrams,
    write_pcap,
    write_pcapng,
)

__all__ = [
    "CaptureError", "StreamError", "Datagram", "TcpSegment", "TcpReassembler", "read_hepraw",
    "write_hepraw", "read_capture", "file_kind", "split_hep_stream", "split_sip_stream",
    "looks_like_hep", "iter_hep_messages", "tcp_datagrams", "build_frame", "write_pcap",
    "write_pcapng",
]
