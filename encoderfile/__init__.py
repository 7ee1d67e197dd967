"""encoderfile: compile an embedding model recipe into one verified, offline executable."""

import os

# onnxruntime's PyPI wheel writes telemetry files at import and later tries DNS lookups unless this
# is set before the first import; the air-gapped promise depends on it.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
