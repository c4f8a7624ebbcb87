"""Safety checks of creators' model files; imports nothing from cyxwiz but ``errors``.

``check_onnx_bytes`` validates an ONNX model from bytes in memory (no external data, valid
graph, supported opsets) and is run both by the marketplace at publish and by every node
before it opens a session. ``scan_file`` gives any file a verdict (clean, suspicious,
dangerous or not applicable) without ever unpickling it. See docs/scanning.md.
"""

from cyxwiz.scanning.files import SCANNER, STATUSES, Verdict, scan_file
from cyxwiz.scanning.onnx_check import (
    FileRefused,
    OnnxSummary,
    check_onnx_bytes,
    supported_ir_version,
    supported_opsets,
)
from cyxwiz.scanning.pickles import classify, scan_pickle_stream

__all__ = [
    "SCANNER",
    "STATUSES",
    "FileRefused",
    "OnnxSummary",
    "Verdict",
    "check_onnx_bytes",
    "classify",
    "scan_file",
    "scan_pickle_stream",
    "supported_ir_version",
    "supported_opsets",
]
