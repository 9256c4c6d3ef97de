"""
`benchmarks/int8.py` runs end to end on a synthetic CIFAR-10 folder and prints a row per network and
version, the speed-up lines and the load average. Only the output's shape is checked, never a number:
accuracy on synthetic images and timings on a shared machine mean nothing.
"""

import re

import pytest
import torch

import resnet
from experiments.synthetic import write_synthetic_cifar10

pytest.importorskip("torchao", reason="the [int8] extra is not installed")

from benchmarks import int8  # noqa: E402

NUMBER = r"\d+(\.\d+)?"


def test_int8_benchmark_prints_accuracy_and_speed_of_every_version(tmp_path, capsys):
    write_synthetic_cifar10(tmp_path, n_per_train_batch=8, n_test=24, separable=True)
    threads = torch.get_num_threads()
    try:
        results = int8.main(
            ["--data-dir", str(tmp_path), "--model", "resnet20", "--threads", "1", "--batch-size", "16"]
            + ["--repeats", "2", "--calibration", "32", "--no-verify-checksums"]
        )
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert out.startswith("machine: cpu (1 threads), CPU ")
    assert [(r.network, r.version) for r in results] == [
        ("resnet20", "float32"),
        ("resnet20", "bfloat16"),
        ("resnet20", "int8"),
    ]
    assert re.search(rf"^load average before: {NUMBER} {NUMBER} {NUMBER}$", out, re.MULTILINE)
    assert re.search(rf"^load average after: {NUMBER} {NUMBER} {NUMBER}$", out, re.MULTILINE)
    assert re.search(rf"^speed-up resnet20 int8/float32: {NUMBER}x", out, re.MULTILINE)
    assert re.search(rf"^resnet20 int8: {NUMBER}% test accuracy, {NUMBER} images/s$", out, re.MULTILINE)
    for version in ("float32", "bfloat16", "int8"):
        assert re.search(
            rf"^\| resnet20 +\| {version} +\| {NUMBER} +\| {NUMBER} +\| {NUMBER}% +\|$", out, re.M
        )
    assert all(0 <= r.accuracy <= 100 and r.images_per_second > 0 for r in results)


def test_a_model_without_shipped_weights_needs_a_file(tmp_path):
    with pytest.raises(SystemExit, match="resnet1202 has no trained weights.*use --model resnet1202=FILE"):
        int8.load_network("resnet1202")
    with pytest.raises(SystemExit, match="cannot read .*missing.pt.*check the path") as stopped:
        int8.load_network(f"resnet1202={tmp_path / 'missing.pt'}")
    assert "\n" not in str(stopped.value.code)


def test_a_model_file_is_read_by_the_library(tmp_path):
    """`NAME=FILE` goes through `resnet.load_checkpoint`: the file's weights, checked against the name."""
    model = resnet.resnet20()
    resnet.save_pretrained(model, tmp_path / "saved")
    name, loaded = int8.load_network(f"resnet20={tmp_path / 'saved'}")
    assert name == "resnet20" and not loaded.training
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    with pytest.raises(SystemExit, match="--model resnet56=.*resnet20"):
        int8.load_network(f"resnet56={tmp_path / 'saved'}")


def test_a_data_folder_that_fails_its_checks_ends_in_one_line(tmp_path):
    write_synthetic_cifar10(tmp_path, n_per_train_batch=8, n_test=8)
    with pytest.raises(SystemExit, match="md5 .* does not match the official") as stopped:
        int8.main(["--data-dir", str(tmp_path), "--model", "resnet20"])
    assert "\n" not in str(stopped.value.code)
