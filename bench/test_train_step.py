"""Training step of LeNet (forward, cross-entropy, backward, SGD step) in every variant of variants.py.

Each variant starts from the same weights and batch as eager; its first step's loss and the
parameters after it must match eager's before it is timed. That first step also holds any compilation, which is
reported apart (first_call_seconds) and kept out of the step time.
"""

import pytest
import torch
import torch.nn.functional as F

from bench import variants
from bench.conftest import first_call, timed
from lenet_triton import LeNet, TrainStep
from lenet_triton.testing import assert_close

COMPILE_MODES = {"compile-default": "default", "compile-max-autotune": "max-autotune",
                 "compile-reduce-overhead": "reduce-overhead", "triton-compile": "default"}


def make_train_step(variant: str, batch: int):
    """(model, step) where step() runs one training step and returns the loss."""
    torch.manual_seed(0)
    model = LeNet(backend=variants.backend_of(variant)).to(variants.DEVICE)
    images = torch.randn(batch, 1, 32, 32, device=variants.DEVICE)
    labels = torch.randint(0, 10, (batch,), device=variants.DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if variant.startswith("fused-step"):
        train_step = TrainStep(model, optimizer, cuda_graph=variant == "fused-step-graph")
        return model, lambda: train_step(images, labels)

    def loss_of_batch():
        return F.cross_entropy(model(images), labels)

    if variant in COMPILE_MODES:
        loss_of_batch = torch.compile(loss_of_batch, mode=COMPILE_MODES[variant])

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of_batch()
        loss.backward()
        optimizer.step()
        return loss

    return model, step


_EAGER = {}


def eager_reference(batch: int):
    """Eager's first-step loss and parameters after that step, for this batch size (computed once)."""
    if batch not in _EAGER:
        model, step = make_train_step(variants.BASELINE, batch)
        loss = step().detach()
        _EAGER[batch] = (loss, [p.detach().clone() for p in model.parameters()])
    return _EAGER[batch]


@pytest.mark.parametrize("batch", variants.TRAIN_BATCHES)
@pytest.mark.parametrize("variant", variants.TRAIN_VARIANTS)
def test_train_step(benchmark, variant, batch, peak_gflops, versions):
    torch._dynamo.reset()
    model, step = make_train_step(variant, batch)
    loss, seconds = first_call(step)
    expected_loss, expected_params = eager_reference(batch)
    # A variant that disagrees with eager fails here and is not timed. The parameters after the
    # first step check the gradients (TrainStep keeps none) and the optimizer's update together.
    assert_close(loss.detach(), expected_loss, f"{variant} loss vs eager")
    for (name, p), expected in zip(model.named_parameters(), expected_params):
        assert_close(p.detach(), expected, f"{variant} {name} after one step vs eager")
    timed(benchmark, step, group=f"train step, batch {batch}", variant=variant, batch=batch,
          flops=variants.lenet_flops(train=True) * batch, peak_gflops=peak_gflops, versions=versions,
          first_call_seconds=seconds)
