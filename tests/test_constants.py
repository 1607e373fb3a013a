"""One definition per shared constant: every compiled module must carry exactly the values of
hepfast/constants.py (and the chunk table of hepfast/wire/chunks.py) that the build generated into
ext/generated/constants.pxd. A stale build, or a constant kept by hand on one side, fails here."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from hepfast import constants
from hepfast.wire import chunks, pycodec

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["hepfast.wire._codec", "hepfast.plan._matcher", "hepfast.dataplane._worker",
           "hepfast.tools._sender", "hepfast.tools._receiver", "hepfast.egress._store",
           "hepfast.dataplane._guard", "hepfast.egress._pgrow"]


def expected() -> dict:
    want = {k: v for block in constants.c_enums().values() for k, v in block.items()}
    want["FIXED_SIZE"] = {t: chunks.FIXED_SIZE[w] for (t, w) in chunks.GENERIC.values()
                          if w in chunks.FIXED_SIZE}
    return want


@pytest.mark.parametrize("name", MODULES)
def test_compiled_module_matches_python(name):
    mod = importlib.import_module(name)
    assert mod.CONSTANTS == expected()


def test_every_compiled_module_is_checked():
    """A new extension module must expose CONSTANTS and be listed above."""
    built = {f"hepfast.{p.parent.name}.{p.stem}" for p in (ROOT / "ext").glob("*/_*.pyx")}
    missing = built - set(MODULES) - {"hepfast.egress._ring"}
    assert not missing, f"add these modules to MODULES: {missing}"
    assert built >= set(MODULES)


def test_no_hand_kept_copies_in_ext():
    """Constants live in generated code only: no DEF or enum member redefines a generated name."""
    names = set(expected()) - {"FIXED_SIZE"}
    for src in (ROOT / "ext").glob("*/*.p*"):
        if src.parent.name == "generated":
            continue
        text = src.read_text()
        for m in re.finditer(r"^(?:DEF |\s+)([A-Z][A-Z0-9_]+) = -?\d", text, re.M):
            assert m.group(1) not in names, f"{src}: {m.group(1)} is generated, not hand-kept"


def test_pure_codec_uses_the_same_chunk_sizes():
    assert pycodec._FIXED == expected()["FIXED_SIZE"]


def test_reason_and_counter_names_fit_their_blocks():
    assert len(constants.INVALID_NAMES) <= constants.N_INVALID
    assert len(constants.DROP_NAMES) <= constants.N_DROP
    offs = sorted(v for k, v in vars(constants).items() if k.startswith("OFF_"))
    assert offs == sorted(set(offs)) and offs[-1] < constants.STRIDE
