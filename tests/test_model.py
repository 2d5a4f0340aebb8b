"""LeNet: the tutorial's structure and names, both backends, and all compute in lenet_triton ops."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from lenet_triton import LeNet
from lenet_triton.testing import assert_close
from conftest import DEVICE

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tutorial_walkthrough.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("tutorial_walkthrough", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


walkthrough = _load_example()
TutorialNet = walkthrough.TutorialNet


def test_structure_and_names_match_the_tutorial():
    net = LeNet()
    assert list(net.state_dict()) == list(TutorialNet().state_dict())
    assert [tuple(p.shape) for p in net.parameters()] == [tuple(p.shape) for p in TutorialNet().parameters()]
    assert len(list(net.parameters())) == 10


def test_state_dict_loads_both_ways():
    net, ref = LeNet(), TutorialNet()
    net.load_state_dict(ref.state_dict())
    ref2 = TutorialNet()
    ref2.load_state_dict(net.state_dict())
    for a, b in zip(ref.parameters(), ref2.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_triton_backend_matches_torch_backend_and_tutorial(in_channels):
    net = LeNet(in_channels=in_channels).to(DEVICE)
    ref = LeNet(in_channels=in_channels, backend="torch").to(DEVICE)
    tutorial = TutorialNet(in_channels).to(DEVICE)
    ref.load_state_dict(net.state_dict())
    tutorial.load_state_dict(net.state_dict())
    x = torch.randn(5, in_channels, 32, 32, device=DEVICE)
    labels = torch.randint(0, 10, (5,), device=DEVICE)
    assert torch.equal(ref(x), tutorial(x)), "backend='torch' must be the tutorial's computation exactly"
    for model in (net, ref):
        F.cross_entropy(model(x), labels).backward()
    assert_close(net(x), ref(x), "logits")
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        assert_close(p.grad, q.grad, f"{name}.grad")


def test_activations_name_every_layer_and_end_in_the_logits():
    net = LeNet().to(DEVICE)
    x = torch.randn(2, 1, 32, 32, device=DEVICE)
    acts = net.activations(x)
    assert list(acts) == ["conv1", "pool1", "conv2", "pool2", "flatten", "fc1", "fc2", "fc3"]
    assert acts["conv1"].shape == (2, 6, 28, 28) and acts["pool2"].shape == (2, 16, 5, 5)
    assert torch.equal(acts["fc3"], net(x))


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_triton_backend_calls_no_aten_conv_pool_or_matmul():
    net = LeNet().to(DEVICE)
    x = torch.randn(3, 1, 32, 32, device=DEVICE)
    with _RecordOps() as recorder:
        F.cross_entropy(net(x), torch.tensor([1, 2, 3], device=DEVICE)).backward()
    forbidden = {op for op in recorder.seen
                 if any(word in op for word in ("conv", "pool", "mm", "matmul", "linear", "addmm"))
                 and not op.startswith("lenet_triton")}
    assert not forbidden, f"aten compute at the top level: {sorted(forbidden)}"
    assert {"lenet_triton.conv2d", "lenet_triton.max_pool2d", "lenet_triton.linear",
            "lenet_triton.conv2d_grad_weight", "lenet_triton.max_pool2d_backward",
            "lenet_triton.linear_grad_input", "lenet_triton.linear_grad_weight"} <= recorder.seen


@pytest.mark.parametrize("kwargs, message", [
    (dict(backend="cudnn"), "backend must be one of"),
    (dict(in_channels=0), "in_channels must be a positive int"),
    (dict(num_classes=-1), "num_classes must be a positive int"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LeNet(**kwargs)


def test_tutorial_walkthrough_runs_and_matches(capsys):
    walkthrough.main()
    printed = capsys.readouterr().out
    assert "Every step matches the tutorial's Net." in printed
    assert "conv1.bias.grad after backward" in printed
