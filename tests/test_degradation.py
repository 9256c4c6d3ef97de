"""
The degradation experiment (`experiments/degradation.py`) end to end on tiny synthetic CIFAR-10.

The real networks and data set are far too slow for CI, so the end-to-end tests train 8- and 14-layer
networks with narrow stages for two epochs on 40 images. What they check is what the figure depends on:
one ordinary trainer run per network, resumed across invocations and never retrained once finished,
the per-epoch errors read back from the run folders, a JSON with every series, and a PNG in Figure 6's
layout. Nothing depends on the machine's speed: runs are stopped by a step count, never by a clock.
"""

import importlib.util
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from cifar_synthetic import publish_digests_of

from experiments import data as cifar_data
from experiments import degradation, plot
from experiments.synthetic import write_synthetic_cifar10

# Two depths per half at narrow widths, 2 epochs of batch 16 on a 40/20-image subset: 3 steps an epoch.
TINY = ["--plain", "8", "14", "--residual", "8", "14", "--widths", "4", "8", "16", "--epochs", "2",
        "--batch-size", "16", "--device", "cpu", "--threads", "1", "--no-download", "train_subset=40",
        "test_subset=20"]  # fmt: skip


@pytest.fixture
def synthetic_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """
    A small synthetic CIFAR-10 standing in for the user's copy. A run on the user's CIFAR-10 checks every
    md5 sum, and so do these runs: the loader is told to expect these files' sums instead of the official
    ones, which they cannot match.
    """
    root = tmp_path / "cifar"
    folder = write_synthetic_cifar10(root, n_per_train_batch=16, n_test=20, separable=True)
    publish_digests_of(monkeypatch, *folder.iterdir())
    return root


def argv(data: Path, tmp_path: Path, *extra: str, logs: str = "logs") -> list[str]:
    return ["--data-dir", str(data), "--logs-dir", str(tmp_path / logs), "--out", str(tmp_path / "fig.png"),
            *TINY, *extra]  # fmt: skip


def test_one_run_per_network_and_a_figure_with_every_epoch(synthetic_cifar: Path, tmp_path: Path) -> None:
    assert degradation.main(argv(synthetic_cifar, tmp_path)) == 0
    summary = json.loads((tmp_path / "fig.json").read_text())
    assert [n["network"] for n in summary["networks"]] == ["plain-8", "plain-14", "ResNet-8", "ResNet-14"]
    # The data and widths are part of the setting, so the title says them.
    assert "40 train / 20 test images, widths 4/8/16" in summary["title"]
    assert "paper recipe, 2 epochs of batch 16" in summary["title"] and "shorter" not in summary["title"]
    for n in summary["networks"]:
        assert n["epochs"] == [1, 2] and n["steps"] == [3, 6]  # 40 images in batches of 16
        assert len(n["train_error"]) == len(n["test_error"]) == 2
        assert all(0.0 <= e <= 1.0 for e in n["train_error"] + n["test_error"])
        # Each network trained in a folder of its own, as an ordinary trainer run (`run_dir`).
        run = Path(n["run_dir"])
        assert run == tmp_path / "logs" / n["network"]
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [1 - r["test_accuracy"] for r in records] == pytest.approx(n["test_error"])
        configs = {k: v["computed"] for k, v in yaml.safe_load((run / "configs.yaml").read_text()).items()}
        assert (configs["train_subset"], configs["test_subset"]) == (40, 20)
        assert configs["shortcut"] == ("none" if n["kind"] == "plain" else "A")
    # Plain and residual twins have the same parameters: option A adds none.
    params = {n["network"]: n["summary"]["parameters"] for n in summary["networks"]}
    assert params["plain-8"] == params["ResNet-8"] < params["plain-14"] == params["ResNet-14"]
    png = (tmp_path / "fig.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and 20_000 < len(png) < 500_000


def test_a_stopped_network_is_resumed_by_the_next_invocation_and_ends_as_an_uninterrupted_run(
    synthetic_cifar: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # The first invocation stops plain-8 after 4 of its 6 steps, as a time limit or a session's end would.
    assert degradation.main(argv(synthetic_cifar, tmp_path, "stop_after_steps=4")) == 1
    assert "plain-8 stopped" in capsys.readouterr().out and not (tmp_path / "fig.json").exists()
    stopped = tmp_path / "logs" / "plain-8"
    assert (stopped / "checkpoints" / "last.pt").is_file() and not (stopped / "results.json").exists()
    assert not (tmp_path / "logs" / "plain-14").exists(), "the networks after a stopped one wait"
    assert degradation.main(argv(synthetic_cifar, tmp_path)) == 0
    resumed = json.loads((tmp_path / "fig.json").read_text())["networks"][0]
    # Continued from its checkpoint, in its own folder.
    assert resumed["summary"]["resumed_from"].startswith(str(stopped)) and resumed["run_dir"] == str(stopped)
    # The same network trained without a stop, in another logs folder, ends at the same errors.
    assert degradation.main(argv(synthetic_cifar, tmp_path, logs="straight")) == 0
    straight = json.loads((tmp_path / "fig.json").read_text())["networks"][0]
    assert resumed["epochs"] == straight["epochs"] == [1, 2]
    assert (
        resumed["train_error"] == straight["train_error"] and resumed["test_error"] == straight["test_error"]
    )


def test_finished_networks_are_read_not_retrained(
    synthetic_cifar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert degradation.main(argv(synthetic_cifar, tmp_path)) == 0
    first = json.loads((tmp_path / "fig.json").read_text())
    monkeypatch.setattr(
        degradation.cifar10, "train", lambda **s: pytest.fail("a finished network was retrained")
    )
    (tmp_path / "fig.png").unlink()
    assert degradation.main(argv(synthetic_cifar, tmp_path)) == 0
    assert json.loads((tmp_path / "fig.json").read_text()) == first and (tmp_path / "fig.png").exists()


def stop_every_run_at_its_time_limit(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Replaces the trainer with one that stops every run at once; the list collects each run's settings."""
    seen: list[dict] = []

    def stopped(**settings: object) -> SimpleNamespace:
        seen.append(settings)
        return SimpleNamespace(summary=None, history=[], run_dir=settings["run_dir"], stopped="time limit")

    monkeypatch.setattr(degradation.cifar10, "train", stopped)
    return seen


def test_each_network_is_a_run_folder_the_trainer_continues_and_a_finished_one_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    seen = stop_every_run_at_its_time_limit(monkeypatch)
    logs = tmp_path / "logs"
    write_run(logs / "plain-20", [0.5], [0.5], 1)  # finished: read, never trained again
    args = [
        "--plain",
        "20",
        "56",
        "--residual",
        "20",
        "--out",
        str(tmp_path / "f.png"),
        "--logs-dir",
        str(logs),
    ]
    assert degradation.main(args) == 1
    # The next network is handed to the trainer as its own run folder, which the trainer continues from
    # its checkpoint, or starts (again) when it has none: this script picks no checkpoint and no new folder.
    (settings,) = seen
    assert settings["run_dir"] == logs / "plain-56" and settings["model"] == "plain56"
    assert "resume" not in settings and "logs_dir" not in settings
    assert "plain-56 stopped (time limit)" in capsys.readouterr().out


def write_run(folder: Path, train_errors: list[float], test_errors: list[float | None], epochs: int) -> Path:
    """A finished run folder as the trainer leaves it: metrics.jsonl and results.json."""
    folder.mkdir(parents=True)
    lines = [{"epoch": i + 1, "step": 10 * (i + 1), "lr": 0.1, "train_accuracy": 1 - train, **(
              {} if test is None else {"test_accuracy": 1 - test})}
             for i, (train, test) in enumerate(zip(train_errors, test_errors, strict=True))]  # fmt: skip
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    data = {"train_images": 50_000, "test_images": 10_000}
    summary = {"recipe": "cpu", "epochs": epochs, "batch_size": 128, "model": "x", "seed": 0, "data": data}
    (folder / "results.json").write_text(json.dumps(summary))
    return folder


def test_the_figure_can_be_built_from_existing_run_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(degradation.cifar10, "train", lambda **s: pytest.fail("nothing should train"))
    plain = write_run(tmp_path / "p20", [0.5, 0.3], [0.5, 0.4], 2)
    r20 = write_run(tmp_path / "r20", [0.5, 0.3, 0.2], [0.6, None, 0.3], 3)
    r56 = write_run(tmp_path / "r56", [0.6, 0.2, 0.1], [0.7, 0.4, 0.2], 3)
    out = tmp_path / "figure6.png"
    status = degradation.main(["--plain", "20", "--residual", "20", "56", "--out", str(out), "--runs",
                               f"plain20={plain}", f"resnet20={r20}", f"ResNet-56={r56}"])  # fmt: skip
    assert status == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert [n["run_dir"] for n in summary["networks"]] == [str(plain), str(r20), str(r56)]
    assert summary["networks"][1]["test_error"] == [0.6, None, pytest.approx(0.3)]
    # The title tells each half's schedule, read from the runs, and that the plain one is shorter.
    assert "50,000 train / 10,000 test images\n" in summary["title"]
    assert "plain networks (a shorter schedule): cpu recipe, 2 epochs of batch 128" in summary["title"]
    assert "residual networks: cpu recipe, 3 epochs of batch 128" in summary["title"]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_network_can_come_from_the_curve_json_of_a_run_whose_folder_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(degradation.cifar10, "train", lambda **s: pytest.fail("nothing should train"))
    plain = write_run(tmp_path / "p20", [0.5, 0.3], [0.5, 0.4], 3)
    r20 = write_run(tmp_path / "r20", [0.5, 0.3, 0.2], [0.6, None, 0.3], 3)
    kept = tmp_path / "kept" / "resnet20.png"
    assert plot.main([str(r20), "--out", str(kept)]) == 0
    shutil.rmtree(r20)
    out = tmp_path / "figure6.png"
    status = degradation.main(["--plain", "20", "--residual", "20", "--out", str(out), "--runs",
                               f"plain20={plain}", f"resnet20={kept.with_suffix('.json')}"])  # fmt: skip
    assert status == 0
    networks = json.loads(out.with_suffix(".json").read_text())["networks"]
    assert networks[1]["test_error"] == [0.6, None, pytest.approx(0.3)]
    assert networks[1]["summary"]["epochs"] == 3
    # A curve JSON of a run that never finished has no results: it cannot stand for a finished network.
    unfinished = write_run(tmp_path / "u", [0.5], [0.5], 1)
    (unfinished / "results.json").unlink()
    assert plot.main([str(unfinished), "--out", str(tmp_path / "u.png")]) == 0
    with pytest.raises(SystemExit) as exit_info:
        degradation.parse(["--plain", "20", "--residual", "20", "--runs", f"plain20={tmp_path / 'u.json'}"])
    assert exit_info.value.code == 2
    # Nor can one whose results lack what the figure's title reads.
    record = json.loads(kept.with_suffix(".json").read_text())
    del record["curves"][0]["summary"]["batch_size"]
    kept.with_suffix(".json").write_text(json.dumps(record))
    given = f"resnet20={kept.with_suffix('.json')}"
    with pytest.raises(SystemExit) as exit_info:
        degradation.parse(["--plain", "20", "--residual", "20", "--runs", given])
    assert exit_info.value.code == 2


def test_the_time_limit_is_shared_by_the_runs_and_a_stop_ends_the_invocation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    seen = stop_every_run_at_its_time_limit(monkeypatch)
    args = ["--quick", "--recipe", "cpu", "--time-limit", "600", "--plain-epochs", "5", "lr_warmup_steps=3",
            "--no-verify-checksums", "--lr", "0.05", "--seed", "3", "--data-dir", "2024", "--out",
            str(tmp_path / "f.png"), "--logs-dir", str(tmp_path / "logs")]  # fmt: skip
    assert degradation.main(args) == 1
    assert "run the same command again to resume it" in capsys.readouterr().out
    (settings,) = seen
    assert 0 < settings["time_limit_s"] <= 600 and settings["run_dir"] == tmp_path / "logs" / "plain-20"
    assert settings["model"] == "custom" and settings["n_channels"] == [8, 16, 32]  # --quick: half width
    assert (settings["train_subset"], settings["test_subset"], settings["epochs"]) == (5_000, 1_000, 5)
    assert settings["lr_warmup_steps"] == 3 and settings["verify_checksums"] is False
    # The trainer's flags as the trainer takes them: a number where its setting is one, text for a path.
    assert (settings["optimizer.learning_rate"], settings["seed"], settings["data_dir"]) == (0.05, 3, "2024")
    assert settings["recipe"] == "cpu"
    assert settings["eval_every_epoch"] is True and settings["valid_split"] == 0


def exit_status(args: list[str]) -> int:
    """What the command exits with: argparse's own refusals exit, the trainer's are returned."""
    try:
        return degradation.main(args)
    except SystemExit as e:
        return int(e.code or 0)


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--plain", "21"], "6n+2"),
        (["--residual", "20", "20"], "each depth once"),
        (["--out", "figure.svg"], ".png"),
        (["--runs", "resnet7=."], "NETWORK=RUN_FOLDER"),
        (["--runs", "resnet20=/no/such/run"], "NETWORK=RUN_FOLDER"),
        (["--runs", "resnet20=."], "a finished run (with its results.json)"),
        (["epochs"], "key=value"),
        (["--time-limit", "0"], "--time-limit 0.0: must be positive"),
        # The trainer's settings are checked by the trainer, and the error names the network.
        (["--plain-epochs", "-1"], "error: plain-20: epochs=-1: must be at least 1"),
        (["--amp", "fp8"], "error: plain-20: amp='fp8': must be one of none, auto"),
        (["epochs=abc"], "error: plain-20: epochs='abc': expected a whole number"),
        (["--threads", "two"], "--threads: invalid int value: 'two'"),
    ],
)
def test_bad_arguments_exit_2_with_the_fix(bad: list[str], message: str, tmp_path: Path, capsys) -> None:
    status = exit_status(
        ["--quick", "--out", str(tmp_path / "x.png"), "--logs-dir", str(tmp_path / "l"), *bad]
    )
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "l").exists()


def test_without_matplotlib_nothing_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a)
    )
    with pytest.raises(SystemExit) as exit_info:
        degradation.main(["--quick", "--out", str(tmp_path / "x.png"), "--logs-dir", str(tmp_path / "logs")])
    assert exit_info.value.code == 2 and 'pip install -e ".[plot]"' in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()


def test_a_trainer_error_is_one_line_naming_the_network(
    synthetic_cifar: Path, tmp_path: Path, capsys
) -> None:
    assert degradation.main(argv(synthetic_cifar, tmp_path, "train_subset=5000")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    # The trainer draws the subset and names its setting; the experiment says which network stopped.
    assert len(err) == 1 and "plain-8" in err[0] and "train_subset=5000" in err[0] and "only 80" in err[0]
    assert not (tmp_path / "fig.png").exists() and not (tmp_path / "fig.json").exists()


def test_the_users_data_is_checked_against_the_official_md5_sums(tmp_path: Path, capsys) -> None:
    # The synthetic files without their sums published: as for any user's copy, the first run stops.
    write_synthetic_cifar10(tmp_path / "cifar", n_per_train_batch=16, n_test=20, separable=True)
    assert degradation.main(argv(tmp_path / "cifar", tmp_path)) == 1
    err = capsys.readouterr().err
    assert "md5" in err and "verify_checksums=false" in err and "plain-8" in err


def test_the_numbers_are_on_disk_even_when_drawing_fails(
    synthetic_cifar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(degradation.plot, "figure6", broken)
    with pytest.raises(RuntimeError, match="drawing failed"):
        degradation.main(argv(synthetic_cifar, tmp_path, "--plain", "8", "--residual", "8", "--epochs", "1"))
    summary = json.loads((tmp_path / "fig.json").read_text())
    assert [n["network"] for n in summary["networks"]] == ["plain-8", "ResNet-8"]
    assert not (tmp_path / "fig.png").exists()


def test_paper_widths_use_the_trainers_presets_and_others_a_custom_network() -> None:
    assert degradation.network("plain", 56, (16, 32, 64)) == ("plain-56", {"model": "plain56"})
    assert degradation.network("residual", 110, (16, 32, 64)) == ("ResNet-110", {"model": "resnet110"})
    custom = {"model": "custom", "n_blocks": [1, 1, 1], "n_channels": [4, 8, 16], "shortcut": "none"}
    assert degradation.network("plain", 8, (4, 8, 16)) == ("plain-8", custom)
    assert degradation.network("residual", 14, (16, 32, 64))[1]["shortcut"] == "A"
    with pytest.raises(ValueError, match="6n\\+2"):
        degradation.network("plain", 21, (16, 32, 64))


def test_trainer_settings_are_read_as_the_trainer_types_them() -> None:
    assert degradation.setting("lr_warmup_steps=400") == ("lr_warmup_steps", 400)
    assert degradation.setting("verify_checksums=false") == ("verify_checksums", False)
    assert degradation.setting("n_blocks=[1, 1, 1]") == ("n_blocks", [1, 1, 1])
    assert degradation.setting("data_dir=/data/cifar") == ("data_dir", "/data/cifar")
    # A text setting stays text even where it looks like a number: the trainer's default says which.
    assert degradation.setting("data_dir=2024") == ("data_dir", "2024")


def curve(label: str, depth: int) -> tuple[int, plot.Curve]:
    return depth, plot.Curve(
        label, [1, 2, 3], [10, 20, 30], [0.9, 0.5, 0.3], "test", [0.9, 0.6, 0.4], [0.1] * 3
    )


def test_figure_6_has_the_papers_layout_and_is_legible_at_readme_width() -> None:
    panels = {kind: [curve(f"{kind}-{d}", d) for d in (20, 56)] for kind in ("plain", "ResNet")}
    figure = plot.figure6(panels, "CIFAR-10: " + ", ".join(f"setting {i} = {i * 1000}" for i in range(14)))
    left, right = figure.axes
    for ax, kind in ((left, "plain"), (right, "ResNet")):
        train = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        test = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
        assert len(train) == len(test) == 2
        assert all(t.get_linewidth() < s.get_linewidth() for t, s in zip(train, test, strict=True))
        assert [t.get_color() for t in train] == [s.get_color() for s in test]
        assert list(test[0].get_ydata()) == pytest.approx([90, 60, 40])  # error in percent
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"{kind}-20", f"{kind}-56"]
        assert min(t.get_fontsize() for t in ax.get_legend().get_texts()) >= 10
        assert ax.xaxis.label.get_fontsize() >= 11
    # One colour per depth, the same in both panels.
    colours = [[line.get_color() for line in ax.get_lines()] for ax in figure.axes]
    assert colours[0] == colours[1] and colours[0][0] != colours[0][2]
    # Wide enough for a README column at 100 dpi, and a long title wrapped inside it.
    assert figure.get_figwidth() * 100 >= 1000
    figure.canvas.draw()
    box = figure._suptitle.get_window_extent()
    assert 0 <= box.x0 and box.x1 <= figure.bbox.width and figure._suptitle.get_text().count("\n") >= 1


def test_figure_6_stops_its_axis_at_30_percent_unless_a_run_ends_higher() -> None:
    # The early epochs' errors (90% here) would squash the end, where the curves part.
    low = plot.Curve(
        "ResNet-20", [1, 2, 3], [10, 20, 30], [0.9, 0.2, 0.05], "test", [0.9, None, 0.08], [0.1] * 3
    )
    assert plot.figure6({"plain": [(20, low)], "residual": [(20, low)]}, "t").axes[0].get_ylim() == (0, 30)
    # A run that ends at 40% test error (a short or subset run) keeps half as much again above it.
    assert plot.figure6({"plain": [curve("plain-20", 20)]}, "t").axes[0].get_ylim() == (0, 60)


def test_subset_is_class_balanced_and_fixed_by_the_seed() -> None:
    labels = torch.arange(1_000) % 10
    labels[:300] = 3  # an unbalanced source
    index = cifar_data.class_balanced_subset(labels, 50, seed=1)
    assert len(set(index.tolist())) == 50
    assert torch.bincount(labels[index], minlength=10).tolist() == [5] * 10
    assert torch.equal(index, cifar_data.class_balanced_subset(labels, 50, seed=1))
    assert not torch.equal(index, cifar_data.class_balanced_subset(labels, 50, seed=2))
    with pytest.raises(ValueError, match="only 1000"):
        cifar_data.class_balanced_subset(labels, 1_001, seed=1)
