"""
The Python API, `experiments.cifar10.train(**settings)`: the same run as the command line (same checks,
same run folder, same weights), results returned instead of read back from files, a time limit that
stops like Ctrl+C does, and usage errors as exceptions before anything is written.
"""

import inspect
import json
from pathlib import Path

import pytest
import torch
from synthetic_main import TINY_MODEL, TINY_STAGES, run_trainer, tiny_args, write_data

from experiments import cifar10, cli
from experiments.checkpoint import load_checkpoint
from experiments.launch import Results

# The tiny network of `synthetic_main.TINY_MODEL`, as settings.
TINY = {"model": "custom", **TINY_STAGES}
TIMING_KEYS = {"wall_time_s", "train_time_s", "train_images_per_s", "run_dir", "resumed_from"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("cifar"))


def api_train(data_dir: Path, logs: Path, **settings: object) -> Results:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return cifar10.train(
            **TINY,
            data_dir=data_dir,
            logs_dir=logs,
            device="cpu",
            batch_size=64,
            verify_checksums=False,
            **settings,
        )
    finally:
        torch.set_num_threads(threads)


def test_train_runs_what_the_command_line_runs(data_dir: Path, tmp_path: Path) -> None:
    results = api_train(data_dir, tmp_path / "api", epochs=2)
    cli_results = tmp_path / "cli.json"
    argv = tiny_args(
        data_dir, tmp_path / "cli", "--results", str(cli_results), "verify_checksums=False", epochs=2
    )
    assert TINY_MODEL[0] == "model=custom"
    assert run_trainer(argv) == 0
    from_cli = json.loads(cli_results.read_text())
    assert results.summary is not None and results.stopped is None
    same = {k: v for k, v in results.summary.items() if k not in TIMING_KEYS}
    assert same == {k: v for k, v in from_cli.items() if k not in TIMING_KEYS}
    # The returned history is what the run folder's metrics.jsonl holds, line for line.
    assert results.run_dir is not None
    lines = [json.loads(line) for line in (results.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert results.history == lines and [r["epoch"] for r in lines] == [1, 2]
    assert results.test_accuracy == results.summary["test_accuracy"] == lines[-1]["test_accuracy"]
    assert json.loads((results.run_dir / "results.json").read_text()) == results.summary


def test_a_bad_setting_raises_before_any_folder_is_made(data_dir: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    with pytest.raises(cli.UsageError, match="valid_split=60000: must be in"):
        api_train(data_dir, logs, valid_split=60000)
    with pytest.raises(cli.UsageError, match="unknown setting 'epoch'; did you mean 'epochs'"):
        api_train(data_dir, logs, epoch=2)
    with pytest.raises(cli.UsageError, match="unknown setting 'log_dir'; did you mean 'logs_dir'"):
        cifar10.train(log_dir=logs)
    assert not logs.exists()


def test_a_time_limit_stops_like_ctrl_c_and_the_run_resumes_exactly(data_dir: Path, tmp_path: Path) -> None:
    stopped = api_train(data_dir, tmp_path / "logs", epochs=2, time_limit_s=1e-9)
    # The limit is checked after each step: the first step ends past it.
    assert stopped.stopped == "time limit" and stopped.summary is None
    assert stopped.checkpoint is not None and stopped.checkpoint.exists()
    assert load_checkpoint(stopped.checkpoint)["position"] == {"step": 1, "epoch": 0, "batch": 1}
    resumed = api_train(data_dir, tmp_path / "logs", resume=str(stopped.run_dir))
    whole = api_train(data_dir, tmp_path / "whole", epochs=2)
    assert resumed.summary is not None and whole.summary is not None
    assert resumed.summary["weights_sha256"] == whole.summary["weights_sha256"]
    assert resumed.summary["test_loss"] == whole.summary["test_loss"]


def test_a_time_limit_must_be_positive() -> None:
    with pytest.raises(cli.UsageError, match="--time-limit must be a positive number of seconds"):
        cifar10.train(time_limit_s=0)


def test_a_run_flag_of_the_wrong_type_is_named_by_its_flag() -> None:
    # The Python API's run flags are checked where the command line's text is converted (`cli._request`).
    with pytest.raises(cli.UsageError, match=r"^--threads 2\.5: expected a whole number$"):
        cifar10.train(threads=2.5)
    with pytest.raises(cli.UsageError, match=r"^--stop-after-steps '3': expected a whole number$"):
        cifar10.train(stop_after_steps="3")
    with pytest.raises(cli.UsageError, match=r"^--time-limit True: expected a finite number$"):
        cifar10.train(time_limit_s=True)
    with pytest.raises(cli.UsageError, match=r"^--threads must be at least 1, got 0$"):
        cifar10.train(threads=0)


def test_evaluating_a_checkpoint_from_python_is_what_eval_does(data_dir: Path, tmp_path: Path) -> None:
    results = api_train(data_dir, tmp_path / "logs", epochs=1)
    assert results.checkpoint is not None
    with pytest.raises(cli.UsageError, match="use evaluate_checkpoint"):
        cifar10.train(eval=str(results.checkpoint))
    # The synthetic data is not the official files, and a checkpoint never turns the md5 check off.
    measured = cifar10.evaluate_checkpoint(results.checkpoint, threads=1, verify_checksums=False)
    from_cli = tmp_path / "eval.json"
    assert run_trainer(["--eval", str(results.checkpoint), "--results", str(from_cli)]) == 0
    same = {k: v for k, v in measured.items() if k not in ("threads",)}
    assert same == {k: v for k, v in json.loads(from_cli.read_text()).items() if k not in ("threads",)}
    assert results.summary is not None and measured["test_accuracy"] == results.summary["test_accuracy"]


@pytest.mark.parametrize(
    ("function", "signature"),
    [
        (
            cifar10.train,
            "(*, recipe: str | None = None, device: str | None = None, **settings: Any) -> Results",
        ),
        (cifar10.evaluate_checkpoint, "(path: str | pathlib.Path, **settings: Any) -> dict[str, typing.Any]"),
        (cifar10.main, "(argv: list[str] | None = None) -> int"),
    ],
)
def test_the_entry_points_are_plain_typed_functions(function: object, signature: str) -> None:
    # Plain functions, so an editor shows their keyword signatures and a type checker run on the caller's
    # code flags a positional setting.
    def bare(text: str) -> str:
        return text.replace("typing.", "").replace("pathlib.", "").replace("experiments.launch.", "")

    assert bare(str(inspect.signature(function))) == bare(signature)
    assert inspect.isfunction(function) and function.__module__ == "experiments.cifar10"
