"""The whole-network kernels (LeNet(backend="fused"), ops.lenet) and TrainStep against torch.

Logits and every parameter gradient against the torch backend on the same weights and batch;
TrainStep against eager torch.optim, parameters and optimizer state after every step.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lenet_triton import LeNet, TrainStep, ops
from lenet_triton.datasets import load_digits
from lenet_triton.kernels import config
from lenet_triton.testing import assert_close, recorded_launches
from conftest import DEVICE, HALF_DTYPES, needs_cuda


def _pair(in_channels=1, num_classes=10, dtype=torch.float32):
    """(fused model, torch-backend model) with the same weights."""
    fused = LeNet(in_channels, num_classes, backend="fused").to(DEVICE, dtype)
    reference = LeNet(in_channels, num_classes, backend="torch").to(DEVICE, dtype)
    reference.load_state_dict(fused.state_dict())
    return fused, reference


def _check_forward_and_gradients(batch, in_channels=1, num_classes=10, dtype=torch.float32):
    fused, reference = _pair(in_channels, num_classes, dtype)
    images = torch.randn(batch, in_channels, 32, 32, device=DEVICE, dtype=dtype)
    upstream = torch.randn(batch, num_classes, device=DEVICE, dtype=dtype)
    logits, expected = fused(images), reference(images)
    name = f"batch {batch}, in_channels {in_channels}, num_classes {num_classes}, {dtype}"
    assert_close(logits, expected, f"{name}: logits")
    logits.backward(upstream)
    expected.backward(upstream)
    for (param_name, ours), theirs in zip(fused.named_parameters(), reference.parameters()):
        assert_close(ours.grad, theirs.grad, f"{name}: {param_name}.grad")


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("batch", [1, 7, 64, 65])
def test_forward_and_every_gradient_match_torch(batch, in_channels):
    _check_forward_and_gradients(batch, in_channels)


@settings(max_examples=5)
@given(batch=st.integers(1, 40), in_channels=st.integers(1, 3), num_classes=st.integers(1, 20))
def test_property_any_batch_channels_and_classes(batch, in_channels, num_classes):
    _check_forward_and_gradients(batch, in_channels, num_classes)


def test_float64_past_the_chunk_that_fits_ten_samples():
    """float64's conv1 weight gradient sums a 3-D product instead of a tl.dot: at 17 samples its rows
    take several chunks (under the interpreter; on a GPU they always do)."""
    _check_forward_and_gradients(17, dtype=torch.float64)
    _check_train_steps("sgd", steps=1, batch=17, dtype=torch.float64)


def test_many_classes_take_several_output_chunks():
    _check_forward_and_gradients(3, num_classes=300)


def test_gpu_launch_plan_with_several_programs(gpu_plan):
    """The GPU's small chunks (several steps of every GEMM's rows and reduction), several programs
    each writing its own partial row, summed by the reduction in several blocks, and a last tile that
    runs past the batch: what a GPU runs, here through the interpreter (on a GPU, the real thing).
    Forward and every gradient in float32 against torch in float64."""
    plan = config.lenet_plan(3, 1, torch.float32)
    # 3 samples in tiles of 2 on 2 programs: the last tile's second sample is past the batch. (In the
    # GPU's small chunks each program costs the interpreter seconds: two show all of this.)
    assert (plan.samples, plan.programs) == (2, 2), plan
    fused, _ = _pair()
    exact = LeNet(backend="torch").to(DEVICE, torch.float64)
    exact.load_state_dict(fused.state_dict())
    images = torch.randn(3, 1, 32, 32, device=DEVICE)
    upstream = torch.randn(3, 10, device=DEVICE)
    with recorded_launches() as launches:
        logits = fused(images)
        logits.backward(upstream)
    expected = exact(images.double())
    expected.backward(upstream.double())
    assert_close(logits.double(), expected, "GPU plan: logits", dtype=torch.float32)
    for (name, ours), theirs in zip(fused.named_parameters(), exact.parameters()):
        assert_close(ours.grad.double(), theirs.grad, f"GPU plan: {name}.grad", dtype=torch.float32)
    # fc1.weight's 48,000 gradients in blocks of 16,384: three reduction blocks, the last one short.
    assert [(launch.kernel, launch.grid) for launch in launches] == [
        ("lenet_forward_kernel", (2,)), ("lenet_backward_kernel", (2,)), ("lenet_reduce_kernel", (3, 10))]


@pytest.mark.parametrize("optimizer_name", ["sgd-nesterov", "adam-weight-decay"])
def test_train_step_under_the_gpu_launch_plan(gpu_plan, optimizer_name):
    """TrainStep's two launches under the GPU plan, in float64 against eager torch.optim: the loss
    from two programs' partial sums, the update applied block by block."""
    _check_train_steps(optimizer_name, steps=2, batch=3, dtype=torch.float64)


def test_gpu_plan_keeps_every_sm_busy_and_partial_rows_few():
    """From batch 256 on, at least one program per SM of an H100 (132) and at most two (264, so the
    partial buffer has at most 264 rows), each a power-of-two tile that covers the batch."""
    for batch in [*range(1, 3000), 4095, 4096, 4097, 65535, 65536, 65537, 10**6]:
        plan = config.GPU_PLAN.lenet(batch, 1, torch.float32)
        assert plan.samples & (plan.samples - 1) == 0 and (plan.programs - 1) * plan.samples < batch, (batch, plan)
        assert plan.programs * plan.samples >= batch and plan.programs <= 264, (batch, plan)
        assert batch < 256 or plan.programs >= 132, (batch, plan)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_half_precision_is_as_accurate_as_torch(dtype):
    """Each against a float64 run: at most twice torch's own error in the same dtype."""
    fused, reference = _pair(dtype=dtype)
    exact = LeNet(backend="torch").to(DEVICE, torch.float64)
    exact.load_state_dict(fused.state_dict())
    images = torch.randn(16, 1, 32, 32, device=DEVICE)
    labels = torch.randint(0, 10, (16,), device=DEVICE)
    outputs = {}
    for name, model, x in (("fused", fused, images.to(dtype)), ("torch", reference, images.to(dtype)),
                           ("exact", exact, images.double())):
        logits = model(x)
        F.cross_entropy(logits.float() if name != "exact" else logits, labels).backward()
        outputs[name] = [logits] + [p.grad for p in model.parameters()]
    for i, (ours, theirs, exact_value) in enumerate(zip(*outputs.values())):
        error = lambda t: ((t.double() - exact_value.double()).norm() / exact_value.double().norm()).item()  # noqa: E731
        assert error(ours) <= 2 * error(theirs) + 1e-4, f"{dtype} output {i}: {error(ours):.2e} vs torch {error(theirs):.2e}"


def test_gradcheck_float64():
    """torch.autograd.gradcheck (fast mode: random projections) through both custom ops."""
    fused, _ = _pair(dtype=torch.float64)
    params = [p.detach().clone().requires_grad_() for p in fused.fused_parameters()]
    images = torch.randn(3, 1, 32, 32, device=DEVICE, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *ps: ops.lenet(images, ps), params, fast_mode=True)


def test_launches_per_call():
    fused, _ = _pair()
    images = torch.randn(5, 1, 32, 32, device=DEVICE)
    labels = torch.randint(0, 10, (5,), device=DEVICE)
    with recorded_launches() as forward:
        loss = F.cross_entropy(fused(images), labels)
    with recorded_launches() as backward:
        loss.backward()
    step = TrainStep(fused, torch.optim.Adam(fused.parameters()))
    with recorded_launches() as train:
        step(images, labels)
    assert [launch.kernel for launch in forward] == ["lenet_forward_kernel"]
    assert [launch.kernel for launch in backward] == ["lenet_backward_kernel", "lenet_reduce_kernel"]
    assert [launch.kernel for launch in train] == ["lenet_train_kernel", "lenet_reduce_kernel"]


def test_gradients_repeat_exactly(gpu_plan):
    """Per-program partial rows summed in a fixed order: no run-to-run difference at all. Under the GPU
    plan, so that several programs each write a partial row (the interpreter's plan runs one)."""
    fused, _ = _pair()
    images = torch.randn(2, 1, 32, 32, device=DEVICE)
    assert config.lenet_plan(2, 1, torch.float32).programs == 2
    runs = []
    for _ in range(2):
        fused.zero_grad()
        fused(images).square().sum().backward()
        runs.append([p.grad.clone() for p in fused.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_compile_fullgraph_keeps_the_fused_op_whole():
    fused, reference = _pair()
    images = torch.randn(4, 1, 32, 32, device=DEVICE)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fused)(images)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    targets = {str(node.target) for graph in explanation.graphs for node in graph.graph.nodes}
    assert "lenet_triton.lenet_forward.default" in targets
    compiled = torch.compile(fused, fullgraph=True)
    assert_close(compiled(images), reference(images), "compiled fused logits")


def test_opcheck():
    fused, _ = _pair()
    images = torch.randn(2, 1, 32, 32, device=DEVICE)
    params = [p.detach().requires_grad_() for p in fused.fused_parameters()]
    torch.library.opcheck(torch.ops.lenet_triton.lenet_forward.default, (images, params),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_image_gradient_is_refused_not_wrong():
    fused, _ = _pair()
    images = torch.randn(2, 1, 32, 32, device=DEVICE, requires_grad=True)
    with pytest.raises(NotImplementedError, match="no gradient for the images"):
        fused(images).sum().backward()


def test_unbatched_and_empty_inputs():
    fused, reference = _pair()
    image = torch.randn(1, 32, 32, device=DEVICE)
    # (The per-op model takes batches only: compare against a batch of one.)
    assert_close(fused(image), reference(image.unsqueeze(0)).squeeze(0), "unbatched logits")
    empty = fused(torch.randn(0, 1, 32, 32, device=DEVICE))
    assert empty.shape == (0, 10)
    empty.sum().backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in fused.parameters())


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

def _params(**changes):
    params = LeNet(backend="fused").to(DEVICE).fused_parameters()
    return [changes.get(name, p) for name, p in zip(ops.LENET_PARAMETERS, params)]


@pytest.mark.parametrize("call, error, message", [
    (lambda: ops.lenet(torch.randn(2, 1, 28, 28, device=DEVICE), _params()), ValueError, r"32x32 images"),
    (lambda: ops.lenet(torch.randn(2, 3, 32, 32, device=DEVICE), _params()), ValueError, r"input has 3 channels"),
    (lambda: ops.lenet(torch.randn(32, 32, device=DEVICE), _params()), ValueError, r"input must be 3-D"),
    (lambda: ops.lenet(torch.randn(2, 1, 32, 32, device=DEVICE).double(), _params()), TypeError,
     r"conv1.weight has dtype torch.float32 but input has torch.float64"),
    (lambda: ops.lenet(torch.randn(2, 1, 32, 32, device=DEVICE), _params()[:9]), TypeError,
     r"params must be a sequence of 10 tensors"),
    (lambda: ops.lenet(torch.randn(2, 1, 32, 32, device=DEVICE),
                       _params(**{"fc1.weight": torch.randn(120, 401, device=DEVICE)})), ValueError,
     r"fc1.weight must have shape \(120, 400\)"),
    (lambda: ops.lenet(torch.randn(2, 1, 32, 32, device="meta"), _params()), ValueError, r"is on"),
    (lambda: ops.lenet(torch.randn(2, 1, 32, 32, device=DEVICE).int(), _params()), TypeError, r"dtype torch.int32"),
], ids=["image size", "channels", "2-D input", "dtype mismatch", "param count", "param shape", "device",
        "integer input"])
def test_bad_input_is_refused(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_bad_train_step_arguments_are_refused():
    model = LeNet(backend="fused").to(DEVICE)
    images = torch.randn(4, 1, 32, 32, device=DEVICE)
    labels = torch.randint(0, 10, (4,), device=DEVICE)
    with pytest.raises(TypeError, match="model must be a lenet_triton.LeNet"):
        TrainStep(torch.nn.Linear(2, 2), torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="torch.optim.SGD or torch.optim.Adam, got RMSprop"):
        TrainStep(model, torch.optim.RMSprop(model.parameters()))
    with pytest.raises(TypeError, match="got AdamW"):
        TrainStep(model, torch.optim.AdamW(model.parameters()))
    with pytest.raises(ValueError, match="exactly the model's parameters"):
        TrainStep(model, torch.optim.SGD(list(model.parameters())[:4], lr=0.1))
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="cuda_graph=True needs the model on a CUDA device"):
            TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), cuda_graph=True)
    for optimizer, option in ((torch.optim.Adam(model.parameters(), amsgrad=True), "amsgrad"),
                              (torch.optim.SGD(model.parameters(), lr=0.1, maximize=True), "maximize")):
        with pytest.raises(NotImplementedError, match=f"{option}=True"):
            TrainStep(model, optimizer)(images, labels)
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="labels must be int64"):
        step(images, labels.int())
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        step(images, labels[:3])
    with pytest.raises(ValueError, match="input has 3 channels"):
        step(torch.randn(4, 3, 32, 32, device=DEVICE), labels)
    with pytest.raises(ValueError, match="contiguous 4-D"):
        step(images[:, :, :, :].transpose(2, 3), labels)
    with pytest.raises(ValueError, match="the batch is empty"):
        step(images[:0], labels[:0])


def test_a_label_out_of_range_gives_nan_not_a_silent_loss():
    model = LeNet(backend="fused").to(DEVICE)
    loss = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1))(
        torch.randn(3, 1, 32, 32, device=DEVICE), torch.tensor([1, 10, 2], device=DEVICE))
    assert torch.isnan(loss)


# ---------------------------------------------------------------------------------------------
# TrainStep against eager torch.optim
# ---------------------------------------------------------------------------------------------

OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    "sgd-nesterov": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "sgd-dampening": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.8, dampening=0.3),
    "adam-weight-decay": lambda params: torch.optim.Adam(params, lr=2e-3, betas=(0.85, 0.99), weight_decay=1e-2),
}
_DIGITS = load_digits()[0]


def _batches(steps, batch, dtype=torch.float32):
    for i in range(steps):
        picked = torch.arange(i * batch, (i + 1) * batch) % len(_DIGITS)
        yield _DIGITS.images[picked].to(DEVICE, dtype), _DIGITS.labels[picked].to(DEVICE)


def _compare_models(ours, theirs, optimizer_ours, optimizer_theirs, where):
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert_close(a.detach(), b.detach(), f"{where}: {name}")
        assert optimizer_ours.state[a].keys() == optimizer_theirs.state[b].keys(), where
        for key, value in optimizer_theirs.state[b].items():
            assert_close(optimizer_ours.state[a][key].to(value), value, f"{where}: {name} {key}", dtype=a.dtype)


def _check_train_steps(optimizer_name, steps, batch, cuda_graph=False, eager_steps=(), dtype=torch.float32):
    """TrainStep vs eager steps from the same start; `eager_steps` are step numbers where the fused
    model takes an ordinary eager step instead (the two share torch's optimizer state)."""
    fused, reference = _pair(dtype=dtype)
    optimizer, reference_optimizer = OPTIMIZERS[optimizer_name](fused.parameters()), \
        OPTIMIZERS[optimizer_name](reference.parameters())
    step = TrainStep(fused, optimizer, cuda_graph=cuda_graph)
    for i, (images, labels) in enumerate(_batches(steps, batch, dtype)):
        reference_optimizer.zero_grad()
        expected = F.cross_entropy(reference(images), labels)
        expected.backward()
        reference_optimizer.step()
        if i in eager_steps:
            optimizer.zero_grad()
            loss = F.cross_entropy(fused(images), labels)
            loss.backward()
            optimizer.step()
        else:
            loss = step(images, labels)
        where = f"{optimizer_name}, step {i + 1}"
        assert_close(loss.detach(), expected.detach(), f"{where}: loss")
        _compare_models(fused, reference, optimizer, reference_optimizer, where)


@pytest.mark.parametrize("cuda_graph", [pytest.param(False, id="eager"), needs_cuda(True, id="graph")])
@pytest.mark.parametrize("optimizer_name", ["sgd-nesterov", "adam-weight-decay"])
def test_train_step_matches_torch_optim_for_20_steps(optimizer_name, cuda_graph):
    """In float64, so that the comparison checks the arithmetic: in float32 both sides round
    differently, a max-pool window whose candidates are within rounding of each other can pick
    another winner after a few steps, and training then amplifies that valid difference."""
    _check_train_steps(optimizer_name, steps=20, batch=4, cuda_graph=cuda_graph, dtype=torch.float64)


@pytest.mark.parametrize("optimizer_name", ["sgd-nesterov", "adam-weight-decay"])
def test_train_step_matches_torch_optim_in_float32(optimizer_name):
    _check_train_steps(optimizer_name, steps=5, batch=16)


@pytest.mark.parametrize("optimizer_name", ["sgd", "sgd-dampening", "adam-weight-decay"])
def test_train_step_and_eager_steps_share_the_optimizer_state(optimizer_name):
    """Eager first (torch creates the state: Adam's step count on the CPU), TrainStep, eager again."""
    _check_train_steps(optimizer_name, steps=5, batch=8, eager_steps=(0, 3))


def test_train_step_follows_a_learning_rate_scheduler():
    fused, reference = _pair()
    optimizer = torch.optim.SGD(fused.parameters(), lr=0.1, momentum=0.5)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.5)
    schedulers = [torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5)
                  for o in (optimizer, reference_optimizer)]
    step = TrainStep(fused, optimizer)
    for i, (images, labels) in enumerate(_batches(3, 8)):
        step(images, labels)
        reference_optimizer.zero_grad()
        F.cross_entropy(reference(images), labels).backward()
        reference_optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
        _compare_models(fused, reference, optimizer, reference_optimizer, f"lr schedule, step {i + 1}")

