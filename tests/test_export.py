"""
Export for deployment, checked against eager PyTorch: ONNX (both of torch's exporters) run by
onnxruntime, and `torch.export` with a dynamic batch saved to a `.pt2` file and loaded back. Each
exported model runs at batch sizes other than the one it was exported with, so a batch size baked into
the graph would show. ONNX export of ResNets has broken silently in past PyTorch releases, which is why
these compare numbers rather than only checking that export runs.

Tolerance: eager float32 and onnxruntime add up the same products in different orders, so outputs differ
by rounding only: `atol=rtol=1e-4` on logits of size ~1 leaves room for that and catches any real change.
"""

import pytest
import torch

import resnet

onnx = pytest.importorskip("onnx", reason="the [onnx] extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
pytest.importorskip("onnxscript", reason="the [onnx] extra is not installed")

# One CIFAR network with option-A shortcuts (strided slicing and zero-padding), and one ImageNet
# bottleneck network with projections, at 64x64, which its stages treat like 224x224 at a fraction of
# the cost.
NETWORKS = {"resnet20": 32, "resnet50": 64}
TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}


def trained_looking(name: str) -> torch.nn.Module:
    """A network in eval mode whose batch norms have statistics of their own, as a trained one has."""
    torch.manual_seed(0)
    model = resnet.create_model(name)
    size = NETWORKS[name]
    with torch.no_grad():
        model.train()(torch.randn(16, 3, size, size))
    return model.eval()


def run_onnxruntime(path: str, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (input_name,) = [i.name for i in session.get_inputs()]
    return torch.from_numpy(session.run(None, {input_name: x.numpy()})[0])


@pytest.mark.parametrize("name", NETWORKS)
def test_onnx_export_with_a_dynamic_batch_matches_eager(name, tmp_path):
    model = trained_looking(name)
    size = NETWORKS[name]
    path = str(tmp_path / f"{name}.onnx")
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        model,
        (torch.randn(2, 3, size, size),),
        path,
        dynamo=True,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: batch}},
    )
    onnx.checker.check_model(path)
    for n in (1, 5):
        x = torch.randn(n, 3, size, size)
        with torch.no_grad():
            expected = model(x)
        torch.testing.assert_close(run_onnxruntime(path, x), expected, **TOLERANCE)


def test_the_legacy_onnx_exporter_with_a_dynamic_batch_matches_eager(tmp_path):
    model = trained_looking("resnet20")
    path = str(tmp_path / "resnet20.onnx")
    torch.onnx.export(
        model,
        (torch.randn(2, 3, 32, 32),),
        path,
        dynamo=False,
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
    )
    x = torch.randn(7, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(run_onnxruntime(path, x), expected, **TOLERANCE)


@pytest.mark.parametrize("name", NETWORKS)
def test_torch_export_with_a_dynamic_batch_saves_and_loads_back(name, tmp_path):
    model = trained_looking(name)
    size = NETWORKS[name]
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (torch.randn(2, 3, size, size),), dynamic_shapes={"x": {0: batch}})
    path = tmp_path / f"{name}.pt2"
    torch.export.save(program, path)
    loaded = torch.export.load(path).module()
    for n in (1, 5):
        x = torch.randn(n, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), **TOLERANCE)
