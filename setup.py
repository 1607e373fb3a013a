"""Build the Cython data plane (sources in ext/) into the hepfast package.

Every `ext/<layer>/_<name>.pyx` becomes the extension module `hepfast.<layer>._<name>`; the
`.pxd`/`.h` files of every ext/ folder are on the include path, so a module cimports the wire
format (ext/wire), the matcher (ext/plan) or the ring (ext/egress) by name. Before cythonize, the
shared constants are generated from their single Python definition (hepfast/constants.py) into
ext/generated/constants.pxd (see scripts/gen_constants.py), so the two languages cannot drift.

HEPFAST_DEBUG=1 compiles with the HEP_DEBUG macro and writes `cython -a` annotations next to the
sources (ext/*/*.html); HEPFAST_ANNOTATE=1 only annotates.
"""
import glob
import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("HEPFAST_DEBUG") == "1"
ANNOTATE = DEBUG or os.environ.get("HEPFAST_ANNOTATE") == "1"

macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
if DEBUG:
    macros.append(("HEP_DEBUG", "1"))
cflags = ["-O2", "-g0" if not DEBUG else "-g"]
ldflags: list[str] = []

# --- sanitizer and fuzzing builds (make asan, make fuzz: fuzz/sanitize.py, docs/hardening.md) ---
# HEPFAST_SANITIZE=address,undefined compiles and links with -fsanitize=... (gcc or clang), at -O1
# with frame pointers, undefined behaviour fatal. HEPFAST_FUZZ=1 (clang only) adds
# -fsanitize=fuzzer-no-link: the coverage counters libFuzzer (atheris) reads. The runtimes are
# LD_PRELOADed by whoever runs the result; a normal build sets neither variable.
_SANITIZE = [s for s in os.environ.get("HEPFAST_SANITIZE", "").split(",") if s]
if os.environ.get("HEPFAST_FUZZ") == "1":
    _SANITIZE.append("fuzzer-no-link")
if _SANITIZE:
    ldflags = ["-fsanitize=" + ",".join(_SANITIZE)]
    cflags = ["-O1", "-g", "-fno-omit-frame-pointer"] + ldflags
    if "undefined" in _SANITIZE:
        cflags.append("-fno-sanitize-recover=undefined")
# --- end of sanitizer block -------------------------------------------------------------------


# System libraries the modules link: zlib for every module (the compressed-payload chunk
# 0x0010, ext/wire/inflate.pxd; zlib1g-dev to build), and OpenSSL for the worker, whose TLS
# listeners use it (ext/dataplane/tls.pxd; libssl-dev). scripts/ensure-deps.sh installs both.
LIBRARIES = ["z"]
MODULE_LIBRARIES = {"dataplane._worker": ["ssl", "crypto"]}


def generate_constants() -> None:
    sys.path.insert(0, os.path.join(HERE, "scripts"))
    try:
        import gen_constants
    finally:
        sys.path.pop(0)
    gen_constants.main()


def extensions() -> tuple:
    include = sorted(d for d in glob.glob("ext/*") if os.path.isdir(d))
    mods = []
    for src in sorted(glob.glob("ext/*/_*.pyx")):
        layer = os.path.basename(os.path.dirname(src))
        name = os.path.splitext(os.path.basename(src))[0]
        mods.append(Extension(f"hepfast.{layer}.{name}", [src],
                              include_dirs=include + [numpy.get_include()],
                              define_macros=macros, extra_compile_args=cflags,
                              extra_link_args=ldflags,
                              libraries=LIBRARIES + MODULE_LIBRARIES.get(f"{layer}.{name}", [])))
    return mods, include


if os.path.exists(os.path.join(HERE, "scripts", "gen_constants.py")):
    generate_constants()
_mods, _include = extensions()
setup(
    ext_modules=cythonize(
        _mods,
        include_path=_include,
        annotate=ANNOTATE,
        compiler_directives={"language_level": 3, "embedsignature": True},
    ),
)
