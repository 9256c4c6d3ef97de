"""
The benchmark scripts run end to end in their `--quick` mode and print what BENCHMARKS.md quotes: a table
row per measurement and the ratio lines, after the line naming the machine and its load. Only the output's
shape is checked, never a timing: the numbers depend on the machine and on whatever else runs on it.
"""

import re

import pytest
import torch

from benchmarks import data_pipeline, model_speed, trainer_overhead

NUMBER = r"\d+(\.\d+)?"


@pytest.fixture(autouse=True)
def one_thread():
    """
    The shared test machine is often busy; a second OpenMP thread then mostly waits for a core, and the
    smoke runs take several times longer. One thread keeps them quick; timings are not checked anyway.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_model_speed_prints_a_row_and_a_ratio_for_every_model_variant_and_mode(capsys):
    results = model_speed.main(["--quick", "--device", "cpu"])
    out = capsys.readouterr().out
    assert out.startswith("machine: cpu (1 threads), CPU ")
    expected = [
        (model, variant, mode)
        for model in ("resnet20", "resnet18")
        for variant in ("eager", "channels_last")
        for mode in ("train", "infer")
    ]
    assert [(r.name, r.variant, r.mode) for r in results] == expected
    for model, variant, mode in expected:
        assert re.search(
            rf"^\| {model} +\| {variant} +\| {mode} +\| 4 +\| 32 +\| {NUMBER} +\| {NUMBER} +"
            rf"\| {NUMBER} +\|",
            out,
            re.MULTILINE,
        ), (model, variant, mode)
        assert re.search(rf"^ratio {model} {variant} {mode}: {NUMBER} \(ours/reference", out, re.MULTILINE)
    assert "torchvision.models.resnet18" in out and "minimal option-A CIFAR ResNet" in out
    assert re.search(rf"^ratio geometric mean over 8 rows: {NUMBER}$", out, re.MULTILINE)


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "resnet9", "resnet18", "resnet50"])
def test_model_speed_compares_equal_architectures(name):
    ours, reference, _ = model_speed.build_pair(name)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())


def test_the_cifar_reference_has_the_papers_shape():
    reference = model_speed.reference_cifar_resnet(3)
    assert sum(isinstance(m, model_speed.ReferenceResidual) for m in reference) == 9
    assert reference(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "name, described",
    [("resnet9", "minimal ResNet-9 (nn.Sequential)"), ("resnet20", "minimal option-A CIFAR ResNet")],
)
def test_the_reference_computes_the_same_function_as_ours(name, described):
    """
    Equal parameter counts could hide a different layer order; equal outputs from the same weights cannot.
    Both list their parameters and buffers in the same order, so ours load into the reference one by one.
    """
    ours, reference, what = model_speed.build_pair(name)
    assert what == described and isinstance(reference, torch.nn.Sequential)
    ours_state, reference_state = ours.state_dict(), reference.state_dict()
    assert [t.shape for t in ours_state.values()] == [t.shape for t in reference_state.values()]
    reference.load_state_dict(dict(zip(reference_state, ours_state.values(), strict=True)))
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ours.eval()
    reference.eval()
    torch.testing.assert_close(reference(images), ours(images))


def one_timed_step(models: str, *extra: str) -> list[str]:
    """model_speed arguments for one timed step of batch 2 on the CPU, without warm-up."""
    return ["--models", models, "--batch-size", "2", "--repeats", "1", "--steps", "1", "--warmup", "0",
            *extra, "--device", "cpu"]  # fmt: skip


def test_model_speed_times_resnet9_at_cifar_size_against_its_reference(capsys):
    results = model_speed.main(one_timed_step("resnet9", "--variants", "eager"))
    out = capsys.readouterr().out
    assert [(r.name, r.mode, r.image_size) for r in results] == [
        ("resnet9", "train", 32),
        ("resnet9", "infer", 32),
    ]
    for mode in ("train", "infer"):
        row = (
            rf"^\| resnet9 +\| eager +\| {mode} +\| 2 +\| 32 +\| {NUMBER} +\| {NUMBER} +\| {NUMBER} +\| "
            rf"\d+% +\| minimal ResNet-9 \(nn.Sequential\) +\|$"
        )
        assert re.search(row, out, re.MULTILINE), mode


def test_model_speed_flags_can_skip_compile_and_channels_last(capsys):
    results = model_speed.main(
        one_timed_step("resnet20", "--modes", "infer", "--no-channels-last", "--no-compile")
    )
    assert [(r.variant, r.mode) for r in results] == [("eager", "infer")]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", "resnet7"], "--models"),
        (["--variants", "fast"], "--variants"),
        (["--repeats", "0"], "--repeats"),
        (["--variants", "compile", "--no-compile"], "removed every variant"),
        (["--threads", "0"], "--threads"),
    ],
)
def test_model_speed_rejects_bad_flags_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        model_speed.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_data_pipeline_prints_supply_demand_and_the_loader_ratios(capsys):
    rates = data_pipeline.main(["--quick", "--device", "cpu"])
    out = capsys.readouterr().out
    assert out.startswith("machine: cpu (1 threads), CPU ")
    for row in (
        "supply: TensorBatches",
        "supply: DataLoader+PIL workers=0",
        "demand: resnet20 train step (fixed batch)",
        "end to end: TensorBatches -> resnet20 step",
        "end to end: DataLoader+PIL workers=0 -> resnet20 step",
    ):
        assert row in rates
        assert re.search(rf"^\| {re.escape(row)} +\| \d+ +\| \d+% +\|$", out, re.MULTILINE), row
    for line in (
        "ratio supply/demand TensorBatches",
        "ratio supply/demand DataLoader+PIL workers=0",
        "ratio TensorBatches/DataLoader+PIL workers=0 supply",
        "ratio TensorBatches/DataLoader+PIL workers=0 end to end",
    ):
        assert re.search(rf"^{re.escape(line)}: {NUMBER}", out, re.MULTILINE), line


@pytest.mark.parametrize(
    "argv, message",
    [(["--images", "8", "--batch-size", "16"], "--images"), (["--workers", "0", "-1"], "--workers")],
)
def test_data_pipeline_rejects_bad_flags_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        data_pipeline.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_trainer_overhead_prints_both_loops_and_the_overhead(capsys):
    overhead = trainer_overhead.main(["--quick", "--device", "cpu"])
    out = capsys.readouterr().out
    assert out.startswith("machine: cpu (1 threads), CPU ") and "load average" in out.splitlines()[0]
    for loop in ("labml trainer (cifar10.train)", "bare PyTorch loop"):
        assert re.search(rf"^\| {re.escape(loop)} +\| {NUMBER} +\| {NUMBER} +\| \d+% +\|$", out, re.MULTILINE)
    assert re.search(rf"^ratio trainer/bare epoch time: {NUMBER} \(median over repeats", out, re.MULTILINE)
    assert f"overhead: {overhead:+.2%} (target: at most +3%)" in out


def test_both_loops_of_the_overhead_benchmark_train_the_same_network_on_the_same_batches(tmp_path):
    """
    The same network, the same number of steps over the same images in the same batches, the same
    optimizer settings: what the trainer reports of its run must match the bare loop.
    """
    from experiments.synthetic import write_synthetic_cifar10

    write_synthetic_cifar10(tmp_path / "data", n_per_train_batch=8, n_test=16)
    settings = {"model": "resnet20", "batch_size": 16, "seed": 3, "channels_last": False, "device": "cpu"}
    seconds, summary = trainer_overhead.trainer_epoch(tmp_path / "data", tmp_path / "logs", settings)
    bare = trainer_overhead.BareLoop(tmp_path / "data", "resnet20", 16, False, torch.device("cpu"), seed=3)
    bare_seconds = bare.two_epochs()
    assert seconds > 0 and bare_seconds > 0
    assert summary["model"] == "resnet20" and summary["recipe"] == "paper" and summary["epochs"] == 2
    assert summary["parameters"] == sum(p.numel() for p in bare.model.parameters())
    # 40 images in batches of 16: three steps an epoch (the last batch smaller), on both sides.
    assert (
        summary["steps"] == bare.steps == 6
        and summary["data"]["train_images"] == bare.loader.images_per_epoch
    )
    first = next(bare.loader.epoch(0))[0]
    assert first.shape == (16, 3, 32, 32) and first.dtype == torch.float32
    group = bare.optimizer.param_groups[0]
    assert (group["momentum"], group["weight_decay"], group["initial_lr"]) == (0.9, 1e-4, 0.1)


def test_valid_ablation_scores_both_weights_in_every_view_on_the_validation_split(tmp_path, capsys):
    """A run with a weight average and a validation split, scored 2 x 2 x 3 ways on its held-out images."""
    from benchmarks import valid_ablation
    from experiments import cifar10
    from experiments.synthetic import write_synthetic_cifar10

    write_synthetic_cifar10(tmp_path / "data", n_per_train_batch=16, n_test=16, separable=True)
    run = cifar10.train(data_dir=str(tmp_path / "data"), verify_checksums=False, logs_dir=tmp_path / "logs",
                        device="cpu", epochs=1, batch_size=16, valid_split=20, ema_decay=0.9, model="custom",
                        n_blocks=[1, 1, 1], n_channels=[4, 8, 16]).run_dir  # fmt: skip
    capsys.readouterr()
    assert valid_ablation.main([str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{run}: 20 validation images, step 4"  # 60 training images in batches of 16
    rows = [line.split() for line in lines[2:]]
    expected = [(w, f, shift) for w in ("trained", "averaged") for f in ("no", "yes") for shift in "012"]
    assert [(r[0], r[1], r[2]) for r in rows] == expected
    assert all(0.0 <= float(r[4]) <= 1.0 for r in rows)
    # Runs without a split are refused: the comparison must never read the test set.
    plain = cifar10.train(data_dir=str(tmp_path / "data"), verify_checksums=False, logs_dir=tmp_path / "logs",
                          device="cpu", epochs=1, batch_size=16, ema_decay=0.9, model="custom",
                          n_blocks=[1, 1, 1], n_channels=[4, 8, 16]).run_dir  # fmt: skip
    with pytest.raises(SystemExit, match="no validation split"):
        valid_ablation.main([str(plain)])
