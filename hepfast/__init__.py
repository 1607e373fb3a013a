"""hepfast: a HEP switch for carrier-scale VoIP capture (Cython data plane, Python control plane)."""

__version__ = "0.1.0"
