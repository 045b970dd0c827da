"""Importing the pipeline starts nothing and never pulls in torch (or dlib)."""

from __future__ import annotations

import subprocess
import sys

MODULES = [
    "service.inference.images",
    "service.inference.align",
    "service.inference.detect",
    "service.inference.faces",
    "service.inference.preprocess",
    "service.inference.backbone",
    "service.inference.dlib_backbone",
    "training.data.extract",
    "training.data.cli",
]


def test_pipeline_imports_are_torch_free_and_lazy() -> None:
    code = (
        "import sys, threading\n"
        f"for m in {MODULES!r}: __import__(m)\n"
        "heavy = sorted(m for m in ('torch', 'dlib', 'onnxruntime') if m in sys.modules)\n"
        "print(heavy, threading.active_count())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert out == "[] 1", out
