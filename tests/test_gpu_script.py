"""
`benchmarks/gpu.py` runs every GPU measurement in one command; here it runs on the CPU in `--quick` mode,
on synthetic data in CIFAR-10's format. What is checked is what the script promises a reader of its
output: every stage in the JSON, the summary table's rows with honest verdicts, the budget's skip and
stop paths, and the time-to-target arithmetic. No timing is asserted.
"""

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
import torch

from benchmarks import gpu
from experiments import data as cifar_data

NUMBER = r"\d+(\.\d+)?"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path]:
    """
    One `--quick --device cpu` run (seconds) shared by the tests that read its output; `capsys` is per
    test, so the printed output is caught here.
    """
    out = tmp_path_factory.mktemp("gpu-quick")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        summary = gpu.main(["--quick", "--device", "cpu", "--threads", "1", "--out", str(out)])
    return summary, printed.getvalue(), out


def test_the_json_has_every_stage_and_every_step_that_should_run_ran(quick_run):
    summary, _, out = quick_run
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary, default=str))
    assert set(summary["stages"]) == {"model_speed", "data_pipeline", "trainer"}
    statuses = {(stage, step["name"]): step["status"] for stage, steps in summary["stages"].items()
                for step in steps}
    compiled = {key for key in statuses if "compiled" in key[1]}
    assert compiled == {("model_speed", "resnet20 bf16 compiled"), ("trainer", "resnet20 fast compiled")}
    assert all(statuses[key] == "skipped" for key in compiled)
    assert all(status == "done" for key, status in statuses.items() if key not in compiled), statuses
    environment = summary["environment"]
    assert environment["device"] == "cpu" and environment["torch"] == torch.__version__
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", environment["date"])


def test_model_speed_rows_cover_every_model_variant_precision_and_mode(quick_run):
    summary, _, _ = quick_run
    metrics = {row["metric"] for row in summary["summary"] if row["stage"] == "model speed"}
    expected = [("resnet50", "eager", "fp32"), ("resnet50", "channels_last", "fp32"),
                ("resnet50", "channels_last", "bf16")]
    expected += [(m, v, p) for m in ("resnet20", "resnet56") for v, p in
                 (("eager", "fp32"), ("channels_last", "fp32"), ("channels_last", "bf16"))]
    for model, variant, precision in expected:
        for mode in ("train", "infer"):
            assert f"{model} {variant} {precision} {mode} b2 32px: ours/reference" in metrics
    for row in summary["summary"]:
        if row["stage"] == "model speed" and row["metric"].endswith("ours/reference"):
            ratio = float(row["value"].split()[0])
            assert row["verdict"] == ("pass" if ratio >= 1.0 else "fail")
            assert row["target"] == ">= 1.0"


def test_data_pipeline_rows_compare_supply_with_demand(quick_run):
    summary, _, _ = quick_run
    rows = {row["metric"]: row for row in summary["summary"] if row["stage"] == "data pipeline"}
    ratio = rows["TensorBatches supply / resnet20 demand"]
    assert ratio["verdict"] == ("pass" if float(ratio["value"]) >= 1.0 else "fail")
    assert "supply: TensorBatches (img/s)" in rows
    assert "end to end TensorBatches / DataLoader+PIL workers=0" in rows


def test_trainer_rows_on_synthetic_data_say_the_accuracy_is_not_meaningful(quick_run):
    summary, _, _ = quick_run
    for model, target in (("resnet20", "91.25%"), ("resnet56", "93.03%")):
        rows = {row["metric"]: row for row in summary["summary"] if row["stage"] == f"trainer {model} fast"}
        assert re.fullmatch(NUMBER, rows["train images/s, all epochs (incl. warm-up)"]["value"])
        assert re.fullmatch(NUMBER, rows["wall time of the trainer call (s)"]["value"])
        accuracy = rows["final test accuracy"]
        assert accuracy["value"].endswith("(synthetic, not meaningful)")
        assert accuracy["verdict"] == "not-measurable"
        assert rows[f"training time to {target} (evaluation excluded)"]["verdict"] == "not-measurable"
    step = next(s for s in summary["stages"]["trainer"] if s["name"] == "resnet20 fast")
    assert "--recipe fast" in step["details"]["command"]
    assert step["details"]["results"]["recipe"] == "fast"
    assert [e["epoch"] for e in step["details"]["epochs"]] == [1]


def test_the_table_is_printed_last_after_device_torch_and_date(quick_run):
    summary, printed, out = quick_run
    tail = printed[printed.rindex("# Summary"):].splitlines()
    assert tail[1].startswith(f"device: cpu; torch {torch.__version__}; ")
    table = [line for line in tail if line.startswith("|")]
    assert table[0].split("|")[1:-1] == [f" {h} ".ljust(len(c)) for h, c in
                                         zip(["stage", "metric", "value", "target", "verdict"],
                                             table[0].split("|")[1:-1], strict=True)]
    assert printed.rstrip().splitlines()[-1] == table[-1]
    assert len(table) == len(summary["summary"]) + 2  # header and rule
    assert "resnet20 bf16 compiled" in printed and "skipped: torch.compile steps are left out" in printed
    assert table[-1] in (out / "summary.md").read_text()


def test_an_earlier_summary_is_never_overwritten(tmp_path):
    (tmp_path / "summary.json").write_text("earlier")
    with pytest.raises(SystemExit):
        gpu.main(["--quick", "--device", "cpu", "--out", str(tmp_path)])
    assert (tmp_path / "summary.json").read_text() == "earlier"


@pytest.mark.parametrize("argv", [["--stages", "speed"], ["--budget-s", "0"], ["--threads", "0"],
                                  ["--data-dir", "/no/such/folder"]])
def test_bad_flags_exit_with_a_message(argv, capsys):
    with pytest.raises(SystemExit):
        gpu.main(["--quick", "--device", "cpu", *argv])
    assert argv[0] in capsys.readouterr().err


def test_steps_whose_share_is_below_the_minimum_are_skipped_without_running():
    ran = []
    steps = [gpu.Step("model_speed", "a", 1.0, lambda limit, report: ran.append("a")),
             gpu.Step("trainer", "b", 1.0, lambda limit, report: ran.append("b"))]
    reports = gpu.run_steps(steps, gpu.Budget(total_s=4.0, minimum_step_s=10.0))
    assert ran == []
    assert [r.status for r in reports] == ["skipped", "skipped"]
    rows = gpu.summary_rows(reports)
    assert [r.verdict for r in rows] == ["skipped", "skipped"] and "budget" in rows[0].value


def test_time_left_unused_by_a_step_goes_to_the_later_ones():
    limits = []
    steps = [gpu.Step("model_speed", name, share, lambda limit, report: limits.append(limit))
             for name, share in (("a", 1.0), ("b", 1.0), ("c", 2.0))]
    gpu.run_steps(steps, gpu.Budget(total_s=400.0, minimum_step_s=1.0))
    # The steps return at once, so each later one shares nearly the whole budget with those after it.
    assert limits[0] == pytest.approx(100, abs=1)
    assert limits[1] == pytest.approx(400 / 3, abs=1)
    assert limits[2] == pytest.approx(400, abs=1)


def test_a_trainer_run_past_its_limit_is_stopped_and_reported_as_such(tmp_path):
    with gpu.trainer_data(None, quick=True, device=torch.device("cpu")) as data:
        plan = gpu.TrainerPlan("resnet20", False, epochs=1, batch_size=64, share=1.0)
        step = gpu.trainer_step(plan, data, torch.device("cpu"), tmp_path, skip_compile="")
        report = gpu.StepReport(step.stage, step.name, status="done")
        # A millisecond: the deadline's SIGINT reaches the trainer long before its first epoch ends.
        step.run(0.001, report)
    assert report.status == "stopped by budget"
    assert "0 complete epochs" in report.reason
    assert [r.value for r in report.rows if r.metric == "train images/s"] == ["no epoch completed"]


def test_with_real_data_accuracy_and_time_to_target_get_a_verdict(tmp_path, monkeypatch):
    # Synthetic files stand in for CIFAR-10 here; only their md5 sums differ, so that check is off.
    monkeypatch.setattr(cifar_data, "VERIFY_CHECKSUMS", False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with gpu.trainer_data(None, quick=True, device=torch.device("cpu")) as synthetic:
            data = gpu.TrainerData(synthetic.folder, real=True, train_images=synthetic.train_images)
            plan = gpu.TrainerPlan("resnet20", False, epochs=1, batch_size=64, share=1.0)
            step = gpu.trainer_step(plan, data, torch.device("cpu"), tmp_path, skip_compile="")
            report = gpu.StepReport(step.stage, step.name, status="done")
            step.run(600.0, report)
    finally:
        torch.set_num_threads(threads)
    assert report.status == "done"
    rows = {row.metric: row for row in report.rows}
    accuracy = rows["final test accuracy"]
    assert accuracy.verdict == ("pass" if float(accuracy.value) >= 0.9125 else "fail")
    reached = rows["training time to 91.25% (evaluation excluded)"]
    assert reached.target == "<= 30 s"
    if reached.value.startswith("not reached"):
        assert reached.verdict == "fail"
    else:
        assert re.fullmatch(rf"{NUMBER} s \(epoch 1\)", reached.value) and reached.verdict in ("pass", "fail")


def test_time_to_target_reads_the_trainers_clock_from_the_cumulative_rate():
    # The first epoch is slow (warm-up), later ones faster, so the cumulative rate climbs.
    records = [{"epoch": 1, "test_accuracy": 0.80, "train_images_per_s": 1000.0},
               {"epoch": 2, "test_accuracy": 0.92, "train_images_per_s": 1250.0},
               {"epoch": 3, "test_accuracy": 0.93, "train_images_per_s": 1500.0}]
    timeline = gpu.epoch_timeline(records, images_per_epoch=50_000)
    assert [point["train_time_s"] for point in timeline] == [50.0, 80.0, 100.0]
    assert gpu.time_to_target(timeline, 0.9125)["epoch"] == 2
    assert gpu.time_to_target(timeline, 0.9303) is None
