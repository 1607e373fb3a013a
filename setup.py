"""Build the Cython data plane (sources in ext/) into the hepfast package.

HEPFAST_DEBUG=1 compiles with the HEP_DEBUG macro and writes `cython -a` annotations next to the
sources (ext/*.html); HEPFAST_ANNOTATE=1 only annotates.
"""
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("HEPFAST_DEBUG") == "1"
ANNOTATE = DEBUG or os.environ.get("HEPFAST_ANNOTATE") == "1"

macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
if DEBUG:
    macros.append(("HEP_DEBUG", "1"))
cflags = ["-O2", "-g0" if not DEBUG else "-g"]

MODULES = ["_codec", "_switch", "_sender", "_rules"]


def ext(name):
    return Extension(
        f"hepfast.{name}",
        [f"ext/{name}.pyx"],
        include_dirs=["ext", numpy.get_include()],
        define_macros=macros,
        extra_compile_args=cflags,
    )


setup(
    ext_modules=cythonize(
        [ext(m) for m in MODULES if os.path.exists(f"ext/{m}.pyx")],
        include_path=["ext"],
        annotate=ANNOTATE,
        compiler_directives={"language_level": 3, "embedsignature": True},
    ),
)
