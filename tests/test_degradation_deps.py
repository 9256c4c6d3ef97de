"""A long degradation run checks its optional plotting package first and writes its numbers before drawing."""

import importlib.util
import json
from pathlib import Path

import pytest
from cifar_synthetic import write_synthetic_cifar10

from experiments import data as cifar_data
from experiments import degradation

TINY = [
    "--depths",
    "8",
    "--widths",
    "4",
    "8",
    "16",
    "--epochs",
    "1",
    "--batch-size",
    "16",
    "--train-images",
    "40",
    "--test-images",
    "20",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--no-download",
]


@pytest.fixture
def synthetic_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(cifar_data, "VERIFY_CHECKSUMS", False)
    root = tmp_path / "cifar"
    write_synthetic_cifar10(root, n_per_train_batch=16, n_test=20, separable=True)
    return root


def test_without_matplotlib_the_run_stops_before_training(
    synthetic_cifar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a),
    )
    with pytest.raises(SystemExit) as exit_info:
        degradation.main(
            [
                "--quick",
                "--data-dir",
                str(synthetic_cifar),
                "--logs-dir",
                str(tmp_path / "logs"),
                "--out",
                str(tmp_path / "figure.png"),
                *TINY,
            ]
        )
    assert exit_info.value.code == 2
    assert 'pip install -e ".[plot]"' in capsys.readouterr().err
    assert not (tmp_path / "logs").exists() and not (tmp_path / "figure.json").exists()


def test_the_numbers_are_on_disk_even_when_drawing_fails(
    synthetic_cifar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(degradation, "build_figure", broken)
    out = tmp_path / "figure.png"
    with pytest.raises(RuntimeError, match="drawing failed"):
        degradation.main(
            [
                "--quick",
                "--data-dir",
                str(synthetic_cifar),
                "--logs-dir",
                str(tmp_path / "logs"),
                "--out",
                str(out),
                *TINY,
            ]
        )
    summary = json.loads(out.with_suffix(".json").read_text())
    assert [n["network"] for n in summary["networks"]] == ["plain-8", "ResNet-8"]
    assert not out.exists()
