"""Shield predictors: each owns its margin, the filter only asks its predictor, and B(z)'s margin
never comes from the shield (lbwrap.barrier.predictors)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from test_action_barrier import NoDynamics, right_is_unsafe
from test_filter import LinearDynamics, barrier, states
from test_safety_model import hazard

from lbwrap.barrier import (
    ActionBarrierConfig,
    ActionBarrierPredictor,
    BarrierConfig,
    BarrierNet,
    FilterConfig,
    PredictorCheck,
    PriorPredictor,
    SafeActionFilter,
    ShieldPredictor,
)
from lbwrap.safety_model import LatentSafetyModel, barrier_penalty

BOX = ((-1.0, -1.0), (1.0, 1.0))


# ----------------------------------------------------------------------------- the predictors


def test_the_prior_takes_dt_alpha_and_margin_from_the_barrier_config():
    cfg = BarrierConfig(dt=0.5, alpha=2.0, eps=0.05)
    pred = PriorPredictor.from_barrier_config(LinearDynamics(), barrier(), cfg, condition="cbf",
                                              lookahead=2)
    assert isinstance(pred, ShieldPredictor) and pred.name == "prior"
    assert (pred.dt, pred.alpha, pred.margin, pred.lookahead) == (0.5, 2.0, 0.05, 2)
    over = PriorPredictor.from_barrier_config(LinearDynamics(), barrier(), cfg, dt=1.0, margin=0.2)
    assert (over.dt, over.alpha, over.margin) == (1.0, 2.0, 0.2)


def test_the_prior_checks_its_own_condition():
    # B(z) = 1 - z0, z' = z + 0.1 a: from z0 = 0.95, B' = 0.05 - 0.1 a0
    pred = PriorPredictor(LinearDynamics(), barrier(), condition="barrier", margin=0.01)
    z = states(0.95, 0.95)
    actions = torch.tensor([[0.3, 0.0], [0.5, 0.0]])
    result = pred.check(z, actions, barrier().value(z), None)
    assert isinstance(result, PredictorCheck)
    assert result.ok.tolist() == [True, False]  # B' = 0.02 >= 0.01, B' = 0.0 < 0.01
    torch.testing.assert_close(result.first, torch.tensor([0.02, 0.0]))
    cand = pred.check_candidates(states(0.95), actions.unsqueeze(0), torch.tensor([0.05]), None)
    assert cand.ok.shape == (1, 2) and cand.ok.tolist() == [[True, False]]
    assert pred.prepare_embed(torch.zeros(2, 3), 2, z.stoch) is None  # the prior reads none


def test_the_action_barrier_checks_its_own_margin():
    pred = ActionBarrierPredictor.from_config(right_is_unsafe(), ActionBarrierConfig(margin=0.5))
    assert pred.name == "action_barrier" and pred.margin == 0.5
    assert ActionBarrierPredictor(right_is_unsafe()).margin == ActionBarrierConfig().margin == 2.0
    assert ActionBarrierPredictor.from_config(right_is_unsafe(), margin=0.0).margin == 0.0
    embed = torch.zeros(3, 3)
    # B_next = -ELU(a0): 0.59, 0.33, -0.2
    result = pred.check(states(0.0, 0.0, 0.0), torch.tensor([[-0.9, 0], [-0.4, 0], [0.2, 0]]),
                        torch.zeros(3), embed)
    assert result.ok.tolist() == [True, False, False]
    with pytest.raises(ValueError, match="embed: expected shape"):
        pred.prepare_embed(torch.zeros(3, 4), 3, embed)
    with pytest.raises(ValueError, match="needs embed="):
        pred.prepare_embed(None, 3, embed)


@pytest.mark.parametrize("kwargs, match", [
    ({"condition": "qp"}, "condition"), ({"dt": 0.0}, "dt > 0"), ({"alpha": -1.0}, "alpha >= 0"),
    ({"margin": -0.1}, "margin must be"), ({"margin": float("nan")}, "margin must be"),
    ({"lookahead": 0}, "lookahead"),
])
def test_predictor_settings_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PriorPredictor(LinearDynamics(), barrier(), **kwargs)


def test_action_barrier_margin_is_validated():
    with pytest.raises(ValueError, match="ActionBarrierConfig.margin"):
        ActionBarrierConfig(margin=-1.0)
    with pytest.raises(ValueError, match="margin must be"):
        ActionBarrierPredictor(right_is_unsafe(), margin=float("inf"))
    with pytest.raises(TypeError, match="ActionBarrierNet"):
        ActionBarrierPredictor(BarrierNet(2))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the filter


class Recording(ShieldPredictor):
    """Passes actions with a[0] <= 0, and records what the filter asked."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: list[str] = []

    @property
    def margin(self) -> float:
        return 0.0

    def check(self, state, action, b_now, embed):
        self.calls.append(f"check {tuple(action.shape)}")
        b = -action[:, 0]
        return PredictorCheck(b >= self.margin, b, b)

    def check_candidates(self, state, candidates, b_now, embed):
        self.calls.append(f"candidates {tuple(candidates.shape)}")
        return super().check_candidates(state, candidates, b_now, embed)


def test_the_filter_asks_only_its_predictor():
    filt = SafeActionFilter(LinearDynamics(), barrier(), FilterConfig(seed=0, lookahead=3), *BOX)
    filt.predictor = recording = Recording()
    out = filt(states(0.0, 0.0), torch.tensor([[-0.5, 0.0], [0.5, 0.0]]))
    assert out.intervened.tolist() == [False, True] and bool(out.feasible[1])
    assert float(out.actions[1, 0]) <= 0.0
    assert recording.calls == ["check (2, 2)", "candidates (1, 128, 2)", "check (128, 2)"]
    assert filt.margin == 0.0


def test_filter_margins_come_from_their_own_configs_and_eps_overrides_them():
    prior = SafeActionFilter(LinearDynamics(), barrier(), FilterConfig(), *BOX,
                             barrier_config=BarrierConfig(dt=0.5, alpha=2.0, eps=0.05))
    assert isinstance(prior.predictor, PriorPredictor)
    assert (prior.predictor.dt, prior.predictor.alpha, prior.margin) == (0.5, 2.0, 0.05)
    bare = SafeActionFilter(LinearDynamics(), barrier(), FilterConfig(), *BOX)
    assert (bare.predictor.dt, bare.predictor.alpha, bare.margin) == (1.0, 1.0, 0.01)
    action = FilterConfig(condition="barrier", predictor="action_barrier")
    ab = SafeActionFilter(NoDynamics(), BarrierNet(2, num_layers=0), action, *BOX,
                          action_barrier=right_is_unsafe(),
                          barrier_config=BarrierConfig(eps=0.05),
                          action_barrier_config=ActionBarrierConfig(margin=1.5))
    assert isinstance(ab.predictor, ActionBarrierPredictor) and ab.margin == 1.5
    over = FilterConfig(condition="barrier", predictor="action_barrier", eps=0.25)
    assert SafeActionFilter(NoDynamics(), BarrierNet(2, num_layers=0), over, *BOX,
                            action_barrier=right_is_unsafe(),
                            action_barrier_config=ActionBarrierConfig(margin=1.5)).margin == 0.25
    with pytest.raises(ValueError, match="eps: expected None or a finite number >= 0"):
        FilterConfig(eps=-0.1)


# ----------------------------------------------------------------------------- the safety model


def test_the_safety_model_shield_takes_each_predictors_own_margin(tiny_safety):
    default = tiny_safety(hazard())
    assert isinstance(default.shield_filter.predictor, ActionBarrierPredictor)
    assert default.shield_filter.margin == default.config.action_barrier.margin == 2.0
    assert default.config.filter_config.eps is None  # the filter holds no margin of its own
    own = tiny_safety(hazard(), action_barrier=ActionBarrierConfig(margin=1.5),
                      barrier=BarrierConfig(hidden_dim=16, eps=0.05))
    assert own.shield_filter.margin == 1.5  # B(z)'s eps does not reach the action barrier
    prior = tiny_safety(hazard(), action_barrier=None,
                        barrier=BarrierConfig(hidden_dim=16, eps=0.05, dt=0.5, alpha=2.0))
    assert isinstance(prior.shield_filter.predictor, PriorPredictor)
    assert prior.shield_filter.margin == 0.05
    assert (prior.shield_filter.predictor.dt, prior.shield_filter.predictor.alpha) == (0.5, 2.0)
    explicit = tiny_safety(hazard(), filter=FilterConfig(condition="barrier", eps=0.7,
                                                         predictor="action_barrier"))
    assert explicit.shield_filter.margin == 0.7


def test_barrier_penalty_uses_the_barriers_margin_not_the_shields(tiny_safety):
    safety = tiny_safety(hazard(), barrier=BarrierConfig(hidden_dim=16, eps=0.05))
    assert safety.shield_filter.margin == 2.0
    zeros = np.zeros(2, np.float32)
    penalty = barrier_penalty(safety, zeros, zeros, np.zeros(2, bool), mode="margin")
    np.testing.assert_allclose(penalty, 0.05)  # relu(B(z)'s eps - 0), not relu(2 - 0)


def test_new_checkpoints_keep_the_margin_and_load_checkpoint_does_not_compare_it(tiny_safety,
                                                                                 tmp_path):
    safety = tiny_safety(hazard(), action_barrier=ActionBarrierConfig(margin=1.25))
    path = tmp_path / "safety.pt"
    safety.save(path)
    config = torch.load(path, weights_only=True)["config"]
    assert config["action_barrier"]["margin"] == 1.25 and config["filter"] is None
    assert LatentSafetyModel.load(path, device="cpu").shield_filter.margin == 1.25
    other = tiny_safety(hazard())  # margin 2: a decision setting, the weights are the same kind
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        other.load_checkpoint(path)
    assert other.shield_filter.margin == 2.0


def test_an_explicit_filter_is_saved_without_deprecated_keys(tiny_safety, tmp_path):
    cfg = FilterConfig(condition="barrier", eps=1.0, predictor="action_barrier")
    safety = tiny_safety(hazard(), filter=cfg)
    saved = safety.config.to_dict()["filter"]
    assert "fallback" not in saved and saved["eps"] == 1.0 and saved["dt"] is None
    assert saved["experimental"] == {"proposal_fallback": False}
    assert FilterConfig.from_dict(saved) == cfg
    with pytest.raises(ValueError, match="unknown FilterConfig fields"):
        FilterConfig.from_dict({**saved, "margin": 2.0})
