"""The one list of what `make bench` times, and the arithmetic floor it is compared with.

Variants, batch sizes and the FLOP count live here; bench/test_*.py and bench/report.py read them.
"""

import os

import torch

from lenet_triton import LeNet

GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if GPU else "cpu")

# Training step: forward, cross-entropy, backward, SGD step. "triton": the per-op backend; "fused":
# the whole-network kernels behind the module and torch's optimizer; "fused-step": lenet_triton.TrainStep
# (loss and optimizer in the kernels); "fused-step-graph": TrainStep replayed as a CUDA graph;
# "triton-graph": the per-op step (forward, loss, backward, torch's SGD) captured whole in a CUDA graph.
TRAIN_VARIANTS = (["eager", "compile-default"] + (["compile-max-autotune", "compile-reduce-overhead"] if GPU else [])
                  + ["triton", "triton-compile"] + (["triton-graph"] if GPU else []) + ["fused", "fused-step"]
                  + (["fused-step-graph"] if GPU else []))


# Inference: logits for a batch of images.
def _ort_cuda() -> bool:
    # Without a GPU there is nothing to ask, and export.parity's imports (onnxscript, sympy) cost
    # about a second in every process that reads this list.
    if not GPU:
        return False
    import onnxruntime

    from export.parity import PROVIDERS
    return PROVIDERS["cuda"][0] in onnxruntime.get_available_providers()


INFERENCE_VARIANTS = (["eager", "compile-default", "triton", "fused", "onnxruntime-cpu"]
                      + (["onnxruntime-cuda"] if _ort_cuda() else []))
BASELINE = "eager"


def backend_of(variant: str) -> str:
    """The LeNet backend a training or inference variant runs on."""
    for backend in ("triton", "fused"):
        if variant.startswith(backend):
            return backend
    return "torch"


def runs_triton(variant: str) -> bool:
    """Whether the variant's time is Triton kernels (the interpreter's, on a CPU)."""
    return backend_of(variant) != "torch"


# Host time: the same work with every Triton launch replaced by a no-op, at batch 1, where on a GPU
# host work is the whole step. "eager" runs a whole real step on the torch backend: the yardstick.
HOST_BATCH = 1
HOST_STEP_VARIANTS = ["eager", "triton", "fused", "fused-step"]
# Host calls take microseconds: many more rounds than the other suites, for a steady median.
HOST_MAX_ROUNDS = 3000
# Single op calls, forward and backward, per backend.
HOST_OP_CALLS = {"triton": ["conv2d+relu", "max_pool2d", "linear+relu"], "fused": ["lenet"]}


def host_op_rows() -> list:
    """The host suite's op-call row names, in report order."""
    return [f"{backend} {op} {direction}" for backend, names in HOST_OP_CALLS.items() for op in names
            for direction in ("forward", "backward")]

# python -m bench distributed: the training step across ranks beside one process. "eager", "triton"
# and "fused" train under DistributedDataParallel; the fused-step variants are TrainStep with its
# default all_gather ("fused-step", "fused-step-graph" on a GPU) or with all_reduce.
DISTRIBUTED_VARIANTS = (["eager", "triton", "fused", "fused-step", "fused-step-all-reduce"]
                        + (["fused-step-graph"] if GPU else []))

# Per-op benchmarks: each Triton op against torch.nn.functional.
OP_IMPLEMENTATIONS = ["torch", "triton"]
COMPILE_VARIANTS = [v for v in TRAIN_VARIANTS if v.startswith("compile-")]

# LENET_BENCH_QUICK=1 (the smoke test in `make test`) runs every benchmark once at a tiny batch.
QUICK = os.environ.get("LENET_BENCH_QUICK") == "1"
if QUICK:
    TRAIN_BATCHES, INFERENCE_BATCHES, OP_BATCH = [2], [2], 2
else:
    TRAIN_BATCHES = [64, 256, 1024, 4096] if GPU else [64]
    INFERENCE_BATCHES = [1, 64, 256]
    OP_BATCH = 256 if GPU else 64

# Seconds of timed calls to aim for per benchmark, and the bounds on the number of rounds.
TARGET_SECONDS = 2.0 if GPU else 3.0
MIN_ROUNDS, MAX_ROUNDS = 3, 200

PRECISION = "float32, TF32 off (torch.backends.cuda.matmul.allow_tf32 = cudnn.allow_tf32 = False)"


def pin_precision() -> None:
    """One precision on every side: plain float32 matmuls and convolutions everywhere."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def lenet_flops(train: bool, in_channels: int = 1) -> int:
    """FLOPs per sample (2 per multiply-add) of LeNet's convs and linears.

    The backward computes both gradients of every layer except conv1's input gradient, which no
    one needs, so a training step is forward + 2x forward - conv1's share: 2.26 MFLOP per sample.
    """
    model = LeNet(in_channels=in_channels, backend="torch")
    conv_outputs = {"conv1": 28 * 28, "conv2": 10 * 10}
    macs = {}
    for name in ("conv1", "conv2"):
        layer = getattr(model, name)
        macs[name] = conv_outputs[name] * layer.weight.numel()
    for name in ("fc1", "fc2", "fc3"):
        macs[name] = getattr(model, name).weight.numel()
    forward = 2 * sum(macs.values())
    if not train:
        return forward
    return forward + 2 * forward - 2 * macs["conv1"]


def device_slug() -> str:
    """A file-name-safe name of this machine's device, for bench/results/<slug>.json."""
    if GPU:
        name = torch.cuda.get_device_name()
    else:
        import platform
        name = f"cpu-{platform.machine()}-{os.cpu_count()}core"
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def device_name() -> str:
    if GPU:
        return torch.cuda.get_device_name()
    import platform
    return f"CPU {platform.machine()}, {os.cpu_count()} cores (Triton interpreter)"
