"""
The trainer's command line: every setting is checked against the configuration's types, options and
ranges before any data is read or any folder is created, and a mistake exits with status 2 and a usage
message that says what was expected.
"""

from pathlib import Path

import pytest
import torch
from labml_helpers.device import DeviceConfigs
from synthetic_main import run_trainer

from experiments import cli
from experiments.cifar10 import NESTED_CONFIGS, Configs, SGDConfigs
from experiments.distributed import World
from experiments.recipes import RECIPE_PURPOSES, RECIPES


def parse(*argv: str, world_size: int = 1) -> dict:
    world = World(size=world_size)
    request = cli.parse(list(argv), Configs, nested=NESTED_CONFIGS, recipes=RECIPES, world=world)
    return request.settings


BAD_COMMAND_LINES = [
    (["--epochs", "-1"], "epochs"),
    (["--epochs", "0"], "epochs"),
    (["epochs=abc"], "epochs"),
    (["epochs=1.5"], "epochs"),
    (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--lr", "-0.1"], "--lr -0.1: must be positive"),
    (["--model", "resnet21"], "resnet20"),
    (["model=resnt20"], "resnet20"),
    (["optimiser.learning_rate=0.1"], "optimizer.learning_rate"),
    (["optimizer.learning_rat=0.1"], "optimizer.learning_rate"),
    (["epoch=3"], "epochs"),
    (["unknown_setting=1"], "unknown"),
    (["epochs"], "key=value"),
    (["dataset=mine"], "unknown"),
    (["--device", "tpu"], "--device"),
    (["--device", "cuda:x"], "--device"),
    (["n_blocks=[1,0,1]"], "n_blocks"),
    (["n_blocks=abc"], "n_blocks"),
    (["model=custom", "n_blocks=[1,1]"], "custom model"),
    (["n_blocks=[2,2,2]"], "only apply to model=custom"),
    (["--model", "resnet56", "n_channels=[8,16,32]"], "only apply to model=custom"),
    (["--model", "plain20", "shortcut=B"], "plain network without shortcuts"),
    (["num_classes=5"], "num_classes"),
    (["label_smoothing=1.5"], "label_smoothing"),
    (["shift_tta=5"], "shift_tta='5': must be in [0, 4]"),
    (["shortcut=D"], "shortcut"),
    (["download=maybe"], "download"),
    (["amp=fp8"], "amp"),
    (["--amp", "fp8"], "--amp"),
    (["--recipe", "slow"], "--recipe"),
    (["--valid-split", "-5"], "--valid-split -5: must be in [0, 50000)"),
    (["optimizer.nesterov=true", "optimizer.momentum=0"], "nesterov"),
    (["--stop-after-steps", "0"], "--stop-after-steps"),
    (["--threads", "0"], "--threads"),
    (["--threads", "two"], "--threads two: expected a whole number"),
    (["train_subset=-1"], "train_subset"),
    (["test_subset=-10"], "test_subset"),
    (["train_subset=half"], "train_subset"),
    (["verify_checksums=perhaps"], "verify_checksums"),
    (["compile_mode=max-autotune"], "only applies with --compile"),
    (
        ["--compile", "compile_mode=bogus"],
        "one of default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs",
    ),
    (["cutout=33"], "cutout"),
    (["lr_warmup_fraction=1"], "lr_warmup_fraction"),
    (["lr_warmup_steps=from_epochs"], "lr_warmup_steps"),
    (["cutout=-1"], "cutout"),
    (["cutout=2.5"], "cutout"),
    (["small_crop=4", "small_crop_epochs=3"], "small_crop='4': must be 0 (off) or 8..32 pixels"),
    (["small_crop=24"], "progressive image size needs both, e.g. small_crop=24 small_crop_epochs=10"),
    (["small_crop_epochs=5"], "progressive image size needs both"),
    (["small_crop_epochs=-1"], "small_crop_epochs"),
    # Bounds of the official set, checked before the data are read.
    (["--valid-split", "60000"], "--valid-split 60000: must be in [0, 50000)"),
    (["valid_split=60000"], "valid_split='60000': must be in [0, 50000)"),
    (["train_subset=50001"], "train_subset"),
    (
        ["train_subset=45001", "--valid-split"],
        "only 45000 training images after holding out valid_split=5000",
    ),
    (["test_subset=10001"], "test_subset"),
    (["--time-limit", "0"], "--time-limit must be a positive number"),
    # Issue 27 item 9: values that would pass every range check, or overflow a generator's seed.
    (["--lr", "inf"], "--lr inf: expected a finite number"),
    (["--lr", "nan"], "--lr nan: expected a finite number"),
    (["optimizer.momentum=nan"], "optimizer.momentum='nan': expected a finite number"),
    (["--seed", str(2**64)], f"--seed {2**64}: must be in [0, 4294967296)"),
    (["seed=-1"], "seed='-1': must be in [0, 4294967296)"),
    # Issue 28: a mistyped flag gets a suggestion, like a mistyped key.
    (["--epcohs", "1"], "unknown option --epcohs; did you mean --epochs?"),
    (["--epcohs=1"], "unknown option --epcohs; did you mean --epochs?"),
    (["--no-verify-checksum"], "did you mean --no-verify-checksums?"),
    (["--time-limit", "inf"], "--time-limit must be a positive number"),
]


@pytest.mark.parametrize("flag", ["--eval", "--resume"])
def test_a_run_reference_that_names_nothing_is_one_line_exit_2_and_touches_nothing(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # --eval takes what --resume takes (a checkpoint, a run folder or a run's uuid), so only the logs
    # folder can say that nothing has the name; a mistyped name is the user's setting, exit 2.
    data_dir, logs_dir = tmp_path / "data", tmp_path / "logs"
    status = run_trainer(
        ["--data-dir", str(data_dir), "--logs-dir", str(logs_dir), flag, "no/such/checkpoint.pt"]
    )
    assert status == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no run 'no/such/checkpoint.pt'"), lines
    assert "a run folder or a checkpoint file" in lines[0]
    assert not data_dir.exists() and not any(logs_dir.rglob("*.pt"))


@pytest.mark.parametrize(
    ("argv", "mentions"), BAD_COMMAND_LINES, ids=[" ".join(argv) for argv, _ in BAD_COMMAND_LINES]
)
def test_bad_input_exits_2_with_usage_before_touching_anything(
    argv: list[str], mentions: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data_dir, logs_dir = tmp_path / "data", tmp_path / "logs"
    status = run_trainer(["--data-dir", str(data_dir), "--logs-dir", str(logs_dir), *argv])
    assert status == 2
    err = capsys.readouterr().err
    assert "usage:" in err and mentions in err
    # Two lines: what was wrong, and where the flags and settings are listed; not argparse's usage block.
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "error:" in lines[0] and lines[1].startswith("usage:"), err
    assert "--help" in lines[1] and "--list-configs" in lines[1]
    assert "Traceback" not in err
    assert not data_dir.exists() and not logs_dir.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error for a machine without a GPU")
@pytest.mark.parametrize(
    "argv",
    [
        ["--device", "cuda"],
        ["--device", "cuda:1"],
        ["device.use_cuda=true"],
        ["--cuda-graphs"],
        ["--compile", "compile_mode=reduce-overhead"],
    ],
)
def test_asking_for_cuda_without_a_gpu_is_a_usage_error(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert run_trainer(["--logs-dir", str(tmp_path / "logs"), *argv]) == 2
    assert "CUDA" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()


def test_sync_bn_across_cpu_processes_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("--device", "cpu", "--sync-bn", "--batch-size", "64", world_size=2)
    assert exit_info.value.code == 2


def test_the_global_batch_must_split_evenly_over_processes(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("--batch-size", "63", world_size=2)
    assert exit_info.value.code == 2
    assert "--batch-size 63" in capsys.readouterr().err
    assert parse("--batch-size", "64", world_size=2)["batch_size"] == 64


def printed(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """What a command line that only prints (`--help` and its kin) prints; it must exit 0."""
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_option_in_under_60_lines(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    text = printed(capsys, "--help")
    assert len(text.splitlines()) < 60, text
    for flag in [*cli.FLAGS_BY_NAME, "--help-recipes", "--list-configs"]:
        assert flag in text, flag
    # argparse wraps lines wherever the terminal width puts them.
    flat = " ".join(text.split())
    assert "key=value" in flat and "torchrun" in flat and "--recipe cpu" in flat
    assert f"paper {Configs().iterations:,} iterations" in flat
    # Each recipe is summarised on one line of its own; the settings are --help-recipes' job.
    for name in RECIPES:
        (line,) = [line for line in text.splitlines() if line.split()[:1] == [name]]
        assert RECIPE_PURPOSES[name] in line
    assert "lr_warmup_factor" not in text
    # Operational notes (what was measured where) stay out of --help.
    assert "measured" not in flat and "CPU cores" not in flat


def test_help_recipes_lists_every_setting_of_every_recipe(capsys: pytest.CaptureFixture) -> None:
    text = printed(capsys, "--help-recipes")
    after_paper = list(RECIPES)[list(RECIPES).index("paper") + 1]
    # The paper's recipe changes nothing: it lists the configuration's own defaults.
    paper = text.split("paper: ", 1)[1].split(f"{after_paper}: ")[0]
    defaults = {
        "batch_size": Configs().batch_size, "optimizer.learning_rate": SGDConfigs().learning_rate,
        "optimizer.momentum": SGDConfigs().momentum, "optimizer.weight_decay": SGDConfigs().weight_decay,
        "lr_milestones": Configs().lr_milestones, "iterations": Configs().iterations,
    }  # fmt: skip
    for key, value in defaults.items():
        setting = f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
        assert setting in paper, setting
    for name, recipe in RECIPES.items():
        described = text.split(f"{name}: ", 1)[1]
        for key, value in {**recipe, **recipe.get("cuda", {})}.items():
            if key != "cuda":
                setting = f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                assert setting in described, (name, setting)
    assert f"epochs={RECIPES['cpu']['epochs']}" in text.split("cpu: ", 1)[1].split("resnet9: ")[0]


def test_list_configs_prints_every_settable_key_with_its_type_default_and_help(
    capsys: pytest.CaptureFixture,
) -> None:
    lines = printed(capsys, "--list-configs").splitlines()
    keys = {line.split("=", 1)[0]: line for line in lines}
    settable = [k for k in cli._all_keys(Configs, NESTED_CONFIGS) if k not in NESTED_CONFIGS]
    assert sorted(keys) == sorted(settable)
    assert not set(keys) & cli.INTERNAL_KEYS
    # Defaults read from the configuration classes, types from their annotations, options from labml's.
    assert keys["batch_size"].startswith("batch_size=128  [a whole number]")
    assert keys["optimizer.learning_rate"].startswith("optimizer.learning_rate=0.1  [a finite number]")
    assert keys["model"].startswith("model=resnet20  [resnet20, ") and "custom]" in keys["model"]
    assert "[step, warmup_cosine, warmup_linear]" in keys["scheduler"]
    assert "[a whole number or from_fraction]" in keys["lr_warmup_steps"]
    # The help: the comment beside the declaration, and the flag that sets it.
    assert "Cutout" in keys["cutout"] and "--lr: base learning rate" in keys["optimizer.learning_rate"]
    assert "class-balanced" in keys["train_subset"] and "--no-verify-checksums" in keys["verify_checksums"]


def test_values_are_converted_to_their_annotated_types() -> None:
    overrides = parse(
        "optimizer.learning_rate=0.05",
        "n_blocks=[2,2,2]",
        "bottlenecks=None",
        "download=false",
        "iterations=100",
        "optimizer.nesterov=yes",
        "model=custom",
        "scheduler=warmup_cosine",
    )
    assert isinstance(overrides["optimizer.learning_rate"], float)
    assert overrides["optimizer.learning_rate"] == 0.05
    assert overrides["n_blocks"] == [2, 2, 2] and overrides["bottlenecks"] is None
    assert overrides["download"] is False and overrides["iterations"] == 100
    assert overrides["optimizer.nesterov"] is True and overrides["model"] == "custom"


def test_flags_map_onto_configuration_keys() -> None:
    overrides = parse(
        "--model",
        "resnet56",
        "--epochs",
        "3",
        "--batch-size",
        "256",
        "--lr",
        "0.2",
        "--seed",
        "1",
        "--device",
        "cpu",
        "--valid-split",
        "--channels-last",
        "--amp",
        "bf16",
    )
    assert overrides["model"] == "resnet56" and overrides["batch_size"] == 256
    # An explicit epoch count replaces the paper's 64k iterations as the length of the run.
    assert overrides["epochs"] == 3 and overrides["iterations"] == "from_epochs"
    assert overrides["optimizer.learning_rate"] == 0.2 and overrides["seed"] == 1
    assert overrides["device.use_cuda"] is False and overrides["valid_split"] == 5000
    assert overrides["channels_last"] is True and overrides["amp"] == "bf16"


def test_the_paper_recipe_is_the_default_and_changes_nothing() -> None:
    assert parse() == {}
    c = Configs()
    assert (c.batch_size, c.iterations, c.lr_milestones) == (128, 64_000, [0.5, 0.75])
    # §4.2: SGD with momentum 0.9, weight decay 0.0001, learning rate 0.1; plain (not Nesterov) momentum.
    # (labml turns the class attributes into config items, so the values are read from an instance and
    # from the optimizer the defaults build.)
    sgd = SGDConfigs()
    assert (sgd.learning_rate, sgd.momentum, sgd.weight_decay, sgd.nesterov) == (0.1, 0.9, 1e-4, False)
    from labml.internal.configs.processor import ConfigProcessor

    ConfigProcessor(c, parse("--device", "cpu"))
    group = c.optimizer.param_groups[0]
    assert [group[key] for key in ("lr", "momentum", "weight_decay", "nesterov")] == [0.1, 0.9, 1e-4, False]


def test_recipe_values_yield_to_key_values_and_flags() -> None:
    overrides = parse("--recipe", "fast", "label_smoothing=0.2", "--batch-size", "128", "batch_size=64")
    assert overrides["scheduler"] == "warmup_cosine" and overrides["optimizer.nesterov"] is True
    assert overrides["label_smoothing"] == 0.2 and overrides["batch_size"] == 128
    assert "device.use_cuda" not in overrides
    assert (overrides.get("amp") == "bf16") == torch.cuda.is_available()


def test_the_recipe_flag_beats_a_recipe_setting_and_a_setting_alone_picks_one() -> None:
    # A setting alone chooses the recipe and brings its values.
    alone = parse("recipe=cpu")
    assert alone["recipe"] == "cpu" and alone["epochs"] == RECIPES["cpu"]["epochs"]
    # The flag wins, even when it names the default recipe: the run is the paper's and says so.
    flagged = parse("--recipe", "paper", "recipe=cpu")
    assert flagged["recipe"] == "paper" and "epochs" not in flagged and "scheduler" not in flagged


def test_a_misspelled_key_gets_a_suggestion(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("optimizer.learning_rat=0.1")
    assert exit_info.value.code == 2
    assert "did you mean 'optimizer.learning_rate'" in capsys.readouterr().err


def test_nested_configuration_classes_are_the_ones_the_trainer_uses() -> None:
    assert NESTED_CONFIGS == {"optimizer": SGDConfigs, "device": DeviceConfigs}


def test_channels_last_defaults_to_auto_and_both_flags_override_it() -> None:
    assert "channels_last" not in parse()
    assert parse("--no-channels-last")["channels_last"] is False
    assert parse("--channels-last")["channels_last"] is True
    assert parse("channels_last=false")["channels_last"] is False
    # The user's flag beats the fast recipe's hardware settings.
    assert parse("--recipe", "fast", "--no-channels-last")["channels_last"] is False
    with pytest.raises(SystemExit) as exit_info:
        parse("--channels-last", "--no-channels-last")
    assert exit_info.value.code == 2


def test_auto_channels_last_is_on_for_x86_cpus_and_bf16_is_never_a_cpu_default() -> None:
    import platform

    from labml.internal.configs.processor import ConfigProcessor

    for argv in ((), ("--recipe", "fast")):
        c = Configs()
        ConfigProcessor(c, parse("--device", "cpu", *argv))
        expected = platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
        assert c.channels_last is expected
        # bf16 autocast is slow on CPUs without bf16 units, so no recipe turns it on for a CPU.
        assert c.amp == "none"


def test_the_resnet9_recipe_picks_its_network_cutout_and_linear_schedule_but_no_bf16_on_cpu() -> None:
    overrides = parse("--recipe", "resnet9", "--device", "cpu")
    assert overrides["recipe"] == "resnet9" and overrides["model"] == "resnet9"
    assert overrides["cutout"] == 8 and overrides["scheduler"] == "warmup_linear"
    assert overrides["label_smoothing"] == 0.2 and overrides["optimizer.nesterov"] is True
    assert overrides["batch_size"] == 512 and overrides["iterations"] == "from_epochs"
    assert "amp" not in overrides and "channels_last" not in overrides
    # Warm-up for the first 5 of 24 epochs, as a fraction so that --epochs keeps the proportion.
    assert overrides["lr_warmup_steps"] == "from_fraction"
    assert overrides["lr_warmup_fraction"] == pytest.approx(5 / 24)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the defaults of a machine without a GPU")
def test_without_a_gpu_the_resnet9_recipe_adds_no_hardware_settings() -> None:
    overrides = parse("--recipe", "resnet9")
    assert overrides["model"] == "resnet9" and "amp" not in overrides and "channels_last" not in overrides


@pytest.fixture
def gpu_present(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line as it behaves on a machine with a GPU (it only asks whether one is there)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_on_a_gpu_the_resnet9_recipe_adds_bf16_and_channels_last(gpu_present: None) -> None:
    overrides = parse("--recipe", "resnet9")
    assert overrides["amp"] == "bf16" and overrides["channels_last"] is True


def test_a_model_flag_beats_the_resnet9_recipes_network_and_keeps_the_rest_of_it() -> None:
    overrides = parse("--model", "resnet20", "--recipe", "resnet9", "--device", "cpu")
    assert overrides["model"] == "resnet20"
    assert overrides["cutout"] == 8 and overrides["scheduler"] == "warmup_linear"
    overrides = parse("--recipe", "resnet9", "model=resnet56", "cutout=0", "--device", "cpu")
    assert overrides["model"] == "resnet56" and overrides["cutout"] == 0


@pytest.mark.parametrize("mode", ["default", "max-autotune", "max-autotune-no-cudagraphs"])
def test_a_compile_mode_is_accepted_with_compile(mode: str) -> None:
    overrides = parse("--compile", f"compile_mode={mode}", "--device", "cpu")
    assert overrides["compile"] is True and overrides["compile_mode"] == mode


def test_compile_alone_leaves_the_mode_to_the_default() -> None:
    overrides = parse("--compile", "--device", "cpu")
    assert overrides["compile"] is True and "compile_mode" not in overrides
    assert Configs().compile_mode == "default"


def test_cuda_graphs_is_compile_in_reduce_overhead_mode(gpu_present: None) -> None:
    overrides = parse("--cuda-graphs")
    assert overrides["compile"] is True and overrides["compile_mode"] == "reduce-overhead"
    # Saying the same thing twice is fine.
    assert parse("--cuda-graphs", "compile=True", "compile_mode=reduce-overhead")["compile"] is True
    assert parse("--cuda-graphs", "compile=yes")["compile_mode"] == "reduce-overhead"


@pytest.mark.parametrize("clash", ["compile_mode=max-autotune", "compile=False"])
def test_cuda_graphs_refuses_settings_that_contradict_it(
    gpu_present: None, clash: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("--cuda-graphs", clash)
    assert exit_info.value.code == 2
    assert f"drop {clash} or --cuda-graphs" in capsys.readouterr().err


def test_cuda_graphs_is_refused_for_several_processes(
    gpu_present: None, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("--cuda-graphs", world_size=2)
    assert exit_info.value.code == 2
    assert "several processes" in capsys.readouterr().err
    assert parse("--compile", world_size=2)["compile"] is True


@pytest.mark.parametrize("argv", [["lr_warmup_fraction=0.1"], ["--recipe", "fast", "lr_warmup_fraction=0.1"]])
def test_a_warm_up_fraction_without_from_fraction_is_refused(
    argv: list[str], capsys: pytest.CaptureFixture
) -> None:
    # The schedule would ignore it and warm up for lr_warmup_steps (0 or the recipe's 200) instead.
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv, "--device", "cpu")
    assert exit_info.value.code == 2
    assert "lr_warmup_steps=from_fraction" in capsys.readouterr().err


def test_a_warm_up_given_in_steps_or_fraction_replaces_the_resnet9_recipes() -> None:
    overrides = parse("--recipe", "resnet9", "lr_warmup_steps=100", "--device", "cpu")
    assert overrides["lr_warmup_steps"] == 100
    overrides = parse("--recipe", "resnet9", "lr_warmup_fraction=0.3", "--device", "cpu")
    assert overrides["lr_warmup_steps"] == "from_fraction" and overrides["lr_warmup_fraction"] == 0.3
    overrides = parse("lr_warmup_steps=from_fraction", "lr_warmup_fraction=0.1", "--device", "cpu")
    assert overrides["lr_warmup_steps"] == "from_fraction"


def test_cutout_accepts_zero_to_the_image_size() -> None:
    assert parse("cutout=0")["cutout"] == 0
    assert parse("cutout=32")["cutout"] == 32


def test_progressive_image_size_takes_a_crop_side_and_its_epochs() -> None:
    overrides = parse("small_crop=24", "small_crop_epochs=10")
    assert (overrides["small_crop"], overrides["small_crop_epochs"]) == (24, 10)


def test_the_command_line_and_the_python_api_make_the_same_request() -> None:
    # `train(**settings)` and the command line that spells the same settings run the very same request.
    settings = {
        "recipe": "fast", "device": "cpu", "logs_dir": Path("my runs"), "threads": 2, "model": "resnet56",
        "lr_milestones": [0.4, 0.8], "optimizer.learning_rate": 0.05, "stop_after_steps": 3,
        "tensorboard": False, "time_limit_s": 60.0, "verify_checksums": False, "data_dir": "CIFAR data",
        "results": None,
    }  # fmt: skip
    argv = ["--recipe", "fast", "--device", "cpu", "--logs-dir", "my runs", "--threads", "2", "--model",
            "resnet56", "lr_milestones=[0.4, 0.8]", "--lr", "0.05", "--stop-after-steps", "3",
            "--time-limit", "60", "--no-verify-checksums", "--data-dir", "CIFAR data"]  # fmt: skip
    from_line = cli.parse(argv, Configs, nested=NESTED_CONFIGS, recipes=RECIPES, world=World())
    options = {key: settings.pop(key) for key in ("recipe", "device")}
    run = {key: settings.pop(key) for key in list(settings) if key in cli.RUN_OPTIONS}
    from_python = cli.check(settings, Configs, nested=NESTED_CONFIGS, recipes=RECIPES, **options, **run)
    assert from_line == from_python
    assert from_line.settings["lr_milestones"] == [0.4, 0.8] and from_line.time_limit_s == 60
    assert from_line.settings["data_dir"] == "CIFAR data" and from_line.logs_dir == Path("my runs")


@pytest.mark.parametrize(
    "argv",
    [
        ["model=custom", "n_blocks=[2,", "2,", "2]"],  # what the shell makes of n_blocks=[2, 2, 2]
        ["model=custom", "n_blocks=[2, 2, 2]"],  # n_blocks="[2, 2, 2]", quoted
        ["n_blocks=[", "2", ",2,2", "]", "--model", "custom"],
    ],
)
def test_lists_accept_spaces(argv: list[str]) -> None:
    assert parse(*argv)["n_blocks"] == [2, 2, 2]


def test_an_unbalanced_list_is_one_clear_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("model=custom", "n_blocks=[2,", "2,", "2")
    assert exit_info.value.code == 2
    assert "n_blocks='[2, 2, 2': expected a list of integers" in capsys.readouterr().err


def test_no_verify_checksums_is_the_flag_for_verify_checksums_false() -> None:
    assert parse("--no-verify-checksums")["verify_checksums"] is False
    assert parse("--no-download")["download"] is False
    assert parse() == {}


def test_every_flag_is_declared_once_and_reaches_the_request() -> None:
    names = [flag.name for flag in cli.FLAGS]
    assert len(names) == len(set(names))
    # `Request` is made from the run flags: a field for each that `train()` takes by name (`--cuda-graphs`
    # becomes settings), typed as its flag converts it, and nothing else but the settings and the device.
    fields = cli.Request.__dataclass_fields__
    assert set(fields) == {*cli.RUN_OPTIONS, "settings", "wants_cuda"} - {"cuda_graphs"}
    assert fields["threads"].type == int | None and fields["logs_dir"].type == Path | None
    assert fields["tensorboard"].type is bool and cli.Request().tensorboard is False
    request = cli.parse(
        ["--threads", "1", "--stop-after-steps", "2", "--time-limit", "9.5", "--logs-dir", "L", "--results",
         "r.json", "--labml-url", "http://x", "--resume", "run"],
        Configs, nested=NESTED_CONFIGS, recipes=RECIPES, world=World(),
    )  # fmt: skip
    assert (request.threads, request.stop_after_steps, request.time_limit_s) == (1, 2, 9.5)
    assert (request.logs_dir, request.results) == (Path("L"), Path("r.json"))
    assert (request.labml_url, request.resume) == ("http://x", "run")


def test_option_names_come_from_our_record_not_labmls_private_tables() -> None:
    from experiments import options

    for module in (cli, options):
        source = Path(module.__file__ or "").read_text()
        assert "_calculators" not in source and "labml.internal" not in source
    assert options.option_names(Configs, "scheduler") == ["step", "warmup_cosine", "warmup_linear"]
    # The first option registered is the default, as labml computes it.
    assert options.option_names(Configs, "model")[0] == cli.config_default(Configs, "model") == "resnet20"
    assert options.option_names(SGDConfigs, "optimizer") == ["SGD"]
