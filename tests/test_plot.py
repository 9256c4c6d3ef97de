"""Curves from run folders (`experiments/plot.py`) and the time-to-accuracy summary of finished runs."""

import json
from pathlib import Path

import pytest

from benchmarks import time_to_accuracy
from experiments import plot


def write_run(
    folder: Path,
    accuracies: list[float],
    *,
    valid: bool = False,
    seed: int = 0,
    results: bool = True,
    test_subset: int = 0,
) -> Path:
    """A run folder with one metrics line per accuracy and, optionally, its results.json."""
    folder.mkdir(parents=True)
    name = "valid" if valid else "test"
    lines = [
        {
            "epoch": i + 1,
            "step": 10 * (i + 1),
            "lr": 0.1 / (i + 1),
            "train_accuracy": a - 0.05,
            f"{name}_accuracy": a,
            "train_time_s": 60.0 * (i + 1),
        }
        for i, a in enumerate(accuracies)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if results:
        (folder / "results.json").write_text(
            json.dumps(
                {
                    "recipe": "cpu",
                    "model": "resnet20",
                    "seed": seed,
                    "epochs": len(accuracies),
                    "test_accuracy": accuracies[-1],
                    "train_time_s": 60.0 * len(accuracies),
                    "images_seen": 1000 * len(accuracies),
                    "train_images_per_s": 1000 / 60,
                    "amp": "none",
                    "cpu": "a test CPU",
                    "threads": 2,
                    "data": {"train_images": 1000, "test_subset": test_subset, "valid_split": 0},
                }
            )
        )
    return folder


def test_a_run_becomes_per_epoch_errors_and_rates(tmp_path: Path) -> None:
    curve = plot.read_run(write_run(tmp_path / "a", [0.5, 0.8, 0.9]))
    assert curve.epochs == [1, 2, 3] and curve.eval_name == "test"
    assert curve.eval_error == pytest.approx([0.5, 0.2, 0.1])
    assert curve.train_error == pytest.approx([0.55, 0.25, 0.15])
    assert curve.lr == pytest.approx([0.1, 0.05, 0.1 / 3])
    assert curve.label == "cpu recipe, resnet20, seed 0"


def test_a_run_with_a_validation_split_is_drawn_against_it(tmp_path: Path) -> None:
    curve = plot.read_run(write_run(tmp_path / "a", [0.6, 0.7], valid=True, results=False))
    assert curve.eval_name == "valid" and curve.label == "a"


def test_the_script_draws_a_png_with_one_line_per_run(tmp_path: Path) -> None:
    runs = [write_run(tmp_path / "a", [0.5, 0.8]), write_run(tmp_path / "b", [0.4, 0.7, 0.75], seed=1)]
    out = tmp_path / "curves.png"
    assert plot.main([str(r) for r in runs] + ["--out", str(out), "--title", "two runs"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_curves_json_of_one_run_stands_in_for_its_folder(tmp_path: Path) -> None:
    run = write_run(tmp_path / "a", [0.5, 0.8, 0.9])
    out = tmp_path / "kept" / "a.png"
    assert plot.main([str(run), "--out", str(out)]) == 0
    kept = out.with_suffix(".json")
    # The folder can go: the JSON gives the same curve, results included, and draws again.
    assert plot.read_run(kept) == plot.read_run(run)
    assert plot.read_run(kept, label="ResNet-20").label == "ResNet-20"
    again = tmp_path / "again.png"
    assert plot.main([str(kept), "--out", str(again)]) == 0
    assert json.loads(again.with_suffix(".json").read_text()) == json.loads(kept.read_text())


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        '{"curves": []}',
        '{"runs": [1]}',
        '{"curves": [{"label": "x"}]}',
    ],
)
def test_a_curves_json_that_is_not_one_run_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, content: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert plot.main([str(bad), "--out", str(tmp_path / "x.png")]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "is not the JSON of one run" in error[0]


def test_a_curves_json_of_two_runs_or_uneven_lists_is_refused(tmp_path: Path) -> None:
    runs = [write_run(tmp_path / "a", [0.5, 0.8]), write_run(tmp_path / "b", [0.4, 0.7])]
    both = tmp_path / "both.png"
    assert plot.main([str(r) for r in runs] + ["--out", str(both)]) == 0
    with pytest.raises(plot.ExperimentError, match="one run"):
        plot.read_run(both.with_suffix(".json"))
    one = tmp_path / "one.png"
    assert plot.main([str(runs[0]), "--out", str(one)]) == 0
    record = json.loads(one.with_suffix(".json").read_text())
    record["curves"][0]["lr"].pop()
    one.with_suffix(".json").write_text(json.dumps(record))
    with pytest.raises(plot.ExperimentError, match="one run"):
        plot.read_run(one.with_suffix(".json"))


@pytest.mark.parametrize(
    ("field", "value"),
    [("epochs", [1.9, 2]), ("steps", ["3", 20]), ("train_error", [float("nan"), 0.1]), ("epochs", [True, 2]),
     ("lr", "0.1"), ("summary", [["epochs", 2]]), ("label", 3)],
)  # fmt: skip
def test_a_hand_edited_curve_is_refused_not_drawn(tmp_path: Path, field: str, value: object) -> None:
    out = tmp_path / "a.png"
    assert plot.main([str(write_run(tmp_path / "a", [0.5, 0.8])), "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    record["curves"][0][field] = value
    out.with_suffix(".json").write_text(json.dumps(record))
    with pytest.raises(plot.ExperimentError, match="is not the JSON of one run"):
        plot.read_run(out.with_suffix(".json"))


def test_the_json_beside_the_png_never_overwrites_a_curve_it_draws(tmp_path: Path) -> None:
    out = tmp_path / "a.png"
    assert plot.main([str(write_run(tmp_path / "a", [0.5, 0.8])), "--out", str(out)]) == 0
    kept = out.read_bytes(), out.with_suffix(".json").read_bytes()
    other = write_run(tmp_path / "b", [0.4, 0.7])
    with pytest.raises(SystemExit) as exit_info:
        plot.main([str(out.with_suffix(".json")), str(other), "--out", str(out)])
    assert exit_info.value.code == 2
    assert (out.read_bytes(), out.with_suffix(".json").read_bytes()) == kept


def test_a_folder_without_metrics_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    assert plot.main([str(tmp_path / "empty"), "--out", str(tmp_path / "x.png")]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "no metrics.jsonl" in error[0]
    assert not (tmp_path / "x.png").exists()


def test_labels_must_match_the_runs(tmp_path: Path) -> None:
    run = write_run(tmp_path / "a", [0.5])
    with pytest.raises(SystemExit) as exit_info:
        plot.main([str(run), "--labels", "one", "two"])
    assert exit_info.value.code == 2


def test_time_to_accuracy_reads_the_first_crossing_and_the_final_epoch(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a = write_run(tmp_path / "a", [0.80, 0.915, 0.91, 0.92])
    b = write_run(tmp_path / "b", [0.80, 0.90, 0.91], seed=1)
    row = time_to_accuracy.summarize(a, 0.9125)
    assert row["first_epoch_at_target"] == 2 and row["train_time_to_target_s"] == 120.0
    assert row["images_to_target"] == 2000 and row["final_test_accuracy"] == 0.92
    assert time_to_accuracy.summarize(b, 0.9125)["first_epoch_at_target"] is None
    assert time_to_accuracy.main(["--runs", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "never reached" in out and "reached at epoch 2" in out
    # The verdict is the mean of the final epochs, (0.92 + 0.91) / 2, never the best epoch.
    assert "mean final test accuracy over 2 run(s): 0.9150 (meets 0.9125" in out


def test_time_to_accuracy_refuses_runs_on_a_subset(tmp_path: Path) -> None:
    run = write_run(tmp_path / "a", [0.95], test_subset=100)
    with pytest.raises(SystemExit, match="test subset"):
        time_to_accuracy.summarize(run, 0.9125)


def test_seeds_are_a_comma_separated_list_so_trainer_options_can_follow(tmp_path: Path) -> None:
    assert time_to_accuracy._seed_list("0,1,7") == [0, 1, 7]
    for bad in ("0 1", "a", "-1"):
        with pytest.raises(SystemExit) as exit_info:
            time_to_accuracy.main(["--data-dir", str(tmp_path), "--seeds", bad])
        assert exit_info.value.code == 2
