"""Egress processes: destinations the workers feed through shared-memory rings.

- `ring`: creating and attaching the rings (format in ext/egress/hepring.h).
- `base`: the Egress contract and the EGRESS_KINDS registry.
- `file`: rotating .hepraw files.
- `process`: the loop of one egress process (`run_egress`).

Importing the package registers every built-in kind in EGRESS_KINDS.
"""
from hepfast.egress import file as _file  # noqa: F401  (registers "file")
from hepfast.egress.base import EGRESS_KINDS, Egress, register

__all__ = ["EGRESS_KINDS", "Egress", "register"]
