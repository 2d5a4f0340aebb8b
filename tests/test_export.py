"""ONNX export and onnxruntime parity: the CI parity tests.

Per-op: each op's ONNX translation against the Triton kernel over a sweep of arguments. Model:
export + parity at several batch sizes and opsets; a tampered file fails and names its layer; the
CLI's exit codes and messages.
"""

import copy
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from export import onnx as onnx_export
from export import parity
from export.__main__ import main as export_main
from lenet_triton import LeNet, ops
from lenet_triton.testing import assert_close
from conftest import DEVICE


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    torch.save(LeNet().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "lenet.onnx"
    onnx_export.export_checkpoint(checkpoint, path)
    return path


# ------------------------------------------------------------------------------------------------
# Per-op parity: ONNX translation vs the Triton kernel
# ------------------------------------------------------------------------------------------------

class _Op(torch.nn.Module):
    def __init__(self, fn, *params):
        super().__init__()
        self.fn = fn
        self.params = torch.nn.ParameterList([torch.nn.Parameter(p, requires_grad=False) for p in params])

    def forward(self, image):
        return self.fn(image, *self.params)


OP_SWEEP = [
    ("conv plain", (2, 3, 9, 8), lambda x, w, b: ops.conv2d(x, w, b), [(4, 3, 3, 3), (4,)]),
    ("conv relu stride pad", (2, 3, 11, 9), lambda x, w, b: ops.conv2d(x, w, b, (2, 1), (1, 2), activation="relu"),
     [(5, 3, 3, 5), (5,)]),
    ("conv dilation groups", (2, 6, 10, 10), lambda x, w, b: ops.conv2d(x, w, b, 1, 2, (2, 1), groups=3),
     [(6, 2, 3, 3), (6,)]),
    ("conv same even kernel no bias", (2, 3, 8, 7), lambda x, w: ops.conv2d(x, w, padding="same"), [(4, 3, 4, 2)]),
    ("conv valid 1x1", (2, 3, 5, 5), lambda x, w, b: ops.conv2d(x, w, b, padding="valid", activation="relu"),
     [(2, 3, 1, 1), (2,)]),
    ("pool 2", (2, 3, 8, 8), lambda x: ops.max_pool2d(x, 2, return_indices=True), []),
    ("pool overlapping pad", (2, 3, 9, 7), lambda x: ops.max_pool2d(x, 3, 1, 1, return_indices=True), []),
    ("pool ceil_mode", (2, 3, 9, 9), lambda x: ops.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True), []),
    ("pool ceil pad dilation", (2, 2, 11, 10),
     lambda x: ops.max_pool2d(x, (3, 2), 2, 1, (2, 1), ceil_mode=True, return_indices=True), []),
    ("pool ceil clamps last window", (2, 2, 5, 5),
     lambda x: ops.max_pool2d(x, 2, 2, 1, ceil_mode=True, return_indices=True), []),
    ("linear 2-D relu", (5, 12), lambda x, w, b: ops.linear(x, w, b, activation="relu"), [(7, 12), (7,)]),
    ("linear 3-D no bias", (5, 4, 12), lambda x, w: ops.linear(x, w), [(7, 12)]),
]


@pytest.mark.parametrize("fn, input_shape, param_shapes", [c[2:0:-1] + (c[3],) for c in OP_SWEEP],
                         ids=[c[0] for c in OP_SWEEP])
def test_each_op_translation_matches_the_triton_kernel(fn, input_shape, param_shapes):
    """The kernels run on the test device (cuda where there is one); the export traces a CPU copy
    (no kernel runs in a trace) and onnxruntime gets CPU arrays."""
    module = _Op(fn, *[torch.randn(shape, device=DEVICE) * 0.5 for shape in param_shapes]).eval()

    def run_kernels(x):
        outputs = module(x.to(DEVICE))
        return tuple(out.cpu() for out in (outputs if isinstance(outputs, tuple) else (outputs,)))

    x = torch.randn(input_shape)
    outputs = len(run_kernels(x))
    program = onnx_export.onnx_program(copy.deepcopy(module).cpu(), x, output_names=[f"out{i}" for i in range(outputs)])
    onnx_export.check(program.model_proto)
    assert {n.domain for n in program.model_proto.graph.node} <= {""}, "only the standard ONNX domain"
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, input_shape[0] + 2):
        x = torch.randn(batch, *input_shape[1:])
        expected = run_kernels(x)
        got = session.run(None, {"image": x.numpy()})
        for i, (g, e) in enumerate(zip(got, expected)):
            if e.dtype == torch.int64:
                assert np.array_equal(g, e.numpy()), f"output {i}: indices differ"
            else:
                assert_close(torch.from_numpy(g), e, f"output {i} at batch {batch}")


# ------------------------------------------------------------------------------------------------
# The exported file
# ------------------------------------------------------------------------------------------------

@pytest.mark.torch_only
def test_exported_file_is_self_contained_standard_and_described(exported, checkpoint):
    assert sorted(p.name for p in exported.parent.iterdir()) == ["lenet.onnx"], "no external data, no temp files"
    proto = onnx.load(str(exported))
    onnx_export.check(proto)
    assert [i.name for i in proto.graph.input] == ["image"] and [o.name for o in proto.graph.output] == ["logits"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 32, 32]
    assert proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert {n.op_type for n in proto.graph.node} <= {"Conv", "Relu", "MaxPool", "Reshape", "Gemm", "Flatten",
                                                     "MatMul", "Add"}
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["checkpoint.sha256"] == onnx_export.sha256(checkpoint)
    assert meta["opset"] == "18" and {"lenet_triton.version", "torch.version", "triton.version",
                                      "onnx.version"} <= set(meta)
    assert list(json.loads(meta[onnx_export.LAYERS_METADATA_KEY])) == list(onnx_export.LAYER_ORDER)


def test_parity_passes_at_several_batch_sizes(exported, checkpoint):
    report = parity.run_parity(exported, checkpoint, batch_sizes=(1, 5, 33))
    assert report.passed, parity.format_table(report)
    assert [(c.case, c.batch) for c in report.cases] == [("random", 1), ("random", 5), ("random", 33),
                                                         ("digits", 360)]
    assert all(c.top1_agreement == 1.0 and c.max_abs_error <= report.atol for c in report.cases)


@pytest.mark.parametrize("opset", [o for o in onnx_export.SUPPORTED_OPSETS if o != onnx_export.DEFAULT_OPSET])
def test_other_opsets_export_and_pass_parity(checkpoint, tmp_path, opset):
    path = tmp_path / f"lenet{opset}.onnx"
    proto = onnx_export.export_checkpoint(checkpoint, path, opset=opset)
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {opset}
    report = parity.run_parity(path, checkpoint, batch_sizes=(3,))
    assert report.passed, parity.format_table(report)


@pytest.mark.torch_only
@pytest.mark.parametrize("backend", ["fused", "torch"])
def test_every_backend_exports_the_same_graph(checkpoint, tmp_path, backend):
    model = onnx_export.load_checkpoint(checkpoint)
    per_op = onnx_export.export_onnx(model, tmp_path / "per-op.onnx")
    other = onnx_export.export_onnx(model.with_backend(backend), tmp_path / f"{backend}.onnx")
    assert other.graph == per_op.graph


def test_parity_against_the_fused_backend(exported, checkpoint, capsys):
    """The file against the whole-network kernels (tail tiles: 65 is one past a 64-sample tile)."""
    code = export_main(["parity", str(exported), "--checkpoint", str(checkpoint), "--batch-sizes", "3,65",
                        "--backend", "fused"])
    out = capsys.readouterr().out
    assert code == 0 and "LeNet backend 'fused'" in out and "parity PASSED" in out, out


def test_three_channel_model_exports(tmp_path, capsys):
    """The input channels come from the checkpoint unless --in-channels says otherwise."""
    path = tmp_path / "cifar.pt"
    torch.save(LeNet(in_channels=3).state_dict(), path)
    assert export_main(["onnx", "--checkpoint", str(path), "--out", str(tmp_path / "cifar.onnx")]) == 0, \
        capsys.readouterr().err
    dims = onnx.load(str(tmp_path / "cifar.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert parity.run_parity(tmp_path / "cifar.onnx", path, batch_sizes=(2,)).passed


def test_parity_adds_a_data_sets_test_images(exported, checkpoint, tmp_path, capsys):
    """A 3-channel checkpoint against a small CIFAR-10 archive (tests/test_cifar10.py's files)."""
    from test_cifar10 import _batches, _binary_files, _write
    from lenet_triton.datasets import cifar10

    _write(tmp_path, cifar10.BINARY_VERSION, _binary_files(_batches()), archive=True)
    path = tmp_path / "cifar.pt"
    torch.save(LeNet(in_channels=3).state_dict(), path)
    onnx_export.export_checkpoint(path, tmp_path / "cifar.onnx")
    report_path = tmp_path / "parity.json"
    argv = ["parity", str(tmp_path / "cifar.onnx"), "--checkpoint", str(path), "--batch-sizes", "2",
            "--dataset", "cifar10", "--data-dir", str(tmp_path), "--report", str(report_path)]
    assert export_main(argv) == 0, capsys.readouterr().out
    assert [(c["case"], c["batch"]) for c in json.loads(report_path.read_text())["cases"]] == \
        [("random", 2), ("digits", 360), ("cifar10", 7)]
    # A 1-channel model can't take CIFAR-10, and --data-dir alone says what it lacks.
    assert export_main(["parity", str(exported), "--checkpoint", str(checkpoint), "--dataset", "cifar10",
                        "--data-dir", str(tmp_path)]) == 2
    assert "--dataset cifar10 has 3-channel images, but the checkpoint's model takes 1" in capsys.readouterr().err
    assert export_main(["parity", str(tmp_path / "cifar.onnx"), "--checkpoint", str(path), "--data-dir",
                        str(tmp_path)]) == 2
    assert "--data-dir is only read with --dataset" in capsys.readouterr().err


def _tamper(source, target, initializer="conv2.weight"):
    proto = onnx.load(str(source))
    for tensor in proto.graph.initializer:
        if tensor.name == initializer:
            values = numpy_helper.to_array(tensor).copy()
            values.flat[7] += 0.5
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    onnx.save(proto, str(target))


@pytest.mark.parametrize("initializer, layer", [("conv2.weight", "conv2"), ("fc2.bias", "fc2")])
def test_tampered_file_fails_and_names_the_layer(exported, checkpoint, tmp_path, initializer, layer):
    tampered = tmp_path / "tampered.onnx"
    _tamper(exported, tampered, initializer)
    report = parity.run_parity(tampered, checkpoint, batch_sizes=(4,))
    assert not report.passed
    failed = [c for c in report.cases if not c.passed]
    assert failed and all(c.first_diverging_layer == layer for c in failed), parity.format_table(report)


# ------------------------------------------------------------------------------------------------
# CLI: exit codes and messages
# ------------------------------------------------------------------------------------------------

def test_cli_parity_pass_writes_report(exported, checkpoint, tmp_path, capsys):
    report_path = tmp_path / "parity.json"
    code = export_main(["parity", str(exported), "--checkpoint", str(checkpoint), "--batch-sizes", "2,3",
                        "--report", str(report_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "max abs err" in out and "parity PASSED" in out
    report = json.loads(report_path.read_text())
    assert report["passed"] and [c["batch"] for c in report["cases"]] == [2, 3, 360]
    assert report["onnxruntime_provider"] == "CPUExecutionProvider"


def test_cli_parity_failure_exits_1_and_names_the_layer(exported, checkpoint, tmp_path, capsys):
    tampered = tmp_path / "tampered.onnx"
    _tamper(exported, tampered)
    report_path = tmp_path / "parity.json"
    code = export_main(["parity", str(tampered), "--checkpoint", str(checkpoint), "--batch-sizes", "2",
                        "--report", str(report_path)])
    assert code == 1
    assert "first diverging layer: conv2" in capsys.readouterr().out
    assert {c["first_diverging_layer"] for c in json.loads(report_path.read_text())["cases"]} == {"conv2"}


ORT_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(not ORT_CUDA, reason="needs CUDA (onnxruntime's CUDAExecutionProvider)")
def test_cuda_provider_runs_parity(exported, checkpoint, capsys):
    code = export_main(["parity", str(exported), "--checkpoint", str(checkpoint), "--batch-sizes", "2",
                        "--provider", "cuda"])
    captured = capsys.readouterr()
    assert code == 0 and "onnxruntime (CUDAExecutionProvider)" in captured.out, captured.out + captured.err


@pytest.mark.torch_only
@pytest.mark.skipif(ORT_CUDA, reason="this onnxruntime has a CUDAExecutionProvider")
def test_cuda_provider_is_refused_by_name_where_onnxruntime_lacks_it(exported, checkpoint, capsys):
    code = export_main(["parity", str(exported), "--checkpoint", str(checkpoint), "--batch-sizes", "2",
                        "--provider", "cuda"])
    assert code == 2 and "--provider cuda: this onnxruntime has no CUDAExecutionProvider" in capsys.readouterr().err


@pytest.mark.torch_only
def test_a_provider_that_onnxruntime_silently_replaced_is_refused(exported, checkpoint, monkeypatch):
    # onnxruntime runs on its CPU provider when CUDA's libraries fail to load, and only says so in
    # a log line: parity must not report that as the CUDA provider's result.
    class FellBackToCpu(ort.InferenceSession):
        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", lambda model, options, providers: FellBackToCpu(
        model, options, providers=["CPUExecutionProvider"]))
    with pytest.raises(parity.ParityInputError, match="could not start CUDAExecutionProvider .the session runs on "
                                                      "CPUExecutionProvider"):
        parity.run_parity(exported, checkpoint, batch_sizes=(2,), provider="cuda")
    with pytest.raises(parity.ParityInputError, match="--provider must be one of \\['cpu', 'cuda'\\], got 'tpu'"):
        parity.run_parity(exported, checkpoint, batch_sizes=(2,), provider="tpu")


@pytest.mark.torch_only
def test_cli_export_writes_and_reports(checkpoint, tmp_path, capsys):
    out = tmp_path / "sub" / "m.onnx"
    assert export_main(["onnx", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    assert out.is_file() and "ops: Conv, Gemm, MaxPool, Relu" in capsys.readouterr().out


@pytest.mark.torch_only
@pytest.mark.parametrize("make_args, message", [
    (lambda d, e, c: ["parity", str(d / "missing.onnx"), "--checkpoint", str(c)], "does not exist"),
    (lambda d, e, c: ["parity", str(c), "--checkpoint", str(c)], "is not an ONNX model"),
    (lambda d, e, c: ["parity", str(e), "--checkpoint", str(d / "cifar.pt")], "has shape ['batch', 1, 32, 32]"),
    (lambda d, e, c: ["parity", str(e), "--checkpoint", str(c), "--batch-sizes", "0"], "--batch-sizes must be"),
    (lambda d, e, c: ["parity", str(e), "--checkpoint", str(c), "--batch-sizes", "a,b"], "comma-separated"),
    (lambda d, e, c: ["parity", str(e), "--checkpoint", str(d / "nope.pt")], "does not exist"),
    (lambda d, e, c: ["onnx", "--checkpoint", str(d / "nope.pt"), "--out", str(d / "x.onnx")], "does not exist"),
    (lambda d, e, c: ["onnx", "--checkpoint", str(e), "--out", str(d / "x.onnx")], "can't be read"),
    (lambda d, e, c: ["onnx", "--checkpoint", str(c), "--out", str(d / "x.onnx"), "--opset", "9"],
     "--opset 9 is not supported"),
    (lambda d, e, c: ["onnx", "--checkpoint", str(d / "bad.pt"), "--out", str(d / "x.onnx")],
     "missing keys: fc3.bias"),
    (lambda d, e, c: ["onnx", "--checkpoint", str(c), "--out", str(d / "x.onnx"), "--in-channels", "3"],
     "mis-shaped: conv1.weight: (6, 1, 5, 5) in the checkpoint, (6, 3, 5, 5) expected"),
], ids=["missing onnx", "not onnx", "input shape", "batch 0", "batch words", "missing ckpt", "export missing ckpt",
        "export not ckpt", "opset", "keys", "shapes"])
def test_cli_bad_input_exits_2_with_a_message(exported, checkpoint, tmp_path, capsys, make_args, message):
    torch.save(LeNet(in_channels=3).state_dict(), tmp_path / "cifar.pt")
    bad = LeNet().state_dict()
    del bad["fc3.bias"]
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pt")
    assert export_main(make_args(tmp_path, exported, checkpoint)) == 2
    err = capsys.readouterr().err
    assert message in err, err
    if "keys" in message:
        assert "unexpected keys: extra.weight" in err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.torch_only
def test_ceil_mode_with_symbolic_spatial_size_is_refused():
    symbolic = type("Value", (), {"shape": [1, 3, "height", 8]})()
    with pytest.raises(onnx_export.ExportError, match="ceil_mode=True needs a static height and width"):
        onnx_export.max_pool2d_to_onnx(symbolic, [2, 2], [2, 2], [0, 0], [1, 1], True)
