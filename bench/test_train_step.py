"""Training step of LeNet (forward, cross-entropy, backward, SGD step) in every variant of variants.py.

Each variant starts from the same weights and batch as eager; the loss of each of its first
CHECKED_STEPS steps and the parameters after each must match eager's before it is timed. The first
step also holds any compilation, which is reported apart (first_call_seconds) and kept out of the
step time.
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

    return model, graphed(step) if variant == "triton-graph" else step


def graphed(step):
    """step() captured whole in a CUDA graph, as in torch's whole-network capture recipe: the first
    call runs a real step on a side stream (it compiles every kernel and creates the optimizer's
    state), then records the next step without running it; every later call replays that record.
    The step must read only tensors that stay put (here one fixed batch)."""
    graph = static_loss = None

    def replayed_step():
        nonlocal graph, static_loss
        if graph is not None:
            graph.replay()
            return static_loss
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            loss = step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_loss = step()
        return loss

    return replayed_step


# The second step is a CUDA-graph variant's first replay and SGD's first step with momentum.
CHECKED_STEPS = 2
_EAGER = {}


def eager_reference(batch: int) -> list:
    """Eager's (loss, parameters after the step) for each of the first CHECKED_STEPS steps at this
    batch size (computed once)."""
    if batch not in _EAGER:
        model, step = make_train_step(variants.BASELINE, batch)
        _EAGER[batch] = [(step().detach().clone(), [p.detach().clone() for p in model.parameters()])
                         for _ in range(CHECKED_STEPS)]
    return _EAGER[batch]


@pytest.mark.parametrize("batch", variants.TRAIN_BATCHES)
@pytest.mark.parametrize("variant", variants.TRAIN_VARIANTS)
def test_train_step(benchmark, variant, batch, peak_gflops, versions):
    torch._dynamo.reset()
    model, step = make_train_step(variant, batch)
    loss, seconds = first_call(step)
    # A variant that disagrees with eager fails here and is not timed. The parameters after each
    # step check the gradients (TrainStep keeps none) and the optimizer's update together.
    for number, (expected_loss, expected_params) in enumerate(eager_reference(batch), start=1):
        if number > 1:
            loss = step()
        assert_close(loss.detach(), expected_loss, f"{variant} loss of step {number} vs eager")
        for (name, p), expected in zip(model.named_parameters(), expected_params):
            assert_close(p.detach(), expected, f"{variant} {name} after step {number} vs eager")
    timed(benchmark, step, group=f"train step, batch {batch}", variant=variant, batch=batch,
          flops=variants.lenet_flops(train=True) * batch, peak_gflops=peak_gflops, versions=versions,
          first_call_seconds=seconds)
