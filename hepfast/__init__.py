"""hepfast: a HEP switch for carrier-scale VoIP capture (Cython data plane, Python control plane)."""

import os as _os

# hepfast uses numpy for flat tables and counters, never for linear algebra: keep OpenBLAS from
# starting a thread per core in every switch process (idle threads still cost wake-ups).
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
