"""Imports lenet_triton after a given prelude, then checks every op, torch.compile and a LeNet
training step against torch. Prints "ok <order>" on success.

Also prints whether lenet_triton had to rebuild triton's helpers for the interpreter.

Runs as its own process (tests/test_import.py starts one per order), because what matters is what
was imported before lenet_triton, and a pytest process has imported everything already.

    python tests/import_order_check.py "triton first"
"""

import sys

PRELUDES = {
    "triton first": "import torch, triton",
    "torch._inductor first": "import torch._inductor.config",
    "after torch.compile": "import torch\ntorch.compile(lambda x: x.sin() + 1)(torch.randn(4))",
    "lenet_triton first": "import lenet_triton",
    "ops directly after triton": "import triton\nfrom lenet_triton import ops",
    "kernels directly after triton": "import triton.language\nimport lenet_triton.kernels.conv",
}
if __name__ == "__main__":
    exec(PRELUDES[sys.argv[1]])  # before anything below imports lenet_triton

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lenet_triton import LeNet, ops, triton_mode  # noqa: E402
from lenet_triton.testing import assert_close  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)


def randn(*shape, scale=1.0):
    return (torch.randn(*shape, device=DEVICE, dtype=torch.float64) * scale).float().requires_grad_()


def check(order, name, ours, reference, inputs):
    """Output and every input gradient of ours(*inputs) against reference on float64 copies."""
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    out, ref = ours(*inputs), reference(*ref_inputs)
    assert_close(out.double(), ref, f"{order}: {name} output", dtype=torch.float32)
    upstream = torch.randn(ref.shape, device=DEVICE, dtype=torch.float64)
    grads = torch.autograd.grad(out, inputs, upstream.float())
    ref_grads = torch.autograd.grad(ref, ref_inputs, upstream)
    for i, (got, expected) in enumerate(zip(grads, ref_grads)):
        assert_close(got.double(), expected, f"{order}: {name} grad {i}", dtype=torch.float32)


def lenet_like(x, w1, b1, w2, b2):
    h = ops.max_pool2d(ops.conv2d(x, w1, b1, padding=1, activation="relu"), 2)
    return ops.linear(h.flatten(1), w2, b2, activation="relu")


def lenet_like_torch(x, w1, b1, w2, b2):
    h = F.max_pool2d(F.relu(F.conv2d(x, w1, b1, padding=1)), 2)
    return F.relu(F.linear(h.flatten(1), w2, b2))


def run_checks(order):
    check(order, "conv2d", lambda x, w, b: ops.conv2d(x, w, b, stride=2, padding=1, activation="relu"),
          lambda x, w, b: F.relu(F.conv2d(x, w, b, stride=2, padding=1)),
          [randn(2, 3, 9, 7), randn(4, 3, 3, 3, scale=0.3), randn(4)])
    check(order, "max_pool2d", lambda x: ops.max_pool2d(x, 3, 2, padding=1, ceil_mode=True),
          lambda x: F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True), [randn(2, 3, 9, 8)])
    check(order, "linear", lambda x, w, b: ops.linear(x, w, b, activation="relu"),
          lambda x, w, b: F.relu(F.linear(x, w, b)), [randn(5, 3, 17), randn(11, 17, scale=0.3), randn(11)])

    params = [randn(3, 2, 8, 8), randn(4, 2, 3, 3, scale=0.3), randn(4), randn(5, 64, scale=0.2), randn(5)]
    check(order, "torch.compile(fullgraph=True)", torch.compile(lenet_like, fullgraph=True), lenet_like_torch, params)

    # One LeNet training step (forward, cross-entropy, backward, SGD) against the torch backend.
    images = torch.randn(4, 1, 32, 32, device=DEVICE)
    labels = torch.randint(0, 10, (4,), device=DEVICE)
    models = [LeNet(backend=backend).to(DEVICE) for backend in ("triton", "torch")]
    models[1].load_state_dict(models[0].state_dict())
    losses = []
    for model in models:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    assert_close(losses[0], losses[1], f"{order}: LeNet loss")
    for (name, ours), (_, theirs) in zip(models[0].named_parameters(), models[1].named_parameters()):
        assert_close(ours.grad, theirs.grad, f"{order}: LeNet {name}.grad")
        assert_close(ours.detach(), theirs.detach(), f"{order}: LeNet {name} after the step")


if __name__ == "__main__":
    run_checks(sys.argv[1])
    print("rebuilt", triton_mode.rebuilt_triton_helpers())
    print("adjusted", ",".join(triton_mode.interpreter_adjustments()) or "none")
    print("ok", sys.argv[1])
