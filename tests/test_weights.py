"""
The weights that ship with the package, the CIFAR-10 input format, and the README's
checkpoint-to-your-own-code snippet.
"""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from synthetic_main import run_trainer, tiny_args, write_data

import resnet
from experiments import data as cifar_data
from experiments.loader import TensorBatches
from resnet import pretrained

ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_resnet20_loads_strictly_matches_its_hash_and_classifies() -> None:
    entry = pretrained.available_weights()["resnet20", "cifar10"]
    assert pretrained.sha256_of(entry.path) == entry.sha256
    assert entry.recipe == "cpu" and 0.5 < entry.test_accuracy <= 1.0 and "--recipe cpu" in entry.command
    model = resnet.resnet20(weights="cifar10").eval()
    state = torch.load(entry.path, weights_only=True)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    images = torch.randint(
        0, 256, (8, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        logits = model(resnet.normalize_cifar10(images))
    assert logits.shape == (8, 10) and torch.isfinite(logits).all()
    # Trained weights are not the initial ones.
    assert not torch.equal(model.trunk.stem.conv.weight, resnet.resnet20().trunk.stem.conv.weight)


def test_the_shipped_weights_come_from_the_cpu_recipe_as_it_now_runs() -> None:
    # The record's command must train as long as `--recipe cpu` trains today: if the recipe's length
    # changes, the shipped weights no longer are "the cpu recipe's" and must be retrained.
    from experiments.recipes import RECIPES

    entry = pretrained.available_weights()["resnet20", "cifar10"]
    epochs = re.search(r"--epochs (\d+)", entry.command)
    assert epochs is not None and int(epochs.group(1)) == RECIPES[entry.recipe]["epochs"]
    assert f"--seed {entry.seed}" in entry.command


def test_the_registry_passes_weights_through() -> None:
    a = resnet.create_model("resnet20", weights="cifar10")
    b = resnet.resnet20(weights="cifar10")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_a_damaged_weight_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "weights"
    shutil.copytree(pretrained.WEIGHTS_DIR, copy)
    entry = pretrained.available_weights()["resnet20", "cifar10"]
    data = bytearray((copy / entry.file).read_bytes())
    data[-100] ^= 0xFF
    (copy / entry.file).write_bytes(bytes(data))
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", copy)
    with pytest.raises(ValueError, match="damaged or was replaced"):
        resnet.resnet20(weights="cifar10")


def test_unknown_weights_and_changed_architectures_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="no 'imagenet' weights ship for resnet20; available: resnet20"):
        resnet.resnet20(weights="imagenet")
    with pytest.raises(ValueError, match="build it without architecture arguments"):
        resnet.resnet20(weights="cifar10", num_classes=100)


def test_normalize_cifar10_is_the_trainers_own_input_to_the_bit() -> None:
    images = torch.randint(
        0, 256, (5, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    loader = TensorBatches(
        images.permute(0, 3, 1, 2).contiguous(),
        torch.zeros(5, dtype=torch.long),
        batch_size=5,
        shuffle=False,
        augment=False,
        device="cpu",
        seed=0,
        mean=cifar_data.CIFAR10_MEAN,
        std=cifar_data.CIFAR10_STD,
    )
    ((x, _),) = list(loader.epoch(0))
    assert torch.equal(resnet.normalize_cifar10(images), x)
    assert torch.equal(resnet.normalize_cifar10(images[0]), x[:1])
    assert (resnet.CIFAR10_MEAN, resnet.CIFAR10_STD) == (cifar_data.CIFAR10_MEAN, cifar_data.CIFAR10_STD)


@pytest.mark.parametrize(
    "bad, error",
    [(torch.zeros(2, 32, 32, 3), TypeError), (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), ValueError)],
)
def test_normalize_cifar10_names_the_layout_it_expects(bad: torch.Tensor, error: type) -> None:
    with pytest.raises(error, match="uint8"):
        resnet.normalize_cifar10(bad)


def readme_block(marker: str) -> str:
    """The README's python block that contains `marker`."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    (block,) = [b for b in blocks if marker in b]
    return block


def test_the_readme_loads_a_trainer_checkpoint_into_resnet20_and_classifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = write_data(tmp_path / "cifar")
    results = tmp_path / "results.json"
    argv = tiny_args(data_dir, tmp_path / "logs", "--results", str(results))
    # The README's run trains resnet20 itself, not the tiny custom network the other tests use.
    argv = [a for a in argv if not a.startswith(("model=", "n_blocks=", "n_channels="))] + [
        "--model",
        "resnet20",
    ]
    assert run_trainer(argv) == 0
    run_dir = Path(json.loads(results.read_text())["run_dir"])
    (tmp_path / "work" / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "checkpoints" / "last.pt", tmp_path / "work" / "checkpoints" / "last.pt")
    monkeypatch.chdir(tmp_path / "work")
    namespace: dict = {}
    exec(readme_block('torch.load("checkpoints/last.pt"'), namespace)
    assert namespace["prediction"] in resnet.CIFAR10_CLASSES
    saved = torch.load("checkpoints/last.pt", weights_only=True)
    assert all(torch.equal(v, namespace["model"].state_dict()[k]) for k, v in saved["model"].items())
