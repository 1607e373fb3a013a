"""`hepfast decode FILE...`: HEP messages of pcap/pcapng/.hepraw files as JSON lines.

One compact JSON object per HEP message on stdout, with exactly the keys of design.md section 3
(HepPacket.to_dict()). Messages that do not parse are reported on stderr with their reason and
counted; a summary line goes to stderr at the end. Exit status: 1 when a file could not be read or
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


def main(args) -> int:
    import msgspec

    from hepfast.wire import codec
    from hepfast.tools.capture import CaptureError, iter_hep_messages

    out = sys.stdout.buffer
    encode = msgspec.json.Encoder().encode
    decoded = invalid = 0
    unreadable = False
    by_reason: dict[str, int] = {}
    for path in args.files:
        index = -1
        try:
            for index, (_dg, data) in enumerate(iter_hep_messages(path)):
                try:
                    pkt = codec.decode(data)
                except codec.HepError as exc:
                    invalid += 1
                    by_reason[exc.name] = by_reason.get(exc.name, 0) + 1
                    if invalid <= MAX_REPORTED:
                        print(f"{path}: message {index}: {exc}", file=sys.stderr)
                    continue
                out.write(encode(pkt.to_dict()) + b"\n")
                decoded += 1
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, and keep the interpreter's final
            # flush from failing on the closed pipe.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except CaptureError as exc:
            unreadable = True
            print(f"hepfast decode: {exc}", file=sys.stderr)
        except OSError as exc:
            unreadable = True
            where = f" after message {index}" if index >= 0 else ""
            print(f"hepfast decode: cannot read {path}{where}: {exc.strerror or exc}",
                  file=sys.stderr)
    try:
        out.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(by_reason.items()))
    print(f"hepfast decode: {decoded} decoded, {invalid} invalid"
          + (f" ({reasons})" if reasons else ""), file=sys.stderr)
    if unreadable:
        return 1
    if decoded == 0:
        print("hepfast decode: no HEP message found; is this HEP traffic (UDP/TCP HEP, or "
              ".hepraw records)?", file=sys.stderr)
        return 1
    return 0
