"""Every GPU launch of the public API, rehearsed on the CPU for an H100: binding, compilation, resources.

    python -m bench.rehearsal [--full] [--only TEXT ...] [--queue DIR] [--json PATH] [--list]
    python -m bench.rehearsal --measure --only TEXT ... --json PATH      (on a GPU)

Triton's interpreter runs a kernel's body on numpy and never enters the launch path, so a kernel that
passes every interpreter test can still fail at its first launch on a GPU: an argument the binder
cannot specialize, a keyword the kernel does not declare, a global that is not a constexpr, or a
compiled kernel that needs more shared memory or threads than the GPU has. This module defines the
kernels for the compiler and puts a stand-in CUDA driver in front of triton:

- the device is an H100 (sm_90, 132 SMs, 227 KB of shared memory per block);
- loading a kernel reads the cubin's registers and stack frame with the cuobjdump that ships
  with triton (ptxas puts spilled registers in the stack frame);
- the launcher does nothing.

Then it drives the public API (ops, LeNet, TrainStep) on CPU tensors with the GPU launch plan,
recording each launch and its compiled kernel (lenet_triton.testing.recorded_launches). Every
launch goes through JITFunction.run's binder, _pack_args, compilation to an sm_90 cubin with the
bundled ptxas, and CompiledKernel's own shared-memory and thread checks. Only the launch is left out.
The CPU tensors are never read or written: no kernel runs, so even batch 65,536 costs only the
compiles. The kernels must be defined for the compiler from the start, so this runs in its own
process (TRITON_INTERPRET=0 is set before triton is imported).

The scenarios are the launch paths of the public API: each op's forward and backward, the per-op
and fused LeNet, and TrainStep with each optimizer, over dtypes, input channels and batch sizes,
in one process and across ranks (a process group of this process alone, which takes the same
distributed path: a rank with samples, then one without).
The default set is a representative one (what `make test` runs, on both triton versions); --full
is the whole grid, which `python -m bench kernels` turns into the kernel report. On a GPU,
--measure runs the same scenarios for real and times each launch again on its own, which the
kernel report puts beside each launch's lower bound.
"""

import os

os.environ["TRITON_INTERPRET"] = "0"
# What a GPU run of triton 3.6 and 3.9 does by default (3.9 warns until it is set).
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import itertools  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Optional  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.driver import DriverBase  # noqa: E402
from triton.runtime.driver import driver as triton_driver  # noqa: E402

from lenet_triton import LeNet, TrainStep, ops  # noqa: E402
from lenet_triton.files import write_json  # noqa: E402
from lenet_triton.testing import recorded_launches  # noqa: E402
from lenet_triton.kernels import config  # noqa: E402

from .kernels import H100, max_threads_per_block  # noqa: E402

CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"

BATCHES = (1, 7, 256, 4096, 65536)
IN_CHANNELS = (1, 3)
# name -> (dtype, TF32 matmuls on)
PRECISIONS = {"fp32": (torch.float32, False), "tf32": (torch.float32, True), "fp16": (torch.float16, False),
              "bf16": (torch.bfloat16, False), "fp64": (torch.float64, False)}
OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.01),
    "momentum": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4),
    "nesterov": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3, weight_decay=1e-4),
}


# ------------------------------------------------------------------------------------------------
# The stand-in driver
# ------------------------------------------------------------------------------------------------

class _Device:
    """driver.utils: the H100's properties, and a loader that reads the cubin's resources."""

    def get_device_properties(self, device):
        return {"max_shared_mem": H100.shared_per_block, "multiprocessor_count": H100.sms,
                "max_num_regs": H100.registers_per_sm, "warpSize": H100.warp_size}

    def load_binary(self, name, cubin, shared, device):
        """(module, function, registers, spill bytes, the most threads a block may have)."""
        registers, stack = cubin_resources(cubin, name)
        return None, None, registers, stack, max_threads_per_block(registers)


class _SkippedLauncher:
    """driver.launcher_cls: what would launch the kernel. The rehearsal stops here."""

    def __init__(self, src, metadata):
        pass

    def __call__(self, *args):
        pass


class RehearsalDriver(DriverBase):
    """Triton's active driver during a rehearsal: an H100 as device 0, with stream 0."""

    def __init__(self):
        self.utils = _Device()
        self.launcher_cls = _SkippedLauncher

    @staticmethod
    def is_active():
        return True

    def get_current_target(self):
        return GPUTarget("cuda", H100.capability, H100.warp_size)

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_device_capability(self, device=0):
        return divmod(H100.capability, 10)

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_device_interface(self):
        return torch.cuda

    def map_python_to_cpp_type(self, ty):
        return ty

    def get_benchmarker(self):
        raise RuntimeError("the rehearsal driver launches nothing, so it cannot time kernels")

    def get_empty_cache_for_benchmark(self):
        raise RuntimeError("the rehearsal driver launches nothing, so it cannot time kernels")

    def clear_cache(self, cache):
        pass


def cubin_resources(cubin: bytes, name: str) -> tuple[int, int]:
    """(registers per thread, stack frame bytes per thread) of kernel `name` in a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        done = subprocess.run([str(CUOBJDUMP), "--dump-resource-usage", file.name], capture_output=True,
                              text=True, check=True)
    match = re.search(rf"Function {re.escape(name)}:\s*REG:(\d+) STACK:(\d+)", done.stdout)
    if match is None:
        raise RuntimeError(f"cuobjdump did not report the resources of {name}:\n{done.stdout}")
    return int(match.group(1)), int(match.group(2))


def _describe(value):
    """A launch argument as JSON: a tensor by dtype, shape and strides; a tuple element by element."""
    if isinstance(value, torch.Tensor):
        return {"dtype": str(value.dtype).removeprefix("torch."), "shape": list(value.shape),
                "stride": list(value.stride()), "itemsize": value.element_size()}
    if isinstance(value, (tuple, list)):
        return [_describe(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def launch_record(launch) -> dict:
    """A lenet_triton.testing.Launch as JSON: the compiled kernel's resources, its constexprs and
    its other arguments."""
    function, compiled = launch.function, launch.compiled
    bound = dict(zip(function.arg_names, launch.args))
    bound.update((name, value) for name, value in launch.kwargs.items() if name in function.arg_names)
    constexprs = {param.name for param in function.params if param.is_constexpr}
    metadata = compiled.metadata
    return {"kernel": launch.kernel, "grid": [*launch.grid, 1, 1][:3], "num_warps": metadata.num_warps,
            "num_stages": metadata.num_stages, "shared": metadata.shared, "registers": compiled.n_regs,
            "spill": compiled.n_spills,
            "constexprs": {name: _describe(value) for name, value in bound.items() if name in constexprs},
            "args": {name: _describe(value) for name, value in bound.items() if name not in constexprs}}


@contextlib.contextmanager
def rehearsal():
    """Inside: triton's driver is the stand-in, the launchers plan for a GPU, and the ops take CPU
    tensors as if they were on one."""
    if config.interpreting():
        raise RuntimeError("bench.rehearsal needs the kernels defined for the compiler: run it in its own process "
                           "(python -m bench.rehearsal), not where triton's interpreter is on")
    # Saved as it is, not reset: without a GPU triton's default driver cannot even be created.
    saved = ops.common.check_device, triton_driver._active
    ops.common.check_device = lambda op, name, tensor: None
    triton_driver.set_active(RehearsalDriver())
    try:
        with config.using_plan(config.GPU_PLAN):
            yield
    finally:
        ops.common.check_device, triton_driver._active = saved


def measured_microseconds(launch) -> float:
    """On a GPU: the median time of launching `launch` again (triton.testing.do_bench: warm-up, an
    L2 flush before each run, CUDA events)."""
    from triton.testing import do_bench

    function, grid, args, kwargs = launch.function, launch.grid, launch.args, launch.kwargs
    return 1000 * do_bench(lambda: function[grid](*args, **kwargs), warmup=5, rep=20, return_mode="median")


# ------------------------------------------------------------------------------------------------
# Scenarios: the public API's launch paths
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    name: str
    group: str                 # "ops", "lenet-triton", "lenet-fused", "train-step" or "distributed-step"
    precision: str             # a key of PRECISIONS
    run: Callable[[torch.dtype, str], None]   # run(dtype, device)
    batch: Optional[int] = None
    in_channels: Optional[int] = None


def _images(batch, in_channels, dtype, device):
    # Never read in a rehearsal: no kernel runs, and torch.empty only reserves address space, so
    # batch 65,536 costs nothing.
    return torch.empty(batch, in_channels, 32, 32, dtype=dtype, device=device)


def _lenet(backend, batch, in_channels):
    def run(dtype, device):
        model = LeNet(in_channels, backend=backend).to(device, dtype)
        logits = model(_images(batch, in_channels, dtype, device))
        logits.backward(torch.empty_like(logits))
    return run


def _train_step(optimizer, batch, in_channels):
    def run(dtype, device):
        model = LeNet(in_channels, backend="fused").to(device, dtype)
        step = TrainStep(model, OPTIMIZERS[optimizer](model.parameters()))
        images = _images(batch, in_channels, dtype, device)
        labels = torch.zeros(batch, dtype=torch.int64, device=device)
        # Two steps: an SGD momentum buffer's first step starts it, later steps update it.
        step(images, labels)
        step(images, labels)
    return run


def _one_rank_group(device):
    """A process group of this process alone (gloo; NCCL for CUDA tensors), made on first use."""
    if not dist.is_initialized():
        rendezvous = Path(tempfile.mkdtemp(prefix="lenet-rehearsal-group-")) / "rendezvous"
        dist.init_process_group("nccl" if device == "cuda" else "gloo", init_method=f"file://{rendezvous}",
                                rank=0, world_size=1)
    return dist.group.WORLD


def _distributed_step(optimizer, batch, in_channels):
    def run(dtype, device):
        model = LeNet(in_channels, backend="fused").to(device, dtype)
        step = TrainStep(model, OPTIMIZERS[optimizer](model.parameters()), group=_one_rank_group(device))
        labels = torch.zeros(batch, dtype=torch.int64, device=device)
        # A rank's step with samples, then one with none (its row is zeros); the second also updates an
        # SGD momentum buffer that the first started.
        step(_images(batch, in_channels, dtype, device), labels, global_batch=batch)
        step(_images(0, in_channels, dtype, device), labels[:0], global_batch=batch)
    return run


def _backward(output, *inputs):
    torch.autograd.grad(output, inputs, torch.empty_like(output))


def _op_calls():
    """Each op's calls beyond LeNet's own layers, forward and backward: name -> run(dtype, device)."""
    def param(*shape, dtype, device, channels_last=False):
        t = torch.empty(*shape, dtype=dtype, device=device)
        return (t.contiguous(memory_format=torch.channels_last) if channels_last else t).requires_grad_()

    def conv_strided(dtype, device):
        x, w, b = (param(*shape, dtype=dtype, device=device) for shape in ((5, 3, 17, 17), (8, 3, 5, 5), (8,)))
        _backward(ops.conv2d(x, w, b, stride=2, padding=2), x, w, b)

    def conv_strided_relu(dtype, device):
        x, w = param(5, 3, 17, 17, dtype=dtype, device=device), param(8, 3, 5, 5, dtype=dtype, device=device)
        _backward(ops.conv2d(x, w, stride=2, activation="relu"), x, w)

    def conv_grouped(dtype, device):
        x = param(4, 4, 15, 13, dtype=dtype, device=device, channels_last=True)
        w = param(6, 2, 3, 3, dtype=dtype, device=device)
        _backward(ops.conv2d(x, w, dilation=2, groups=2), x, w)

    def pool_padded(dtype, device):
        x = param(3, 5, 15, 15, dtype=dtype, device=device)
        _backward(ops.max_pool2d(x, 3, 2, padding=1, ceil_mode=True), x)

    def linear_3d(dtype, device):
        x, w, b = (param(*shape, dtype=dtype, device=device) for shape in ((3, 5, 40), (24, 40), (24,)))
        _backward(ops.linear(x, w, b), x, w, b)

    def linear_relu_no_bias(dtype, device):
        x, w = param(300, 70, dtype=dtype, device=device), param(33, 70, dtype=dtype, device=device)
        _backward(ops.linear(x, w, activation="relu"), x, w)

    # With LeNet's own layers these give every combination of each conv kernel's two flags.
    return {"conv2d stride 2, padding 2, bias": conv_strided,
            "conv2d stride 2, relu, no bias": conv_strided_relu,
            "conv2d no bias, dilation 2, groups 2, channels_last": conv_grouped,
            "max_pool2d 3x3 stride 2 padding 1 ceil_mode": pool_padded,
            "linear no activation, 3-D input": linear_3d,
            "linear relu, no bias": linear_relu_no_bias}


OP_CALLS = _op_calls()


def _int64_offsets(dtype, device):
    """Each op family on views whose batch entries lie 2**30 elements apart: offsets past 2**31 - 1,
    so the launchers choose 64-bit index arithmetic (tests/test_large_index.py runs these for real)."""
    storage = torch.empty(2 * 2**30 + 4096, dtype=dtype, device=device)

    def far_apart(*shape):
        return storage.as_strided(shape, (2**30, *torch.empty(shape[1:]).stride())).detach().requires_grad_()

    def param(*shape):
        return torch.empty(*shape, dtype=dtype, device=device).requires_grad_()

    x, w, b = far_apart(3, 3, 20, 20), param(6, 3, 5, 5), param(6)
    _backward(ops.conv2d(x, w, b), x, w, b)
    x = far_apart(3, 3, 20, 20)
    _backward(ops.max_pool2d(x, 2), x)
    x, w, b = far_apart(3, 40), param(24, 40), param(24)
    _backward(ops.linear(x, w, b, activation="relu"), x, w, b)


def scenarios(full: bool) -> list:
    """The full grid, or the representative set (REPRESENTATIVE)."""
    found = []
    for precision, channels, batch in itertools.product(PRECISIONS, IN_CHANNELS, BATCHES):
        suffix = f"{precision} c{channels} b{batch}"
        found.append(Scenario(f"lenet-triton {suffix}", "lenet-triton", precision,
                              _lenet("triton", batch, channels), batch, channels))
        found.append(Scenario(f"lenet-fused {suffix}", "lenet-fused", precision,
                              _lenet("fused", batch, channels), batch, channels))
        for optimizer in OPTIMIZERS:
            found.append(Scenario(f"train-step {optimizer} {suffix}", "train-step", precision,
                                  _train_step(optimizer, batch, channels), batch, channels))
    # Across ranks only the gradient row and the update differ from TrainStep's launches, and they do
    # not depend on the batch size.
    for precision, channels, optimizer in itertools.product(PRECISIONS, IN_CHANNELS, OPTIMIZERS):
        found.append(Scenario(f"distributed-step {optimizer} {precision} c{channels} b7", "distributed-step",
                              precision, _distributed_step(optimizer, 7, channels), 7, channels))
    for precision in PRECISIONS:
        for name, call in OP_CALLS.items():
            found.append(Scenario(f"ops {name} {precision}", "ops", precision, call))
    for precision in ("fp32", "fp16"):
        found.append(Scenario(f"ops int64 offsets {precision}", "ops", precision, _int64_offsets))
    if full:
        return found
    return [s for s in found if s.name in REPRESENTATIVE]


# The representative set (`make test`): every kernel in every precision, TF32 on and off, both
# channel counts, every batch size and every optimizer somewhere.
REPRESENTATIVE = {
    "lenet-triton fp32 c1 b256", "lenet-triton tf32 c3 b7", "lenet-triton fp16 c1 b4096",
    "lenet-triton bf16 c3 b1", "lenet-triton fp64 c1 b65536",
    "lenet-fused fp32 c1 b256", "lenet-fused tf32 c3 b65536", "lenet-fused fp16 c3 b4096",
    "lenet-fused bf16 c1 b7", "lenet-fused fp64 c1 b1",
    "train-step sgd fp32 c1 b4096", "train-step momentum fp32 c3 b256", "train-step nesterov bf16 c3 b65536",
    "train-step adam fp16 c1 b1", "train-step adam tf32 c1 b7", "train-step momentum fp64 c3 b256",
    "distributed-step adam fp32 c1 b7", "distributed-step momentum bf16 c3 b7", "distributed-step nesterov fp16 c1 b7",
    *(f"ops {name} fp32" for name in OP_CALLS), *(f"ops {name} bf16" for name in OP_CALLS),
    "ops int64 offsets fp32",
}


@contextlib.contextmanager
def _tf32(enabled: bool):
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def rehearse(selected: list, measure: bool = False, progress=print, checkpoint=None) -> dict:
    """Runs each scenario and records its launches; returns them and the failures as JSON.

    Without `measure`: a rehearsal on CPU tensors under the stand-in driver. With it, on a GPU: the
    launches are real, and each one is then timed again on its own (measured_microseconds).
    checkpoint(result), if given, is called after each scenario, so a run stopped early keeps what
    it did.
    """
    result = {"triton": triton.__version__, "torch": torch.__version__, "target": f"sm_{H100.capability}",
              "device": torch.cuda.get_device_name() if measure else "none: rehearsed on the CPU",
              "scenarios": [], "seconds": {}, "launches": [], "failures": []}
    with (contextlib.nullcontext() if measure else rehearsal()):
        for scenario in selected:
            dtype, tf32 = PRECISIONS[scenario.precision]
            start = time.perf_counter()
            status = "ok"
            with recorded_launches() as launches, _tf32(tf32):
                try:
                    scenario.run(dtype, "cuda" if measure else "cpu")
                except Exception as error:  # every scenario is reported, not only the first failure
                    status = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"
                    result["failures"].append({"scenario": scenario.name, "error": status})
            for launch in launches:
                record = {"scenario": scenario.name, "group": scenario.group, "precision": scenario.precision,
                          "batch": scenario.batch, "in_channels": scenario.in_channels, **launch_record(launch)}
                if measure:
                    with _tf32(tf32):
                        record["measured_us"] = measured_microseconds(launch)
                result["launches"].append(record)
            result["scenarios"].append(scenario.name)
            result["seconds"][scenario.name] = seconds = round(time.perf_counter() - start, 2)
            progress(f"{'ok  ' if status == 'ok' else 'FAIL'} {scenario.name}: {len(launches)} launches, "
                     f"{seconds:.1f} s" + ("" if status == "ok" else f"\n     {status}"))
            if checkpoint is not None:
                checkpoint(result)
    return result


def taken_from(queue: Path, selected: list):
    """The scenarios of `selected` that this process takes, one at a time as it gets to them: a
    scenario goes to the first process that creates its file in `queue`."""
    queue.mkdir(parents=True, exist_ok=True)
    for index, scenario in enumerate(selected):
        try:
            os.close(os.open(queue / str(index), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        yield scenario


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rehearsal", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the whole grid instead of the representative set")
    parser.add_argument("--only", nargs="+", default=[], metavar="TEXT",
                        help="only the scenarios (of the whole grid) whose name contains one of these")
    parser.add_argument("--measure", action="store_true",
                        help="on a GPU: launch for real and time each launch (no stand-in driver)")
    parser.add_argument("--json", type=Path, help="write the launches and failures here (after each scenario)")
    parser.add_argument("--list", action="store_true", help="only list the scenarios that would run")
    parser.add_argument("--queue", type=Path, metavar="DIR",
                        help="share the scenarios with the other processes given this folder (a new one for each "
                             "run): each takes the next one that none has taken, so that they end together")
    args = parser.parse_args(argv)
    selected = [s for s in scenarios(args.full or bool(args.only))
                if not args.only or any(text in s.name for text in args.only)]
    if not selected:
        parser.error(f"no scenario matches {args.only}")
    if args.list:
        print("\n".join(s.name for s in selected))
        return 0
    if args.measure and not torch.cuda.is_available():
        parser.error("--measure needs a CUDA device")
    start = time.perf_counter()
    result = rehearse(selected if args.queue is None else taken_from(args.queue, selected), measure=args.measure,
                      progress=lambda line: print(line, flush=True),
                      checkpoint=(lambda partial: write_json(args.json, partial)) if args.json else None)
    if args.json:
        # Also when this process took no scenario from --queue: its part is then empty, not missing.
        write_json(args.json, result)
    print(f"{len(result['scenarios'])} scenarios, {len(result['launches'])} launches, "
          f"{len(result['failures'])} failed, {time.perf_counter() - start:.0f} s")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
