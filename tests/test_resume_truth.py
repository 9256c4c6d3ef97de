"""
A resume tells the truth about its settings (issue 27, item 4): what is typed with `--resume` either
trains (the learning rate, weight decay, momentum and nesterov go into the restored optimizer and the
schedule; a longer `--epochs` re-derives the schedule over the new length) or is refused in one line
with exit status 2. Nothing is recorded in the new run's settings while the old value trains.
"""

import json
from pathlib import Path

import pytest
from synthetic_main import only_run, run_trainer, tiny_args, write_data

from experiments.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("cifar"))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def resumed_run(logs: Path, stopped: Path) -> Path:
    (run_dir,) = (p for p in (logs / "cifar10").iterdir() if p != stopped)
    return run_dir


def test_optimizer_settings_typed_with_resume_are_the_ones_that_train(data_dir: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    # No drops, so every step's rate is the base rate; 3 steps of the first epoch, then a stop.
    assert run_trainer(tiny_args(data_dir, logs, "lr_decay=1.0", "--stop-after-steps", "3", epochs=2)) == 0
    stopped = only_run(logs)
    assert load_checkpoint(stopped / "checkpoints" / "last.pt")["optimizer"]["param_groups"][0]["lr"] == 0.1
    typed = ["--lr", "0.02", "optimizer.weight_decay=0.005", "optimizer.momentum=0.5"]
    typed.append("optimizer.nesterov=True")
    assert run_trainer(["--logs-dir", str(logs), "--resume", str(stopped), *typed]) == 0
    resumed = resumed_run(logs, stopped)
    state = load_checkpoint(resumed / "checkpoints" / "last.pt")
    for group in state["optimizer"]["param_groups"]:
        assert (group["lr"], group["initial_lr"]) == (0.02, 0.02)
        assert (group["weight_decay"], group["momentum"], group["nesterov"]) == (0.005, 0.5, True)
    assert state["scheduler"]["base_lrs"] == [0.02] * len(state["optimizer"]["param_groups"])
    assert [record["lr"] for record in metrics(resumed)] == [0.02, 0.02]
    # What the checkpoint records is what trained.
    assert state["config"]["optimizer.learning_rate"] == 0.02
    assert state["config"]["optimizer.momentum"] == 0.5


def test_a_longer_resumed_run_drops_the_rate_at_fractions_of_its_new_length(
    data_dir: Path, tmp_path: Path
) -> None:
    # The paper's recipe drops at 50% and 75% of the run: steps round(7.5) = 8 and round(11.25) = 11 of a
    # 3-epoch run of 5 steps an epoch, steps 15 and round(22.5) = 22 of 6 epochs.
    logs = tmp_path / "logs"
    assert run_trainer(tiny_args(data_dir, logs, epochs=3)) == 0
    short = only_run(logs)
    drops = load_checkpoint(short / "checkpoints" / "last.pt")["scheduler"]["lr_lambdas"][0]["milestones"]
    assert drops == [8, 11]
    results = tmp_path / "r.json"
    longer_run = ["--logs-dir", str(logs), "--resume", str(short), "--epochs", "6", "--results", str(results)]
    assert run_trainer(longer_run) == 0
    longer = resumed_run(logs, short)
    state = load_checkpoint(longer / "checkpoints" / "last.pt")
    assert state["scheduler"]["lr_lambdas"][0]["milestones"] == [15, 22]
    summary = json.loads(results.read_text())
    assert (summary["epochs"], summary["steps"]) == (6, 30)
    # An uninterrupted 6-epoch run gives the rates the resumed epochs trained at.
    reference_logs = tmp_path / "reference"
    assert run_trainer(tiny_args(data_dir, reference_logs, epochs=6)) == 0
    expected = [record["lr"] for record in metrics(only_run(reference_logs))]
    assert [record["lr"] for record in metrics(longer)][3:] == expected[3:]
    assert expected[3:] == pytest.approx([0.01, 0.001, 0.001])


def test_a_new_seed_for_a_resumed_run_is_refused_in_one_line(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    logs = tmp_path / "logs"
    assert run_trainer(tiny_args(data_dir, logs, "--stop-after-steps", "2", epochs=2)) == 0
    stopped = only_run(logs)
    capsys.readouterr()
    assert run_trainer(["--logs-dir", str(logs), "--resume", str(stopped), "--seed", "7"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--seed 7 cannot apply to a resumed run" in error[0]
    assert [p.name for p in (logs / "cifar10").iterdir()] == [stopped.name]


@pytest.mark.parametrize(
    ("typed", "refused"),
    [
        (["--batch-size", "32"], "--batch-size 32"),
        (["--valid-split", "64"], "--valid-split 64"),
        (["train_subset=128"], "train_subset=128"),
        (["--model", "resnet20"], "--model resnet20"),
        (["n_blocks=[2, 2, 2]"], "n_blocks=[2, 2, 2]"),
        (["ema_decay=0.9"], "ema_decay=0.9"),
        (["lookahead_every=2"], "lookahead_every=2"),
    ],
)
def test_what_the_checkpoint_fixes_cannot_be_typed_with_resume(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, typed: list[str], refused: str
) -> None:
    # The saved position counts batches of the run's own split and size, and the weights fit its own
    # network: a new value would be recorded while the old one trained, or would mix validation images
    # into training. Refused in one line, exit status 2, before a run folder is made.
    logs = tmp_path / "logs"
    assert run_trainer(tiny_args(data_dir, logs, "--stop-after-steps", "2", epochs=2)) == 0
    stopped = only_run(logs)
    capsys.readouterr()
    assert run_trainer(["--logs-dir", str(logs), "--resume", str(stopped), *typed]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"error: {refused} cannot apply to a resumed run" in error[0]
    assert [p.name for p in (logs / "cifar10").iterdir()] == [stopped.name]
    # The value it already has is no change, and resumes.
    assert run_trainer(["--logs-dir", str(logs), "--resume", str(stopped), "--batch-size", "64"]) == 0


def test_a_longer_resumed_cosine_run_decays_over_its_new_length(data_dir: Path, tmp_path: Path) -> None:
    # A cosine that reached zero at the end of 3 epochs climbs back to where a 6-epoch cosine is at
    # step 15 (half the base rate) and decays to zero again over the new length.
    cosine = ("scheduler=warmup_cosine", "lr_warmup_steps=0")
    logs = tmp_path / "logs"
    assert run_trainer(tiny_args(data_dir, logs, *cosine, epochs=3)) == 0
    short = only_run(logs)
    assert metrics(short)[-1]["lr"] == 0.0
    assert run_trainer(["--logs-dir", str(logs), "--resume", str(short), "--epochs", "6"]) == 0
    longer = resumed_run(logs, short)
    assert (
        load_checkpoint(longer / "checkpoints" / "last.pt")["scheduler"]["lr_lambdas"][0]["total_steps"] == 30
    )
    reference_logs = tmp_path / "reference"
    assert run_trainer(tiny_args(data_dir, reference_logs, *cosine, epochs=6)) == 0
    expected = [record["lr"] for record in metrics(only_run(reference_logs))]
    assert [record["lr"] for record in metrics(longer)][3:] == expected[3:]
    assert expected[3:] == pytest.approx([0.025, 0.0066987, 0.0], abs=1e-6)
