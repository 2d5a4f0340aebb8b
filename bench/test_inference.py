"""Inference (logits for a batch) of LeNet: eager, torch.compile, the Triton backends and onnxruntime.

onnxruntime runs the file that `python -m export onnx` writes, exported from the same weights. Every
variant's logits must match eager's before it is timed. Inputs already sit where each variant reads
them: on the device for torch, in host memory for onnxruntime's CPU provider.
"""

import numpy as np
import pytest
import torch

from bench import variants
from bench.conftest import first_call, timed
from lenet_triton import LeNet
from lenet_triton.testing import assert_close


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    from export.onnx import export_onnx

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bench") / "lenet.onnx"
    export_onnx(LeNet(), path)
    return path


def make_inference(variant: str, batch: int, onnx_file):
    """(images, predict) where predict() returns logits as a torch tensor."""
    torch.manual_seed(0)
    model = LeNet(backend=variants.backend_of(variant)).to(variants.DEVICE).eval()
    images = torch.randn(batch, 1, 32, 32, device=variants.DEVICE)
    if variant.startswith("onnxruntime"):
        import onnx

        from export.parity import onnxruntime_session

        provider = variant.removeprefix("onnxruntime-")
        session = onnxruntime_session(onnx.load(str(onnx_file)), provider)
        if provider == "cpu":
            host = images.cpu().numpy()
            return lambda: torch.from_numpy(session.run(None, {"image": host})[0])
        # CUDA provider: bind the device tensors, so no host copy is timed.
        logits = torch.empty(batch, 10, device=variants.DEVICE)
        binding = session.io_binding()
        binding.bind_input("image", "cuda", 0, np.float32, list(images.shape), images.data_ptr())
        binding.bind_output("logits", "cuda", 0, np.float32, list(logits.shape), logits.data_ptr())

        def run_bound():
            session.run_with_iobinding(binding)
            return logits
        return run_bound
    if variant == "compile-default":
        model = torch.compile(model)

    @torch.no_grad()
    def predict():
        return model(images)
    return predict


@pytest.mark.parametrize("batch", variants.INFERENCE_BATCHES)
@pytest.mark.parametrize("variant", variants.INFERENCE_VARIANTS)
def test_inference(benchmark, variant, batch, onnx_file, peak_gflops, versions):
    torch._dynamo.reset()
    predict = make_inference(variant, batch, onnx_file)
    logits, seconds = first_call(predict)
    expected = make_inference(variants.BASELINE, batch, onnx_file)()
    assert_close(logits.to(expected.device), expected, f"{variant} logits vs eager")
    timed(benchmark, predict, group=f"inference, batch {batch}", variant=variant, batch=batch,
          flops=variants.lenet_flops(train=False) * batch, peak_gflops=peak_gflops, versions=versions,
          first_call_seconds=seconds)
