"""
The CIFAR-10 trainer end to end, on synthetic data in the real on-disk format: what a run produces,
that it learns, that it is reproducible, and that an interrupted run resumes to exactly the same result.
"""

import json
import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml
from synthetic_main import run_trainer, tiny_args, write_data

import resnet
from experiments import cifar10, cli, launch, loader
from experiments.checkpoint import load_checkpoint, save_checkpoint
from experiments.distributed import World
from experiments.precision import AMP_DTYPES
from experiments.recipes import ScheduleError, StepSchedule, WarmupCosineSchedule, WarmupLinearSchedule

# Values that measure the machine rather than the run; everything else must match exactly.
TIMING_KEYS = {"wall_time_s", "train_time_s", "train_images_per_s", "run_dir", "resumed_from"}
# Per-epoch timing in metrics.jsonl: real measurements, never equal between two runs.
EPOCH_TIMING_KEYS = {"train_images_per_s", "train_time_s", "epoch_train_time_s"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("cifar"))


def train(data_dir: Path, logs: Path, *extra: str, epochs: int = 2) -> tuple[int, dict, Path]:
    """Run the trainer in-process; returns (exit status, results.json, run folder)."""
    results = logs.parent / f"results-{len(list(logs.parent.glob('results-*')))}.json"
    status = run_trainer(tiny_args(data_dir, logs, "--results", str(results), *extra, epochs=epochs))
    if not results.exists():
        return status, {}, Path()
    value = json.loads(results.read_text())
    return status, value, Path(value["run_dir"])


def comparable(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in TIMING_KEYS}


def epoch_metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in EPOCH_TIMING_KEYS} for line in lines]


def assert_same_weights(a: Path, b: Path) -> None:
    state_a, state_b = load_checkpoint(a), load_checkpoint(b)
    assert state_a["model"].keys() == state_b["model"].keys()
    for name in state_a["model"]:
        assert torch.equal(state_a["model"][name], state_b["model"][name]), name
    momentum_a = [s["momentum_buffer"] for s in state_a["optimizer"]["state"].values()]
    momentum_b = [s["momentum_buffer"] for s in state_b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(momentum_a, momentum_b, strict=True))


@pytest.fixture(scope="module")
def reference(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """An uninterrupted two-epoch run that the other tests compare against."""
    status, results, run_dir = train(data_dir, tmp_path_factory.mktemp("reference") / "logs")
    assert status == 0
    return results, run_dir


def test_a_run_leaves_results_metrics_and_a_weights_only_checkpoint(reference: tuple[dict, Path]) -> None:
    results, run_dir = reference
    for key in (
        "train_loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
        "epochs",
        "wall_time_s",
        "train_images_per_s",
        "device",
        "model",
        "parameters",
    ):
        assert results[key] is not None, key
    assert results["epochs"] == 2 and results["steps"] == 10
    assert results["device"].startswith("cpu") and results["model"] == "custom"
    assert json.loads((run_dir / "results.json").read_text()) == results
    assert [m["epoch"] for m in epoch_metrics(run_dir)] == [1, 2]
    assert (run_dir / "configs.yaml").exists()
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["position"] == {"step": 10, "epoch": 2, "batch": 0}


def test_the_script_runs_end_to_end_and_prints_test_accuracy_last(data_dir: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from synthetic_main import SCRIPT

    process = subprocess.run(
        [sys.executable, str(SCRIPT), *tiny_args(data_dir, tmp_path / "logs")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-2000:]
    last_line = process.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"test accuracy: [01]\.\d{4} \(single view\)", last_line)
    (run_dir,) = (tmp_path / "logs" / "cifar10").iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert last_line == f"test accuracy: {results['test_accuracy']:.4f} (single view)"
    assert results["epochs"] == 1
    load_checkpoint(run_dir / "checkpoints" / "last.pt")


def test_separable_classes_are_learned_well_above_chance(data_dir: Path, tmp_path: Path) -> None:
    status, results, _ = train(data_dir, tmp_path / "logs", "--batch-size", "16", "--lr", "0.05", epochs=3)
    assert status == 0
    # Ten classes: chance is 0.1.
    assert results["test_accuracy"] > 0.5
    assert results["train_accuracy"] > 0.5


def test_the_same_seed_twice_gives_identical_metrics_and_weights(
    reference: tuple[dict, Path], data_dir: Path, tmp_path: Path
) -> None:
    status, results, run_dir = train(data_dir, tmp_path / "logs")
    assert status == 0
    assert comparable(results) == comparable(reference[0])
    assert epoch_metrics(run_dir) == epoch_metrics(reference[1])
    assert_same_weights(run_dir / "checkpoints" / "last.pt", reference[1] / "checkpoints" / "last.pt")


def test_another_seed_gives_other_weights(
    reference: tuple[dict, Path], data_dir: Path, tmp_path: Path
) -> None:
    status, results, _ = train(data_dir, tmp_path / "logs", "--seed", "6")
    assert status == 0
    assert results["weights_sha256"] != reference[0]["weights_sha256"]


def test_resuming_mid_epoch_reproduces_the_uninterrupted_run(
    reference: tuple[dict, Path], data_dir: Path, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    # Step 7 is batch 2 of the second epoch: the resumed epoch must pick up the partial sums too.
    status = run_trainer(tiny_args(data_dir, logs, "--stop-after-steps", "7", epochs=2))
    assert status == 0
    (stopped,) = (logs / "cifar10").iterdir()
    position = load_checkpoint(stopped / "checkpoints" / "last.pt")["position"]
    assert position == {"step": 7, "epoch": 1, "batch": 2}
    before = {p: p.read_bytes() for p in stopped.rglob("*") if p.is_file()}

    results_path = tmp_path / "resumed.json"
    status = run_trainer(["--logs-dir", str(logs), "--resume", stopped.name, "--results", str(results_path)])
    assert status == 0
    results = json.loads(results_path.read_text())
    assert comparable(results) == comparable(reference[0])
    resumed = Path(results["run_dir"])
    assert resumed != stopped
    assert epoch_metrics(resumed) == epoch_metrics(reference[1])
    # The resumed epoch's time includes the part trained before the stop.
    assert_epoch_times_add_up(results, resumed)
    assert_same_weights(resumed / "checkpoints" / "last.pt", reference[1] / "checkpoints" / "last.pt")
    # The interrupted run's folder is left exactly as it was.
    assert {p: p.read_bytes() for p in stopped.rglob("*") if p.is_file()} == before


def test_eval_measures_a_checkpoint_on_the_test_set(
    reference: tuple[dict, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    results_path = tmp_path / "eval.json"
    checkpoint = reference[1] / "checkpoints" / "last.pt"
    assert run_trainer(["--eval", str(checkpoint), "--results", str(results_path)]) == 0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line == f"test accuracy: {reference[0]['test_accuracy']:.4f} (single view)"
    assert json.loads(results_path.read_text())["test_accuracy"] == reference[0]["test_accuracy"]


def test_eval_takes_a_run_folder_or_uuid_as_resume_does(reference: tuple[dict, Path]) -> None:
    results, run_dir = reference
    logs = run_dir.parent.parent
    for name in (str(run_dir), run_dir.name):
        # The synthetic data is not the official files: a checkpoint never turns the md5 check off itself.
        request = cli.Request(eval=name, logs_dir=logs, threads=1, settings={"verify_checksums": False})
        measured = launch.run_evaluation(cifar10.Configs, cifar10.NESTED_CONFIGS, cifar10.evaluate, request)
        assert measured["checkpoint"] == str(run_dir / "checkpoints" / "last.pt")
        assert measured["test_accuracy"] == results["test_accuracy"]


def test_resuming_a_finished_run_says_so_and_how_to_extend_it(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    logs = tmp_path / "logs"
    assert run_trainer(tiny_args(data_dir, logs)) == 0
    (run_dir,) = (logs / "cifar10").iterdir()
    capsys.readouterr()
    assert run_trainer(["--logs-dir", str(logs), "--resume", run_dir.name]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert (
        "is a finished run (1 epochs, 5 steps)" in error and f"--resume {run_dir.name} --epochs 11" in error
    )
    # No new, empty run folder; and the suggestion works: one more epoch, 5 more steps.
    assert list((logs / "cifar10").iterdir()) == [run_dir]
    results = tmp_path / "extended.json"
    assert (
        run_trainer(
            ["--logs-dir", str(logs), "--resume", run_dir.name, "--epochs", "2", "--results", str(results)]
        )
        == 0
    )
    assert json.loads(results.read_text())["steps"] == 10
    # A run that ended its last epoch but never wrote results.json (killed in between) resumes to write them.
    orphan = tmp_path / "orphan" / "checkpoints" / "last.pt"
    orphan.parent.mkdir(parents=True)
    shutil.copy(run_dir / "checkpoints" / "last.pt", orphan)
    assert run_trainer(["--logs-dir", str(logs), "--resume", str(orphan), "--results", str(results)]) == 0
    assert json.loads(results.read_text())["steps"] == 5


def test_a_non_finite_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # Epoch 1 trains at 1e3 x 1e-6 (the warm-up factor); at step 5 the rate jumps to 1e3 and diverges.
    logs = tmp_path / "logs"
    status = run_trainer(
        tiny_args(data_dir, logs, "--lr", "1e3", "lr_warmup_steps=5", "lr_warmup_factor=1e-6", epochs=3)
    )
    assert status == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    step = int(re.search(r"non-finite .* (?:at|after) step (\d+)", error).group(1))
    assert step >= 5 and "--lr" in error and "last good checkpoint" in error
    (run_dir,) = (logs / "cifar10").iterdir()
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["position"]["step"] <= step
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert not (run_dir / "results.json").exists()


def test_the_resnet110_warm_up_goes_back_to_the_full_rate() -> None:
    schedule = StepSchedule([32_000, 48_000], 0.1, warmup_steps=400, warmup_factor=0.1)
    assert [schedule(s) for s in (0, 399)] == [0.1, 0.1]
    assert schedule(400) == 1.0 and schedule(31_999) == 1.0
    assert schedule(32_000) == pytest.approx(0.1) and schedule(48_000) == pytest.approx(0.01)


def test_a_warm_up_that_reaches_the_first_drop_is_refused() -> None:
    with pytest.raises(ScheduleError, match=r"lr_warmup_steps=400 .* first drop .* step 300"):
        StepSchedule([300, 450], 0.1, warmup_steps=400)
    # Without a decay the milestones change nothing, so a long warm-up hides no drop.
    assert StepSchedule([3], 1.0, warmup_steps=4)(3) == 0.1


def test_the_trainer_refuses_a_warm_up_past_the_first_drop_before_any_folder(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # This run has 5 steps, so the first drop (50%) is at step 2 and a 3-step warm-up would swallow it.
    status, results, _ = train(data_dir, tmp_path / "logs", "lr_warmup_steps=3", epochs=1)
    # Settings that contradict each other are the user's to fix: exit status 2.
    assert status == 2 and results == {}
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: lr_warmup_steps=3") and "step 2" in error and "more epochs" in error
    assert not any((tmp_path / "logs").rglob("checkpoints"))


def test_the_trainer_applies_the_warm_up_then_the_base_rate(data_dir: Path, tmp_path: Path) -> None:
    # The drops at 50% and 75% of this 5-step run would hide the return to 0.1; lr_decay=1 removes them.
    status, results, run_dir = train(
        data_dir, tmp_path / "logs", "lr_warmup_steps=3", "lr_decay=1.0", epochs=1
    )
    assert status == 0
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    # After 5 steps with a 3-step warm-up the rate is back at 0.1, not stuck at 0.01.
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.1)
    assert epoch_metrics(run_dir)[0]["lr"] == pytest.approx(0.1)


def test_cosine_schedule_warms_up_linearly_and_ends_at_zero() -> None:
    schedule = WarmupCosineSchedule(total_steps=100, warmup_steps=10, warmup_factor=0.1)
    assert schedule(0) == pytest.approx(0.1) and schedule(5) == pytest.approx(0.55)
    assert schedule(10) == pytest.approx(1.0) and schedule(100) == pytest.approx(0.0)


def test_the_fast_recipe_runs_on_cpu_without_bf16(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    status, results, run_dir = train(data_dir, tmp_path / "logs", "--recipe", "fast", epochs=1)
    assert status == 0
    # Its flip views are reported beside the paper's single view, never instead of it, in results.json,
    # metrics.jsonl and the last line printed.
    assert results["tta_views"] == 2 and 0 <= results["test_accuracy_tta"] <= 1
    assert (
        results["test_accuracy"] != results["test_accuracy_tta"]
        or results["test_loss"] != results["test_loss_tta"]
    )
    (metrics,) = epoch_metrics(run_dir)
    assert {"test_accuracy", "test_accuracy_tta", "test_loss_tta"} <= set(metrics)
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"test accuracy: {results['test_accuracy']:.4f} (single view); "
        f"{results['test_accuracy_tta']:.4f} averaged over 2 test-time views"
    )
    # bf16 stays off on a CPU; the --batch-size flag beats the recipe's 512.
    assert results["recipe"] == "fast" and results["amp"] == "none" and results["batch_size"] == 64
    configs = (run_dir / "configs.yaml").read_text()
    assert "warmup_cosine" in configs and "label_smoothing" in configs
    # Every key is in configs.yaml whatever its value; the recipe's values must be what the run used.
    computed = {key: entry["computed"] for key, entry in yaml.safe_load(configs).items()}
    assert computed["label_smoothing"] == 0.1 and computed["flip_tta"] is True
    assert computed["optimizer.nesterov"] is True and computed["optimizer.learning_rate"] == 0.4


def test_a_validation_run_never_reads_the_test_set(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # Settings are chosen on the validation split; the test set is scored once per final run, so a
    # validation run scores its held-out images only, and `--eval` reads the test set when asked.
    scored: list[int] = []
    real_evaluate = cifar10.evaluate

    def counting_evaluate(model, loader, **kwargs):
        scored.append(loader.images_per_epoch)
        return real_evaluate(model, loader, **kwargs)

    monkeypatch.setattr(cifar10, "evaluate", counting_evaluate)
    status, results, run_dir = train(data_dir, tmp_path / "logs", "--valid-split", "64", epochs=1)
    assert status == 0
    assert scored == [64], "only the 64 held-out images are scored, once"
    assert results["valid_accuracy"] is not None and results["data"]["valid_images"] == 64
    assert results["test_accuracy"] is None and results["test_loss"] is None
    (metrics,) = epoch_metrics(run_dir)
    assert "valid_accuracy" in metrics and "test_accuracy" not in metrics
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"valid accuracy: {results['valid_accuracy']:.4f} (single view)")
    assert "--eval RUN scores it" in last


def test_a_resumed_run_keeps_its_recipe_without_repeating_the_flag(data_dir: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    assert run_trainer(tiny_args(data_dir, logs, "--recipe", "fast", "--stop-after-steps", "2")) == 0
    (stopped,) = (logs / "cifar10").iterdir()
    results_path = tmp_path / "resumed.json"
    status = run_trainer(["--logs-dir", str(logs), "--resume", str(stopped), "--results", str(results_path)])
    assert status == 0
    results = json.loads(results_path.read_text())
    assert results["recipe"] == "fast" and results["batch_size"] == 64 and results["steps"] == 5
    configs = (Path(results["run_dir"]) / "configs.yaml").read_text()
    assert "warmup_cosine" in configs


def test_subsets_train_and_evaluate_on_that_many_images(data_dir: Path, tmp_path: Path) -> None:
    # 320 training images in batches of 64 are 5 steps an epoch; a subset of 100 is 2 (64 + 36).
    status, results, run_dir = train(
        data_dir, tmp_path / "logs", "train_subset=100", "test_subset=30", epochs=1
    )
    assert status == 0
    assert results["steps"] == 2
    # 30 test images: every accuracy is a whole number of them.
    assert results["test_accuracy"] * 30 == pytest.approx(round(results["test_accuracy"] * 30))
    configs = (run_dir / "configs.yaml").read_text()
    assert "train_subset" in configs and "test_subset" in configs


def test_a_subset_larger_than_the_set_is_a_one_line_data_error(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    status = run_trainer(tiny_args(data_dir, tmp_path / "logs", "test_subset=65"))
    assert status == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "test_subset=65" in error[0] and "only 64" in error[0]
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("*.pt"))


def test_threads_sets_the_cpu_threads_for_the_run_and_puts_them_back(data_dir: Path, tmp_path: Path) -> None:
    before = torch.get_num_threads()
    status, results, _ = train(data_dir, tmp_path / "logs", "--threads", "2", epochs=1)
    assert status == 0
    assert results["device"] == "cpu (2 threads)"
    assert torch.get_num_threads() == before


def test_an_ema_run_resumes_exactly_averaged_weights_included(data_dir: Path, tmp_path: Path) -> None:
    ema = "ema_decay=0.9"
    status, reference, reference_dir = train(data_dir, tmp_path / "reference" / "logs", ema)
    assert status == 0 and reference["ema_decay"] == 0.9
    reference_state = load_checkpoint(reference_dir / "checkpoints" / "last.pt")
    assert reference_state["ema"]["updates"] == 10
    averaged, trained = reference_state["ema"]["model"], reference_state["model"]
    assert any(not torch.equal(averaged[k], trained[k]) for k in trained)

    logs = tmp_path / "interrupted" / "logs"
    assert run_trainer(tiny_args(data_dir, logs, ema, "--stop-after-steps", "7", epochs=2)) == 0
    (stopped,) = (logs / "cifar10").iterdir()
    results_path = tmp_path / "resumed.json"
    status = run_trainer(["--logs-dir", str(logs), "--resume", stopped.name, "--results", str(results_path)])
    assert status == 0
    resumed = json.loads(results_path.read_text())
    assert comparable(resumed) == comparable(reference)
    resumed_dir = Path(resumed["run_dir"])
    assert epoch_metrics(resumed_dir) == epoch_metrics(reference_dir)
    assert_same_weights(resumed_dir / "checkpoints" / "last.pt", reference_dir / "checkpoints" / "last.pt")
    resumed_state = load_checkpoint(resumed_dir / "checkpoints" / "last.pt")
    assert resumed_state["ema"]["updates"] == 10
    for name, value in averaged.items():
        assert torch.equal(resumed_state["ema"]["model"][name], value), name

    # What the run reported is the averaged network: --eval of the checkpoint measures the same.
    eval_path = tmp_path / "eval.json"
    assert (
        run_trainer(["--eval", str(reference_dir / "checkpoints" / "last.pt"), "--results", str(eval_path)])
        == 0
    )
    evaluated = json.loads(eval_path.read_text())
    assert evaluated["weights"] == "averaged (ema)"
    assert evaluated["test_accuracy"] == reference["test_accuracy"]
    assert evaluated["test_loss"] == reference["test_loss"]


def test_linear_schedule_climbs_to_the_peak_then_falls_to_zero_and_stays_there() -> None:
    schedule = WarmupLinearSchedule(total_steps=100, warmup_steps=10, warmup_factor=0.0)
    assert schedule(0) == 0.0 and schedule(5) == pytest.approx(0.5)
    assert schedule(10) == pytest.approx(1.0)
    assert schedule(55) == pytest.approx(0.5) and schedule(91) == pytest.approx(0.1)
    assert schedule(100) == 0.0
    # Past the end (e.g. a run extended beyond its schedule) the rate stays at zero, never negative.
    assert schedule(101) == 0.0 and schedule(1000) == 0.0
    warm_from_a_tenth = WarmupLinearSchedule(total_steps=100, warmup_steps=10, warmup_factor=0.1)
    assert warm_from_a_tenth(0) == pytest.approx(0.1) and warm_from_a_tenth(5) == pytest.approx(0.55)
    assert warm_from_a_tenth(55) == pytest.approx(0.5)


def test_linear_schedule_without_warm_up_starts_at_the_peak() -> None:
    schedule = WarmupLinearSchedule(total_steps=4)
    assert [schedule(s) for s in range(6)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0])


def resnet9_args(data_dir: Path, logs: Path, results: Path, *extra: str) -> list[str]:
    """The resnet9 recipe cut down to 4 steps of 16 images, evaluated on 16 images."""
    return [
        "--data-dir",
        str(data_dir),
        "--logs-dir",
        str(logs),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--recipe",
        "resnet9",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "lr_warmup_fraction=0.5",
        "train_subset=64",
        "test_subset=16",
        "--results",
        str(results),
        *extra,
    ]


def test_a_tiny_resnet9_recipe_run_trains_the_fast_network_with_cutout(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cutouts: list[tuple[bool, int]] = []

    class RecordingBatches(loader.TensorBatches):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            cutouts.append((self.augment, self.cutout))

    monkeypatch.setattr(loader, "TensorBatches", RecordingBatches)
    results_path = tmp_path / "results.json"
    assert run_trainer(resnet9_args(data_dir, tmp_path / "logs", results_path)) == 0
    # The training loader blanks 8x8 squares; the test loader neither augments nor cuts.
    assert sorted(cutouts) == [(False, 0), (True, 8)]
    results = json.loads(results_path.read_text())
    assert results["recipe"] == "resnet9" and results["model"] == "resnet9"
    assert results["cutout"] == 8 and results["amp"] == "none" and results["steps"] == 4
    assert results["parameters"] == sum(p.numel() for p in resnet.resnet9().parameters())
    run_dir = Path(results["run_dir"])
    configs = yaml.safe_load((run_dir / "configs.yaml").read_text())
    computed = {key: entry["computed"] for key, entry in configs.items()}
    # The scheduler is computed into a LambdaLR object; its value names the option that built it.
    assert configs["scheduler"]["value"] == "warmup_linear" and computed["label_smoothing"] == 0.2
    assert computed["cutout"] == 8 and computed["flip_tta"] is True
    # The recipe's warm-up is a fraction of the run: half of these 4 steps.
    assert configs["lr_warmup_steps"]["value"] == "from_fraction" and computed["lr_warmup_steps"] == 2
    # 2 warm-up steps up to 0.4, then 2 steps down: the linear schedule ends the run at 0.
    (metrics,) = epoch_metrics(run_dir)
    assert metrics["lr"] == pytest.approx(0.0, abs=1e-12)
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert any(name.startswith("layers.") for name in state["model"])


def test_metrics_carry_each_epochs_training_time_and_their_running_sum(reference: tuple[dict, Path]) -> None:
    assert_epoch_times_add_up(*reference)


def assert_epoch_times_add_up(results: dict, run_dir: Path) -> None:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    running = 0.0
    for line in lines:
        assert line["epoch_train_time_s"] > 0
        running += line["epoch_train_time_s"]
        assert line["train_time_s"] == pytest.approx(running, rel=1e-9, abs=1e-9)
    assert results["train_time_s"] == pytest.approx(lines[-1]["train_time_s"], rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(
    ("flags", "mode"),
    [
        (["--compile"], "default"),
        (["--compile", "compile_mode=max-autotune-no-cudagraphs"], "max-autotune-no-cudagraphs"),
    ],
)
def test_the_compile_mode_reaches_torch_compile(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], mode: str
) -> None:
    modes: list[str] = []

    def record(model: torch.nn.Module, *, mode: str = "default", **options) -> torch.nn.Module:
        # Compiling for real would cost minutes on this machine; the mode is what is checked here.
        modes.append(mode)
        return model

    monkeypatch.setattr(cifar10.torch, "compile", record)
    status, results, _ = train(data_dir, tmp_path / "logs", *flags, epochs=1)
    assert status == 0
    assert modes == [mode]
    assert results["compile"] is True and results["compile_mode"] == mode


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_runs_the_network_in_the_low_precision_type_and_resumes(
    amp: str, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The GPU fast path's autocast, run on the CPU: the same code, only slower here.
    seen: list[torch.dtype] = []
    build = cifar10.build_model

    def recording_build(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
        return model

    monkeypatch.setattr(cifar10, "build_model", recording_build)
    logs = tmp_path / "logs"
    assert run_trainer(tiny_args(data_dir, logs, "--amp", amp, "--stop-after-steps", "3", epochs=1)) == 0
    expected = AMP_DTYPES[amp]
    # Every training step's and every evaluation batch's logits came out of autocast.
    assert len(seen) >= 3 and set(seen) == {expected}
    (run_dir,) = (logs / "cifar10").iterdir()
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    # fp16 needs loss scaling, and its scale must survive a resume; bf16 has fp32's range and needs none.
    assert (state["scaler"] is not None) == (amp == "fp16")
    if amp == "fp16":
        # GradScaler's own state: the adaptive scale and where it is in its growth interval.
        assert {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"} <= state[
            "scaler"
        ].keys()
    results_path = tmp_path / "resumed.json"
    resume = ["--logs-dir", str(logs), "--resume", str(run_dir), "--results", str(results_path)]
    assert run_trainer(resume) == 0
    results = json.loads(results_path.read_text())
    assert results["amp"] == amp and results["steps"] == 5 and math.isfinite(results["test_loss"])


def test_the_fp16_step_scales_the_loss_and_skips_a_step_whose_gradients_overflowed() -> None:
    # `train_epoch` itself, with a scale so large that the first fp16 gradients overflow: GradScaler must
    # skip those steps (weights and momentum untouched) and halve the scale, then step normally.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    generator = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(16, 3, 8, 8, generator=generator), torch.randint(0, 10, (16,), generator=generator))
    ]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    seen: list[tuple[float, bool]] = []
    before = [p.detach().clone() for p in net.parameters()]

    def after_step(loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        moved = any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
        seen.append((scaler.get_scale(), moved))

    run = SimpleNamespace(
        model=net, scaler=scaler, batches=lambda loader: iter(batches * 30), after_step=after_step,
        autocast=lambda: torch.autocast("cpu", dtype=torch.float16),
    )  # fmt: skip
    c = SimpleNamespace(train_loader=None, label_smoothing=0.0, optimizer=optimizer, scheduler=scheduler)
    cifar10.train_epoch(c, run)
    assert seen[0] == (2.0**39, False)  # overflowed: skipped, the scale halved
    assert seen[-1][1] and seen[-1][0] < 2.0**39  # later steps were taken
    assert all(math.isfinite(p.float().sum().item()) for p in net.parameters())


def test_a_checkpoint_asking_for_cuda_graphs_is_refused_on_a_cpu_with_a_clear_message(
    reference: tuple[dict, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # The command line refuses --cuda-graphs without CUDA; a resumed run brings its settings from the
    # checkpoint instead, e.g. one started on a GPU machine.
    state = load_checkpoint(reference[1] / "checkpoints" / "last.pt")
    state["config"].update({"compile": True, "compile_mode": "reduce-overhead"})
    checkpoint = tmp_path / "from-a-gpu.pt"
    # Written as the trainer writes one, digest included: a genuine GPU run's checkpoint, not damage.
    save_checkpoint(checkpoint, state)
    logs = tmp_path / "logs"
    assert run_trainer(["--logs-dir", str(logs), "--resume", str(checkpoint), "--device", "cpu"]) == 1
    message = capsys.readouterr().err
    assert "needs CUDA" in message and "compile=False" in message
    # The advice works: without compiling, the same (finished) checkpoint trains an epoch more on the CPU.
    assert (
        run_trainer(["--logs-dir", str(logs), "--resume", str(checkpoint), "compile=False", "--epochs", "3"])
        == 0
    )


def test_a_resumed_run_is_checked_with_the_checkpoints_settings_not_the_defaults(
    reference: tuple[dict, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    # The default batch of 128 does not divide over 3 processes, but a checkpoint's batch may: the command
    # line alone cannot tell, so it must leave the check to the merged settings.
    assert cifar10.Configs().batch_size % 3 != 0
    world = World(size=3)
    cli.parse(
        ["--resume", "some-run"],
        cifar10.Configs,
        nested=cifar10.NESTED_CONFIGS,
        recipes=cifar10.RECIPES,
        world=world,
    )
    # The merged settings are checked, before any process group is formed: this run's batch of 64 does
    # not divide over 3 processes either.
    state = load_checkpoint(reference[1] / "checkpoints" / "last.pt")
    assert state["config"]["batch_size"] % 3 != 0
    for name, value in {"WORLD_SIZE": "3", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    assert run_trainer(["--logs-dir", str(tmp_path / "logs"), "--resume", str(reference[1])]) == 1
    message = capsys.readouterr().err
    assert f"--batch-size {state['config']['batch_size']} is the global batch" in message
    assert "3 processes" in message


def test_a_resume_refuses_what_was_typed_as_a_usage_error_and_reads_the_saved_recipe(
    reference: tuple[dict, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    logs = ["--logs-dir", str(tmp_path / "logs")]
    # Typed now and impossible here: a usage error (exit 2) in the command line's own words.
    assert run_trainer([*logs, "--resume", str(reference[1]), "--cuda-graphs"]) == 2
    assert "--cuda-graphs (compile_mode=reduce-overhead) needs CUDA" in capsys.readouterr().err
    # A warm-up fraction applies when the checkpoint's own settings take it (as the resnet9 recipe's do),
    # which the command line alone cannot know; against this run's fixed warm-up it is refused.
    assert run_trainer([*logs, "--resume", str(reference[1]), "lr_warmup_fraction=0.1"]) == 2
    assert "lr_warmup_fraction only applies with lr_warmup_steps=from_fraction" in capsys.readouterr().err
    state = load_checkpoint(reference[1] / "checkpoints" / "last.pt")
    state["config"].update({"lr_warmup_steps": "from_fraction", "lr_warmup_fraction": 0.0})
    checkpoint = tmp_path / "fraction.pt"
    save_checkpoint(checkpoint, state)  # with its digest, as a run with these settings writes it
    assert run_trainer([*logs, "--resume", str(checkpoint), "lr_warmup_fraction=0.1", "--epochs", "3"]) == 0


def test_flip_tta_averages_two_passes_even_when_the_model_reuses_its_output_memory() -> None:
    # CUDA graphs hand back the same output tensor on every replay; a model that does the same on the
    # CPU checks that evaluation keeps the first pass's logits before running the second.
    class SharedOutput(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.out = torch.zeros(4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # Class 0 scores the left half's brightness, class 1 the right half's.
            self.out.zero_()
            self.out[:, 0] = x[:, :, :, :16].mean(dim=(1, 2, 3))
            self.out[:, 1] = x[:, :, :, 16:].mean(dim=(1, 2, 3))
            return self.out

    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    images[:, :, :, :16] = 255  # bright on the left: mirrored, bright on the right
    loader = cifar10.TensorBatches(
        images,
        torch.zeros(4, dtype=torch.int64),
        batch_size=4,
        shuffle=False,
        augment=False,
        device="cpu",
        seed=0,
        mean=[0.5] * 3,
        std=[0.5] * 3,
    )
    loss = cifar10.evaluate(SharedOutput(), loader, amp_dtype=None, flip_tta=True)["loss_tta"]
    # Averaged, the two classes score the same (0 on a -1..1 scale), so the loss is that of logits
    # [0, 0, 0, ...]: log(10). Holding the first pass's output while the second runs would read the
    # mirrored pass's scores twice.
    assert loss == pytest.approx(math.log(10), rel=1e-6)


def test_a_validation_split_as_large_as_the_training_set_suggests_one_that_fits(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert run_trainer(tiny_args(data_dir, tmp_path / "logs", "--valid-split")) == 1
    message = capsys.readouterr().err
    size = int(re.search(r"the set has (\d+)", message).group(1))
    suggested = int(re.search(r"e\.g\. --valid-split (\d+)", message).group(1))
    # The default 5000 is more than this small set holds; the advice must not repeat it.
    assert size < 5000 and 0 < suggested < size


def _normalised(images: torch.Tensor) -> torch.Tensor:
    # What the loaders below hand out: mean and deviation 0.5 on a 0..1 scale.
    return (images.float() / 255 - 0.5) / 0.5


@pytest.mark.parametrize("dx, dy", [(2, 2), (-2, -2), (1, -3), (0, 4)])
def test_translate_gives_the_training_crop_of_the_black_padded_image(dx: int, dy: int) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=generator)
    batches = cifar10.TensorBatches(
        images, torch.zeros(3, dtype=torch.int64), batch_size=3, shuffle=False, augment=False,
        device="cpu", seed=0, mean=[0.5] * 3, std=[0.5] * 3, channels_last=True,
    )  # fmt: skip
    ((x, _),) = batches.epoch(0)
    moved = batches.translate(x, dx, dy)
    # Moving right by dx is the crop whose left edge sits dx pixels into the 4-pixel black padding.
    padded = F.pad(images, (4, 4, 4, 4))
    crop = padded[:, :, 4 - dy : 4 - dy + 32, 4 - dx : 4 - dx + 32]
    assert torch.allclose(moved, _normalised(crop), atol=1e-6)
    assert moved.is_contiguous(memory_format=torch.channels_last)


def test_shift_tta_averages_the_six_views_of_each_image() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10)
    )  # fmt: skip
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (8,))
    batches = cifar10.TensorBatches(
        images, labels, batch_size=4, shuffle=False, augment=False, device="cpu", seed=0,
        mean=[0.5] * 3, std=[0.5] * 3,
    )  # fmt: skip
    model(_normalised(images[:1]))
    scores = cifar10.evaluate(model, batches, amp_dtype=None, flip_tta=True, shift_tta=2)
    padded = F.pad(images, (4, 4, 4, 4))
    views = [padded[:, :, 4 - k : 36 - k, 4 - k : 36 - k] for k in (0, 2, -2)]
    views += [view.flip(3) for view in views]
    with torch.no_grad():
        every_view = torch.stack([model(_normalised(view)) for view in views])
    # The paper's protocol (the original image alone) first, the six-view average beside it.
    for suffix, logits in (("", every_view[0]), ("_tta", every_view.mean(0))):
        assert scores[f"loss{suffix}"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
        assert scores[f"accuracy{suffix}"] == (logits.argmax(1) == labels).float().mean().item()


def test_without_test_time_views_only_the_single_view_is_reported() -> None:
    images = torch.randint(
        0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    batches = cifar10.TensorBatches(
        images, torch.arange(6) % 10, batch_size=4, shuffle=False, augment=False, device="cpu", seed=0,
        mean=[0.5] * 3, std=[0.5] * 3,
    )  # fmt: skip
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    scores = cifar10.evaluate(model, batches, amp_dtype=None, flip_tta=False)
    assert set(scores) == {"loss", "accuracy"}


def test_progressive_image_size_trains_small_crops_first_then_full_size_ones(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two epochs, the first on 16x16 crops: the network (global-average-pooled) takes both sizes, and the
    # run ends, is evaluated at the full 32x32 and records the setting.
    shapes: list[tuple[int, ...]] = []
    real_epoch = loader.TensorBatches.epoch

    def recording_epoch(self, epoch: int, start_batch: int = 0):
        for images, labels in real_epoch(self, epoch, start_batch):
            shapes.append((epoch, self.augment, *images.shape[2:]))
            yield images, labels

    monkeypatch.setattr(loader.TensorBatches, "epoch", recording_epoch)
    results_path = tmp_path / "results.json"
    argv = tiny_args(data_dir, tmp_path / "logs", "small_crop=16", "small_crop_epochs=1", epochs=2)
    assert run_trainer([*argv, "--results", str(results_path)]) == 0
    training = {(epoch, height, width) for epoch, augment, height, width in shapes if augment}
    assert training == {(0, 16, 16), (1, 32, 32)}
    assert {(h, w) for _, augment, h, w in shapes if not augment} == {(32, 32)}
    results = json.loads(results_path.read_text())
    assert results["epochs"] == 2 and results["test_accuracy"] is not None
    configs = yaml.safe_load((Path(results["run_dir"]) / "configs.yaml").read_text())
    assert configs["small_crop"]["computed"] == 16 and configs["small_crop_epochs"]["computed"] == 1
