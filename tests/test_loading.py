"""
Networks from files: `resnet.load_checkpoint` builds the right network from a trainer checkpoint or a
weight file by the name it records, refuses the wrong network in one line, and `save_pretrained` /
`from_pretrained` round-trip a folder in the Hugging Face hub's layout whose `config.json` chooses
nothing but a registered network and its typed options.
"""

import io
import json
import os
import re
import shutil
import struct
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as serialize_safetensors
from synthetic_main import TINY_STAGES, run_trainer, tiny_args, write_data

import resnet
from experiments import checkpoint as trainer_checkpoint
from experiments import cifar10, export_weights
from experiments import models as trainer_models
from resnet import loading, pretrained

ROOT = Path(__file__).resolve().parent.parent


def saved_bytes(value: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    state = b.state_dict()
    return a.state_dict().keys() == state.keys() and all(
        torch.equal(v, state[k]) for k, v in a.state_dict().items()
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint the trainer wrote: the tiny custom network, one epoch on synthetic data."""
    tmp = tmp_path_factory.mktemp("run")
    results = tmp / "results.json"
    assert run_trainer(tiny_args(write_data(tmp / "cifar"), tmp / "logs", "--results", str(results))) == 0
    return Path(json.loads(results.read_text())["run_dir"]) / "checkpoints" / "last.pt"


def test_load_checkpoint_builds_the_trainers_network(trained: Path) -> None:
    saved = torch.load(trained, weights_only=True)
    model = resnet.load_checkpoint(trained)
    assert isinstance(model, resnet.ResNetClassifier)
    assert [len(stage) for stage in model.trunk.stages] == TINY_STAGES["n_blocks"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in saved["model"].items())
    assert model.state_dict().keys() == saved["model"].keys()


def test_the_library_reads_the_trainers_schema(trained: Path) -> None:
    # The library cannot import the trainer, so it keeps its own copy of what it must agree with.
    assert loading.TRAINER_FORMAT == trainer_checkpoint.FORMAT
    defaults = cifar10.Configs()
    assert loading.TRAINER_DEFAULTS == {key: getattr(defaults, key) for key in loading.TRAINER_DEFAULTS}
    assert cifar10.MODEL_NAMES[0] == "resnet20" == loading.trainer_options({}, "test")[0]
    settings = trainer_checkpoint.saved_settings(trainer_checkpoint.load_checkpoint(trained))
    name, options = loading.trainer_options(settings, "test")
    trainer_settings = {**loading.TRAINER_DEFAULTS, **{k: settings[k] for k in ("n_blocks", "n_channels")}}
    torch.manual_seed(0)
    by_trainer = trainer_models.build_model(name, **trainer_settings)
    torch.manual_seed(0)
    assert same_weights(resnet.create_model(name, **options), by_trainer)


@pytest.mark.parametrize("shortcut", ["preset", "B", "none"])
def test_trainer_options_build_what_the_trainer_builds(shortcut: str) -> None:
    for name in ("resnet20", "plain20", "custom", "resnet9"):
        if name == "plain20" and shortcut not in ("preset", "none"):
            continue
        settings = {
            "model": name,
            "num_classes": 7,
            "shortcut": shortcut,
            "n_blocks": [1, 1],
            "n_channels": [8, 16],
            "bottlenecks": [],
            "zero_init_residual": True,
        }
        _, options = loading.trainer_options(settings, "test")
        torch.manual_seed(0)
        library = resnet.create_model(name, **options)
        torch.manual_seed(0)
        trainer = trainer_models.build_model(
            **{k if k != "model" else "name": v for k, v in settings.items()}
        )
        assert same_weights(library, trainer), (name, shortcut)


def test_the_wrong_network_is_one_line_naming_both(trained: Path) -> None:
    with pytest.raises(resnet.LoadError) as caught:
        resnet.load_checkpoint(trained, resnet.resnet56())
    message = str(caught.value)
    assert "\n" not in message and len(message) < 200 + len(str(trained))
    assert re.search(r"holds custom \(10 classes\), but the network given is resnet56", message)


def test_a_resnet20_checkpoint_refuses_resnet56_and_plain20(tmp_path: Path) -> None:
    weights = tmp_path / "resnet20.safetensors"
    weights.write_bytes(loading.weights_bytes(resnet.resnet20().state_dict(), "resnet20", {}))
    for wrong in ("resnet56", "plain20"):
        with pytest.raises(resnet.LoadError, match=rf"holds resnet20 \(10 classes\), but .* is {wrong}"):
            resnet.load_checkpoint(weights, resnet.create_model(wrong))
    # A network built without a name is compared by its tensors.
    shaped = r"do not fit the network given \(shaped like resnet56\) as built \(216 tensors differ; first: "
    with pytest.raises(resnet.LoadError, match=shaped):
        resnet.load_checkpoint(weights, resnet.model.resnet56())


def test_load_into_a_network_with_another_head(trained: Path) -> None:
    saved = torch.load(trained, weights_only=True)["model"]
    with pytest.warns(
        UserWarning, match=r"have 10 classes: loaded the trunk into custom .* new 3-class head"
    ):
        model = resnet.create_model("custom", **TINY_STAGES, num_classes=3, checkpoint_path=str(trained))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in saved.items() if not k.startswith("head."))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = resnet.create_model("custom", **TINY_STAGES, checkpoint_path=str(trained))
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in saved.items())


def test_an_averaged_run_loads_its_average(trained: Path, tmp_path: Path) -> None:
    saved = torch.load(trained, weights_only=True)
    average = {k: v + 1 if v.is_floating_point() else v for k, v in saved["model"].items()}
    saved["ema"] = {"model": average, "updates": 5}
    path = tmp_path / "ema.pt"
    # Written by the trainer's writer, so that its digest is that of the new contents.
    trainer_checkpoint.save_checkpoint(path, saved)
    model = resnet.load_checkpoint(path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in average.items())


def test_the_shipped_weight_file_builds_itself() -> None:
    path = resnet.ResNet20_Weights.CIFAR10.record.path
    assert same_weights(resnet.load_checkpoint(path), resnet.resnet20(weights="cifar10"))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "neither a safetensors weight file nor a readable trainer checkpoint"),
        (saved_bytes([1, 2]), "is not a checkpoint of experiments/cifar10.py and names no network"),
    ],
)
def test_files_that_are_not_networks_are_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "file.pt"
    path.write_bytes(content)
    with pytest.raises(resnet.LoadError, match=re.escape(message)):
        resnet.load_checkpoint(path)


def test_a_bare_state_dict_is_told_how_to_load(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    torch.save(resnet.resnet20().state_dict(), path)
    with pytest.raises(resnet.LoadError, match=r"names no network; load a bare state dict with"):
        resnet.load_checkpoint(path)


class CallsAFunction:
    """Unpickles by calling a function: harmless here, but any function could be named instead."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (os.getcwd, ())


def test_a_pickle_carrying_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save(
        {"format": loading.TRAINER_FORMAT, "config": {"model": "resnet20"}, "x": CallsAFunction()}, path
    )
    with pytest.raises(resnet.LoadError, match="weights-only load refuses to run"):
        resnet.load_checkpoint(path)


def test_a_checkpoint_cannot_choose_what_is_built(trained: Path, tmp_path: Path) -> None:
    saved = torch.load(trained, weights_only=True)
    cases = [
        ({"model": "os.system"}, "unknown model 'os.system'"),
        ({"n_blocks": [10**9, 1, 1]}, "asks for more blocks than the file holds"),
        ({"n_channels": [8, 16, 4096]}, "its tensors are not those of custom"),
        ({"n_channels": "8,16,32"}, "option n_channels='8,16,32' of custom must be list[int]"),
        ({"num_classes": True}, "option num_classes=True of custom must be int"),
    ]
    for change, message in cases:
        path = tmp_path / "edited.pt"
        # With a digest of the edited contents: the network checks, not the damage check, must refuse it.
        trainer_checkpoint.save_checkpoint(path, {**saved, "config": {**saved["config"], **change}})
        with pytest.raises(resnet.LoadError, match=re.escape(message)):
            resnet.load_checkpoint(path)


# ## Hugging Face folders


def test_save_pretrained_round_trips_offline(tmp_path: Path) -> None:
    model = resnet.resnet32(num_classes=100, shortcut="B")
    folder = resnet.save_pretrained(model, tmp_path / "hub")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["network"] == "resnet32" and config["options"] == {"num_classes": 100, "shortcut": "B"}
    back = resnet.from_pretrained(folder)
    assert same_weights(back, model)
    with pytest.raises(FileExistsError, match="exists; pass overwrite=True"):
        resnet.save_pretrained(model, folder)
    resnet.save_pretrained(resnet.resnet32(num_classes=100, shortcut="B"), folder, overwrite=True)
    assert not same_weights(resnet.from_pretrained(folder), model)


def test_save_pretrained_records_a_replaced_head(tmp_path: Path) -> None:
    model = resnet.resnet20(weights="cifar10")
    model.head = torch.nn.Linear(64, 5)
    back = resnet.from_pretrained(resnet.save_pretrained(model, tmp_path / "five"))
    assert back.head.out_features == 5 and same_weights(back, model)
    with pytest.raises(ValueError, match="was not built by name"):
        resnet.save_pretrained(resnet.model.resnet20(), tmp_path / "nameless")


def test_from_pretrained_takes_a_hub_id_only_through_huggingface_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = resnet.save_pretrained(resnet.resnet20(), tmp_path / "snapshot")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(resnet.LoadError, match="pip install huggingface_hub"):
        resnet.from_pretrained("someone/resnet20-cifar10")
    with pytest.raises(resnet.LoadError, match="is not a folder \\(nor a Hugging Face hub id"):
        resnet.from_pretrained(tmp_path / "misspelt")
    asked = []

    def snapshot_download(repo_id: str, allow_patterns: list[str]) -> str:
        asked.append((repo_id, allow_patterns))
        return str(folder)

    monkeypatch.setitem(
        sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download)
    )
    assert isinstance(resnet.from_pretrained("someone/resnet20-cifar10"), resnet.ResNetClassifier)
    assert asked == [("someone/resnet20-cifar10", ["config.json", "model.safetensors"])]


@pytest.mark.parametrize(
    "config, message",
    [
        ("[]", "must hold exactly the keys"),
        ('{"format": "resnet-annotated/weights", "version": 1, "network": "resnet20"}', "exactly the keys"),
        ({"network": "eval"}, "unknown model 'eval'"),
        ({"network": ["resnet20"]}, "'network' must be a name from resnet.list_models()"),
        ({"options": {"__class__": 1}}, "resnet20 has no option '__class__'"),
        ({"options": {"num_classes": "10"}}, "option num_classes='10' of resnet20 must be int"),
        ({"options": {"shortcut": "D"}}, "option shortcut='D' of resnet20 must be"),
        ({"options": [1]}, "the options of resnet20 must be a JSON object"),
        ({"version": 2}, "version 2; this library reads"),
        ({"options": {"num_classes": 11}}, "its tensors are not those of resnet20"),
    ],
)
def test_a_hostile_config_json_is_one_line(tmp_path: Path, config: object, message: str) -> None:
    folder = resnet.save_pretrained(resnet.resnet20(), tmp_path / "hub")
    good = json.loads((folder / "config.json").read_text())
    text = config if isinstance(config, str) else json.dumps({**good, **config})
    (folder / "config.json").write_text(text)
    with pytest.raises(resnet.LoadError, match=re.escape(message)) as caught:
        resnet.from_pretrained(folder)
    assert "\n" not in str(caught.value)


def test_config_json_and_weights_must_agree(tmp_path: Path) -> None:
    folder = resnet.save_pretrained(resnet.resnet20(), tmp_path / "hub")
    shutil.copy(resnet.save_pretrained(resnet.resnet32(), tmp_path / "other") / "model.safetensors", folder)
    with pytest.raises(resnet.LoadError, match="holds resnet32, but .*config.json says resnet20"):
        resnet.from_pretrained(folder)


# ## Hostile files end in one line
#
# A weight file's header and its options are JSON from outside, and Python's JSON parser recurses once
# per bracket: nesting them deeply must not escape as a `RecursionError`.


def safetensors_file(header: bytes, length: int | None = None) -> bytes:
    """Safetensors bytes: the 8-byte length (the header's own, unless `length`) and `header`."""
    return struct.pack("<Q", len(header) if length is None else length) + header


def weights_with_options(network: str, options: str) -> bytes:
    """resnet20's tensors in a weight file whose metadata names `network` with `options` as written."""
    metadata = {"format": loading.WEIGHTS_FORMAT, "network": network, "options": options}
    return serialize_safetensors(resnet.resnet20().state_dict(), metadata)


DEEP = 200_000


@pytest.mark.parametrize(
    "content, message",
    [
        pytest.param(
            safetensors_file(b"{}", length=2**63),
            f"is not a readable safetensors file (its header claims {2**63} bytes, more than the file "
            "holds: it is truncated or malformed)",
            id="header-length-2**63",
        ),
        pytest.param(
            safetensors_file(b'{"__metadata__":' + b"[" * DEEP + b"]" * DEEP + b"}"),
            "is not a readable safetensors file (its header nests lists or objects too deeply",
            id="deep-metadata",
        ),
        pytest.param(
            safetensors_file(b"[" * DEEP + b"]" * DEEP),
            "is neither a safetensors weight file nor a readable trainer checkpoint",
            id="deep-header",
        ),
        pytest.param(
            weights_with_options("resnet20", "[" * DEEP + "]" * DEEP),
            "its metadata's options nest too deeply to be a network's options",
            id="deep-options",
        ),
    ],
)
def test_a_malformed_weight_file_is_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "weights.safetensors"
    path.write_bytes(content)
    with pytest.raises(resnet.LoadError, match=re.escape(message)) as caught:
        resnet.load_checkpoint(path)
    assert "\n" not in str(caught.value)


def test_options_that_are_not_a_table_are_refused_when_loading_into_a_network(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    path.write_bytes(weights_with_options("resnet56", "[1]"))
    with pytest.raises(resnet.LoadError, match=re.escape("the options of resnet56 must be a JSON object")):
        resnet.load_checkpoint(path, resnet.resnet20())


def test_a_weights_file_linked_to_a_device_is_refused_unread(tmp_path: Path) -> None:
    folder = resnet.save_pretrained(resnet.resnet20(), tmp_path / "hub")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to("/dev/zero")
    with pytest.raises(resnet.LoadError, match="model.safetensors is a device, not a regular file") as caught:
        resnet.from_pretrained(folder)
    assert "\n" not in str(caught.value)


def test_a_shipped_weight_file_is_read_no_further_than_its_record_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "weights"
    shutil.copytree(pretrained.WEIGHTS_DIR, copy)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", copy)
    path = copy / "resnet20_cifar10.safetensors"
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"\0")
    longer = f"holds {size + 1:,} bytes, over the {size:,} allowed for the weight file its record describes"
    with pytest.raises(resnet.WeightsError, match=longer):
        resnet.resnet20(weights="cifar10")
    path.unlink()
    path.symlink_to("/dev/zero")
    with pytest.raises(resnet.WeightsError, match="is a device, not a regular file"):
        resnet.resnet20(weights="cifar10")


# ## The README


def readme_block(marker: str) -> str:
    """The README's python block that contains `marker`."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    (block,) = [b for b in blocks if marker in b]
    return block


@pytest.fixture(scope="module")
def resnet20_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run folder of the trainer's resnet20 (the tiny run's data and length)."""
    tmp = tmp_path_factory.mktemp("resnet20")
    results = tmp / "results.json"
    argv = tiny_args(write_data(tmp / "cifar"), tmp / "logs", "--results", str(results))
    argv = [a for a in argv if not a.startswith(("model=", "n_blocks=", "n_channels="))]
    assert run_trainer([*argv, "--model", "resnet20"]) == 0
    return Path(json.loads(results.read_text())["run_dir"])


def test_the_readme_loads_a_trainer_checkpoint_and_classifies(
    resnet20_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = resnet20_run
    (tmp_path / "work" / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "checkpoints" / "last.pt", tmp_path / "work" / "checkpoints" / "last.pt")
    monkeypatch.chdir(tmp_path / "work")
    namespace: dict = {}
    exec(readme_block('resnet.load_checkpoint("checkpoints/last.pt")'), namespace)
    assert namespace["prediction"] in resnet.CIFAR10_CLASSES
    saved = torch.load("checkpoints/last.pt", weights_only=True)
    assert all(torch.equal(v, namespace["model"].state_dict()[k]) for k, v in saved["model"].items())
    assert sum(p.numel() for p in namespace["model"].parameters()) == 269_722


# ## Exporting a run into resnet/weights/


def test_an_exported_run_loads_by_name_with_no_code_change(
    resnet20_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "weights"
    path = export_weights.export(
        resnet20_run, "cifar10", "python experiments/cifar10.py --seed 0", "a test", out
    )
    assert sorted(p.name for p in out.iterdir()) == ["resnet20_cifar10.json", "resnet20_cifar10.safetensors"]
    results = json.loads((resnet20_run / "results.json").read_text())
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", out)
    meta = resnet.ResNet20_Weights.CIFAR10.meta
    # A run without test-time augmentation measured one view: that is its single-view accuracy.
    assert meta["test_accuracy_single_view"] == results["test_accuracy"] and meta["tta_views"] is None
    assert (meta["recipe"], meta["seed"], meta["machine"]) == (results["recipe"], results["seed"], "a test")
    saved = torch.load(resnet20_run / "checkpoints" / "last.pt", weights_only=True)["model"]
    for model in (resnet.resnet20(weights="cifar10"), resnet.load_checkpoint(path)):
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in saved.items())


def run_with_results(resnet20_run: Path, tmp_path: Path, **changes: object) -> tuple[Path, dict]:
    """A copy of the trained run with `changes` in its results.json (`data` merged), and the old results."""
    run = tmp_path / "run"
    shutil.copytree(resnet20_run, run)
    results = json.loads((run / "results.json").read_text())
    edited = {**results, **changes, "data": {**results["data"], **changes.get("data", {})}}
    (run / "results.json").write_text(json.dumps({k: v for k, v in edited.items() if v is not DROP}))
    return run, results


DROP = object()


def test_export_takes_both_accuracies_of_a_tta_run_single_view_first(
    resnet20_run: Path, tmp_path: Path
) -> None:
    run, results = run_with_results(
        resnet20_run, tmp_path, data={"flip_tta": True, "shift_tta": 1}, test_accuracy_tta=0.75
    )
    record = json.loads(
        export_weights.export(run, "cifar10", "cmd", "a test", tmp_path / "out")
        .with_suffix(".json")
        .read_text()
    )
    assert (record["test_accuracy_single_view"], record["test_accuracy_tta"]) == (
        results["test_accuracy"],
        0.75,
    )


def test_export_asks_for_the_single_view_accuracy_of_an_older_tta_run(
    resnet20_run: Path, tmp_path: Path
) -> None:
    # Before single view came first, results.json had one accuracy: the test-time average.
    run, results = run_with_results(
        resnet20_run, tmp_path, data={"flip_tta": True, "shift_tta": 1}, test_accuracy_tta=DROP
    )
    with pytest.raises(
        SystemExit, match=r"has only the TTA accuracy \(flip \+ 1-pixel shift, 6 views\); .*--single-view"
    ):
        export_weights.export(run, "cifar10", "cmd", "a test", tmp_path / "out")
    path = export_weights.export(run, "cifar10", "cmd", "a test", tmp_path / "out", single_view_accuracy=0.5)
    record = json.loads(path.with_suffix(".json").read_text())
    assert (
        record["test_accuracy_single_view"] == 0.5 and record["test_accuracy_tta"] == results["test_accuracy"]
    )
    assert record["tta_views"] == "flip + 1-pixel shift, 6 views"


def test_export_refuses_a_validation_run_which_has_no_test_accuracy(
    resnet20_run: Path, tmp_path: Path
) -> None:
    run, _ = run_with_results(
        resnet20_run, tmp_path, data={"valid_split": 5000}, test_accuracy=None, test_loss=None
    )
    with pytest.raises(SystemExit, match=r"held out 5000 training images .*\(without --valid-split\)"):
        export_weights.export(run, "cifar10", "cmd", "a test", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_export_command_passes_every_flag_to_the_record(
    resnet20_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    flags = ["--command", "cmd", "--machine", "a test", "--notes", "n", "--out-dir", str(out)]
    assert export_weights.main([str(resnet20_run), *flags]) == 0
    record = json.loads((out / "resnet20_cifar10.json").read_text())
    assert (record["dataset"], record["command"], record["machine"], record["notes"]) == (
        "cifar10",
        "cmd",
        "a test",
        "n",
    )
    assert f"wrote {out / 'resnet20_cifar10.safetensors'}" in capsys.readouterr().out
    # A folder without results.json is not a finished run: a usage error, and nothing written.
    with pytest.raises(SystemExit) as exit_info:
        export_weights.main([str(tmp_path / "out"), *flags[:4], "--out-dir", str(tmp_path / "other")])
    assert exit_info.value.code == 2 and "has no results.json" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
    # A dataset the package does not know is named, not a KeyError.
    with pytest.raises(
        SystemExit, match="unknown dataset 'cifar100'; resnet.pretrained.DATASETS has cifar10"
    ):
        export_weights.export(resnet20_run, "cifar100", "cmd", "a test", tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_export_refuses_a_network_its_builder_does_not_make(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="only a named network as its builder makes it"):
        export_weights.export(trained.parent.parent, "cifar10", "cmd", "a test", tmp_path / "out")
