"""
The recipes' promises: the paper's drops sit at 50% and 75% of any run, the `cpu` recipe trains the
paper's network, `amp=auto` picks bf16 only where the CPU has it, and results say what they measured.
"""

import json
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from synthetic_main import run_trainer, tiny_args, write_data

from experiments import cifar10, precision
from experiments.precision import AmpChoice, choose_amp, step_timer
from experiments.recipes import (
    RECIPES,
    ScheduleWarning,
    WarmupCosineSchedule,
    WarmupLinearSchedule,
    recipe_values,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("cifar"))


def step_scheduler(iterations: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The trainer's `step` schedule option, built for a run of `iterations` with the default drops."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    c = SimpleNamespace(
        lr_milestones=cifar10.Configs().lr_milestones,
        iterations=iterations,
        lr_decay=0.1,
        lr_warmup_steps=0,
        lr_warmup_factor=0.1,
        optimizer=optimizer,
    )
    return cifar10._step_schedule(c)


def drops(iterations: int) -> list[int]:
    """The steps at which the multiplier falls."""
    multiplier = step_scheduler(iterations).lr_lambdas[0]
    return [s for s in range(1, iterations) if multiplier(s) < multiplier(s - 1)]


def test_the_papers_64k_run_still_drops_at_32k_and_48k() -> None:
    assert drops(64_000) == [32_000, 48_000]
    multiplier = step_scheduler(64_000).lr_lambdas[0]
    assert multiplier(31_999) == 1.0
    assert multiplier(32_000) == pytest.approx(0.1) and multiplier(48_000) == pytest.approx(0.01)


def test_a_30_epoch_paper_run_drops_at_half_and_three_quarters() -> None:
    # 30 epochs of 391 steps (all 50k images, batch 128): 11,730 iterations.
    iterations = 30 * 391
    assert drops(iterations) == [round(0.5 * iterations), round(0.75 * iterations)] == [5865, 8798]


def test_the_trainer_follows_the_fractional_drops_in_a_short_run(data_dir: Path, tmp_path: Path) -> None:
    # 4 epochs of 5 steps: drops after steps 10 and 15; the logged rate is the one after each epoch.
    results = tmp_path / "results.json"
    assert run_trainer(tiny_args(data_dir, tmp_path / "logs", "--results", str(results), epochs=4)) == 0
    run_dir = Path(json.loads(results.read_text())["run_dir"])
    lrs = [json.loads(line)["lr"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([0.1, 0.01, 0.001, 0.001])


def test_absolute_milestones_are_refused_with_the_fractions_to_use(tmp_path: Path) -> None:
    from synthetic_main import SCRIPT

    done = subprocess.run(
        [sys.executable, str(SCRIPT), "lr_milestones=[32000,48000]", "--logs-dir", str(tmp_path / "logs")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "lr_milestones" in done.stderr and "[0.5,0.75]" in done.stderr
    assert not (tmp_path / "logs").exists()


def test_the_cpu_recipe_trains_the_papers_resnet20_and_decides_the_number_format() -> None:
    recipe = RECIPES["cpu"]
    # The network is not the recipe's to change: no model, shortcut or architecture keys.
    assert not {"model", "shortcut", "n_blocks", "n_channels", "zero_init_residual"} & set(recipe)
    assert recipe["amp"] == "auto" and recipe["batch_size"] == 128
    # Chosen on the validation split: flips and one-pixel shifts at test time.
    assert recipe["flip_tta"] is True and recipe["shift_tta"] == 1
    assert cifar10.Configs.model is not None


def test_auto_keeps_float32_on_a_cpu_without_bf16_units_without_measuring(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: [])

    def measure(dtype: torch.dtype | None) -> float:
        raise AssertionError("nothing to measure on a CPU that would emulate bf16")

    choice = choose_amp("auto", torch.device("cpu"), measure)
    assert (choice.chosen, choice.dtype, choice.measured_s) == ("none", None, None)
    assert "no native bf16" in choice.reason


@pytest.mark.parametrize("bf16_s, expected", [(0.5, "bf16"), (2.0, "none")])
def test_auto_takes_bf16_on_a_cpu_with_bf16_units_only_when_it_measures_faster(
    monkeypatch: pytest.MonkeyPatch, bf16_s: float, expected: str
) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: ["AMX"])
    timings = {None: 1.0, torch.bfloat16: bf16_s}
    choice = choose_amp("auto", torch.device("cpu"), lambda dtype: timings[dtype])
    assert choice.chosen == expected
    assert choice.measured_s == {"none": 1.0, "bf16": bf16_s} and "AMX" in choice.reason


def test_an_explicit_format_is_not_second_guessed() -> None:
    assert choose_amp("bf16", torch.device("cpu")) == AmpChoice("bf16", "bf16", "set explicitly")
    assert choose_amp("none", torch.device("cpu")).dtype is None


def test_timing_the_formats_changes_neither_the_weights_nor_the_random_streams() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.LazyLinear(10)
    )
    model(torch.randn(2, 3, 8, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    seconds = step_timer(model, (4, 3, 8, 8), 10, torch.device("cpu"), False, warmup=1, repeats=1)(None)
    assert seconds > 0
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_results_record_the_data_the_format_choice_and_the_software(data_dir: Path, tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    status = run_trainer(
        tiny_args(
            data_dir,
            tmp_path / "logs",
            "--results",
            str(results),
            "--amp",
            "auto",
            "train_subset=100",
            "test_subset=30",
            "shift_tta=2",
        )
    )
    assert status == 0
    value = json.loads(results.read_text())
    assert value["data"]["train_subset"] == 100 and value["data"]["test_subset"] == 30
    assert value["data"]["train_images"] == 100 and value["data"]["test_images"] == 30
    assert value["data"]["valid_split"] == 0 and value["images_seen"] == 100
    assert value["data"]["flip_tta"] is False and value["data"]["shift_tta"] == 2
    assert value["amp_choice"]["requested"] == "auto" and value["amp"] == value["amp_choice"]["chosen"]
    assert value["torch"] == torch.__version__ and value["recipe"] == "paper"


def test_eval_measures_the_whole_test_set_unless_asked_for_a_subset(data_dir: Path, tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    assert (
        run_trainer(tiny_args(data_dir, tmp_path / "logs", "--results", str(results), "test_subset=30")) == 0
    )
    checkpoint = Path(json.loads(results.read_text())["run_dir"]) / "checkpoints" / "last.pt"
    full, subset = tmp_path / "full.json", tmp_path / "subset.json"
    assert run_trainer(["--eval", str(checkpoint), "--results", str(full)]) == 0
    assert run_trainer(["--eval", str(checkpoint), "--results", str(subset), "test_subset=20"]) == 0
    assert json.loads(full.read_text())["test_images"] == 64
    assert json.loads(full.read_text())["test_subset"] == 0
    assert json.loads(subset.read_text())["test_images"] == 20


@pytest.mark.parametrize("schedule", [WarmupCosineSchedule, WarmupLinearSchedule])
@pytest.mark.parametrize(("steps", "decay"), [(96, "never decays"), (300, "decays only in the second half")])
def test_a_warm_up_that_fills_most_of_the_run_warns_and_is_kept(
    schedule: type, steps: int, decay: str
) -> None:
    # `train_subset=2000 --epochs 6 --recipe cpu`: 16 steps an epoch, 96 in all, against 200 warm-up steps.
    with pytest.warns(ScheduleWarning, match=f"lr_warmup_steps=200 is at least half of this run's {steps} "):
        multiplier = schedule(steps, 200, 0.1)
    with pytest.warns(ScheduleWarning, match=decay):
        schedule(steps, 200, 0.1)
    # Warned, not changed: the warm-up is still the one asked for.
    assert multiplier.warmup_steps == min(200, steps) and multiplier(0) == pytest.approx(0.1)


def test_a_warm_up_within_the_first_half_is_silent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        WarmupCosineSchedule(25 * 391, 200, 0.1)
        WarmupLinearSchedule(401, 200, 0.0)
        WarmupCosineSchedule(100, 0, 0.1)


def test_a_short_run_of_the_cpu_recipe_warns_once_about_its_warm_up(data_dir: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_trainer(tiny_args(data_dir, tmp_path / "logs", "--recipe", "cpu", "shift_tta=0")) == 0
    # 5 steps of 64 images against the recipe's 200 warm-up steps.
    swallowed = [w for w in caught if issubclass(w.category, ScheduleWarning)]
    assert len(swallowed) == 1 and "this run's 5 steps" in str(swallowed[0].message)


def test_a_recipe_adds_its_cuda_settings_only_on_a_gpu_and_yields_to_typed_iterations() -> None:
    fast = RECIPES["fast"]
    on_cpu, on_gpu = recipe_values(fast, {}, on_cuda=False), recipe_values(fast, {}, on_cuda=True)
    assert "cuda" not in on_cpu and "amp" not in on_cpu and on_cpu["epochs"] == 30
    assert on_gpu == {**on_cpu, **fast["cuda"]}
    # A typed iteration count sets the length; the recipe's epochs would otherwise end the run first.
    counted = recipe_values(fast, {"iterations": 500}, on_cuda=False)
    assert "epochs" not in counted and "iterations" not in counted
    assert recipe_values(fast, {"iterations": "from_epochs"}, on_cuda=False) == on_cpu
