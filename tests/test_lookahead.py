"""
Lookahead (`experiments.average.Lookahead`, `lookahead_every=k`): against a hand computation of
$\\phi \\leftarrow \\beta_t \\phi + (1 - \\beta_t) \\theta$, $\\theta \\leftarrow \\phi$ every $k$ steps
and after the last, with $\\beta_t = \\beta (t / T)^3$; its slow weights in the checkpoint, an interrupted
run that resumes to the uninterrupted one, and its settings checked.
"""

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from synthetic_main import only_run, run_trainer, tiny_args, write_data

from experiments.average import Lookahead
from experiments.checkpoint import load_checkpoint, save_checkpoint
from resnet.loading import TRAINER_DIGEST


def small_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_the_pulls_follow_the_formula_on_every_kth_step_and_the_last() -> None:
    model = small_network()
    total = 7
    lookahead = Lookahead(model, every=3, decay=0.5, total_steps=total)
    slow = {name: t.double().clone() for name, t in model.state_dict().items() if t.is_floating_point()}
    assert [lookahead.decay_at(t) for t in (0, 3, 7)] == pytest.approx([0.0, 0.5 * (3 / 7) ** 3, 0.5])
    for t in range(1, total + 1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(4, 3))  # moves the batch-norm running statistics and counter
        fast = {name: t.double().clone() for name, t in model.state_dict().items()}
        lookahead.after_step(model, t)
        state = model.state_dict()
        if t in (3, 6, 7):  # every third step; after the last (7), only the slow weights are taken
            beta = 0.5 * (t / total) ** 3
            for name in slow:
                if t != 7:
                    slow[name] = beta * slow[name] + (1 - beta) * fast[name]
                assert torch.allclose(state[name].double(), slow[name], atol=1e-6), (t, name)
                assert torch.equal(state[name], lookahead.slow[name]), (t, name)
        else:  # between pulls the trained weights are left alone
            for name, value in state.items():
                assert torch.equal(value.double(), fast[name]), (t, name)
        # The integer batch counter is never pulled.
        assert state["1.num_batches_tracked"].item() == t


def test_the_state_round_trips_and_bad_settings_are_refused() -> None:
    model = small_network()
    first = Lookahead(model, every=2, decay=0.4, total_steps=10)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    first.after_step(model, 10)
    second = Lookahead(small_network(), every=2, decay=0.4, total_steps=10)
    second.load_state_dict(first.state_dict())
    for name, value in first.slow.items():
        assert torch.equal(second.slow[name], value), name
    with pytest.raises(ValueError, match="not this network's"):
        Lookahead(nn.Linear(3, 2), every=2, decay=0.4, total_steps=10).load_state_dict(first.state_dict())
    for every, decay in ((0, 0.5), (2, 1.0), (2, -0.1)):
        with pytest.raises(ValueError, match="every must be at least 1"):
            Lookahead(model, every=every, decay=decay, total_steps=10)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("cifar"))


def test_a_lookahead_run_resumes_exactly_slow_weights_included(data_dir: Path, tmp_path: Path) -> None:
    # Two epochs of 5 steps with a pull every 3: the stop after step 7 falls between the pulls at 6 and 9,
    # so the resumed run must bring back both the slow weights and the fast ones trained since.
    lookahead = ("lookahead_every=3", "lookahead_decay=0.6")
    reference_logs, results = tmp_path / "reference", tmp_path / "reference.json"
    assert (
        run_trainer(tiny_args(data_dir, reference_logs, *lookahead, "--results", str(results), epochs=2)) == 0
    )
    reference = json.loads(results.read_text())
    assert (reference["lookahead_every"], reference["lookahead_decay"]) == (3, 0.6)
    # The last step (10) is not a multiple of 3: the steps since the pull at 9 are dropped.
    reference_state = load_checkpoint(only_run(reference_logs) / "checkpoints" / "last.pt")
    # The last step pulled: the network the run reported is its slow weights.
    for name, slow in reference_state["lookahead"]["slow"].items():
        assert torch.equal(reference_state["model"][name], slow), name

    logs = tmp_path / "logs"
    assert run_trainer(tiny_args(data_dir, logs, *lookahead, "--stop-after-steps", "7", epochs=2)) == 0
    stopped = only_run(logs)
    stopped_state = load_checkpoint(stopped / "checkpoints" / "last.pt")
    assert any(
        not torch.equal(stopped_state["model"][name], slow)
        for name, slow in stopped_state["lookahead"]["slow"].items()
    )
    resumed_results = tmp_path / "resumed.json"
    resume = ["--logs-dir", str(logs), "--resume", stopped.name, "--results", str(resumed_results)]
    assert run_trainer(resume) == 0
    resumed = json.loads(resumed_results.read_text())
    assert resumed["test_accuracy"] == reference["test_accuracy"]
    assert resumed["test_loss"] == reference["test_loss"]
    state = load_checkpoint(Path(resumed["run_dir"]) / "checkpoints" / "last.pt")
    for part in ("model", "lookahead"):
        expected = reference_state[part] if part == "model" else reference_state[part]["slow"]
        actual = state[part] if part == "model" else state[part]["slow"]
        assert expected.keys() == actual.keys()
        for name, value in expected.items():
            assert torch.equal(actual[name], value), (part, name)

    # Without lookahead the same run trains other weights: the pulls did something.
    plain_logs = tmp_path / "plain"
    assert run_trainer(tiny_args(data_dir, plain_logs, epochs=2)) == 0
    plain = load_checkpoint(only_run(plain_logs) / "checkpoints" / "last.pt")
    assert plain["lookahead"] is None
    assert any(not torch.equal(plain["model"][k], v) for k, v in reference_state["model"].items())


def test_a_checkpoint_without_the_slow_weights_is_refused_in_one_line(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    logs = tmp_path / "logs"
    assert (
        run_trainer(tiny_args(data_dir, logs, "lookahead_every=2", "--stop-after-steps", "3", epochs=2)) == 0
    )
    path = only_run(logs) / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    state = {k: v for k, v in state.items() if k not in ("format", "version", TRAINER_DIGEST)}
    save_checkpoint(path, {**state, "lookahead": None})  # re-signed, so only the missing part is wrong
    capsys.readouterr()
    assert run_trainer(["--logs-dir", str(logs), "--resume", str(path)]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "has no lookahead weights, though its settings set lookahead_every" in error[0]


@pytest.mark.parametrize(
    ("setting", "message"),
    [("lookahead_every=-1", "must be at least 0"), ("lookahead_decay=1.0", "must be in [0, 1)")],
)
def test_bad_lookahead_settings_are_one_line_errors(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, setting: str, message: str
) -> None:
    assert run_trainer(tiny_args(data_dir, tmp_path / "logs", setting)) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 2 and error[1].startswith("usage:"), error
    assert setting.split("=")[0] in error[0] and message in error[0]
    assert not (tmp_path / "logs").exists()


def test_a_lookahead_decay_without_lookahead_is_refused(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # It would be recorded and never used.
    assert run_trainer(tiny_args(data_dir, tmp_path / "logs", "lookahead_decay=0.5")) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert "lookahead_decay only applies with Lookahead on: give lookahead_every=5" in error[0]
    assert not (tmp_path / "logs").exists()
