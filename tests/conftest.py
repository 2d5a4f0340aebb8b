"""Shared helpers: the device under test, input factories, and a forward+gradient comparison with torch."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

# One intra-op thread for torch in the suite and in the processes it starts (set before torch is
# imported). The tensors here are small: on the 2-core machine a second thread cut no test's time
# and cost 1.4x the CPU in spinning, CPU that `make test`'s other stage, running side by side, needs.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

import lenet_triton  # noqa: E402,F401  (selects Triton's interpreter when there is no CUDA device)
from lenet_triton.kernels import config as launch_config  # noqa: E402
from lenet_triton.testing import assert_close, refused_launches  # noqa: E402

# On a machine with CUDA the kernels are compiled for it; otherwise they run on CPU tensors through
# Triton's interpreter. Either way the same kernel code is under test.
DEVICE = "cpu" if launch_config.interpreting() else "cuda"


def needs_cuda(value, id=None):
    """A parameter that only a CUDA device can run: generated everywhere, skipped (and so reported by
    -ra) where there is none."""
    return pytest.param(value, id=id, marks=pytest.mark.skipif(DEVICE != "cuda", reason="needs CUDA"))


# float64 makes gradcheck possible; float16 runs under the interpreter too; bfloat16 only on a GPU
# (Triton's interpreter computes it wrongly, and the ops refuse it on the CPU).
DTYPES = [torch.float32, torch.float64, torch.float16, needs_cuda(torch.bfloat16, id="torch.bfloat16")]
HALF_DTYPES = [torch.float16, needs_cuda(torch.bfloat16, id="torch.bfloat16")]

# The GPU plan with its tiles shrunk through its own fields (the kernels and the plan's logic are
# the GPU's), so that shapes of a few dozen elements cross every boundary the GPU crosses at full
# size: several row and column tiles with a ragged last one, several reduction steps, split-K
# partials, several elementwise programs, and several whole-network programs with a last tile past
# the batch. Through the interpreter each program costs time, so the tiles stay this small.
SMALL_GPU_PLAN = launch_config.GpuPlan(gemm_tile_caps=(16, 16, 16), elementwise_block_cap=64, min_programs=8,
                                       lenet_programs=2, reduce_block=16384)

# Both launch plans, for the tests that run the same cases under each. The interpreter's plan is for
# Triton's interpreter only (a compiled kernel could not hold its tiles).
PLANS = {"interpreter-plan": launch_config.INTERPRETER_PLAN, "gpu-plan": SMALL_GPU_PLAN}


@pytest.fixture(params=[pytest.param("interpreter-plan", marks=pytest.mark.skipif(
    DEVICE == "cuda", reason="the interpreter's plan runs only through Triton's interpreter")), "gpu-plan"])
def plan(request):
    """Runs the test under each launch plan in turn."""
    with launch_config.using_plan(PLANS[request.param]) as chosen:
        yield chosen


@pytest.fixture
def gpu_plan():
    """Runs the test under the GPU plan with small tiles (SMALL_GPU_PLAN)."""
    with launch_config.using_plan(SMALL_GPU_PLAN) as chosen:
        yield chosen

# The interpreter costs a fraction of a second per launch: keep property-based runs short but real.
settings.register_profile("lenet", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("lenet")

LAYOUTS = ["contiguous", "channels_last", "strided"]


def make(shape, dtype=torch.float32, layout="contiguous", requires_grad=False, scale=1.0, ties=False):
    """Random normal data (never zeros) in the requested memory layout; with ties, random integers
    1, 2 and 3 instead, so that most windows hold equal values.

    'strided' is a view that skips every other element of the last dim of a wider tensor, so no
    dimension is contiguous; 'channels_last' needs a 4-D shape.
    """
    def values(*size):
        if ties:
            return torch.randint(1, 4, size, device=DEVICE).double() * scale
        return torch.randn(*size, device=DEVICE, dtype=torch.float64) * scale

    if layout == "strided":
        t = values(*shape[:-1], 2 * shape[-1]).to(dtype)[..., ::2]
    else:
        t = values(*shape).to(dtype)
        if layout == "channels_last":
            t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(requires_grad)


def check_against_torch(ours, reference, tensors, *, name, out_index=None):
    """Runs ours(*tensors) and reference(*float64 copies); compares outputs and every input gradient.

    Gradients flow from the same random upstream gradient. Tolerances come from the dtype of the
    first tensor (lenet_triton.testing.TOLERANCES); failures name the value and its worst mismatch.
    Returns our output.
    """
    dtype = tensors[0].dtype
    ref_inputs = [None if t is None else t.detach().double().requires_grad_(t.requires_grad) for t in tensors]
    out = ours(*tensors)
    ref = reference(*ref_inputs)
    if out_index is not None:
        out, ref = out[out_index], ref[out_index]
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != torch's {tuple(ref.shape)}"
    assert out.dtype == dtype, f"{name}: dtype {out.dtype} != {dtype}"
    assert_close(out.double(), ref, f"{name} output", dtype=dtype)
    wanted = [i for i, t in enumerate(tensors) if t is not None and t.requires_grad]
    if wanted and out.numel() > 0:
        upstream = torch.randn(ref.shape, dtype=torch.float64, device=ref.device)
        grads = torch.autograd.grad(out, [tensors[i] for i in wanted], upstream.to(dtype))
        ref_grads = torch.autograd.grad(ref, [ref_inputs[i] for i in wanted], upstream)
        for i, got, expected in zip(wanted, grads, ref_grads):
            assert got.shape == expected.shape, f"{name} grad of input {i}: shape {tuple(got.shape)}"
            assert_close(got.double(), expected, f"{name} grad of input {i}", dtype=dtype)
    return out


# Each stage of `make test` names the triton it installed (the Makefile reads the pin from the stage's
# requirements file): a path mistake that ran one triton for both stages fails at once.
EXPECTED_TRITON = os.environ.get("LENET_TRITON_EXPECTED_TRITON")


def pytest_configure(config):
    import triton
    if EXPECTED_TRITON and triton.__version__ != EXPECTED_TRITON:
        raise pytest.UsageError(f"this stage expects triton {EXPECTED_TRITON} (LENET_TRITON_EXPECTED_TRITON, set "
                                f"by the Makefile), but imported triton {triton.__version__} from "
                                f"{os.path.dirname(triton.__file__)}")


def pytest_report_header(config):
    import numpy
    import triton
    mode = "compiled for cuda" if DEVICE == "cuda" else "Triton interpreter on cpu"
    return f"lenet_triton: torch {torch.__version__}, triton {triton.__version__}, numpy {numpy.__version__}; {mode}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _torch_only_runs_no_triton_kernel(request):
    """A test marked torch_only (left out of the triton 3.6 stage) must not launch a Triton kernel
    in this process; one that does fails here, so the mark can't hide a kernel test."""
    if request.node.get_closest_marker("torch_only") is None:
        yield
        return
    with refused_launches("a test marked torch_only, which the triton 3.6 stage leaves out"):
        yield


REHEARSAL_TEST = "test_rehearsal.py"
REHEARSAL_KEY = pytest.StashKey[tuple]()
# The rehearsal runs at a lower CPU priority than the tests: they are one long chain that must not
# wait for it, while it has until the end of the session and takes whatever core they leave idle.
REHEARSAL_NICENESS = 5
# In two processes that share the scenarios: what is left of it when the tests are done then keeps
# both cores busy, where one process would leave a core idle at the end.
REHEARSAL_PROCESSES = 2


def pytest_collection_modifyitems(items):
    """The tests that read the rehearsal's results run last: the rehearsal has the whole session."""
    items.sort(key=lambda item: "rehearsal_run" in getattr(item, "fixturenames", ()))


def pytest_collection_finish(session):
    """Starts the GPU launch rehearsal (tests/test_rehearsal.py) as soon as it is known to be wanted:
    processes of its own, mostly compiles, beside the other tests. Under pytest-xdist (gpu-check)
    every worker collects every test, so there the rehearsal_run fixture starts it instead, in the
    one worker that runs its module's tests (--dist loadscope)."""
    wanted = any(item.path.name == REHEARSAL_TEST for item in session.items)
    if wanted and not session.config.option.collectonly and not hasattr(session.config, "workerinput"):
        _start_rehearsal(session.config)


def _start_rehearsal(config):
    from bench.kernels import rehearsal_command

    folder = Path(tempfile.mkdtemp(prefix="lenet-rehearsal-"))
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), TRITON_INTERPRET="0")
    parts = []
    for index in range(REHEARSAL_PROCESSES):
        log = open(folder / f"log-{index}.txt", "w")
        path = folder / f"rehearsal-{index}.json"
        process = subprocess.Popen(rehearsal_command(folder / "queue", path), cwd=root, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, preexec_fn=lambda: os.nice(REHEARSAL_NICENESS))
        parts.append((process, path, log))
    config.stash[REHEARSAL_KEY] = (folder, parts)


@pytest.fixture(scope="session")
def rehearsal_run(request):
    """(each process's JSON path, their logs) once every rehearsal process has finished (see
    pytest_collection_finish). One that ended other than by finishing (exit 0, or 1 for failures it
    recorded) fails here."""
    if REHEARSAL_KEY not in request.config.stash:
        _start_rehearsal(request.config)
    _, parts = request.config.stash[REHEARSAL_KEY]
    logs = []
    for index, (process, path, log) in enumerate(parts):
        code = process.wait(timeout=1800)
        log.close()
        logs.append(Path(log.name).read_text())
        if code not in (0, 1):
            pytest.fail(f"rehearsal process {index + 1} of {len(parts)} ended with exit {code}:\n{logs[-1][-5000:]}")
    return [path for _, path, _ in parts], "\n".join(logs)


def pytest_sessionfinish(session):
    """The rehearsal never outlives the session (stopped early, or its test deselected by a failure)."""
    started = session.config.stash.get(REHEARSAL_KEY, None)
    if started is not None:
        folder, parts = started
        for process, _, log in parts:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
        shutil.rmtree(folder, ignore_errors=True)
