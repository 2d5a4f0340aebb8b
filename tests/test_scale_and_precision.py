"""Large batches against the grid limits, TF32 on and off, and half precision through the whole model.

- Large batches: on any device, the GPU launch plan's launches for a whole step, stubbed out, each
  grid checked against CUDA's limits; on a GPU the step also runs for real against torch (skipped,
  with "needs CUDA", elsewhere).
- TF32: the switch reaches the kernels' dot precision and the tolerance (the interpreter computes
  in float32 either way).
- Half precision: float16 through the interpreter too; bfloat16 on cuda only (see ops).
"""

import pytest
import torch
import torch.nn.functional as F

from lenet_triton import LeNet
from lenet_triton.kernels import config
from lenet_triton.testing import TF32_TOLERANCE, TOLERANCES, assert_close, recorded_launches, tolerance
from conftest import DEVICE, HALF_DTYPES, needs_cuda

# CUDA's grid limits per axis (x, y, z).
CUDA_GRID_LIMITS = (2**31 - 1, 65535, 65535)
LARGE_BATCHES = [4096, 65536]


def _models(in_channels=1):
    ours = LeNet(in_channels=in_channels).to(DEVICE)
    reference = LeNet(in_channels=in_channels, backend="torch").to(DEVICE)
    reference.load_state_dict(ours.state_dict())
    return ours, reference


def _step(model, images, labels):
    """Loss and parameter gradients of one cross-entropy step."""
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("batch", LARGE_BATCHES)
def test_lenet_step_at_large_batch_fits_the_grid(batch):
    """The GPU plan's launches for a whole step, with the launches stubbed out (on any device)."""
    ours, _ = _models()
    images = torch.randn(batch, 1, 32, 32, device=DEVICE)
    labels = torch.randint(0, 10, (batch,), device=DEVICE)
    with config.using_plan(config.GPU_PLAN), recorded_launches(run=False) as launches:
        _step(ours, images, labels)
    assert len(launches) >= 18, launches
    for launch in launches:
        grid = launch.grid + (1,) * (3 - len(launch.grid))
        assert all(1 <= size <= limit for size, limit in zip(grid, CUDA_GRID_LIMITS)), launch


@pytest.mark.parametrize("batch", [needs_cuda(batch, id=str(batch)) for batch in LARGE_BATCHES])
def test_lenet_step_at_large_batch_matches_torch(batch):
    ours, reference = _models()
    images = torch.randn(batch, 1, 32, 32, device=DEVICE)
    labels = torch.randint(0, 10, (batch,), device=DEVICE)
    loss, grads = _step(ours, images, labels)
    expected_loss, expected_grads = _step(reference, images, labels)
    assert_close(loss, expected_loss, f"batch {batch} loss")
    for name, grad in grads.items():
        assert_close(grad, expected_grads[name], f"batch {batch} {name}.grad")


@pytest.fixture
def tf32_switches():
    """Sets torch's matmul and cuDNN TF32 switches together; puts both back afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32

    def set_both(on):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on

    yield set_both
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("tf32", [False, True], ids=["tf32-off", "tf32-on"])
def test_tf32_switch_reaches_the_kernels_and_both_sides_agree(tf32, tf32_switches):
    """torch.backends.cuda.matmul.allow_tf32 picks tl.dot's precision; cuDNN's switch is set to match,
    so both backends compute at one precision and testing.tolerance widens for TF32."""
    tf32_switches(tf32)
    assert config.dot_precision(torch.float32) == ("tf32" if tf32 else "ieee")
    assert config.dot_precision(torch.float64) == "ieee"
    assert tolerance(torch.float32) == (TF32_TOLERANCE if tf32 else TOLERANCES[torch.float32])
    assert tolerance(torch.float64) == TOLERANCES[torch.float64], "TF32 never touches float64"
    ours, reference = _models(in_channels=3)
    images = torch.randn(64, 3, 32, 32, device=DEVICE)
    labels = torch.randint(0, 10, (64,), device=DEVICE)
    loss, grads = _step(ours, images, labels)
    expected_loss, expected_grads = _step(reference, images, labels)
    assert_close(loss, expected_loss, f"tf32={tf32} loss")
    for name, grad in grads.items():
        assert_close(grad, expected_grads[name], f"tf32={tf32} {name}.grad")


def _relative_error(actual, expected):
    return ((actual.double() - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_lenet_in_half_precision_is_as_accurate_as_torch(dtype):
    """Logits and every gradient, each measured against a float64 run: ours may be off by at most
    twice what torch's own run in the same dtype is off by (both accumulate in float32)."""
    ours, reference = _models()
    exact = LeNet(backend="torch").to(DEVICE, torch.float64)
    exact.load_state_dict(ours.state_dict())
    ours.to(dtype)
    reference.to(dtype)
    images = torch.randn(32, 1, 32, 32, device=DEVICE)
    labels = torch.randint(0, 10, (32,), device=DEVICE)
    results = {name: (model(images.to(dtype)), model) for name, model in
               (("ours", ours), ("torch", reference))}
    exact_logits = exact(images.double())
    F.cross_entropy(exact_logits, labels).backward()
    for name, (logits, model) in results.items():
        F.cross_entropy(logits.float(), labels).backward()
    checked = {"logits": (results["ours"][0], results["torch"][0], exact_logits)}
    for (name, p_ours), (_, p_torch), (_, p_exact) in zip(ours.named_parameters(), reference.named_parameters(),
                                                          exact.named_parameters()):
        checked[f"{name}.grad"] = (p_ours.grad, p_torch.grad, p_exact.grad)
    for name, (got, torchs, expected) in checked.items():
        ours_error, torch_error = _relative_error(got, expected.detach()), _relative_error(torchs, expected.detach())
        assert ours_error <= 2 * torch_error + 1e-4, \
            f"{dtype} {name}: relative error {ours_error:.2e}, torch's own {torch_error:.2e}"
