"""
`benchmarks/gpu.py` runs every GPU measurement in one command, one step after another; here it runs on
the CPU in `--quick` mode, on synthetic data in CIFAR-10's format. What is checked is what the script
promises a reader of its output: which steps run and which are skipped (and why), the summary table's
rows with honest verdicts, the files it writes and refuses to overwrite, and the time-to-target
arithmetic. Nothing here depends on how fast the machine is: no timing or time budget is asserted, and
the trainer's time limit is passed through, never hit.
"""

import contextlib
import io
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from cifar_synthetic import publish_digests_of

from benchmarks import common, gpu
from experiments import data as cifar_data

NUMBER = r"\d+(\.\d+)?"
COMPILED = {("model_speed", "resnet20 bf16 compiled"), ("trainer", "resnet20 fast compiled")}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path]:
    """One `--quick --device cpu` run shared by the tests that read its output (and what it printed)."""
    out = tmp_path_factory.mktemp("gpu-quick")
    printed = io.StringIO()
    threads = torch.get_num_threads()
    with contextlib.redirect_stdout(printed):
        # A day per trainer run: the limit must never be what ends a run on a slow, busy machine.
        summary = gpu.main(
            ["--quick", "--device", "cpu", "--threads", "1", "--time-limit", "86400", "--out", str(out)]
        )
    assert torch.get_num_threads() == threads, "the script puts the thread count back"
    return summary, printed.getvalue(), out


def test_every_step_runs_in_order_and_only_the_compiled_ones_are_skipped(quick_run):
    summary, _, out = quick_run
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary, default=str))
    steps = [(step["stage"], step["name"], step["status"]) for step in summary["steps"]]
    assert [(stage, name) for stage, name, _ in steps] == [
        *(("model_speed", call[0]) for call in gpu.SPEED_CALLS),
        ("data_pipeline", "TensorBatches vs resnet20"),
        *(("trainer", label) for label in gpu.TRAINER_RUNS),
    ]
    for stage, name, status in steps:
        cuda_graphs = name == "resnet20 fast CUDA graphs"
        assert status == ("skipped" if (stage, name) in COMPILED or cuda_graphs else "done"), name
    assert summary["machine"].startswith("cpu (1 threads), CPU ") and "load average" in summary["machine"]
    assert "synthetic" in summary["note"]


def test_model_speed_rows_cover_every_model_variant_precision_and_mode(quick_run):
    summary, _, _ = quick_run
    metrics = {row["metric"] for row in summary["rows"] if row["stage"] == "model speed"}
    expected = [
        ("resnet50", v, p)
        for v, p in (("eager", "fp32"), ("channels_last", "fp32"), ("channels_last", "bf16"))
    ]
    settings = (("eager", "fp32"), ("channels_last", "fp32"), ("channels_last", "bf16"))
    expected += [(m, v, p) for m in ("resnet20", "resnet56", "resnet9") for v, p in settings]
    for model, variant, precision in expected:
        for mode in ("train", "infer"):
            assert f"{model} {variant} {precision} {mode} b2 32px: ours/reference" in metrics
    ratios = [row for row in summary["rows"] if row["metric"].endswith("ours/reference")]
    assert len(ratios) == 2 * len(expected)
    for row in ratios:
        # --quick times batches of 2 once: it proves the code runs, not which side is faster.
        assert float(row["value"].split()[0]) > 0 and row["verdict"] == "not-measurable"
        assert row["target"] == ">= 1.0"


def test_data_pipeline_rows_compare_supply_with_demand(quick_run):
    summary, _, _ = quick_run
    rows = {row["metric"]: row for row in summary["rows"] if row["stage"] == "data pipeline"}
    ratio = rows["TensorBatches supply / resnet20 demand"]
    assert float(ratio["value"]) > 0 and ratio["verdict"] == "not-measurable"
    assert "supply: TensorBatches (img/s)" in rows
    assert "end to end: DataLoader+PIL workers=0 -> resnet20 step (img/s)" in rows


def test_trainer_rows_on_synthetic_data_say_the_accuracy_is_not_meaningful(quick_run):
    summary, _, out = quick_run
    for label, target in (("resnet20 fast", "91.25%"), ("resnet56 fast", "93.03%"), ("resnet9", "94.00%")):
        rows = {row["metric"]: row for row in summary["rows"] if row["stage"] == f"trainer {label}"}
        assert re.fullmatch(NUMBER, rows["train images/s, all epochs (incl. warm-up)"]["value"])
        accuracy = rows["final test accuracy"]
        assert accuracy["value"].endswith("(synthetic, not meaningful)")
        assert accuracy["verdict"] == "not-measurable"
        assert rows[f"training time to {target} (evaluation excluded)"]["verdict"] == "not-measurable"
    for label, recipe in (("resnet20 fast", "fast"), ("resnet9", "resnet9")):
        step = next(s for s in summary["steps"] if s["name"] == label)
        settings = step["details"]["settings"]
        # The trainer's own time limit, the recipe, and a test score every epoch reach the trainer.
        assert settings["recipe"] == recipe and settings["time_limit_s"] == 86400
        assert settings["eval_every_epoch"] is True and settings["verify_checksums"] is False
        assert step["details"]["results"]["recipe"] == recipe
        assert [e["epoch"] for e in step["details"]["history"]] == [1]
        # The run folders are kept under --out.
        assert Path(step["details"]["run_dir"]).parent.parent == out / "runs"


def test_the_table_is_printed_last_with_a_reason_for_each_skipped_step(quick_run):
    summary, printed, out = quick_run
    tail = printed[printed.rindex("# Summary") :].splitlines()
    assert tail[1] == f"machine: {summary['machine']}"
    table = [line for line in tail if line.startswith("|")]
    assert [cell.strip() for cell in table[0].split("|")[1:-1]] == [
        "stage",
        "metric",
        "value",
        "target",
        "verdict",
    ]
    assert printed.rstrip().splitlines()[-1] == table[-1]
    assert len(table) == len(summary["rows"]) + 2  # header and rule
    skipped = {row["metric"]: row for row in summary["rows"] if row["verdict"] == "skipped"}
    assert set(skipped) == {"resnet20 bf16 compiled", "resnet20 fast compiled", "resnet20 fast CUDA graphs"}
    assert (
        skipped["resnet20 bf16 compiled"]["value"] == "skipped: torch.compile steps are left out with --quick"
    )
    # The CUDA reason wins over --quick's: it would hold without --quick too.
    assert skipped["resnet20 fast CUDA graphs"]["value"] == "skipped: --cuda-graphs needs CUDA"
    assert table[-1] in (out / "summary.md").read_text()


def test_an_earlier_summary_is_never_overwritten(tmp_path, capsys):
    (tmp_path / "summary.json").write_text("earlier")
    with pytest.raises(SystemExit) as exit_info:
        gpu.main(["--quick", "--device", "cpu", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "--out" in capsys.readouterr().err
    assert (tmp_path / "summary.json").read_text() == "earlier"


@pytest.mark.parametrize(
    "argv",
    [["--stages", "speed"], ["--time-limit", "0"], ["--threads", "0"], ["--data-dir", "/no/such/folder"]],
)
def test_bad_flags_exit_2_with_a_message(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu.main(["--quick", "--device", "cpu", *argv])
    assert exit_info.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_only_the_stages_asked_for_run(monkeypatch, capsys):
    monkeypatch.setattr(
        gpu.cifar10, "train", lambda **settings: pytest.fail("the trainer stage was not asked for")
    )
    monkeypatch.setattr(gpu.model_speed, "main", lambda argv: pytest.fail("model_speed was not asked for"))
    summary = gpu.main(["--quick", "--device", "cpu", "--stages", "data_pipeline"])
    assert [step["stage"] for step in summary["steps"]] == ["data_pipeline"]


def test_each_trainer_run_passes_its_recipe_flags_and_time_limit(tmp_path):
    cuda = torch.device("cuda")
    runs = gpu.TRAINER_RUNS
    assert list(runs) == ["resnet9", "resnet20 fast", "resnet56 fast", "resnet20 fast compiled",
                          "resnet20 fast CUDA graphs"]  # fmt: skip
    calls = {label: gpu.trainer_settings(run, tmp_path, True, False, cuda, tmp_path, 90)
             for label, run in runs.items()}  # fmt: skip
    for label, settings in calls.items():
        assert settings["recipe"] == ("resnet9" if label == "resnet9" else "fast"), label
        # Real data: each recipe's own schedule and batch (time to accuracy needs them), every md5 checked.
        assert not {"epochs", "batch_size", "verify_checksums"} & set(settings), label
        assert settings["time_limit_s"] == 90 and settings["download"] is False
    assert {"compile", "cuda_graphs"} & set(calls["resnet20 fast compiled"]) == {"compile"}
    assert {"compile", "cuda_graphs"} & set(calls["resnet20 fast CUDA graphs"]) == {"cuda_graphs"}
    assert not {"compile", "cuda_graphs"} & set(calls["resnet9"])


def test_a_run_stopped_by_its_time_limit_is_reported_as_stopped(tmp_path, monkeypatch):
    # What the trainer returns when its time limit stops it: no summary, the epochs it finished.
    record = {"epoch": 1, "test_accuracy": 0.5, "train_time_s": 2.0, "epoch_train_time_s": 2.0,
              "train_images_per_s": 100.0}  # fmt: skip
    stopped = SimpleNamespace(summary=None, history=[record], run_dir=tmp_path / "run", stopped="time limit")
    monkeypatch.setattr(gpu.cifar10, "train", lambda **settings: stopped)
    summary = gpu.main(["--device", "cpu", "--stages", "trainer", "--no-compile", "--data-dir", str(tmp_path),
                        "--time-limit", "7"])  # fmt: skip
    statuses = {step["name"]: step["status"] for step in summary["steps"]}
    assert statuses == {"resnet9": "stopped", "resnet20 fast": "stopped", "resnet56 fast": "stopped",
                        "resnet20 fast compiled": "skipped",
                        "resnet20 fast CUDA graphs": "skipped"}  # fmt: skip
    rows = {(row["stage"], row["metric"]): row for row in summary["rows"]}
    assert rows[("trainer", "resnet9")]["value"] == "stopped: stopped by its 7 s time limit"
    assert rows[("trainer", "resnet9")]["verdict"] == "stopped"
    final = rows[("trainer resnet9", "final test accuracy (epoch 1, run stopped)")]
    assert (final["value"], final["verdict"]) == ("0.5000", "not-measurable")
    reached = rows[("trainer resnet9", "training time to 94.00% (evaluation excluded)")]
    assert reached["value"] == "not reached in 1 epochs before the time limit"


def test_a_step_that_fails_costs_only_its_own_rows(monkeypatch):
    def broken(argv):
        raise RuntimeError("no such kernel")

    monkeypatch.setattr(gpu.model_speed, "main", broken)
    summary = gpu.main(["--quick", "--device", "cpu", "--stages", "model_speed,data_pipeline"])
    statuses = [step["status"] for step in summary["steps"]]
    assert statuses == ["error"] * 6 + ["skipped", "done"]
    assert summary["rows"][0]["value"] == "error: RuntimeError: no such kernel"
    assert any(
        row["stage"] == "data pipeline" and row["verdict"] == "not-measurable" for row in summary["rows"]
    )


def test_with_real_data_accuracy_and_time_to_target_get_a_verdict(tmp_path, monkeypatch):
    # Synthetic files stand in for CIFAR-10, and the trainer checks every md5 sum against these files' sums.
    # Targets any run meets (accuracy 0, a million seconds), so the verdicts are known in advance; the fail
    # branches are checked below with a stand-in trainer whose numbers are chosen.
    monkeypatch.setitem(gpu.TARGETS, "resnet20", (0.0, 1e6))
    write = cifar_data.BATCHES_FOLDER
    from experiments.synthetic import write_synthetic_cifar10

    write_synthetic_cifar10(tmp_path / "data", n_per_train_batch=16, n_test=32, separable=True)
    publish_digests_of(monkeypatch, *(tmp_path / "data" / write).iterdir())
    run, cpu = gpu.TRAINER_RUNS["resnet20 fast"], torch.device("cpu")
    settings = {**gpu.trainer_settings(run, tmp_path / "data", True, False, cpu, tmp_path / "logs", 600),
                "epochs": 2, "batch_size": 64, "threads": 1}  # fmt: skip
    status, rows, details = gpu.train_step("resnet20 fast", settings, True, 80)
    assert status == "done"
    by_metric = {row.metric: row for row in rows}
    accuracy = by_metric["final test accuracy"]
    assert accuracy.verdict == "pass" and accuracy.target == ">= 0.0"
    assert float(accuracy.value) == pytest.approx(details["results"]["test_accuracy"], abs=1e-4)
    history = details["history"]
    assert [e["epoch"] for e in history] == [1, 2]
    # The trainer's clock at the first epoch that reached the target: the first, as every accuracy reaches 0.
    reached = by_metric["training time to 0.00% (evaluation excluded)"]
    assert (reached.value, reached.target, reached.verdict) == (
        f"{history[0]['train_time_s']:.1f} s (epoch 1)", "<= 1000000 s", "pass")  # fmt: skip
    assert by_metric["train images/s, last epoch"].value == f"{80 / history[-1]['epoch_train_time_s']:.0f}"


def stand_in_trainer(accuracies: list[float], train_times: list[float]):
    """A trainer that returns exactly what a finished run with these per-epoch numbers returns."""

    def fake_train(**settings):
        clock, records = 0.0, []
        for epoch, (accuracy, seconds) in enumerate(zip(accuracies, train_times, strict=True), start=1):
            clock += seconds
            records.append({"epoch": epoch, "test_accuracy": accuracy, "train_time_s": clock,
                            "epoch_train_time_s": seconds, "train_images_per_s": 1000.0})  # fmt: skip
        summary = {"test_accuracy": accuracies[-1], "train_images_per_s": 1000.0}
        return SimpleNamespace(summary=summary, history=records, run_dir=settings["logs_dir"] / "run")

    return fake_train


@pytest.mark.parametrize(
    ("accuracies", "train_times", "accuracy_verdict", "time_value", "time_verdict"),
    [
        ([0.80, 0.92], [5.0, 3.0], "pass", "8.0 s (epoch 2)", "pass"),
        ([0.95, 0.96], [31.0, 3.0], "pass", "31.0 s (epoch 1)", "fail"),
        ([0.92, 0.90], [5.0, 3.0], "fail", "5.0 s (epoch 1)", "pass"),
        ([0.50, 0.60], [5.0, 3.0], "fail", "not reached in 2 epochs", "fail"),
    ],
    ids=["both met", "too slow", "reached then fell back", "never reached"],
)
def test_real_data_verdicts_compare_the_run_with_resnet20s_targets(
    tmp_path, monkeypatch, accuracies, train_times, accuracy_verdict, time_value, time_verdict
):
    monkeypatch.setattr(gpu.cifar10, "train", stand_in_trainer(accuracies, train_times))
    run = gpu.TRAINER_RUNS["resnet20 fast"]
    settings = gpu.trainer_settings(run, tmp_path, True, False, torch.device("cuda"), tmp_path / "logs", 60)
    status, rows, _ = gpu.train_step("resnet20 fast", settings, True, 50_000)
    assert status == "done"
    by_metric = {row.metric: row for row in rows}
    accuracy = by_metric["final test accuracy"]
    assert (accuracy.value, accuracy.target, accuracy.verdict) == (f"{accuracies[-1]:.4f}", ">= 0.9125",
                                                                   accuracy_verdict)  # fmt: skip
    reached = by_metric["training time to 91.25% (evaluation excluded)"]
    assert (reached.value, reached.target, reached.verdict) == (time_value, "<= 30 s", time_verdict)
    assert by_metric["train images/s, last epoch"].value == f"{50_000 / train_times[-1]:.0f}"


@pytest.mark.parametrize("skips", [0, 2])
def test_the_cuda_graphs_run_reports_graphs_compile_declined_to_record(tmp_path, monkeypatch, skips):
    from torch._dynamo.utils import counters

    def fake_train(**settings):
        # Bumps torch.compile's counter the way inductor does when it falls back from CUDA graphs.
        assert settings["cuda_graphs"] is True
        counters["inductor"]["cudagraph_skips"] += skips
        return stand_in_trainer([0.5], [2.0])(**settings)

    monkeypatch.setattr(gpu.cifar10, "train", fake_train)
    # Graphs declined earlier in the same process (another step's compile) are not this run's.
    counters["inductor"]["cudagraph_skips"] += 5
    run = gpu.TRAINER_RUNS["resnet20 fast CUDA graphs"]
    settings = gpu.trainer_settings(run, tmp_path, False, True, torch.device("cuda"), tmp_path / "logs", 60)
    _, rows, _ = gpu.train_step("resnet20 fast CUDA graphs", settings, False, 200)
    (row,) = [r for r in rows if r.metric == "graphs torch.compile declined to record as CUDA graphs"]
    assert row.value == str(skips) and row.verdict == ("pass" if skips == 0 else "fail")


def test_time_to_target_reads_the_trainers_own_clock():
    # `train_images_per_s` is left inconsistent with the clock on purpose: the recorded clock is what counts.
    history = [{"epoch": e, "test_accuracy": a, "train_time_s": t, "train_images_per_s": 1.0}
               for e, a, t in ((1, 0.80, 5.5), (2, 0.92, 8.0), (3, 0.93, 10.25))]  # fmt: skip
    assert common.first_reaching(history, 0.9125)["train_time_s"] == 8.0
    assert common.first_reaching(history, 0.9303) is None
    # An epoch that was not evaluated never reaches a target.
    assert common.first_reaching([{"epoch": 1, "train_time_s": 1.0}], 0.0) is None


def test_a_ratio_verdict_follows_the_printed_value():
    assert gpu.ratio_verdict(0.9996, 3) == "pass"  # printed as 1.000
    assert gpu.ratio_verdict(0.9994, 3) == "fail"  # printed as 0.999
    assert gpu.ratio_verdict(0.994, 2) == "fail" and gpu.ratio_verdict(0.996, 2) == "pass"
    assert gpu.ratio_verdict(2.0, 2, quick=True) == "not-measurable"


def test_repeats_reach_the_speed_and_pipeline_steps(monkeypatch):
    calls = []
    monkeypatch.setattr(gpu.model_speed, "main", lambda argv: calls.append(argv) or [])
    rates = {"supply: TensorBatches": 2.0, gpu.data_pipeline.DEMAND: 1.0}
    monkeypatch.setattr(gpu.data_pipeline, "main", lambda argv: calls.append(argv) or rates)
    gpu.main(["--device", "cpu", "--stages", "model_speed,data_pipeline", "--no-compile", "--repeats", "3"])
    assert len(calls) == len(gpu.SPEED_CALLS) - 1 + 1  # the compiled call is left out
    for argv in calls:
        assert argv[argv.index("--repeats") + 1] == "3", argv
