"""
The moving average of the weights (`experiments.average.WeightAverage`, PyTorch's `AveragedModel`)
against a hand computation of $\\bar\\theta_t = \\beta_t \\bar\\theta_{t-1} + (1 - \\beta_t) \\theta_t$
with $\\beta_1 = 0$ (the first update copies) and $\\beta_t = \\min(\\beta, t / (9 + t))$ after it.
"""

import pytest
import torch
import torch.nn as nn

from experiments.average import WeightAverage


def small_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_the_average_follows_the_formula_through_the_warm_up_and_after_it() -> None:
    model = small_network()
    average = WeightAverage(model, decay=0.2)
    expected = {name: t.double().clone() for name, t in model.state_dict().items() if t.is_floating_point()}
    # The first update copies; then beta_t = min(0.2, t / (9 + t)): 0.1818..., capped at 0.2 from t = 3.
    assert [average.decay_at(t) for t in (1, 2, 3, 4)] == pytest.approx([0.0, 2 / 11, 0.2, 0.2])
    for t in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(4, 3))  # moves the batch-norm running statistics and counter
        average.update(model)
        beta = 0.0 if t == 1 else min(0.2, t / (9 + t))
        for name, value in model.state_dict().items():
            if name in expected:
                expected[name] = beta * expected[name] + (1 - beta) * value.double()
        for name, value in average.module.state_dict().items():
            if name in expected:
                assert torch.allclose(value.double(), expected[name], atol=1e-6), (t, name)
            else:  # the integer batch counter is copied, not averaged
                assert torch.equal(value, model.state_dict()[name]), name
        assert average.updates == t
    # The average is a separate network: it is not the trained one and takes no gradients.
    assert not torch.equal(average.module[0].weight, model[0].weight)
    assert not any(p.requires_grad for p in average.module.parameters())
    # Its checkpoint entry is the bare network's state, loadable into the network without the wrapper.
    assert average.state_dict()["model"].keys() == model.state_dict().keys()


def test_the_state_round_trips_and_a_decay_outside_0_1_is_refused() -> None:
    model = small_network()
    average = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    average.update(model)
    average.update(model)
    restored = WeightAverage(small_network(), decay=0.9)
    restored.load_state_dict(average.state_dict())
    assert restored.updates == 2 and int(restored.n_averaged) == 2
    for a, b in zip(restored.module.state_dict().values(), average.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="decay"):
            WeightAverage(model, decay=bad)
