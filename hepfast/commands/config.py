"""`hepfast config`: print the bundled default configuration, to start a real one from.

The bundled file is what `hepfast run` and `hepfast check` use without -c (and without
$HEPFAST_CONFIG); after `pip install` it sits inside the package, so this command is the way to
see it. `--path` prints where it is; `-o FILE` writes a copy (never over an existing file unless
--force).
"""
from __future__ import annotations

HELP = "print the bundled default configuration (a commented example to copy and edit)"
DESCRIPTION = __doc__


def add_arguments(p) -> None:
    p.add_argument("--path", action="store_true", help="print the bundled file's path instead")
    p.add_argument("-o", "--output", metavar="FILE", help="write a copy to FILE")
    p.add_argument("--force", action="store_true", help="with -o: replace an existing FILE")


def main(args) -> int:
    import os
    import sys

    from hepfast.config import DEFAULT_CONFIG_PATH

    if args.path:
        print(DEFAULT_CONFIG_PATH)
        return 0
    text = DEFAULT_CONFIG_PATH.read_text(encoding="utf-8")
    if not args.output:
        sys.stdout.write(text)
        return 0
    try:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if args.force else os.O_EXCL)
        fd = os.open(args.output, flags, 0o644)
    except FileExistsError:
        print(f"error: {args.output}: exists already; add --force to replace it",
              file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {args.output}: cannot write: {exc.strerror or exc}", file=sys.stderr)
        return 1
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {args.output}; check it with `hepfast check -c {args.output}`",
          file=sys.stderr)
    return 0
