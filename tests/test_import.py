"""`import lenet_triton` picks the right Triton mode by itself, whatever was imported first.

Each case runs in a fresh process: what matters is what that process imported before lenet_triton.
"""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from import_order_check import PRELUDES
from lenet_triton import triton_mode

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()


def run_python(code_or_script, *args, interpret=None):
    """Runs python (a script path or -c code) with the repo importable and TRITON_INTERPRET unset,
    or set to `interpret` before the process starts."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    if interpret is not None:
        env["TRITON_INTERPRET"] = interpret
    command = [str(code_or_script)] if isinstance(code_or_script, Path) else ["-c", code_or_script]
    return subprocess.run([sys.executable, *command, *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_import_needs_no_settings():
    done = run_python("import os, lenet_triton; from lenet_triton.kernels.config import interpreting; "
                      "print(interpreting(), os.environ.get('TRITON_INTERPRET'))")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == (["False", "None"] if CUDA else ["True", "1"])


@pytest.fixture(scope="module")
def import_order_runs():
    """Every order's process, run side by side (each is mostly one core's worth of imports)."""
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        runs = {order: pool.submit(run_python, ROOT / "tests" / "import_order_check.py", order) for order in PRELUDES}
        return {order: run.result() for order, run in runs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("order", list(PRELUDES))
def test_every_import_order_computes_what_torch_does(order, import_order_runs):
    """Ops forward and backward, torch.compile(fullgraph=True) over them, and a LeNet training
    step, after `order` (tests/import_order_check.py)."""
    done = import_order_runs[order]
    assert done.returncode == 0, f"{order}:\n{done.stderr[-4000:]}"
    assert done.stdout.strip().endswith(f"ok {order}"), done.stdout[-2000:]
    # Only the interpreter case touches triton's state, and only when triton came first.
    rebuilt = not CUDA and order != "lenet_triton first"
    assert f"rebuilt {rebuilt}" in done.stdout, done.stdout[-2000:]
    # The interpreter's adjustments (triton_mode) hold after every order; with CUDA nothing is touched.
    adjusted = "none" if CUDA else ",".join(triton_mode.ADJUSTMENTS)
    assert f"adjusted {adjusted}" in done.stdout, done.stdout[-2000:]


def test_late_switch_with_cuda_present_is_refused_at_import():
    """With a CUDA device present, lenet_triton leaves triton's state alone and says what to do."""
    done = run_python(
        "import os, torch, triton\n"
        "torch.cuda.is_available = lambda: True\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "import lenet_triton\n")
    assert done.returncode != 0
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("ImportError: lenet_triton: TRITON_INTERPRET=1 is set, but triton"), message
    assert "before anything imports triton" in message and "CUDA device is present" in message, message


def test_switch_turned_off_after_triton_imported_interpreted_is_refused_at_import():
    done = run_python(
        "import os, triton\n"
        "os.environ['TRITON_INTERPRET'] = '0'\n"
        "import lenet_triton\n", interpret="1")
    assert done.returncode != 0
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("ImportError: lenet_triton: TRITON_INTERPRET is off now"), message


def test_explicit_interpret_off_imports_and_ops_refuse_cpu_tensors():
    """Without CUDA that leaves no way to run; the refusal says what to change."""
    done = run_python(
        "import torch, lenet_triton\n"
        "from lenet_triton import ops\n"
        "ops.conv2d(torch.randn(1, 1, 8, 8), torch.randn(2, 1, 3, 3))\n", interpret="0")
    assert done.returncode != 0
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("NotImplementedError: conv2d: input is a CPU tensor, but Triton's interpreter is off"), \
        message
    assert "TRITON_INTERPRET=1" in message, message


def test_a_rebuild_that_does_not_work_is_refused_at_import_not_in_a_kernel():
    """Stands in for a future triton whose interpreter differs: the self-check must catch it."""
    done = run_python(
        "import torch, triton.runtime.interpreter as interpreter\n"
        "torch.cuda.is_available = lambda: False\n"
        "def broken(self, *args, **kwargs):\n"
        "    raise RuntimeError('helpers changed')\n"
        "interpreter.InterpretedFunction.__call__ = broken\n"
        "import lenet_triton\n")
    assert done.returncode != 0
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("ImportError: lenet_triton: triton"), message
    assert "helpers changed" in message and "Import lenet_triton before triton" in message, message
