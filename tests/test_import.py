"""`import lenet_triton` picks the right Triton mode by itself."""

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import os, torch, torch.nn.functional as F
import lenet_triton
from lenet_triton import ops
from lenet_triton.kernels.config import interpreting
device = "cuda" if torch.cuda.is_available() else "cpu"
assert interpreting() == (device == "cpu"), (interpreting(), device)
x, w = torch.randn(2, 3, 8, 8, device=device), torch.randn(4, 3, 3, 3, device=device)
err = (ops.conv2d(x, w) - F.conv2d(x, w)).abs().max().item()
assert err < 1e-4, err
print("mode", os.environ.get("TRITON_INTERPRET", "compiled"))
"""


def test_import_needs_no_settings():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == ("mode compiled" if torch.cuda.is_available() else "mode 1")
