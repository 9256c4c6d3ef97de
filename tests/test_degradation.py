"""
The degradation experiment (`experiments/degradation.py`) end to end on tiny synthetic CIFAR-10.

The real networks and the real data set are far too slow for CI, so the end-to-end test trains 8- and
14-layer networks with narrow stages for two epochs on 40 images. What it checks is the plumbing the
figure depends on: four ordinary trainer runs, their per-epoch errors read back from the run folders,
a JSON with every series at the right length, and a PNG in Figure 6's layout.
"""

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from cifar_synthetic import publish_digests_of, write_synthetic_cifar10

from experiments import data as cifar_data
from experiments import degradation

TINY = [
    "--depths",
    "8",
    "14",
    "--widths",
    "4",
    "8",
    "16",
    "--epochs",
    "2",
    "--batch-size",
    "16",
    "--train-images",
    "40",
    "--test-images",
    "20",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--no-download",
]


def write_small_cifar(root: Path) -> Path:
    """A small synthetic CIFAR-10 in the official layout under `root`; returns its batches folder."""
    return write_synthetic_cifar10(root, n_per_train_batch=16, n_test=20, separable=True)


@pytest.fixture
def synthetic_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """
    A small synthetic CIFAR-10 standing in for the user's copy. A run on the user's CIFAR-10 checks
    every md5 sum, and so do these runs: the loader is told to expect these files' sums instead of the
    official ones, which they cannot match.
    """
    root = tmp_path / "cifar"
    publish_digests_of(monkeypatch, *write_small_cifar(root).iterdir())
    return root


def test_quick_run_trains_four_networks_and_plots_every_epoch(synthetic_cifar: Path, tmp_path: Path) -> None:
    out = tmp_path / "figure" / "degradation.png"
    out.parent.mkdir()
    status = degradation.main(
        [
            "--quick",
            "--data-dir",
            str(synthetic_cifar),
            "--logs-dir",
            str(tmp_path / "logs"),
            "--out",
            str(out),
            *TINY,
        ]
    )
    assert status == 0

    summary = json.loads(out.with_suffix(".json").read_text())
    names = [n["network"] for n in summary["networks"]]
    assert names == ["plain-8", "plain-14", "ResNet-8", "ResNet-14"]
    assert summary["data"].startswith("CIFAR-10 subset: 40 train / 20 test")
    # Widths other than the paper's are part of the setting, so the JSON and the figure's title say so.
    assert summary["widths"] == [4, 8, 16] and "widths 4/8/16" in summary["title"]
    for network in summary["networks"]:
        assert network["epochs"] == [1, 2]
        assert len(network["train_error"]) == len(network["test_error"]) == 2
        assert all(0.0 <= e <= 1.0 for e in network["train_error"] + network["test_error"])
        # The numbers come from the trainer's own run folder (one labml run per network).
        metrics = Path(network["run_dir"]) / "metrics.jsonl"
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
        assert [1 - r["test_accuracy"] for r in records] == pytest.approx(network["test_error"])
        # 40 images in batches of 16: three steps per epoch.
        assert network["steps"] == [3, 6]
    # Plain and residual twins have the same parameters: option A adds none.
    params = {n["network"]: n["parameters"] for n in summary["networks"]}
    assert params["plain-8"] == params["ResNet-8"] < params["plain-14"] == params["ResNet-14"]

    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 5_000 < out.stat().st_size < 500_000
    # The subset is the trainer's own setting (no copy of the data), recorded with each run.
    for network in summary["networks"]:
        configs = (Path(network["run_dir"]) / "configs.yaml").read_text()
        assert "train_subset" in configs and "test_subset" in configs
        # Every key is in configs.yaml; the values show the subset and which networks had shortcuts.
        computed = {key: entry["computed"] for key, entry in yaml.safe_load(configs).items()}
        assert (computed["train_subset"], computed["test_subset"]) == (40, 20)
        assert computed["shortcut"] == ("none" if network["kind"] == "plain" else "A")


def test_an_existing_plot_is_never_overwritten_without_asking(
    synthetic_cifar: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "mine.png"
    out.write_bytes(b"someone's figure")
    with pytest.raises(SystemExit) as exit_info:
        degradation.main(["--quick", "--data-dir", str(synthetic_cifar), "--out", str(out), *TINY])
    assert exit_info.value.code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"someone's figure"


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--depths", "21", "56"], "6n+2"),
        (["--depths", "20", "20"], "each depth once"),
        (["--epochs", "0"], "at least 1"),
        (["--lr", "-0.1"], "positive"),
        (["--out", "figure.svg"], "ending in .png"),
        (["--stand-in", "--data-dir", "somewhere"], "leave out --data-dir"),
    ],
)
def test_bad_arguments_exit_2_with_the_fix(
    bad: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["--quick", "--out", str(tmp_path / "x.png"), *bad]
    with pytest.raises(SystemExit) as exit_info:
        degradation.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_too_large_a_subset_is_a_one_line_error(
    synthetic_cifar: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = [
        "--quick",
        "--data-dir",
        str(synthetic_cifar),
        "--out",
        str(tmp_path / "x.png"),
        *TINY,
        "--train-images",
        "5000",
    ]
    assert degradation.main(argv) == 1
    err = capsys.readouterr().err
    # The trainer draws the subset and names its setting; the experiment says which network stopped.
    assert "train_subset=5000" in err and "only 80" in err and "plain-8" in err
    assert not (tmp_path / "x.png").exists()


def _curve(kind: str, depth: int) -> degradation.Curve:
    return degradation.Curve(
        f"{kind}-{depth}",
        kind,
        depth,
        epochs=[1, 2, 3],
        steps=[10, 20, 30],
        train_error=[0.9, 0.5, 0.3],
        test_error=[0.9, 0.6, 0.4],
    )


def test_figure_has_figure_6s_layout() -> None:
    curves = [_curve(kind, depth) for kind in ("plain", "residual") for depth in (20, 56)]
    figure = degradation.build_figure(curves, "title")
    plain, residual = figure.axes
    for ax, kind in ((plain, "plain"), (residual, "residual")):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == {f"{kind}-{d} {s}" for d in (20, 56) for s in ("train", "test")}
        for depth in (20, 56):
            train, test = lines[f"{kind}-{depth} train"], lines[f"{kind}-{depth} test"]
            assert train.get_linestyle() == "--" and test.get_linestyle() == "-"
            assert train.get_color() == test.get_color()
            # Error in percent.
            assert list(test.get_ydata()) == pytest.approx([90, 60, 40])
    colour = {line.get_label(): line.get_color() for ax in figure.axes for line in ax.get_lines()}
    # One colour per depth, the same in both panels; different depths differ.
    assert colour["plain-20 test"] == colour["residual-20 test"] != colour["plain-56 test"]


def test_a_long_title_stays_inside_the_figure() -> None:
    curves = [_curve(kind, depth) for kind in ("plain", "residual") for depth in (20, 56)]
    title = "CIFAR-10 (quick mode): " + ", ".join(f"setting {i} = {i * 1000}" for i in range(12))
    figure = degradation.build_figure(curves, title + "\ndashed: training error, solid: test error")
    figure.canvas.draw()
    box = figure._suptitle.get_window_extent()
    assert 0 <= box.x0 and box.x1 <= figure.bbox.width, "the title is cut off at the figure's edges"
    assert figure._suptitle.get_text().count("\n") >= 2  # the long line was wrapped


def test_paper_widths_use_the_trainers_presets_and_others_a_custom_network() -> None:
    assert degradation.Network("plain", 56).trainer_settings() == {"model": "plain56"}
    assert degradation.Network("residual", 20).trainer_settings() == {"model": "resnet20"}
    assert degradation.Network("plain", 8, (4, 8, 16)).trainer_settings() == {
        "model": "custom",
        "n_blocks": [1, 1, 1],
        "n_channels": [4, 8, 16],
        "shortcut": "none",
    }
    assert degradation.Network("residual", 14).trainer_settings()["shortcut"] == "A"


def test_the_title_names_the_widths_only_when_they_are_not_the_papers(tmp_path: Path) -> None:
    parser = degradation.build_parser()
    titles = []
    for widths in ([], ["--widths", "8", "16", "32"]):
        args = parser.parse_args(["--quick", "--stand-in", "--out", str(tmp_path / "x.png"), *widths])
        titles.append(degradation.plan_from_args(args, parser).title)
    assert "widths" not in titles[0] and "widths 8/16/32," in titles[1]


def test_quick_schedule_leaves_the_drops_to_the_trainers_fractions() -> None:
    # The trainer places the drops at 50% and 75% of any run (tests/test_recipes.py checks where), so the
    # degradation script passes only the length, the batch and the linearly scaled rate.
    schedule = degradation.make_schedule(20, 128, None)
    assert schedule.trainer_settings() == {"batch_size": 128, "optimizer.learning_rate": 0.1, "epochs": 20}
    assert not any("milestones" in key for key in schedule.trainer_settings())
    # Linear scaling: a quarter of the batch, a quarter of the rate.
    assert degradation.make_schedule(20, 32, None).learning_rate == pytest.approx(0.025)
    # Without a length the trainer's 64k-iteration schedule applies unchanged.
    no_length = {"batch_size": 128, "optimizer.learning_rate": 0.1}
    assert degradation.make_schedule(None, 128, None).trainer_settings() == no_length


def test_amp_and_warmup_reach_every_network_and_are_checked_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # Without the flags the trainer keeps its own defaults.
    assert not {"amp", "lr_warmup_steps"} & set(degradation.make_schedule(20, 128, None).trainer_settings())
    seen: list[dict] = []

    def fake_train(**settings: object) -> SimpleNamespace:
        # A finished one-epoch run that trained in bf16, as `amp=auto` on a CPU with native bf16 decides.
        seen.append(settings)
        record = {"epoch": 1, "step": 5, "train_accuracy": 0.5, "test_accuracy": 0.4}
        summary = {"parameters": 1, "wall_time_s": 1.0, "device": "cpu", "amp": "bf16"}
        return SimpleNamespace(summary=summary, history=[record], run_dir=tmp_path / f"run{len(seen)}")

    monkeypatch.setattr(degradation.cifar10, "train", fake_train)
    out = tmp_path / "figure.png"
    assert (
        degradation.main(["--stand-in", "--amp", "auto", "--warmup-steps", "2", "--out", str(out), *TINY])
        == 0
    )
    assert len(seen) == 4
    assert all(run["amp"] == "auto" and run["lr_warmup_steps"] == 2 for run in seen)
    # What each run chose is on record, since `auto` decides per run.
    assert [n["amp"] for n in json.loads(out.with_suffix(".json").read_text())["networks"]] == ["bf16"] * 4
    for bad, message in (
        (["--amp", "bf15"], "invalid choice: 'bf15'"),
        (["--warmup-steps", "-1"], "--warmup-steps -1: must be 0 or more"),
        # TINY's stand-in run: 2 epochs of ceil(40 / 16) = 3 steps, so the first drop is at step 3.
        (["--warmup-steps", "3"], "end before the first drop, at step 3 of this run's 6"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            degradation.main(["--stand-in", *bad, "--out", str(tmp_path / "other.png"), *TINY])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert len(seen) == 4, "a bad argument must stop the script before any network trains"


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


def test_stand_in_is_balanced_reproducible_and_not_separable_by_colour() -> None:
    images, labels = degradation.stand_in_images(1_000, seed=0)
    assert images.shape == (1_000, 3, 32, 32) and images.dtype.name == "uint8"
    assert torch.bincount(torch.from_numpy(labels)).tolist() == [100] * 10
    again, _ = degradation.stand_in_images(1_000, seed=0)
    assert (images == again).all()
    # Colour says nothing about the class: the class means differ by much less than images of one
    # class differ from each other (the random background colour).
    colour = torch.from_numpy(images).float().mean(dim=(2, 3))  # [n, 3]
    labels_t = torch.from_numpy(labels)
    class_means = torch.stack([colour[labels_t == k].mean(dim=0) for k in range(10)])
    within = torch.stack([colour[labels_t == k].std(dim=0) for k in range(10)]).mean(dim=0)
    spread = class_means.max(dim=0).values - class_means.min(dim=0).values
    assert (spread < 0.5 * within).all()


def test_stand_in_data_is_written_in_cifar_format_and_removed_afterwards() -> None:
    plan = degradation.DataPlan("stand-in", None, True, 30, 20, seed=0)
    assert plan.trainer_settings() == {"verify_checksums": False}
    with degradation.prepared_data(plan) as root:
        # Not the official files: the md5 check refuses them, and only that check is switched off.
        with pytest.raises(cifar_data.DataError, match="md5"):
            cifar_data.load_cifar10(root, download=False)
        arrays = cifar_data.load_cifar10(root, download=False, verify_checksums=False)
        assert arrays.train_images.shape == (30, 3, 32, 32)
        assert arrays.test_images.shape == (20, 3, 32, 32)
        assert arrays.classes == degradation.STAND_IN_CLASSES
    assert not root.exists()
    # Only the stand-in's own runs skip the md5 check: a plan on the user's CIFAR-10 passes nothing
    # that turns it off.
    users_data = degradation.DataPlan("CIFAR-10", Path("data"), False, None, None, seed=0)
    assert "verify_checksums" not in users_data.trainer_settings()


def test_a_run_on_the_users_data_checks_the_md5_sums(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # The same synthetic files as above, but with the official sums expected, as for any user's copy:
    # the first network's run stops at the md5 check, before training anything.
    write_small_cifar(tmp_path / "cifar")
    out = tmp_path / "figure.png"
    argv = ["--quick", "--data-dir", str(tmp_path / "cifar"), "--logs-dir", str(tmp_path / "logs")]
    assert degradation.main([*argv, "--out", str(out), *TINY]) == 1
    err = capsys.readouterr().err
    assert "md5" in err and "verify_checksums=false" in err and "plain-8" in err
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_a_cifar_subset_is_read_in_place_and_chosen_by_the_trainer(tmp_path: Path) -> None:
    plan = degradation.DataPlan("subset", tmp_path, False, 5_000, 1_000, seed=0)
    with degradation.prepared_data(plan) as root:
        assert root == tmp_path
    assert plan.trainer_settings() == {"train_subset": 5000, "test_subset": 1000}
    # A faithful copy that is not the official archive: only the user's own flag turns the md5 check off.
    copy = degradation.DataPlan("subset", tmp_path, False, 5_000, 1_000, seed=0, verify_checksums=False)
    assert copy.trainer_settings() == {"verify_checksums": False, "train_subset": 5000, "test_subset": 1000}
    args = degradation.build_parser().parse_args(["--quick", "--no-verify-checksums"])
    assert args.no_verify_checksums is True
    assert list(tmp_path.iterdir()) == []


# ### A long run checks its optional plotting package first and writes its numbers before drawing

# The tiny settings above, cut to one depth and one epoch: two networks are enough here.
ONE_DEPTH = [*TINY]
ONE_DEPTH[ONE_DEPTH.index("--depths") : ONE_DEPTH.index("--depths") + 3] = ["--depths", "8"]
ONE_DEPTH[ONE_DEPTH.index("--epochs") + 1] = "1"


def one_depth_quick_run(data_dir: Path, tmp_path: Path, out: Path) -> list[str]:
    """A `--quick` run of the two depth-8 networks for one epoch, its run folders under `tmp_path/logs`."""
    return ["--quick", "--data-dir", str(data_dir), "--logs-dir", str(tmp_path / "logs"), "--out", str(out),
            *ONE_DEPTH]  # fmt: skip


def test_without_matplotlib_the_run_stops_before_training(
    synthetic_cifar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a),
    )
    with pytest.raises(SystemExit) as exit_info:
        degradation.main(one_depth_quick_run(synthetic_cifar, tmp_path, tmp_path / "figure.png"))
    assert exit_info.value.code == 2
    assert 'pip install -e ".[plot]"' in capsys.readouterr().err
    assert not (tmp_path / "logs").exists() and not (tmp_path / "figure.json").exists()


def test_the_numbers_are_on_disk_even_when_drawing_fails(
    synthetic_cifar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(degradation, "build_figure", broken)
    out = tmp_path / "figure.png"
    with pytest.raises(RuntimeError, match="drawing failed"):
        degradation.main(one_depth_quick_run(synthetic_cifar, tmp_path, out))
    summary = json.loads(out.with_suffix(".json").read_text())
    assert [n["network"] for n in summary["networks"]] == ["plain-8", "ResNet-8"]
    assert not out.exists()
