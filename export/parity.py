"""Parity: prove with onnxruntime that an exported file computes what the PyTorch model computes.

    python -m export parity PATH --checkpoint CKPT [--backend triton|fused|torch] [--batch-sizes 1,7,64]
                            [--provider cpu|cuda] [--atol A --rtol R] [--report FILE]
                            [--dataset mnist|cifar10 --data-dir DIR]

Runs the PyTorch model (the per-op Triton backend unless --backend says otherwise; on the GPU when
there is one) and onnxruntime (its CPU execution provider unless --provider says cuda) on the same
inputs: random images at each batch size, the embedded digits test images and, with --dataset, that
data set's test images from --data-dir. Compares the logits
within float32 tolerances and checks that the top-1 class agrees on every image. When a case
fails, it re-runs that input with every layer's output exposed
(onnxruntime's graph optimizations off, so nodes keep their exported names) and names the first
layer whose output diverges.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from lenet_triton import datasets
from lenet_triton.model import BACKENDS
from lenet_triton.files import write_json
from lenet_triton.testing import TOLERANCES

from .onnx import IMAGE_SIZE, INPUT_NAME, LAYERS_METADATA_KEY, ExportError, load_checkpoint

DEFAULT_BATCH_SIZES = (1, 7, 64)
# The exported graph is float32; these are the float32 bounds of lenet_triton.testing.
DEFAULT_ATOL, DEFAULT_RTOL = TOLERANCES[torch.float32]
# onnxruntime's execution providers by --provider name. TF32 stays off on CUDA: the tolerances are
# float32's, and the PyTorch side runs in float32 too.
PROVIDERS = {"cpu": ("CPUExecutionProvider", {}), "cuda": ("CUDAExecutionProvider", {"use_tf32": "0"})}


class ParityInputError(ValueError):
    """The inputs to the check are unusable (missing file, not ONNX, shapes that don't fit)."""


@dataclass
class CaseResult:
    case: str
    batch: int
    max_abs_error: float
    max_rel_error: float
    top1_agreement: float
    passed: bool
    first_diverging_layer: str = ""


@dataclass
class Report:
    onnx_file: str
    checkpoint: str
    atol: float
    rtol: float
    torch_device: str
    onnxruntime_provider: str
    backend: str = "triton"
    passed: bool = True
    cases: list = field(default_factory=list)


def load_onnx(path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise ParityInputError(f"ONNX file {str(path)!r} does not exist")
    try:
        proto = onnx.load(str(path))
    except Exception as error:  # protobuf decode errors have several types
        raise ParityInputError(f"{str(path)!r} is not an ONNX model ({type(error).__name__})") from None
    if not proto.graph.node or not proto.graph.input:
        raise ParityInputError(f"{str(path)!r} is not an ONNX model with a graph")
    return proto


def checkpoint_in_channels(checkpoint) -> int:
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        return int(state["conv1.weight"].shape[1])
    except Exception:  # unreadable or unfitting: load_checkpoint gives the full message
        return 1


def check_input_fits(proto: onnx.ModelProto, in_channels: int) -> None:
    graph_input = proto.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in graph_input.type.tensor_type.shape.dim]
    expected = ["batch", in_channels, IMAGE_SIZE, IMAGE_SIZE]
    if len(dims) != 4 or dims[1:] != expected[1:]:
        raise ParityInputError(f"the ONNX input {graph_input.name!r} has shape {dims}, but the checkpoint's model "
                               f"takes (batch, {in_channels}, {IMAGE_SIZE}, {IMAGE_SIZE})")


def check_provider(provider: str) -> None:
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise ParityInputError(f"--provider must be one of {sorted(PROVIDERS)}, got {provider!r}")
    name = PROVIDERS[provider][0]
    if name not in ort.get_available_providers():
        raise ParityInputError(f"--provider {provider}: this onnxruntime has no {name} "
                               f"(it has {', '.join(ort.get_available_providers())})")


def onnxruntime_session(proto: onnx.ModelProto, provider: str = "cpu", optimize: bool = True):
    """An onnxruntime session on `provider` (a PROVIDERS key), or a ParityInputError if onnxruntime
    lacks it or could not start it."""
    import onnxruntime as ort

    check_provider(provider)

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        # Fusions (Conv+Relu, Gemm+Relu) would rename or remove the intermediate values we compare.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    name, provider_options = PROVIDERS[provider]
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=[(name, provider_options)])
    # onnxruntime falls back to its CPU provider when CUDA's libraries fail to load: that would
    # report a CPU result as the CUDA provider's.
    if session.get_providers()[0] != name:
        raise ParityInputError(f"--provider {provider}: onnxruntime could not start {name} "
                               f"(the session runs on {session.get_providers()[0]})")
    return session


def _errors(got: np.ndarray, expected: np.ndarray, atol: float, rtol: float):
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    scale = np.abs(expected.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(scale, np.finfo(np.float32).tiny)).max()) if diff.size else 0.0
    within = bool(np.all(diff <= atol + rtol * scale))  # a NaN on either side fails the test
    return max_abs, max_rel, within


def first_diverging_layer(proto, model, images: torch.Tensor, device, atol, rtol, provider="cpu") -> str:
    """The first layer (in model.activations order) whose ONNX output differs from PyTorch's."""
    layers = {p.key: p.value for p in proto.metadata_props}.get(LAYERS_METADATA_KEY)
    if layers is None:
        return "unknown (the file has no lenet_triton layer map)"
    layers = json.loads(layers)
    exposed = onnx.ModelProto()
    exposed.CopyFrom(proto)
    known_outputs = {o.name for o in exposed.graph.output}
    for value in layers.values():
        if value not in known_outputs:
            exposed.graph.output.append(onnx.ValueInfoProto(name=value))
    try:
        session = onnxruntime_session(exposed, provider, optimize=False)
    except Exception as error:  # a file edited so that a layer's value no longer exists
        return f"unknown (intermediate outputs could not be exposed: {type(error).__name__})"
    outputs = dict(zip([o.name for o in session.get_outputs()],
                       session.run(None, {INPUT_NAME: images.numpy()})))
    with torch.no_grad():
        reference = {k: v.cpu().numpy() for k, v in model.activations(images.to(device)).items()}
    for layer, value in layers.items():
        if layer in reference and value in outputs:
            if outputs[value].shape != reference[layer].shape or not _errors(outputs[value], reference[layer],
                                                                              atol, rtol)[2]:
                return layer
    return "none (layers agree; the difference is in the final comparison)"


def cases(batch_sizes, in_channels: int, seed: int, extra=None):
    """(name, images) pairs: seeded random images at each batch size, the digits test images, then
    `extra` (a data set's (name, test images)), if given."""
    generator = torch.Generator().manual_seed(seed)
    for batch in batch_sizes:
        yield "random", torch.randn(batch, in_channels, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    _, test = datasets.load_digits()
    yield "digits", test.images.expand(-1, in_channels, -1, -1).contiguous()
    if extra is not None:
        yield extra


def load_test_images(dataset: str, data_dir, in_channels: int) -> torch.Tensor:
    """The test split of a data set the user has, checked against the model's input channels."""
    if dataset not in datasets.FILE_DATASETS or data_dir is None:
        raise ParityInputError(f"--dataset must be one of {datasets.FILE_DATASETS}, given with --data-dir; got "
                               f"{dataset!r} and --data-dir {data_dir}")
    try:
        _, test = datasets.load(dataset, data_dir)
    except datasets.DataError as error:
        raise ParityInputError(str(error)) from None
    if test.images.shape[1] != in_channels:
        raise ParityInputError(f"--dataset {dataset} has {test.images.shape[1]}-channel images, but the checkpoint's "
                               f"model takes {in_channels}")
    return test.images


def run_parity(onnx_path, checkpoint, *, batch_sizes=DEFAULT_BATCH_SIZES, atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL,
               seed: int = 0, backend: str = "triton", provider: str = "cpu", dataset: str = None,
               data_dir=None) -> Report:
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ParityInputError(f"--batch-sizes must be positive integers, got {list(batch_sizes)}")
    if backend not in BACKENDS:
        raise ParityInputError(f"--backend must be one of {BACKENDS}, got {backend!r}")
    if atol < 0 or rtol < 0:
        raise ParityInputError(f"--atol and --rtol must be >= 0, got {atol} and {rtol}")
    check_provider(provider)
    proto = load_onnx(onnx_path)
    in_channels = checkpoint_in_channels(checkpoint)
    check_input_fits(proto, in_channels)
    try:
        model = load_checkpoint(checkpoint, in_channels)
    except ExportError as error:
        raise ParityInputError(str(error)) from None
    if dataset is None and data_dir is not None:
        raise ParityInputError("--data-dir is only read with --dataset")
    extra = (dataset, load_test_images(dataset, data_dir, in_channels)) if dataset is not None else None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).with_backend(backend)
    session = onnxruntime_session(proto, provider)
    report = Report(str(onnx_path), str(checkpoint), atol, rtol, str(device), PROVIDERS[provider][0], backend)
    for name, images in cases(batch_sizes, in_channels, seed, extra):
        with torch.no_grad():
            expected = model(images.to(device)).cpu().numpy()
        got = session.run(None, {INPUT_NAME: images.numpy()})[0]
        if got.shape != expected.shape:
            raise ParityInputError(f"the ONNX output has shape {got.shape}, PyTorch's {expected.shape}")
        max_abs, max_rel, within = _errors(got, expected, atol, rtol)
        agreement = float(np.mean(got.argmax(1) == expected.argmax(1)))
        result = CaseResult(name, len(images), max_abs, max_rel, agreement, within and agreement == 1.0)
        if not result.passed:
            result.first_diverging_layer = first_diverging_layer(proto, model, images, device, atol, rtol, provider)
            report.passed = False
        report.cases.append(result)
    return report


def format_table(report: Report) -> str:
    header = f"{'case':<8} {'batch':>5} {'max abs err':>12} {'max rel err':>12} {'top-1 agree':>11}  result"
    lines = [f"onnxruntime ({report.onnxruntime_provider}) vs PyTorch (LeNet backend {report.backend!r} on "
             f"{report.torch_device}); "
             f"pass = |ort - torch| <= {report.atol:g} + {report.rtol:g}*|torch| everywhere and top-1 agrees",
             header, "-" * len(header)]
    for c in report.cases:
        verdict = "pass" if c.passed else f"FAIL (first diverging layer: {c.first_diverging_layer})"
        lines.append(f"{c.case:<8} {c.batch:>5} {c.max_abs_error:>12.3e} {c.max_rel_error:>12.3e} "
                     f"{100 * c.top1_agreement:>10.1f}%  {verdict}")
    lines.append(f"parity {'PASSED' if report.passed else 'FAILED'}")
    return "\n".join(lines)


def write_report(report: Report, path) -> None:
    write_json(path, asdict(report))
