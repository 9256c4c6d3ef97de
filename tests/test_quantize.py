"""
int8 on the CPU (`resnet/quantize.py`), on synthetic data: a small network trained on a separable
synthetic set keeps its predictions after quantisation, and the lowered graph really runs int8 oneDNN
kernels. Real accuracy and speed are measured by `benchmarks/int8.py`, never asserted here.
"""

import collections

import pytest
import torch
import torch.nn.functional as F

import resnet

pytest.importorskip("torchao", reason="the [int8] extra is not installed")

from resnet.quantize import calibrate_int8, quantize_int8  # noqa: E402

CLASSES = 3
SIZE = 16


def separable_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images whose class brightens one colour channel in one quadrant: easy, but not trivial."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    images = torch.randn(n, 3, SIZE, SIZE, generator=generator)
    for i, label in enumerate(labels.tolist()):
        half = SIZE // 2
        row, column = divmod(label, 2)
        images[i, label, row * half : (row + 1) * half, column * half : (column + 1) * half] += 1.5
    return images, labels


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    torch.manual_seed(0)
    model = resnet.create_model("custom", n_blocks=[1, 1], n_channels=[8, 16], num_classes=CLASSES)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    images, labels = separable_images(1024, seed=1)
    model.train()
    for _ in range(3):
        for batch, target in zip(images.split(64), labels.split(64), strict=True):
            optimizer.zero_grad()
            F.cross_entropy(model(batch), target).backward()
            optimizer.step()
    return model.eval()


def test_int8_predictions_agree_with_float32(trained: torch.nn.Module) -> None:
    calibration, _ = separable_images(256, seed=2)
    int8 = quantize_int8(trained, calibration.split(64), batch_size=64)
    images, labels = separable_images(300, seed=3)
    with torch.no_grad():
        float_predictions = trained(images).argmax(1)
    int8_predictions = int8(images).argmax(1)
    float_accuracy = (float_predictions == labels).float().mean().item()
    assert float_accuracy >= 0.9, (
        "the float network must have learned the set for the comparison to mean anything"
    )
    assert (int8_predictions == float_predictions).float().mean().item() >= 0.95


def test_the_lowered_graph_runs_int8_kernels(trained: torch.nn.Module) -> None:
    int8 = quantize_int8(trained, [separable_images(64, seed=2)[0]], batch_size=8)
    calls = collections.Counter(str(n.target) for n in int8.lowered.graph.nodes if n.op == "call_function")
    convolutions = sum(isinstance(m, torch.nn.Conv2d) for m in trained.modules())
    assert convolutions == 5
    int8_convolutions = sum(n for op, n in calls.items() if op.startswith("onednn.qconv"))
    assert int8_convolutions == convolutions
    # The blocks' `+ shortcut` and ReLU are fused into their second convolution.
    assert calls["onednn.qconv2d_pointwise.binary"] == 2
    assert calls["onednn.qlinear_pointwise.default"] == 1
    assert not any("convolution" in op or "batch_norm" in op for op in calls)


def test_any_batch_size_runs_in_pieces_of_the_lowered_one(trained: torch.nn.Module) -> None:
    calibration = separable_images(64, seed=2)[0]
    int8 = quantize_int8(trained, [calibration], batch_size=8)
    reference = calibrate_int8(trained, [calibration])
    images, _ = separable_images(21, seed=4)  # two full pieces and one padded
    with torch.no_grad():
        expected = reference(images)
    got = int8(images)
    assert got.shape == (21, CLASSES)
    # The same rounding, computed by different kernels: equal up to float error on the dequantised output.
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0.05)
    assert torch.equal(int8(images[:5]), got[:5])


def test_int8_refuses_what_the_float_network_refuses(trained: torch.nn.Module) -> None:
    int8 = quantize_int8(trained, [separable_images(8, seed=2)[0]], batch_size=8)
    with pytest.raises(TypeError, match="dtype torch.float32.*got torch.float64"):
        int8(torch.zeros(2, 3, SIZE, SIZE, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"built for 16x16 images .*got shape \[2, 3, 32, 32\]"):
        int8(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="needs at least one calibration batch"):
        quantize_int8(trained, [])
