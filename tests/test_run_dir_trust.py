"""
What a run folder or a checkpoint from elsewhere cannot make the trainer do.

A `--run-dir` may be a folder the user already had, or one unpacked from someone else's archive; a
checkpoint's settings are a file's content. Neither may cost the user a file: a folder that is not a
run's is refused before anything is written, the out-of-memory clean-up removes only a folder this
command made, and a symbolic link inside a run folder is refused rather than written through. Nor may
a checkpoint's settings choose how much memory gets allocated, turn the data's md5 check off, or pick
a folder to download into.
"""

import os
from pathlib import Path

import pytest
from synthetic_main import TINY_MODEL, run_trainer, trained_checkpoint, write_data

from experiments import checkpoint as ckpt
from experiments import cifar10, cli, launch, run_folder
from experiments.distributed import World
from experiments.errors import UsageError
from experiments.recipes import RECIPES
from experiments.trainer import memory_errors
from resnet.files import atomic_write


def run_dir_args(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """A tiny one-epoch CPU run in the fixed folder `run_dir`."""
    return [
        "--data-dir", str(data_dir), "--run-dir", str(run_dir), "--device", "cpu", "--epochs", "1",
        "--batch-size", "64", "--threads", "1", *TINY_MODEL, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("trust") / "data")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_checkpoint(tmp_path_factory.mktemp("trained"))


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ## A folder of the user's is not a run folder


@pytest.mark.parametrize("common_name", ["metrics.jsonl", "checkpoints", "run.lock"])
def test_a_common_file_name_does_not_make_a_folder_a_run(
    common_name: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # Until 2026-12-07 any one of these names made a folder a run's, and an out-of-memory error then
    # removed the whole folder, the owner's files with it.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("three years of work")
    if common_name == "checkpoints":
        (mine / common_name).mkdir()
        (mine / common_name / "epoch1.h5").write_bytes(b"keras weights")
    else:
        (mine / common_name).write_text("someone else's")
    before = listing(mine)
    assert run_trainer(run_dir_args(data_dir, mine)) == 2
    assert f"--run-dir {mine} holds other files and no run" in one_error_line(capsys)
    assert listing(mine) == before


def test_out_of_memory_removes_only_a_run_folder_this_command_made(tmp_path: Path) -> None:
    had = tmp_path / "had"
    had.mkdir()
    (had / "run.yaml").write_text("an earlier attempt's")
    with pytest.raises(UsageError, match="out of memory with --batch-size 4096"):
        with memory_errors(4096, had, made_here=False):
            raise MemoryError()
    assert (had / "run.yaml").read_text() == "an earlier attempt's"

    made = tmp_path / "made"
    made.mkdir()
    (made / "run.yaml").write_text("this attempt's")
    with pytest.raises(UsageError, match="out of memory with --batch-size 4096"):
        with memory_errors(4096, made, made_here=True):
            raise MemoryError()
    assert not made.exists()


# ## Symbolic links inside a run folder


@pytest.mark.parametrize("linked", ["metrics.jsonl", "run.lock", "checkpoints/last.pt", "configs.yaml"])
def test_a_link_to_a_file_inside_a_run_folder_is_refused_and_its_target_untouched(
    linked: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    assert run_trainer(run_dir_args(data_dir, run_dir, "--stop-after-steps", "2")) == 0
    capsys.readouterr()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    entry = run_dir / linked
    entry.unlink(missing_ok=True)
    entry.symlink_to(victim / "precious.txt")
    before, kept = listing(victim), listing(run_dir)
    assert run_trainer(run_dir_args(data_dir, run_dir)) == 2
    line = one_error_line(capsys)
    assert f"--run-dir {run_dir} holds a symbolic link ({entry})" in line and "remove the link" in line
    assert listing(victim) == before and listing(run_dir) == kept


def test_a_checkpoints_folder_linked_to_a_scratch_disk_is_where_the_run_goes_on(
    data_dir: Path, tmp_path: Path
) -> None:
    # The common cluster layout: the run folder on the home disk, its checkpoints on scratch.
    run_dir, scratch = tmp_path / "run", tmp_path / "scratch"
    assert run_trainer(run_dir_args(data_dir, run_dir, "--stop-after-steps", "2")) == 0
    (run_dir / ckpt.CHECKPOINT_DIR).rename(scratch)
    (run_dir / ckpt.CHECKPOINT_DIR).symlink_to(scratch, target_is_directory=True)
    stopped = ckpt.load_checkpoint(scratch / ckpt.LAST)["position"]["step"]
    assert run_trainer(run_dir_args(data_dir, run_dir)) == 0
    assert ckpt.load_checkpoint(scratch / ckpt.LAST)["position"]["step"] > stopped


def test_an_atomic_write_never_writes_through_a_link_planted_under_its_temporary_name(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    target = tmp_path / "results.json"
    (tmp_path / f".results.json.tmp-{os.getpid()}").symlink_to(victim)
    atomic_write(target, lambda f: f.write(b"new"))
    assert victim.read_text() == "keep me" and target.read_bytes() == b"new"


# ## A checkpoint's settings


def edited(trained: Path, folder: Path, change: dict) -> Path:
    """The trained checkpoint with `change` laid over its settings, written and signed as the trainer does."""
    state = ckpt.load_checkpoint(trained)
    state["config"] = {**state["config"], **change}
    path = folder / "edited" / "last.pt"
    path.parent.mkdir(parents=True)
    ckpt.save_checkpoint(path, state)
    return path


@pytest.mark.parametrize("how", ["--resume", "--eval"])
@pytest.mark.parametrize(
    "change", [{"n_channels": [100_000] * 3}, {"num_classes": 1_000_000_000}], ids=["wide", "classes"]
)
def test_settings_asking_for_a_huge_network_are_refused_before_it_is_built(
    how: str, change: dict, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # Built for real, either network would ask for hundreds of GB; the check builds on the meta device.
    path = edited(trained, tmp_path, change)
    assert run_trainer(["--logs-dir", str(tmp_path / "logs"), how, str(path)]) == 1
    line = one_error_line(capsys)
    assert f"{path} holds weights that do not fit the network its settings describe" in line
    assert not (tmp_path / "logs" / "cifar10").exists()


def test_a_checkpoint_never_turns_the_md5_check_off_nor_downloads(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    nowhere = tmp_path / "chosen" / "by" / "the file"
    path = edited(trained, tmp_path, {"data_dir": str(nowhere), "download": True, "verify_checksums": False})
    saved, settings = launch.checked_settings(cifar10.Configs, cifar10.NESTED_CONFIGS, path)
    assert settings["data_dir"] == str(nowhere) and not settings.keys() & {"download", "verify_checksums"}
    # The file's folder is only read; a folder the user types is theirs, downloaded into as on a new run.
    assert launch.under_typed(settings, {})["download"] is False
    assert "download" not in launch.under_typed(settings, {"data_dir": "mine"})
    assert launch.under_typed(settings, {"download": True})["download"] is True
    # The same through the command line, without `synthetic_main`'s verify_checksums=False: the data
    # folder is only looked in, never created or downloaded into.
    assert cifar10.main(["--eval", str(path), "--device", "cpu"]) == 1
    assert str(nowhere) in one_error_line(capsys)
    assert not (tmp_path / "chosen").exists()


def test_the_command_that_continues_a_run_says_again_how_its_data_is_checked(tmp_path: Path) -> None:
    argv = ["--run-dir", str(tmp_path / "run"), "--data-dir", "DATA", "verify_checksums=false"]
    request = cli.parse(argv, cifar10.Configs, nested=cifar10.NESTED_CONFIGS, recipes=RECIPES, world=World())
    command = launch.continue_command(Path("experiments/cifar10.py"), tmp_path / "run", request)
    assert "--data-dir DATA verify_checksums=false" in command


def test_an_early_attempts_leftovers_still_make_a_run_folder(tmp_path: Path) -> None:
    # What a command killed before labml started leaves: the next one must go on there, not refuse.
    folder = tmp_path / "run"
    (folder / "pids").mkdir(parents=True)
    (folder / "tensorboard").mkdir()
    (folder / run_folder.LOCK).write_text("pid 1 on node")
    assert run_folder.is_run_folder(folder)


def test_settings_asking_for_more_blocks_than_the_weights_hold_are_refused_at_once(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # Even on the meta device, building ten million blocks would take hours: counted before any build.
    path = edited(trained, tmp_path, {"n_blocks": [10_000_000, 1, 1]})
    assert run_trainer(["--logs-dir", str(tmp_path / "logs"), "--eval", str(path)]) == 1
    assert "n_blocks asks for more blocks than the" in one_error_line(capsys)
