"""`hepfast decode FILE...`: HEP messages of pcap/pcapng/.hepraw files as JSON lines.

One compact JSON object per HEP message on stdout (HepPacket.to_record()): every key of design.md
section 3 (a contract), plus `index` (the message's position in its file, the number error lines
use), `file` (only when several files are given), `length` (the HEP length), the names next to
the numbers (`proto_family_name`, `proto_id_name`, `proto_type_name`) and, with --payload, the
payload itself. A pcap holding raw SIP and no HEP is wrapped into HEPv3 the way `hepfast replay`
sends it (addresses, ports and capture time from the packet), with `"wrapped": true`.

Messages that do not parse are reported on stderr with their reason and counted; a summary line
goes to stderr at the end when anything was read. Exit status: 1 when a file could not be read or
nothing decoded at all, else 0.
"""
from __future__ import annotations

import argparse
import os
import sys

HELP = "decode pcap/pcapng/.hepraw files to JSON lines, one object per HEP message"

# Invalid messages reported one by one before only counting them (a broken file can hold
# millions); the summary line always has the totals.
MAX_REPORTED = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="pcap, pcapng or .hepraw file (recognised by content)")
    parser.add_argument("--payload", action="store_true",
                        help="include the payload (\"payload\" as text, or \"payload_b64\" when "
                             "it is not UTF-8)")


def _wrapped_sip(path: str) -> list[bytes]:
    """Raw SIP of a pcap wrapped into HEP as replay does (HEP inside would be kept as is, but
    this is only called for a pcap that held none)."""
    from hepfast.tools.capture import file_kind
    from hepfast.tools.replay import read_capture_packets

    if file_kind(path) == "hepraw":
        return []
    return [p.data for p in read_capture_packets(path)]


class _Out:
    """Counts and writes the records of every file."""

    def __init__(self, args) -> None:
        import msgspec

        from hepfast.wire import codec

        self.codec = codec
        self.encode = msgspec.json.Encoder().encode
        self.write = sys.stdout.buffer.write
        self.payload = bool(getattr(args, "payload", False))
        self.several = len(args.files) > 1
        self.decoded = self.invalid = 0
        self.by_reason: dict[str, int] = {}

    def message(self, path: str, index: int, data: bytes, wrapped: bool = False) -> None:
        try:
            pkt = self.codec.decode(data)
        except self.codec.HepError as exc:
            self.invalid += 1
            self.by_reason[exc.name] = self.by_reason.get(exc.name, 0) + 1
            if self.invalid <= MAX_REPORTED:
                print(f"{path}: message {index}: {exc}", file=sys.stderr)
            return
        rec = pkt.to_record(index, payload=self.payload)
        if self.several:
            rec = {"file": path, **rec}
        if wrapped:
            rec["wrapped"] = True
        self.write(self.encode(rec) + b"\n")
        self.decoded += 1


def _quiet_pipe() -> int:
    # The reader went away (`| head`): stop quietly, and keep the interpreter's final flush from
    # failing on the closed pipe.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def main(args) -> int:
    from hepfast.tools.capture import CaptureError, iter_hep_messages

    out = _Out(args)
    unreadable = False
    for path in args.files:
        index = -1
        try:
            for index, (_dg, data) in enumerate(iter_hep_messages(path)):
                out.message(path, index, data)
            if index < 0:
                wrapped = _wrapped_sip(path)
                if wrapped:
                    print(f"hepfast decode: {path}: no HEP inside; {len(wrapped)} raw SIP "
                          "messages wrapped into HEPv3 as `hepfast replay` sends them",
                          file=sys.stderr)
                for index, data in enumerate(wrapped):
                    out.message(path, index, data, wrapped=True)
        except BrokenPipeError:
            return _quiet_pipe()
        except CaptureError as exc:
            unreadable = True
            print(f"hepfast decode: {exc}", file=sys.stderr)
        except OSError as exc:
            unreadable = True
            where = f" after message {index}" if index >= 0 else ""
            print(f"hepfast decode: cannot read {path}{where}: {exc.strerror or exc}",
                  file=sys.stderr)
    try:
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        return _quiet_pipe()
    if out.decoded or out.invalid:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(out.by_reason.items()))
        print(f"hepfast decode: {out.decoded} decoded, {out.invalid} invalid"
              + (f" ({reasons})" if reasons else ""), file=sys.stderr)
    if unreadable:
        return 1
    if out.decoded == 0:
        if out.invalid:
            print("hepfast decode: no message decoded: every HEP message was invalid (reasons "
                  "above)", file=sys.stderr)
        else:
            print("hepfast decode: no HEP message found (nor raw SIP to wrap); is this HEP "
                  "traffic (UDP/TCP HEP, or .hepraw records)?", file=sys.stderr)
        return 1
    return 0
