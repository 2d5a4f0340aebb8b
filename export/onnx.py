"""ONNX export of LeNet with standard ops only: every lenet_triton op maps to Conv, MaxPool, Gemm/MatMul, Relu.

    python -m export onnx --checkpoint CKPT --out PATH [--opset N] [--in-channels C (default: the checkpoint's)]

The file has one input `image` (batch, C, 32, 32) and one output `logits` (batch, 10), a symbolic
batch dimension named `batch`, all weights inside the one file, and metadata recording the versions,
the opset, the checkpoint's sha256 and which ONNX value holds each layer's output (the parity
checker uses that to find the first layer that diverges).
"""

import contextlib
import hashlib
import json
import logging
import warnings
from pathlib import Path

import onnx
import torch
from onnxscript import opset18 as op

import lenet_triton
from lenet_triton import LeNet
from lenet_triton.files import atomic_path
from lenet_triton.ops import pool_output_size

DEFAULT_OPSET = 18
# Opsets the translations and onnxruntime parity are tested at; older ones lack what the
# translations rely on, newer ones go past what the exporter's version converter supports.
SUPPORTED_OPSETS = (17, 18, 19, 20, 21)
INPUT_NAME, OUTPUT_NAME, BATCH_DIM = "image", "logits", "batch"
IMAGE_SIZE = 32
LAYERS_METADATA_KEY = "lenet_triton.layers"


class ExportError(ValueError):
    """The checkpoint or the export request can't produce a faithful ONNX file; the message says why."""


# ------------------------------------------------------------------------------------------------
# Translations: lenet_triton custom ops -> standard ONNX ops (onnxscript, opset 18 functions)
# ------------------------------------------------------------------------------------------------

def conv2d_to_onnx(x, weight, bias, stride, pads, dilation, groups, relu):
    # Our pads are (top, left, bottom, right): ONNX's order for 2-D.
    y = op.Conv(x, weight, bias, strides=stride, pads=pads, dilations=dilation, group=groups) if bias is not None \
        else op.Conv(x, weight, strides=stride, pads=pads, dilations=dilation, group=groups)
    return op.Relu(y) if relu else y


def max_pool2d_to_onnx(x, kernel_size, stride, padding, dilation, ceil_mode):
    pads_end = list(padding)
    if ceil_mode:
        # ONNX's ceil_mode lacks torch's rule that the last window must start inside the input, so
        # express torch's output size in floor mode with extra end padding (padding never wins a max).
        sizes = list(x.shape)[2:]
        if not all(isinstance(size, int) for size in sizes):
            raise ExportError("max_pool2d with ceil_mode=True needs a static height and width to export")
        for axis, size in enumerate(sizes):
            wanted = pool_output_size(size, kernel_size[axis], stride[axis], padding[axis], dilation[axis], True)
            span = (wanted - 1) * stride[axis] + dilation[axis] * (kernel_size[axis] - 1) + 1
            pads_end[axis] = max(padding[axis], span - size - padding[axis])
    values, flat_indices = op.MaxPool(x, kernel_shape=kernel_size, strides=stride, pads=[*padding, *pads_end],
                                      dilations=dilation, ceil_mode=0)
    # ONNX counts indices over the whole (N, C, H, W) tensor; torch counts within each H*W plane.
    plane = op.ReduceProd(op.Shape(x, start=2), keepdims=0)
    return values, op.Mod(flat_indices, op.CastLike(plane, flat_indices))


def linear_to_onnx(x, weight, bias, relu):
    if len(x.shape) == 2:
        y = op.Gemm(x, weight, bias, transB=1) if bias is not None else op.Gemm(x, weight, transB=1)
    else:
        y = op.MatMul(x, op.Transpose(weight, perm=[1, 0]))
        y = op.Add(y, bias) if bias is not None else y
    return op.Relu(y) if relu else y


def translation_table():
    ops = torch.ops.lenet_triton
    return {ops.conv2d.default: conv2d_to_onnx, ops.max_pool2d.default: max_pool2d_to_onnx,
            ops.linear.default: linear_to_onnx}


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------

def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_checkpoint(path, in_channels: int = None) -> LeNet:
    """A LeNet (Triton backend, CPU) holding the state_dict at path, or an ExportError that lists
    the missing, unexpected and mis-shaped keys. in_channels=None takes the input channels from the
    checkpoint (conv1's weight: 1 for digits and MNIST, 3 for CIFAR-10)."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a file that is not a checkpoint
        raise ExportError(f"checkpoint {str(path)!r} can't be read as a PyTorch state_dict: {error}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportError(f"checkpoint {str(path)!r} is not a plain state_dict (a dict of tensors)")
    if in_channels is None:
        conv1 = state.get("conv1.weight")
        in_channels = int(conv1.shape[1]) if conv1 is not None and conv1.dim() == 4 else 1
    model = LeNet(in_channels=in_channels)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [f"{k}: {tuple(state[k].shape)} in the checkpoint, {tuple(expected[k].shape)} expected"
                 for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or misshaped:
        lines = [f"checkpoint {str(path)!r} does not fit LeNet(in_channels={in_channels}):"]
        lines += [f"  missing keys: {', '.join(missing)}"] if missing else []
        lines += [f"  unexpected keys: {', '.join(unexpected)}"] if unexpected else []
        lines += [f"  mis-shaped: {item}" for item in misshaped]
        raise ExportError("\n".join(lines))
    model.load_state_dict(state)
    return model.eval()


# ------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------

LAYER_ORDER = ("conv1", "pool1", "conv2", "pool2", "flatten", "fc1", "fc2", "fc3")


def _layer_values(exported_program, proto: onnx.ModelProto) -> dict:
    """Layer name -> the ONNX value that holds its output: the exporter names each value after the FX
    node that produced it, so the layers are found in the exported program, in call order."""
    found = []
    for node in exported_program.graph.nodes:
        target = str(node.target)
        if target in ("lenet_triton.conv2d.default", "lenet_triton.linear.default"):
            found.append(node.name)
        elif target == "lenet_triton.max_pool2d.default":
            found.extend(user.name for user in node.users if user.args[1] == 0)
        elif target.startswith(("aten.view", "aten.flatten", "aten.reshape", "aten._unsafe_view")):
            found.append(node.name)
    if len(found) != len(LAYER_ORDER):
        raise ExportError(f"expected {len(LAYER_ORDER)} layer outputs in the exported program, found {found}")
    layers = dict(zip(LAYER_ORDER, found))
    layers["fc3"] = OUTPUT_NAME
    produced = {name for node in proto.graph.node for name in node.output}
    missing = {layer: value for layer, value in layers.items() if value not in produced}
    if missing:
        raise ExportError(f"layer outputs not found in the ONNX graph: {missing}")
    return layers


def onnx_program(module: torch.nn.Module, example: torch.Tensor, *, opset: int = DEFAULT_OPSET,
                 output_names=(OUTPUT_NAME,)):
    """torch.onnx.export (dynamo) of module on one input named `image` with a symbolic batch dimension,
    every lenet_triton op translated to standard ONNX ops. Returns the ONNXProgram."""
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(f"--opset {opset} is not supported; use one of {SUPPORTED_OPSETS}")
    batch = torch.export.Dim(BATCH_DIM, min=1)
    try:
        with warnings.catch_warnings(), _quiet_exporter_log():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecation notes
            program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset,
                                        input_names=[INPUT_NAME], output_names=list(output_names),
                                        dynamic_shapes=({0: batch},), custom_translation_table=translation_table(),
                                        external_data=False, optimize=True, verbose=False)
    except Exception as error:
        # A translation's refusal arrives wrapped in the exporter's own error; surface it as is.
        cause = error
        while cause is not None and not isinstance(cause, ExportError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise ExportError(str(cause)) from None
        raise
    _name_batch_dim(program.model_proto)
    return program


def export_onnx(model: LeNet, out_path, *, opset: int = DEFAULT_OPSET, checkpoint_sha256: str = "") -> onnx.ModelProto:
    """Exports model to out_path (atomically) and returns the checked ONNX model. Every backend gives
    the same file: the graph is traced through the per-op backend's ops, on the model's weights."""
    model = model.with_backend("triton").cpu().eval()
    in_channels = model.conv1.in_channels
    example = torch.randn(2, in_channels, IMAGE_SIZE, IMAGE_SIZE)
    program = onnx_program(model, example, opset=opset, output_names=[OUTPUT_NAME])
    proto = program.model_proto
    layers = _layer_values(program.exported_program, proto)
    metadata = {
        "lenet_triton.version": lenet_triton.__version__,
        "torch.version": torch.__version__,
        "triton.version": __import__("triton").__version__,
        "onnx.version": onnx.__version__,
        "opset": str(opset),
        "checkpoint.sha256": checkpoint_sha256,
        "model": f"LeNet(in_channels={in_channels})",
        LAYERS_METADATA_KEY: json.dumps(layers),
    }
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    check(proto)
    with atomic_path(out_path) as tmp:
        onnx.save_model(proto, tmp, save_as_external_data=False)
    return proto


@contextlib.contextmanager
def _quiet_exporter_log():
    """The exporter logs a warning for each torchvision op it can't register; we don't use torchvision."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _name_batch_dim(proto: onnx.ModelProto) -> None:
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and (dims[0].dim_param or not dims[0].HasField("dim_value")):
            dims[0].dim_param = BATCH_DIM


def check(proto: onnx.ModelProto) -> None:
    """onnx.checker with full_check, strict shape inference, and only the standard ONNX domain."""
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    domains = {node.domain for node in proto.graph.node} | {o.domain for o in proto.opset_import}
    custom = domains - {"", "ai.onnx"}
    if custom or proto.functions:
        raise ExportError(f"the exported graph uses non-standard domains {sorted(custom)} or local functions")


def export_checkpoint(checkpoint, out_path, *, opset: int = DEFAULT_OPSET, in_channels: int = None) -> onnx.ModelProto:
    model = load_checkpoint(checkpoint, in_channels)
    return export_onnx(model, out_path, opset=opset, checkpoint_sha256=sha256(checkpoint))
