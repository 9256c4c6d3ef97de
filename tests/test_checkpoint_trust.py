"""
Checkpoints that know they are damaged, and whose saved settings are checked like a command line's.

A disk can flip bytes inside a tensor and leave a file that still parses: the weights would load,
wrong, without a word. Every checkpoint records a digest of what it holds, and `--resume`, `--eval`
and `resnet.load_checkpoint` each refuse one whose tensors no longer match it, in one line naming the
file and what to use instead. A checkpoint's settings are a file's content too: edited ones (a batch
of 0, an unknown network, text for a number, settings only the trainer sets) end in one line with exit
status 1, the file's fault, as the same values typed on the command line would end with status 2.
"""

import io
import os
import shutil
import struct
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from synthetic_main import TINY_STAGES, run_trainer, tiny_args, trained_checkpoint, write_data

import resnet
from experiments import checkpoint as ckpt
from experiments import cifar10, cli
from experiments.recipes import RECIPES
from resnet import loading

# The tensor whose stored bytes the tests damage: a convolution's weights, 16*8*3*3 floats.
DAMAGED_TENSOR = "trunk.stages.1.0.conv1.weight"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint from a one-epoch tiny run, in its run folder."""
    return trained_checkpoint(tmp_path_factory.mktemp("trained"))


def flip_bytes_in_tensor(path: Path, name: str, count: int = 64) -> None:
    """Invert `count` bytes in the middle of tensor `name`'s storage inside the file, as a bad disk might."""
    weights = torch.load(path, weights_only=True)["model"][name]
    # The storage as saved (a channels_last run keeps its layout in the file).
    stored = bytes(weights.untyped_storage())
    raw = bytearray(path.read_bytes())
    start = raw.find(stored)
    assert start >= 0 and raw.find(stored, start + 1) < 0, "the tensor's bytes must be found once"
    middle = start + (len(stored) - count) // 2
    raw[middle : middle + count] = bytes(b ^ 0xFF for b in raw[middle : middle + count])
    path.write_bytes(bytes(raw))


@pytest.fixture
def damaged(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained checkpoint with 64 bytes of one weight tensor inverted (alone in its folder)."""
    path = tmp_path / "checkpoints" / "last.pt"
    path.parent.mkdir()
    shutil.copy(trained, path)
    flip_bytes_in_tensor(path, DAMAGED_TENSOR)
    return path


def both_refuse(path: Path, message: str) -> None:
    """The trainer's loader and the library's each refuse `path` with an error matching `message`."""
    with pytest.raises(ckpt.CheckpointError, match=message):
        ckpt.load_checkpoint(path)
    with pytest.raises(resnet.LoadError, match=message):
        resnet.load_checkpoint(path)


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_the_damage_is_inside_a_tensor_that_still_loads(trained: Path, damaged: Path) -> None:
    # Without the digest nothing would notice: the file parses, and only the one tensor differs.
    good = torch.load(trained, weights_only=True)["model"]
    bad = torch.load(damaged, weights_only=True)["model"]
    differ = [name for name in good if not torch.equal(good[name], bad[name])]
    assert differ == [DAMAGED_TENSOR]


def test_resume_refuses_a_damaged_checkpoint_in_one_line(
    damaged: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    logs = tmp_path / "logs"
    assert run_trainer(["--logs-dir", str(logs), "--resume", str(damaged), "--epochs", "2"]) == 1
    line = one_error_line(capsys)
    assert f"{damaged} is damaged" in line and "digest" in line
    assert "no other intact checkpoint" in line and "retrain" in line
    assert not (logs / "cifar10").exists()


def test_eval_refuses_a_damaged_checkpoint_in_one_line(damaged: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_trainer(["--eval", str(damaged)]) == 1
    line = one_error_line(capsys)
    assert f"{damaged} is damaged" in line and "digest" in line


def test_the_library_refuses_a_damaged_checkpoint_in_one_line(damaged: Path) -> None:
    with pytest.raises(resnet.LoadError) as refused:
        resnet.load_checkpoint(damaged)
    message = str(refused.value)
    assert "\n" not in message and f"{damaged} is damaged" in message and "digest" in message
    with pytest.raises(resnet.LoadError, match="is damaged"):
        resnet.load_checkpoint(damaged, resnet.create_model("custom", **TINY_STAGES))


def test_the_refusal_names_an_intact_older_checkpoint_beside_it(
    trained: Path, damaged: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = damaged.parent
    older = folder / "epoch1.pt"
    shutil.copy(trained, older)
    broken_too = folder / "epoch0.pt"
    shutil.copy(damaged, broken_too)
    assert run_trainer(["--eval", str(damaged)]) == 1
    assert f"use {older}, the newest intact checkpoint beside it" in one_error_line(capsys)
    with pytest.raises(resnet.LoadError, match=f"use {older}, the newest intact"):
        resnet.load_checkpoint(damaged)
    # The older intact file does load, and the damaged one is not named as an alternative to another.
    assert ckpt.load_checkpoint(older)["version"] == ckpt.VERSION


def test_every_checkpoint_records_the_digest_of_what_it_holds(trained: Path) -> None:
    state = torch.load(trained, weights_only=True)
    assert state["version"] == ckpt.VERSION == 3 and loading.TRAINER_DIGEST_SINCE <= ckpt.VERSION
    assert state[loading.TRAINER_DIGEST] == loading.checkpoint_digest(state)
    # Each kind of entry is covered: a tensor, a number, a saved setting.
    for edit in (
        lambda s: s["optimizer"]["state"][0]["momentum_buffer"][0, 0, 0, 0].add_(1),
        lambda s: s["position"].update(step=s["position"]["step"] + 1),
        lambda s: s["config"].update(batch_size=32),
    ):
        copy = torch.load(trained, weights_only=True)
        edit(copy)
        assert loading.checkpoint_damage(copy) is not None


def test_the_digest_does_not_depend_on_device_layout_or_dict_order() -> None:
    weights = torch.randn(4, 3, 3, 3)
    state = {"format": ckpt.FORMAT, "version": 3, "model": {"a": weights, "b": torch.ones(2)}}
    reordered = {"model": {"b": torch.ones(2), "a": weights.to(memory_format=torch.channels_last)}}
    reordered.update(format=ckpt.FORMAT, version=3)
    assert loading.checkpoint_digest(state) == loading.checkpoint_digest(reordered)
    # Another dtype or shape with the same bytes is another checkpoint.
    as_ints = {**state, "model": {"a": weights.view(torch.int32), "b": torch.ones(2)}}
    reshaped = {**state, "model": {"a": weights.reshape(4, 27), "b": torch.ones(2)}}
    assert len({loading.checkpoint_digest(s) for s in (state, as_ints, reshaped)}) == 3


def test_a_checkpoint_of_this_version_without_its_digest_is_refused(trained: Path, tmp_path: Path) -> None:
    state = torch.load(trained, weights_only=True)
    del state[loading.TRAINER_DIGEST]
    path = tmp_path / "stripped.pt"
    torch.save(state, path)
    with pytest.raises(ckpt.CheckpointError, match="has no 'digest' entry"):
        ckpt.load_checkpoint(path)
    with pytest.raises(resnet.LoadError, match="has no 'digest' entry"):
        resnet.load_checkpoint(path)


def test_a_version_2_checkpoint_without_digest_still_loads_unverified(trained: Path, tmp_path: Path) -> None:
    state = torch.load(trained, weights_only=True)
    del state[loading.TRAINER_DIGEST]
    state["version"] = 2
    path = tmp_path / "v2.pt"
    torch.save(state, path)
    assert ckpt.load_checkpoint(path)["version"] == 2
    assert isinstance(resnet.load_checkpoint(path), torch.nn.Module)


# ## Saved settings pass the command line's checks
#
# Each edit is written with the trainer's own writer, so its digest matches: these files are not damaged,
# they hold settings that the command line would refuse.
EDITED_SETTINGS = [
    pytest.param({"batch_size": 0}, "batch_size=0: must be at least 1", id="batch_size=0"),
    pytest.param({"model": "resnet999"}, "model='resnet999': expected one of: ", id="unknown-model"),
    pytest.param({"epochs": "abc"}, "epochs='abc': expected a whole number", id="epochs=abc"),
    pytest.param({"train_loader": "x"}, "unknown configuration 'train_loader'", id="internal-key"),
    pytest.param({"world": 3}, "unknown configuration 'world'", id="internal-world"),
    pytest.param(
        {"optimizer.learning_rate": float("nan")}, "optimizer.learning_rate=nan: expected", id="nan"
    ),
    pytest.param({"recipe": "fastest"}, "unknown recipe 'fastest'", id="unknown-recipe"),
    pytest.param({"model": "plain20", "shortcut": "B"}, "plain20 is a plain network", id="combination"),
]


def edited(trained: Path, folder: Path, change: dict) -> Path:
    state = ckpt.load_checkpoint(trained)
    state["config"] = {**state["config"], **change}
    path = folder / "edited" / "last.pt"
    path.parent.mkdir()
    ckpt.save_checkpoint(path, state)
    assert loading.checkpoint_damage(torch.load(path, weights_only=True)) is None
    return path


@pytest.mark.parametrize("how", ["--resume", "--eval"])
@pytest.mark.parametrize("change, message", EDITED_SETTINGS)
def test_edited_saved_settings_end_in_one_line_with_status_1(
    how: str, change: dict, message: str, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = edited(trained, tmp_path, change)
    logs = tmp_path / "logs"
    assert run_trainer(["--logs-dir", str(logs), how, str(path)]) == 1
    line = one_error_line(capsys)
    assert f"{path} holds settings the command line refuses" in line and message in line
    assert not (logs / "cifar10").exists()


@pytest.mark.parametrize("how", ["--resume", "--eval"])
def test_settings_that_are_not_a_table_end_in_one_line(
    how: str, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    state = ckpt.load_checkpoint(trained)
    state["config"] = ["model", "custom"]
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, state)
    assert run_trainer(["--logs-dir", str(tmp_path / "logs"), how, str(path)]) == 1
    assert "not a table of settings" in one_error_line(capsys)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipes_saved_settings_pass_the_check(recipe: str) -> None:
    # What a checkpoint saves is the checked command line's settings, less the machine's (`device.*`).
    argv = ["--recipe", recipe, "--device", "cpu"]
    request = cli.parse(argv, cifar10.Configs, nested=cifar10.NESTED_CONFIGS, recipes=RECIPES)
    saved = ckpt.run_config(request.settings)
    assert cli.check_saved(saved, cifar10.Configs, cifar10.NESTED_CONFIGS, RECIPES) == saved


def test_an_averaged_runs_checkpoint_verifies_and_its_damaged_average_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # The weight average is a second copy of the network, the one --eval and the library load.
    logs = tmp_path / "logs"
    assert run_trainer(tiny_args(write_data(tmp_path / "data"), logs, "ema_decay=0.5")) == 0
    (run_dir,) = (logs / "cifar10").iterdir()
    path = run_dir / "checkpoints" / "last.pt"
    state = ckpt.load_checkpoint(path)
    assert state["ema"] is not None and loading.checkpoint_damage(state) is None
    average = state["ema"]["model"]
    name = next(k for k in average if k.endswith(DAMAGED_TENSOR))
    stored = bytes(average[name].untyped_storage())
    raw = bytearray(path.read_bytes())
    assert raw.count(stored) == 1
    start = raw.find(stored) + len(stored) // 2
    raw[start : start + 64] = bytes(b ^ 0xFF for b in raw[start : start + 64])
    path.write_bytes(bytes(raw))
    assert run_trainer(["--eval", str(path)]) == 1
    assert f"{path} is damaged" in capsys.readouterr().err
    with pytest.raises(resnet.LoadError, match="is damaged"):
        resnet.load_checkpoint(path)


# torch notes that it checks a sparse tensor it loads weights-only; that check is welcome here.
@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants:UserWarning")
def test_a_value_no_checkpoint_holds_is_refused_by_the_digest_check(trained: Path, tmp_path: Path) -> None:
    # A sparse tensor loads weights-only, but no checkpoint of the trainer holds one: refused, not a crash.
    state = torch.load(trained, weights_only=True)
    state["model"] = {**state["model"], "extra": torch.eye(3).to_sparse()}
    path = tmp_path / "sparse.pt"
    torch.save(state, path)
    message = "holds something no checkpoint of this trainer holds"
    both_refuse(path, message)


# ## What a checkpoint file may be before it is parsed
#
# `torch.load` trusts the zip archive it is given: a compressed entry is inflated before anything is
# checked, and a path is read whatever it names. Both loaders refuse such files in one line first.


def deflated(path: Path, out: Path) -> Path:
    """`path`'s archive written again with every entry compressed, as `torch.save` never writes one."""
    with zipfile.ZipFile(path) as original, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as copy:
        for name in original.namelist():
            copy.writestr(name, original.read(name))
    return out


def test_torch_save_stores_every_entry_uncompressed(trained: Path) -> None:
    # What the archive check relies on: the trainer's files, and torch.save's own, compress nothing.
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(1000), "names": ["a", "b"], "n": 3}, buffer)
    for archive in (zipfile.ZipFile(trained), zipfile.ZipFile(buffer)):
        assert {entry.compress_type for entry in archive.infolist()} == {zipfile.ZIP_STORED}


@pytest.mark.parametrize(
    "value", [{}, [], torch.zeros(0), {"w": torch.zeros(3)}], ids=["dict", "list", "empty", "small"]
)
def test_the_archive_check_accepts_what_torch_save_writes_however_small(value: object) -> None:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    assert loading.load_weights_only(buffer.getvalue()) is not None


def with_extra(trained: Path, path: Path, extra: object) -> Path:
    """
    The trained checkpoint with `extra` added under a new key. Its digest no longer matches, but the
    refusal must come first: computing the digest is what would read the value whole.
    """
    state = torch.load(trained, weights_only=True)
    state["extra"] = extra
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "extra, message",
    [
        # One stored float standing for 2^40 of them: a copy (the digest makes one) would take 4 TiB.
        (torch.zeros(1).expand(2**20, 2**20), "with more elements than its storage"),
        # Twenty references to one list, nested five deep: 3.2M visits from a few kilobytes more (nine
        # deep would keep the digest busy for hours; five is enough to pass the file's size and fail fast).
        ("nested", "reaches its values more often than it has bytes"),
    ],
    ids=["zero-stride", "shared-lists"],
)
def test_a_file_that_stands_for_more_than_it_holds_is_refused_before_it_is_read_whole(
    extra: object, message: str, trained: Path, tmp_path: Path
) -> None:
    if extra == "nested":
        nested: list = [0]
        for _ in range(5):
            nested = [nested] * 20
        extra = nested
    path = with_extra(trained, tmp_path / "last.pt", extra)
    both_refuse(path, message)


def test_a_compressed_archive_is_refused_before_torch_inflates_it(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = deflated(trained, tmp_path / "last.pt")
    assert path.stat().st_size < trained.stat().st_size  # it would expand when inflated

    def inflates(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load was given a compressed archive")

    monkeypatch.setattr(torch, "load", inflates)
    message = "it has compressed entries, which torch.save never writes"
    both_refuse(path, message)


def test_a_compressed_checkpoint_beside_a_damaged_one_is_not_named_as_intact(
    trained: Path, damaged: Path, capsys: pytest.CaptureFixture
) -> None:
    deflated(trained, damaged.parent / "epoch1.pt")
    with pytest.raises(ckpt.CheckpointError, match="no other intact checkpoint"):
        ckpt.load_checkpoint(damaged)
    with pytest.raises(resnet.LoadError, match="no other intact checkpoint"):
        resnet.load_checkpoint(damaged)


def test_an_archive_whose_directory_is_not_where_its_end_says_is_refused(
    trained: Path, tmp_path: Path
) -> None:
    # Bytes slipped in before the directory: Python's zipfile still finds it (where it lies), PyTorch's
    # reader looks where the end records say. Checking one directory while torch reads another is useless.
    directory = zipfile.ZipFile(trained).start_dir
    raw = bytearray(trained.read_bytes())
    raw[directory:directory] = bytes(64)
    shifted = tmp_path / "shifted.pt"
    shifted.write_bytes(raw)
    # The same, with the zip64 locator (the 20 bytes before the last 22) pointing at its moved record.
    locator = len(raw) - 42
    (record,) = struct.unpack_from("<Q", raw, locator + 8)
    struct.pack_into("<Q", raw, locator + 8, record + 64)
    relocated = tmp_path / "relocated.pt"
    relocated.write_bytes(raw)
    assert zipfile.ZipFile(relocated).namelist() == zipfile.ZipFile(trained).namelist()
    prefixed = tmp_path / "prefixed.pt"
    prefixed.write_bytes(b"#!/bin/sh\n" + trained.read_bytes())
    for path, message in (
        (shifted, "its zip64 end record is not where its locator says"),
        (relocated, "its zip directory is not where the archive's end says"),
        (prefixed, "it is not the zip archive torch.save writes"),
    ):
        both_refuse(path, message)


def finishes(load: Callable[[Path], object], path: Path) -> BaseException | None:
    """What `load(path)` raised, waiting at most 20 s: a loader that opens a FIFO blocks for ever."""
    raised: list[BaseException | None] = []

    def run() -> None:
        try:
            load(path)
            raised.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            raised.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert raised, "the load never returned"
    return raised[0]


def test_a_path_that_is_not_a_regular_file_is_refused_unread(tmp_path: Path) -> None:
    zero = tmp_path / "zero.pt"
    zero.symlink_to("/dev/zero")
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    for path in (zero, fifo):
        for load, error in (
            (ckpt.load_checkpoint, ckpt.CheckpointError),
            (resnet.load_checkpoint, resnet.LoadError),
        ):
            refused = finishes(load, path)
            assert isinstance(refused, error) and "\n" not in str(refused), refused
            kind = "device" if path == zero else "named pipe"
            assert f"{path} is a {kind}, not a regular file" in str(refused)


def test_a_file_larger_than_any_checkpoint_is_refused_unread(tmp_path: Path) -> None:
    huge = tmp_path / "huge.pt"
    with open(huge, "wb") as f:
        f.truncate(loading.MAX_FILE_BYTES + 1)  # sparse: it takes no disk space
    with pytest.raises(ckpt.CheckpointError, match=f"over the {loading.MAX_FILE_BYTES:,} allowed for a"):
        ckpt.load_checkpoint(huge)
    with pytest.raises(resnet.LoadError, match=f"over the {loading.MAX_FILE_BYTES:,} allowed for a"):
        resnet.load_checkpoint(huge)


# ## Entries of the wrong shape
#
# Each edit is written with the trainer's own writer, so its digest matches: nothing is damaged, but a
# resume or `--eval` would crash part way through on what the entry holds.
MALFORMED = [
    pytest.param("model", "x", id="model-text"),
    pytest.param("model", {"w": 1}, id="model-number"),
    pytest.param("signature", "x", id="signature-text"),
    pytest.param("signature", {"model": "custom", "num_classes": 10, "shapes": [1]}, id="shapes-list"),
    pytest.param("position", {}, id="position-empty"),
    pytest.param("position", {"step": "3", "epoch": 0, "batch": 0}, id="position-text"),
    pytest.param("position", {"step": -1, "epoch": 0, "batch": 0}, id="position-negative"),
    pytest.param("ema", [1], id="ema-list"),
    pytest.param("ema", {"model": "x", "updates": 1}, id="ema-model-text"),
    pytest.param("lookahead", {"slow": [1]}, id="lookahead-list"),
    pytest.param("history", "x", id="history-text"),
    pytest.param("history", [{"epoch": 1}], id="history-without-time"),
    pytest.param("epoch_sums", "x", id="epoch-sums-text"),
    pytest.param("rng", [1], id="rng-list"),
    pytest.param("rng", {"torch": torch.zeros(3), "cuda": "x"}, id="rng-floats"),
]


@pytest.mark.parametrize("entry, value", MALFORMED)
def test_an_entry_of_the_wrong_shape_is_refused_in_one_line(
    entry: str, value: object, trained: Path, tmp_path: Path
) -> None:
    state = ckpt.load_checkpoint(trained)
    state[entry] = value
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, state)
    with pytest.raises(ckpt.CheckpointError) as refused:
        ckpt.load_checkpoint(path)
    message = str(refused.value)
    assert "\n" not in message and f"{path} is malformed: its '{entry}' entry is not" in message


@pytest.mark.parametrize("how, entry, value", [("--resume", "history", "x"), ("--eval", "ema", [1])])
def test_resume_and_eval_refuse_a_malformed_entry_before_making_a_run_folder(
    how: str, entry: str, value: object, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    state = ckpt.load_checkpoint(trained)
    state[entry] = value
    path = tmp_path / "edited" / "last.pt"
    path.parent.mkdir()
    ckpt.save_checkpoint(path, state)
    logs = tmp_path / "logs"
    assert run_trainer(["--logs-dir", str(logs), how, str(path)]) == 1
    assert f"its '{entry}' entry is not" in one_error_line(capsys)
    assert not (logs / "cifar10").exists()


def test_a_momentum_buffer_of_another_shape_is_refused_before_the_run_starts(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # PyTorch loads it without a word; the first step would then fail with a traceback in a new folder.
    state = ckpt.load_checkpoint(trained)
    buffer = state["optimizer"]["state"][0]["momentum_buffer"]
    state["optimizer"]["state"][0]["momentum_buffer"] = torch.zeros(buffer.numel() + 1)
    path = tmp_path / "edited" / "last.pt"
    path.parent.mkdir()
    ckpt.save_checkpoint(path, state)
    logs = tmp_path / "logs"
    assert run_trainer(["--logs-dir", str(logs), "--resume", str(path)]) == 1
    line = one_error_line(capsys)
    assert f"{path} does not fit this run" in line and "momentum_buffer of shape" in line
    assert not (logs / "cifar10").exists()
