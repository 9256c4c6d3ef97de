"""
The trained weights, torchvision style: every registered weight has its full metadata, loads strictly
into its builder and matches its hash, and its transforms give exactly the trainer's input. The weights
are found from the records on disk: a synthetic folder with several depths shows each appearing with no
code change, and a stray or broken record breaking nothing else.
"""

import dataclasses
import json
import re
import shlex
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load as parse_safetensors

import resnet
from experiments import data as cifar_data
from experiments.export_weights import describe_tta, write_weights
from experiments.loader import TensorBatches
from resnet import pretrained, registry

ROOT = Path(__file__).resolve().parent.parent
RECORD_FIELDS = {f.name for f in dataclasses.fields(pretrained.WeightRecord)}
COMPUTED_FIELDS = {"classes", "num_params", "mult_adds", "image_size"}
# The `cpu` recipe's length when the shipped depths trained (2026-12-06/07); it has 39 epochs since.
# ResNet-110's 16,000 iterations (2026-12-08) are more than either.
RECIPE_EPOCHS_WHEN_TRAINED = 30
# Every member of every weights enum on disk, so a network whose files land is tested with no change here.
ALL_WEIGHTS = [
    member
    for network in resnet.list_models(pretrained=True)
    for member in resnet.get_model_weights(network)
    if member.name != "DEFAULT"
]


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def images(n: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=generator)


def trainer_input(batch: torch.Tensor) -> torch.Tensor:
    """What the trainer feeds for `uint8` `[N, H, W, 3]` images: its own loader, without augmentation."""
    loader = TensorBatches(
        batch.permute(0, 3, 1, 2).contiguous(),
        torch.zeros(len(batch), dtype=torch.long),
        batch_size=len(batch),
        shuffle=False,
        augment=False,
        device="cpu",
        seed=0,
        mean=cifar_data.CIFAR10_MEAN,
        std=cifar_data.CIFAR10_STD,
    )
    ((x, _),) = list(loader.epoch(0))
    return x


# ## Every registered weight


def test_resnet20_ships_and_is_found() -> None:
    assert "resnet20" in resnet.list_models(pretrained=True)
    assert resnet.ResNet20_Weights.CIFAR10 in ALL_WEIGHTS
    assert resnet.ResNet20_Weights.DEFAULT is resnet.ResNet20_Weights.CIFAR10


@pytest.mark.parametrize("weights", ALL_WEIGHTS, ids=repr)
def test_every_weight_has_its_full_metadata(weights: resnet.WeightsEnum) -> None:
    meta = weights.meta
    assert set(meta) == RECORD_FIELDS | COMPUTED_FIELDS
    assert meta["network"] == weights.network and meta["dataset"] == weights.dataset
    assert meta["classes"] == list(pretrained.DATASETS[weights.dataset].classes)
    model = resnet.create_model(weights.network, num_classes=len(meta["classes"]))
    assert meta["num_params"] == count(model)
    assert 0.5 < meta["test_accuracy_single_view"] <= 1.0
    assert (meta["test_accuracy_tta"] is None) == (meta["tta_views"] is None)
    assert isinstance(meta["seed"], int) and meta["recipe"] and meta["machine"]
    assert f"--seed {meta['seed']}" in meta["command"]
    # The paper's recipe is the trainer's default, which a command need not name.
    assert meta["recipe"] == "paper" or f"--recipe {meta['recipe']}" in meta["command"]
    assert meta["file_size"] == weights.record.path.stat().st_size
    assert re.fullmatch(r"[0-9a-f]{64}", meta["sha256"])


@pytest.mark.parametrize("weights", ALL_WEIGHTS, ids=repr)
def test_every_weight_file_matches_its_hash_and_loads_strictly(weights: resnet.WeightsEnum) -> None:
    raw = weights.record.path.read_bytes()
    assert pretrained.sha256_hex(raw) == weights.meta["sha256"]
    model = resnet.model_builder(weights.network)(weights=weights).eval()
    state = parse_safetensors(raw)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    # Trained weights are not the initial ones, and they classify.
    fresh = resnet.create_model(weights.network)
    assert not all(torch.equal(v, fresh.state_dict()[k]) for k, v in state.items())
    with torch.no_grad():
        logits = model(weights.transforms()(images(4)))
    assert logits.shape == (4, len(weights.meta["classes"])) and torch.isfinite(logits).all()


@pytest.mark.parametrize("weights", ALL_WEIGHTS, ids=repr)
def test_every_weight_is_found_by_its_name(weights: resnet.WeightsEnum) -> None:
    enum = resnet.get_model_weights(weights.network)
    assert enum is type(weights) is getattr(resnet, registry.weights_class_name(weights.network))
    assert enum is resnet.get_model_weights(resnet.model_builder(weights.network))
    for name in (weights.dataset, weights.dataset.upper(), weights.name, repr(weights)):
        assert registry.resolve_weights(weights.network, name) is weights
    assert resnet.get_weight(repr(weights)) is weights
    assert weights.transforms() is pretrained.DATASETS[weights.dataset].transform


@pytest.mark.parametrize("weights", ALL_WEIGHTS, ids=repr)
def test_every_record_command_trains_what_the_record_says(weights: resnet.WeightsEnum) -> None:
    # The command is read by the trainer's own parser (a resumed run's record gives the first process's
    # command, then ", then" and the resume): it must be accepted as it stands, and train the record's
    # network with its recipe and seed, scored with the views the record names.
    from experiments import cli
    from experiments.cifar10 import NESTED_CONFIGS, Configs
    from experiments.recipes import RECIPES

    meta = weights.meta
    words = shlex.split(meta["command"].partition(", then ")[0])
    assert words[:2] == ["python", "experiments/cifar10.py"]
    settings = cli.parse(words[2:], Configs, nested=NESTED_CONFIGS, recipes=RECIPES).settings
    assert settings["model"] == weights.network and settings["recipe"] == meta["recipe"]
    assert settings["seed"] == meta["seed"]
    assert meta["tta_views"] == describe_tta(flip=settings["flip_tta"], shift=settings["shift_tta"])
    # Every shipped depth comes from the same family: the `cpu` recipe, lengthened (in epochs of all
    # 50,000 images, or in iterations) from the length it had when they trained, never shortened.
    steps = settings.get("iterations")
    epoch = cifar_data.TRAIN_IMAGES
    images = steps * settings["batch_size"] if isinstance(steps, int) else settings["epochs"] * epoch
    assert meta["recipe"] == "cpu" and images >= RECIPE_EPOCHS_WHEN_TRAINED * epoch


def test_multiply_adds_are_counted_not_typed() -> None:
    # ResNet-20 on 32x32: the stem, 18 convolutions in three stages and the head, by hand.
    stem = 32 * 32 * 16 * 3 * 9
    stages = sum(6 * (32 // 2**i) ** 2 * (16 * 2**i) ** 2 * 9 for i in range(3))
    # The first block of stages 2 and 3 reads half as many channels in its first convolution.
    stages -= sum((32 // 2**i) ** 2 * (16 * 2**i) * (8 * 2**i) * 9 for i in (1, 2))
    assert resnet.ResNet20_Weights.CIFAR10.meta["mult_adds"] == stem + stages + 64 * 10


def test_no_pickle_ships() -> None:
    shipped = sorted(p.name for p in pretrained.WEIGHTS_DIR.iterdir())
    assert all(name.endswith((".safetensors", ".json")) for name in shipped), shipped
    gitignore = (ROOT / ".gitignore").read_text()
    assert "!resnet/weights/*.safetensors" in gitignore and "!resnet/weights/*.pt" not in gitignore


# ## The input format


def test_transforms_give_the_trainers_own_input_to_the_bit() -> None:
    batch = images(5, seed=1)
    expected = trainer_input(batch)
    transform = resnet.ResNet20_Weights.DEFAULT.transforms()
    as_pil = [Image.fromarray(image.numpy()) for image in batch]
    assert torch.equal(transform(batch), expected)  # a uint8 NHWC tensor
    assert torch.equal(transform(batch.numpy()), expected)  # a numpy batch
    assert torch.equal(transform(as_pil), expected)  # a list of PIL images
    assert torch.equal(transform(list(batch.numpy())), expected)  # a list of arrays
    assert torch.equal(transform(as_pil[0]), expected[:1])  # one PIL image
    assert torch.equal(transform(batch[0]), expected[:1])  # one HWC tensor
    assert torch.equal(resnet.normalize_cifar10(batch), expected)
    assert torch.equal(resnet.normalize_cifar10(as_pil), expected)
    assert (resnet.CIFAR10_MEAN, resnet.CIFAR10_STD) == (cifar_data.CIFAR10_MEAN, cifar_data.CIFAR10_STD)


def test_transforms_resize_other_sizes_to_the_trained_square() -> None:
    transform = resnet.ResNet20_Weights.DEFAULT.transforms()
    # A flat colour stays that colour; a 96x64 image becomes 48x32 and loses 8 columns each side.
    flat = Image.new("RGB", (96, 64), (10, 200, 30))
    assert torch.equal(transform(flat), transform(Image.new("RGB", (32, 32), (10, 200, 30))))
    striped = np.zeros((64, 96, 3), dtype=np.uint8)
    striped[:, :12] = 255  # only in the columns the centre crop drops (the filter spans 2 more)
    assert torch.equal(transform(striped), transform(np.zeros((32, 32, 3), dtype=np.uint8)))
    mixed = transform([flat, Image.new("RGB", (32, 32)), Image.new("L", (40, 40), 128)])
    assert mixed.shape == (3, 3, 32, 32)
    # Grey becomes three equal channels.
    assert torch.equal(mixed[2], transform(np.full((32, 32, 3), 128, dtype=np.uint8))[0])


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (torch.zeros(2, 32, 32, 3), TypeError, r"uint8 images.*float32 with shape \[2, 32, 32, 3\]"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), ValueError, r"got shape \[2, 3, 32, 32\].*permute"),
        (torch.zeros(32, 32, dtype=torch.uint8), ValueError, r"got shape \[32, 32\]"),
        ("image.png", TypeError, "a PIL image, or uint8 images.*got str"),
        ([], ValueError, "at least one image"),
    ],
)
def test_bad_images_are_told_what_is_expected(bad: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        resnet.normalize_cifar10(bad)
    with pytest.raises(error, match=message):
        resnet.ResNet20_Weights.DEFAULT.transforms()(bad)


# ## Refusals


def test_a_network_without_weights_names_those_that_have_them() -> None:
    # ResNet-1202 is the one CIFAR depth the results never train, so it stays without weights.
    refusal = r"^resnet1202 has no trained weights; networks with weights: resnet20\(weights='cifar10'\)"
    with pytest.raises(ValueError, match=refusal):
        resnet.resnet1202(weights="cifar10")
    with pytest.raises(ValueError, match=refusal):
        resnet.create_model("resnet1202", pretrained=True)
    with pytest.raises(ValueError, match=r"no 'imagenet' weights for resnet20; it has 'cifar10'"):
        resnet.resnet20(weights="imagenet")
    with pytest.raises(ValueError, match=r"are weights for resnet20, not plain20"):
        resnet.create_model("plain20", weights=resnet.ResNet20_Weights.CIFAR10)
    with pytest.raises(TypeError, match=r"weights= takes a member of resnet.ResNet20_Weights or its name"):
        resnet.resnet20(weights=True)
    with pytest.raises(AttributeError, match="ResNet1202_Weights"):
        _ = resnet.ResNet1202_Weights


def test_another_number_of_classes_loads_the_trunk_with_a_warning() -> None:
    trained = resnet.resnet20(weights="cifar10")
    told = r"have 10 classes: loaded the trunk into resnet20 .* new 100-class head"
    with pytest.warns(UserWarning, match=told) as caught:
        model = resnet.resnet20(weights="cifar10", num_classes=100)
    # The warning points at the caller's line, not into the library.
    assert caught[0].filename == __file__
    assert model.head.out_features == 100
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in trained.state_dict().items() if not k.startswith("head."))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resnet.resnet20(weights="cifar10", num_classes=10)


def test_options_that_change_the_tensors_are_named() -> None:
    with pytest.raises(ValueError, match=r"do not fit resnet20 as built .*; leave out shortcut='B'$"):
        resnet.resnet20(weights="cifar10", shortcut="B")
    # An option that only changes the initialisation is harmless: the weights replace it.
    resnet.resnet20(weights="cifar10", zero_init_residual=True)


# ## Hash what you parse


@pytest.fixture
def weights_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    copy = tmp_path / "weights"
    shutil.copytree(pretrained.WEIGHTS_DIR, copy)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", copy)
    return copy


def test_a_damaged_weight_file_is_refused(weights_copy: Path) -> None:
    path = weights_copy / "resnet20_cifar10.safetensors"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(resnet.WeightsError, match=r"does not match its record .*damaged or was replaced"):
        resnet.resnet20(weights="cifar10")


def test_a_file_swapped_after_the_hash_is_not_what_loads(
    weights_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = weights_copy / "resnet20_cifar10.safetensors"
    original = parse_safetensors(path.read_bytes())
    real_hash = pretrained.sha256_hex
    swapped = []

    def hash_then_swap(data: bytes) -> str:
        digest = real_hash(data)
        # Between the check and the parse, someone replaces the file with other weights.
        path.write_bytes(resnet.loading.weights_bytes(resnet.resnet20().state_dict(), "resnet20", {}))
        swapped.append(True)
        return digest

    monkeypatch.setattr(pretrained, "sha256_hex", hash_then_swap)
    model = resnet.resnet20(weights="cifar10")
    assert swapped and parse_safetensors(path.read_bytes()).keys() == original.keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in original.items())


# ## Discovery: several depths, a stray file, a broken record


@pytest.fixture
def synthetic_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, torch.Tensor]]:
    """A weights folder with the real resnet20 and synthetic resnet32 and plain20 weights."""
    # Only the real resnet20 is copied: the real folder may hold other depths by now.
    folder = tmp_path / "weights"
    folder.mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copy(pretrained.WEIGHTS_DIR / f"resnet20_cifar10{suffix}", folder)
    record = {
        "test_accuracy_single_view": 0.9,
        "test_accuracy_tta": None,
        "tta_views": None,
        "recipe": "paper",
        "seed": 3,
        "command": "python experiments/cifar10.py --recipe paper --seed 3",
        "machine": "a test",
    }
    states = {}
    for network in ("resnet32", "plain20"):
        torch.manual_seed(1)
        states[network] = resnet.create_model(network).state_dict()
        write_weights(states[network], network, "cifar10", record, folder)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", folder)
    return states


def test_weights_appear_from_their_files_alone(synthetic_weights: dict[str, dict[str, torch.Tensor]]) -> None:
    assert resnet.list_models(pretrained=True) == ["resnet20", "resnet32", "plain20"]
    assert resnet.list_models("resnet*", pretrained=True) == ["resnet20", "resnet32"]
    for network, state in synthetic_weights.items():
        enum = resnet.get_model_weights(network)
        assert enum.__name__ == {"resnet32": "ResNet32_Weights", "plain20": "Plain20_Weights"}[network]
        assert [m.name for m in enum] == ["CIFAR10"] and enum.DEFAULT is enum.CIFAR10
        model = resnet.create_model(network, weights="cifar10")
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
        assert enum.CIFAR10.meta["num_params"] == count(model)
        assert enum.CIFAR10.meta["tta_views"] is None
    assert resnet.ResNet32_Weights is resnet.get_model_weights("resnet32")
    assert "ResNet32_Weights" in dir(resnet)
    with_weights = "resnet20(weights='cifar10'), resnet32(weights='cifar10'), plain20(weights='cifar10')"
    with pytest.raises(
        ValueError,
        match=re.escape(f"resnet1202 has no trained weights; networks with weights: {with_weights}"),
    ):
        resnet.resnet1202(weights="cifar10")


def test_a_stray_json_is_ignored(synthetic_weights: dict[str, dict[str, torch.Tensor]]) -> None:
    folder = pretrained.WEIGHTS_DIR
    (folder / "notes.json").write_text("not json at all")
    (folder / "resnet20_imagenet21k.json").write_text("{}")  # a data set this library does not know
    (folder / "vgg16_cifar10.json").write_text("{}")  # a network it does not build
    (folder / "README.md").write_text("# weights")
    assert resnet.list_models(pretrained=True) == ["resnet20", "resnet32", "plain20"]
    resnet.resnet20(weights="cifar10")


def test_a_broken_record_is_refused_only_when_asked_for(
    synthetic_weights: dict[str, dict[str, torch.Tensor]],
) -> None:
    record = pretrained.WEIGHTS_DIR / "resnet32_cifar10.json"
    fields = json.loads(record.read_text())
    for broken, message in [
        ("{", "is not valid JSON"),
        (json.dumps({**fields, "seed": "3"}), "field 'seed' must be int, got '3'"),
        (json.dumps({**fields, "test_acc": 0.9}), "unknown field"),
        (json.dumps({k: v for k, v in fields.items() if k != "sha256"}), "lacks the field(s) 'sha256'"),
        (json.dumps({**fields, "file": "../../etc/passwd"}), "must be 'resnet32_cifar10.safetensors'"),
        (json.dumps({**fields, "test_accuracy_tta": 0.91}), "both be given or both be null"),
    ]:
        record.write_text(broken)
        # Every other network's weights are untouched by it.
        resnet.resnet20(weights="cifar10")
        resnet.create_model("plain20", weights="cifar10")
        assert "resnet32" in resnet.list_models(pretrained=True)
        with pytest.raises(resnet.WeightsError, match=re.escape(message)) as caught:
            resnet.resnet32(weights="cifar10")
        assert "\n" not in str(caught.value) and str(record) in str(caught.value)


def test_write_weights_keeps_every_tensor_bit_for_bit(tmp_path: Path) -> None:
    # What converted the shipped pickle: a state with awkward values (negative zero, NaN, int64
    # buffers, a non-contiguous tensor) comes back with the same bits.
    torch.manual_seed(0)
    state = resnet.resnet20().state_dict()
    state["trunk.stem.bn.bias"] = torch.tensor([-0.0, float("nan"), 1e-45, *range(13)])
    state["trunk.stem.conv.weight"] = state["trunk.stem.conv.weight"].transpose(2, 3)
    pickled = tmp_path / "old.pt"
    torch.save(state, pickled)
    loaded = torch.load(pickled, weights_only=True)
    path = write_weights(loaded, "resnet20", "cifar10", _record(), tmp_path / "out")
    back = parse_safetensors(path.read_bytes())
    assert back.keys() == state.keys()
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape
        bits = back[name].contiguous().view(-1).view(torch.uint8)
        assert bits.equal(tensor.contiguous().view(-1).view(torch.uint8))
    written = json.loads(path.with_suffix(".json").read_text())
    assert written["sha256"] == pretrained.sha256_hex(path.read_bytes())
    assert written["file_size"] == path.stat().st_size
    with pytest.raises(SystemExit, match="exists; remove it first"):
        write_weights(loaded, "resnet20", "cifar10", _record(), tmp_path / "out")


def _record() -> dict[str, object]:
    return {
        "test_accuracy_single_view": 0.5,
        "test_accuracy_tta": None,
        "tta_views": None,
        "recipe": "paper",
        "seed": 0,
        "command": "python experiments/cifar10.py --seed 0",
        "machine": "a test",
    }
