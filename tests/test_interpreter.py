"""The interpreter adjustments of lenet_triton.triton_mode: every path computes the same bits with
and without them, each can be turned off, and a triton they were not checked on is left alone."""


import pytest
import torch
import torch.nn.functional as F

from lenet_triton import LeNet, TrainStep, ops, triton_mode
from conftest import DEVICE, make
from test_import import run_python

pytestmark = pytest.mark.skipif(DEVICE == "cuda", reason="the adjustments are for Triton's interpreter (no CUDA)")


@pytest.fixture
def adjustments():
    """Sets the adjustments for the test (set_interpreter_adjustments), then puts back what was in effect."""
    saved = triton_mode.interpreter_adjustments()
    yield triton_mode.set_interpreter_adjustments
    triton_mode.set_interpreter_adjustments(saved)


def _every_path():
    """Outputs and gradients of each op, the fused model and two TrainStep steps, from seed 0."""
    torch.manual_seed(0)
    results = []
    x = make((2, 3, 9, 8), requires_grad=True)
    w, b = make((4, 3, 3, 3), requires_grad=True, scale=0.3), make((4,), requires_grad=True)
    y = ops.max_pool2d(ops.conv2d(x, w, b, padding=1, activation="relu"), 3, 2, 1)
    out = ops.linear(y.flatten(1), make((5, 80), requires_grad=True, scale=0.2), activation="relu")
    results += [out, *torch.autograd.grad(out.square().sum(), [x, w, b])]
    for backend in ("triton", "fused"):
        torch.manual_seed(1)
        model = LeNet(backend=backend).to(DEVICE)
        images, labels = torch.randn(5, 1, 32, 32, device=DEVICE), torch.randint(0, 10, (5,), device=DEVICE)
        loss = F.cross_entropy(model(images), labels)
        results += [loss, *torch.autograd.grad(loss, list(model.parameters()))]
    step = TrainStep(model, torch.optim.Adam(model.parameters(), lr=1e-2))
    results += [step(images, labels).clone(), step(images, labels).clone(), *[p.detach().clone() for p in model.parameters()]]
    return results


def test_every_path_computes_the_same_bits_with_and_without_the_adjustments(adjustments):
    adjustments(triton_mode.ADJUSTMENTS)
    adjusted = _every_path()
    for subset in [(), ("patch-once",), ("no-overflow-checks",)]:
        adjustments(subset)
        plain = _every_path()
        for i, (a, b) in enumerate(zip(adjusted, plain)):
            assert torch.equal(a, b), f"result {i} differs with adjustments {subset} against all of them"


def test_the_probe_proves_each_adjustment_took_effect(adjustments):
    from lenet_triton.kernels.probe import probe_adjustments
    from triton.runtime import interpreter

    adjustments(triton_mode.ADJUSTMENTS)
    assert probe_adjustments(triton_mode.interpreter_adjustments()) is None
    assert interpreter.interpreter_builder.options.sanitize_overflow is False
    adjustments(())
    assert interpreter._patch_lang is interpreter._stock_patch_lang
    assert interpreter.interpreter_builder.options.sanitize_overflow is True


def test_a_failing_probe_stops_the_import_and_says_how_to_go_on(adjustments, monkeypatch):
    from lenet_triton.kernels import probe

    monkeypatch.setattr(probe, "probe_adjustments", lambda adjusted: "the probe kernel gave [0.0], expected [1.0]")
    with pytest.raises(ImportError, match=r"do not work on triton 3\.9\.1 \(the probe kernel gave \[0\.0\].*"
                                          r"Set LENET_TRITON_INTERPRETER_ADJUSTMENTS=none"):
        triton_mode._adjust_interpreter("3.9.1")
    assert triton_mode.interpreter_adjustments() == ()


def test_a_triton_they_were_not_checked_on_is_left_alone(adjustments):
    adjustments(())
    triton_mode._adjust_interpreter("3.7.0")
    assert triton_mode.interpreter_adjustments() == ()
    triton_mode._adjust_interpreter("3.6.0")
    assert triton_mode.interpreter_adjustments() == triton_mode.ADJUSTMENTS


@pytest.mark.parametrize("value, expected", [("all", triton_mode.ADJUSTMENTS), ("none", ()), ("", ()),
                                             ("patch-once", ("patch-once",)),
                                             (" no-overflow-checks , patch-once", ("no-overflow-checks", "patch-once"))])
def test_the_variable_chooses_them(value, expected, monkeypatch):
    monkeypatch.setenv(triton_mode.ADJUSTMENTS_VARIABLE, value)
    assert triton_mode._wanted_adjustments() == expected


def test_a_misspelt_adjustment_is_refused_by_name(monkeypatch):
    monkeypatch.setenv(triton_mode.ADJUSTMENTS_VARIABLE, "patch-once,no-overflow")
    with pytest.raises(ImportError, match=r"names \['no-overflow'\]; use 'all' \(the default\), 'none'"):
        triton_mode._wanted_adjustments()


def test_none_in_the_environment_runs_the_stock_interpreter():
    done = run_python(f"import os; os.environ[{triton_mode.ADJUSTMENTS_VARIABLE!r}] = 'none'; "
                      "import lenet_triton; from triton.runtime import interpreter; "
                      "from lenet_triton import triton_mode; "
                      "print(triton_mode.interpreter_adjustments(), interpreter.interpreter_builder.options.sanitize_overflow, "
                      "hasattr(interpreter, '_stock_patch_lang'))")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["()", "True", "False"], done.stdout
