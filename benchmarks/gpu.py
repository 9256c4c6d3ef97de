"""
# All the GPU measurements, one after another

GPU time is lent for minutes: `python -m benchmarks.gpu --out gpu-run` (with `--data-dir DATA`, time to
accuracy too; `--quick --device cpu`, a smoke run of every step) runs `model_speed`, `data_pipeline` and
the trainer's runs (each under its own `--time-limit`) in one go and ends with a table of verdicts.
BENCHMARKS.md, "The GPU script".
"""

import json
import sys
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch._dynamo.utils import counters

from benchmarks import common, data_pipeline, model_speed
from experiments import cifar10
from experiments.synthetic import write_synthetic_cifar10

STAGES = ("model_speed", "data_pipeline", "trainer")
# Our goals on one H100: (test accuracy, seconds of training to reach it).
TARGETS = {"resnet20": (0.9125, 30.0), "resnet56": (0.9303, 90.0), "resnet9": (0.94, 10.0)}
# The `model_speed` calls: name, models, variants, amp, modes.
SPEED_CALLS = (
    ("resnet50 fp32", "resnet50", "eager,channels_last", "none", "train,infer"),
    ("resnet50 bf16", "resnet50", "channels_last", "bf16", "train,infer"),
    ("resnet20/56 fp32", "resnet20,resnet56", "eager,channels_last", "none", "train,infer"),
    ("resnet20/56 bf16", "resnet20,resnet56", "channels_last", "bf16", "train,infer"),
    ("resnet9 fp32", "resnet9", "eager,channels_last", "none", "train,infer"),
    ("resnet9 bf16", "resnet9", "channels_last", "bf16", "train,infer"),
    ("resnet20 bf16 compiled", "resnet20", "compile_channels_last", "bf16", "train"),
)
# The trainer runs, by label: the `cifar10.train` settings that make each what it is.
TRAINER_RUNS: dict[str, dict[str, Any]] = {
    "resnet9": {"model": "resnet9", "recipe": "resnet9"},
    "resnet20 fast": {"model": "resnet20", "recipe": "fast"},
    "resnet56 fast": {"model": "resnet56", "recipe": "fast"},
    "resnet20 fast compiled": {"model": "resnet20", "recipe": "fast", "compile": True},
    "resnet20 fast CUDA graphs": {"model": "resnet20", "recipe": "fast", "cuda_graphs": True},
}


class Row(NamedTuple):
    """One line of the final table."""

    stage: str
    metric: str
    value: str
    target: str = "-"
    verdict: str = "info"


# What a step returns: its status ("done" or "stopped"), its rows, and details for summary.json.
StepResult = tuple[str, list[Row], dict[str, Any]]


def ratio_verdict(ratio: float, digits: int, quick: bool = False) -> str:
    """`pass` when the ratio *as printed* is at least 1, so a row never reads "1.000 ... fail"."""
    return "not-measurable" if quick else "pass" if round(ratio, digits) >= 1.0 else "fail"


def speed_step(models: str, variants: str, amp: str, modes: str, device: torch.device, quick: bool,
               repeats: int = 5) -> StepResult:  # fmt: skip
    """`model_speed` at the sizes of our speed goals (a GPU's, a CPU's or `--quick`'s)."""
    sizes = {"cuda": ((512, 32), (256, 224)), "cpu": ((128, 32), (8, 224))}[device.type][models == "resnet50"]
    batch, size, counts = (2, 32, "1 --steps 1 --warmup 0") if quick else (*sizes, f"{repeats} --steps 3")
    argv = (f"--device {device.type} --models {models} --variants {variants} --amp {amp} --modes {modes} "
            f"--batch-size {batch} --image-size {size} --repeats {counts}").split()  # fmt: skip
    precision = "bf16" if amp == "bf16" else "fp32"
    return "done", [
        Row("model speed", f"{r.name} {r.variant} {precision} {r.mode} b{r.batch_size} "
            f"{r.image_size}px: ours/reference", f"{r.ratio:.3f} ({r.ours:.0f} vs {r.reference:.0f} "
            "img/s)", ">= 1.0", ratio_verdict(r.ratio, 3, quick))
        for r in model_speed.main(argv)
    ], {"argv": argv}  # fmt: skip


def pipeline_step(device: torch.device, quick: bool, repeats: int = 5) -> StepResult:
    """`data_pipeline` at the fast recipe's batch and layout; 8 workers, as a DataLoader user would try."""
    sizes = f"--batch-size 512 --channels-last --batches 10 --workers 8 --repeats {repeats}"
    rates = data_pipeline.main([*("--quick" if quick else sizes).split(), "--device", device.type])
    ratio = rates["supply: TensorBatches"] / rates[data_pipeline.DEMAND]
    return "done", [
        *(Row("data pipeline", f"{name} (img/s)", f"{rate:.0f}") for name, rate in rates.items()),
        Row("data pipeline", "TensorBatches supply / resnet20 demand", f"{ratio:.2f}", ">= 1.0",
            ratio_verdict(ratio, 2, quick)),
    ], {}  # fmt: skip


def trainer_settings(run: dict[str, Any], data_dir: Path, real: bool, quick: bool, device: torch.device,
                     logs_dir: Path, time_limit_s: float) -> dict[str, Any]:  # fmt: skip
    """The keyword arguments of a `TRAINER_RUNS` run's `cifar10.train` call; every epoch is tested."""
    settings = {**run, "device": device.type, "data_dir": str(data_dir), "download": False, "valid_split": 0,
                "logs_dir": logs_dir, "eval_every_epoch": True, "time_limit_s": time_limit_s}  # fmt: skip
    if not real:  # a few epochs give a steady rate; synthetic files cannot match the official md5 sums
        settings.update(
            epochs=1 if quick else 3, verify_checksums=False, **({"batch_size": 64} if quick else {})
        )
    return settings


def train_step(label: str, settings: dict[str, Any], real: bool, train_images: int) -> StepResult:
    """One trainer run and its rows: speed, and on real data the final accuracy and the time to target."""
    before = counters["inductor"]["cudagraph_skips"]  # graphs inductor compiled but did not record
    results = cifar10.train(**settings)
    history, stopped, rows = results.history, results.summary is None, []
    details = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()},
               "run_dir": str(results.run_dir), "results": results.summary, "history": history}  # fmt: skip

    def add(*cells: str) -> None:
        rows.append(Row(f"trainer {label}", *cells))

    if settings.get("cuda_graphs"):  # a graph torch.compile could not record shows only here and in a log
        declined = counters["inductor"]["cudagraph_skips"] - before
        add("graphs torch.compile declined to record as CUDA graphs", str(declined), "0",
            "pass" if declined == 0 else "fail")  # fmt: skip
    if not history:
        add("train images/s", "no epoch completed", "-", "not-measurable")
    else:
        add("train images/s, all epochs (incl. warm-up)", f"{history[-1]['train_images_per_s']:.0f}")
    if len(history) > 1:  # after the first epoch's warm-up and compilation: the steady rate
        add("train images/s, last epoch", f"{train_images / history[-1]['epoch_train_time_s']:.0f}")
    accuracy, seconds = TARGETS[settings["model"]]
    final = "final test accuracy" + (f" (epoch {len(history)}, run stopped)" if stopped else "")
    to_target, limit = f"training time to {accuracy:.2%} (evaluation excluded)", f"<= {seconds:.0f} s"
    reached, unmeasured = common.first_reaching(history, accuracy), "not-measurable"
    if history and not real:
        add(final, f"{history[-1]['test_accuracy']:.4f} (synthetic, not meaningful)",
            f">= {accuracy} on CIFAR-10", unmeasured)  # fmt: skip
        add(to_target, "synthetic data, not meaningful", limit, unmeasured)
    elif history:
        measured = history[-1]["test_accuracy"]
        verdict = unmeasured if stopped else "pass" if measured >= accuracy else "fail"
        add(final, f"{measured:.4f}", f">= {accuracy}", verdict)
        if reached is None:
            why = f"not reached in {len(history)} epochs" + (" before the time limit" if stopped else "")
            add(to_target, why, limit, unmeasured if stopped else "fail")
        else:
            add(to_target, f"{reached['train_time_s']:.1f} s (epoch {reached['epoch']})", limit,
                "pass" if reached["train_time_s"] <= seconds else "fail")  # fmt: skip
    return "stopped" if stopped else "done", rows, details


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the steps in order, print the summary table last; returns what summary.json holds."""
    p = common.parser(__doc__, repeats=5)
    p.add_argument("--data-dir", type=Path, help="a folder holding the real CIFAR-10 (time to accuracy)")
    p.add_argument("--out", type=Path, help="write summary.json and summary.md there; keep the run folders")
    p.add_argument("--stages", type=common.names(STAGES), default=",".join(STAGES), help="comma-separated")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile steps")
    p.add_argument("--time-limit", type=common.positive, default=150, help="seconds per trainer run (150)")
    args = p.parse_args(argv)
    real = args.data_dir is not None
    if real and not args.data_dir.is_dir():
        p.error(f"--data-dir {args.data_dir} is not a folder; give the one holding cifar-10-batches-py/")
    if args.out is not None and any((args.out / name).exists() for name in ("summary.json", "summary.md")):
        p.error(f"--out {args.out} already holds a summary; choose another folder so the earlier one is kept")
    threads = torch.get_num_threads()
    device = common.start(p, args)
    no_compile = "torch.compile steps are left out with --quick" if args.quick else \
        "--no-compile" if args.no_compile else ""  # fmt: skip
    # Each step: (stage, name, why it is skipped or "", the call).
    steps = [("model_speed", name, no_compile if "compile" in call[1] else "",
              partial(speed_step, *call, device, args.quick, args.repeats))
             for name, *call in SPEED_CALLS if "model_speed" in args.stages]  # fmt: skip
    if "data_pipeline" in args.stages:
        pipeline = partial(pipeline_step, device, args.quick, args.repeats)
        steps.append(("data_pipeline", "TensorBatches vs resnet20", "", pipeline))
    reports, rows = [], []
    try:
        with tempfile.TemporaryDirectory(prefix="gpu-benchmark-") as folder:
            logs_dir = args.out / "runs" if args.out is not None else Path(folder) / "logs"
            data_dir, train_images = args.data_dir or Path(folder) / "data", 50_000
            if "trainer" in args.stages and not real:  # a real epoch's worth on a GPU; 80 images with --quick
                per_file = 16 if args.quick else 10_000 if device.type == "cuda" else 1_000
                write_synthetic_cifar10(data_dir, n_per_train_batch=per_file, n_test=32, separable=True)
                train_images = 5 * per_file
            for label, run in TRAINER_RUNS.items() if "trainer" in args.stages else ():
                skip = "--cuda-graphs needs CUDA" if run.get("cuda_graphs") and device.type != "cuda" else \
                    no_compile if run.get("compile") or run.get("cuda_graphs") else ""  # fmt: skip
                settings = trainer_settings(
                    run, data_dir, real, args.quick, device, logs_dir, args.time_limit
                )
                call = partial(train_step, label, settings, real, train_images)
                steps.append(("trainer", label, skip, call))
            for stage, name, skip, call in steps:  # one that fails costs only its own rows
                report: dict[str, Any] = {"stage": stage, "name": name, "status": "skipped", "reason": skip,
                                          "seconds": 0.0}  # fmt: skip
                step_rows: list[Row] = []
                if not skip:
                    print(f"\n=== {stage}: {name}", flush=True)
                    started = time.perf_counter()
                    try:
                        report["status"], step_rows, report["details"] = call()
                    except (Exception, SystemExit) as e:
                        report["status"], report["reason"] = "error", f"{type(e).__name__}: {e}"[:200]
                    report["seconds"] = time.perf_counter() - started
                if report["status"] != "done":
                    reason = report["reason"] or f"stopped by its {args.time_limit} s time limit"
                    rows.append(Row(stage.replace("_", " "), name, f"{report['status']}: {reason}", "-",
                                    report["status"]))  # fmt: skip
                rows += step_rows
                reports.append(report)
    finally:
        torch.set_num_threads(threads)
    note = f"trainer runs on CIFAR-10 from {args.data_dir}" if real else \
        "trainer runs on synthetic CIFAR-10-format data: throughput only, accuracy means nothing"  # fmt: skip
    command = "python -m benchmarks.gpu " + " ".join(sys.argv[1:] if argv is None else argv)
    summary = {"command": command, "machine": args.machine, "note": note, "steps": reports,
               "rows": [row._asdict() for row in rows]}  # fmt: skip
    text = common.table(Row._fields, rows)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        markdown = f"# GPU benchmark\n\n{args.machine}\n\n`{command}`\n\n{note}\n\n{text}\n"
        (args.out / "summary.md").write_text(markdown)
    print(f"\n# Summary\nmachine: {args.machine}\n{note}\n{text}", flush=True)
    return summary


if __name__ == "__main__":
    main()
