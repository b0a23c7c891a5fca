"""The shield decides as it did before its predictors were split out of ``SafeActionFilter``.

``tests/data/shield_decisions.json`` holds the decisions (executed actions, replaced / feasible
flags, predicted B) that the code of commit 6ded501 (before ``lbwrap.barrier.predictors``) took
for the fixed inputs built here: the filter on fixed linear dynamics with seeded random barrier
networks, under each predictor, condition, lookahead, fallback, margin and substitute rule, and
the shield of seeded tiny ``LatentSafetyModel`` instances (the default action-barrier shield, the
paper's prior shield, an explicit ``FilterConfig``). Every case must still decide the same.

Regenerate the file only for an intended change of the shield's decisions:
``python tests/test_shield_decisions.py``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

FIXTURE = Path(__file__).with_name("data") / "shield_decisions.json"
FIELDS = ("actions", "intervened", "feasible", "b_now", "b_next_proposed", "b_next_executed")
BOX = ((-1.0, -1.0), (1.0, 1.0))
N = 24
BARRIER_SCALE, BARRIER_BIAS = 20.0, 0.0


class LinearDynamics:
    """``stoch' = stoch + 0.1 * action @ M`` (3-d stoch, 2-d actions), ``deter`` unchanged."""

    action_dim = 2
    M = torch.tensor([[1.0, -0.5, 0.3], [0.2, 0.8, -1.0]])

    def img_step(self, state, action, sample=True):
        from lbwrap.latent_state import LatentState

        stoch = state.stoch + 0.1 * action @ self.M
        return LatentState(state.deter, stoch, stoch, torch.ones_like(stoch))


def _inputs() -> tuple[Any, torch.Tensor, torch.Tensor]:
    from lbwrap.latent_state import LatentState

    gen = torch.Generator().manual_seed(123)
    stoch = torch.randn(N, 3, generator=gen)
    state = LatentState(torch.zeros(N, 2), stoch, stoch.clone(), torch.ones_like(stoch))
    proposals = 1.2 * (2 * torch.rand(N, 2, generator=gen) - 1)  # some outside the box
    embed = torch.randn(N, 5, generator=gen)
    return state, proposals, embed


def _networks() -> tuple[Any, Any]:
    from lbwrap.barrier import BarrierNet
    from lbwrap.barrier.action_barrier import ActionBarrierNet

    torch.manual_seed(7)
    barrier = BarrierNet(3, hidden_dim=16, num_layers=2)
    action_barrier = ActionBarrierNet(5, 2, hidden_dim=16, num_layers=2)
    with torch.no_grad():  # spread B and B_next over a few units, so that margins differ
        barrier.net[-1].weight.mul_(BARRIER_SCALE)
        barrier.net[-1].bias.fill_(BARRIER_BIAS)
        action_barrier.net[-1].weight.mul_(8.0)
        action_barrier.net[-1].bias.fill_(1.0)
    return barrier, action_barrier


def _result(res: Any) -> dict[str, list]:
    out = {}
    for name in FIELDS:
        value = getattr(res, "executed" if name == "actions" and hasattr(res, "executed") else name)
        value = value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
        out[name] = value.astype(bool if value.dtype == bool else np.float64).tolist()
    return out


#: name -> FilterConfig keyword arguments (``predictor="action_barrier"`` gets the embeddings).
FILTER_CASES: dict[str, dict[str, Any]] = {
    "prior, cbf": {"condition": "cbf"},
    "prior, cbf, dt 0.5 alpha 2 eps 0.1": {"condition": "cbf", "dt": 0.5, "alpha": 2.0, "eps": 0.1},
    "prior, barrier": {"condition": "barrier"},
    "prior, barrier, lookahead 3": {"condition": "barrier", "lookahead": 3},
    "prior, cbf, lookahead 2, 8+8 candidates": {"condition": "cbf", "lookahead": 2,
                                               "num_random_candidates": 8,
                                               "num_local_candidates": 8, "local_std": 0.1},
    "prior, barrier, fallback proposal": {"condition": "barrier", "eps": 0.2,
                                          "fallback": "proposal"},
    "action barrier, eps 0": {"condition": "barrier", "predictor": "action_barrier", "eps": 0.0},
    "action barrier, eps 1": {"condition": "barrier", "predictor": "action_barrier", "eps": 1.0},
    "action barrier, eps 2": {"condition": "barrier", "predictor": "action_barrier", "eps": 2.0},
    "action barrier, eps 2, fallback proposal": {"condition": "barrier",
                                                 "predictor": "action_barrier", "eps": 2.0,
                                                 "fallback": "proposal"},
}


def _scorer(rows: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    return cand[..., 1] - 0.5 * cand[..., 0] + 0.01 * rows.unsqueeze(-1)


def filter_decisions(make_config: Callable[..., Any] | None = None) -> dict[str, dict[str, list]]:
    """Each of :data:`FILTER_CASES` (and two with a scorer) on the fixed inputs."""
    from lbwrap.barrier import FilterConfig, SafeActionFilter

    make_config = make_config or FilterConfig
    state, proposals, embed = _inputs()
    barrier, action_barrier = _networks()
    out = {}
    for name, kwargs in FILTER_CASES.items():
        cfg = make_config(seed=11, **kwargs)
        filt = SafeActionFilter(LinearDynamics(), barrier, cfg, *BOX, action_barrier=action_barrier)
        uses_embed = kwargs.get("predictor") == "action_barrier"
        out[name] = _result(filt(state, proposals, embed=embed if uses_embed else None))
        if name in ("prior, barrier", "action barrier, eps 1"):
            filt.reset(11)
            out[f"{name}, scorer"] = _result(filt(state, proposals, embed=embed, scorer=_scorer))
    return out


def _tiny_env():
    import lbwrap

    return lbwrap.make_pixel_env(lbwrap.PIXEL_HAZARD_ID, size=32)


def _set_action_barrier(net: Any) -> None:
    """``B_next(e, a) = 2.5 - 3 a[0]``: passes margin 2 for a[0] <= 1/6, margin 1 for a[0] <= 1/2."""
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        first, last = net.net[0], net.net[-1]
        first.weight[0, net.embed_dim] = -1.0
        first.bias[0], first.bias[1] = 5.0, 10.0  # h0 = 5 - a0, h1 = 10: ELU passes both
        for layer in list(net.net)[2:-1]:  # hidden layers pass h0, h1 on
            if isinstance(layer, torch.nn.Linear):
                layer.weight[0, 0], layer.weight[1, 1] = 1.0, 1.0
        last.weight[0, 0], last.weight[0, 1] = 3.0, 0.25
        last.bias.fill_(-15.0)  # 3 (5 - a0) + 2.5 - 15


def _center_barrier(safety: Any, state: Any, condition: str) -> None:
    """Rescale B's last layer so that B at the prior's next states under the box's actions spans 2
    units (a random-init prior barely moves with the action) and the shield's condition, with
    dt = alpha = 1 and eps = 0.01, holds just at the median of them."""
    grid = torch.linspace(-1, 1, 9)
    actions = torch.cartesian_prod(grid, grid)
    rep = state.map(lambda t: t.repeat_interleave(len(actions), dim=0))
    with torch.no_grad():
        nxt = safety.world_model.img_step(rep, actions.repeat(state.deter.shape[0], 1),
                                          sample=False)
        raw_next = safety.barrier.value(nxt)
        raw_now = float(safety.barrier.value(state).mean())
        k = 2.0 / float(raw_next.max() - raw_next.min())
        median = float(raw_next.median())
        # B = k (raw - c); "barrier": B(median) = 0.01; "cbf": 2 B(median) - B(now) = 0.01
        c = median - 0.01 / k if condition == "barrier" else 2 * median - raw_now - 0.01 / k
        last = safety.barrier.net[-1]
        last.weight.mul_(k)
        last.bias.copy_(k * (last.bias - c))


#: name -> LatentSafetyModel overrides (tiny models of ``conftest``).
MODEL_CASES: dict[str, dict[str, Any]] = {
    "default shield (action barrier)": {},
    "prior shield (no action barrier), dt 0.5 alpha 1 eps 0.1": {
        "action_barrier": None, "barrier_config": {"dt": 0.5, "alpha": 1.0, "eps": 0.1}},
    "prior shield (no action barrier), default barrier": {"action_barrier": None},
    "explicit filter, action barrier eps 1": {
        "filter": {"condition": "barrier", "eps": 1.0, "predictor": "action_barrier"}},
    "explicit filter, prior barrier": {"filter": {"condition": "barrier"}},
}


def model_decisions(through: Callable[[Any], Any] | None = None) -> dict[str, dict[str, list]]:
    """The shield of seeded tiny safety models on frames of fixed PixelHazard episodes;
    ``through(safety)`` (e.g. a save and load) returns the model that decides."""
    from conftest import make_tiny_safety

    from lbwrap.barrier import BarrierConfig, FilterConfig
    from lbwrap.latent_tracker import LatentTracker
    from lbwrap.safety_model import shield_decision

    out = {}
    env = _tiny_env()
    for name, case in MODEL_CASES.items():
        kwargs = dict(case)
        barrier = {"hidden_dim": 16, "imagine_starts": 16, "imagine_horizon": 3,
                   **kwargs.pop("barrier_config", {})}
        if "filter" in kwargs:
            kwargs["filter"] = FilterConfig(**kwargs["filter"])
        safety = make_tiny_safety(env, barrier=BarrierConfig(**barrier), **kwargs)
        safety.force_ready = True
        tracker = LatentTracker(safety.world_model, 4)
        frames = np.stack([env.reset(seed=s)[0] for s in range(4)])
        tracker.observe(frames, None, np.ones(4, bool))
        if safety.action_barrier is not None:
            _set_action_barrier(safety.action_barrier)
        _center_barrier(safety, tracker.state, safety.shield_filter.config.condition)
        if through is not None:
            safety = through(safety)
            safety.force_ready = True
        rng = np.random.default_rng(5)
        decisions = []
        for _ in range(3):
            proposed = rng.uniform(-1.2, 1.2, (4, 2)).astype(np.float32)
            decision = shield_decision(safety, tracker.state, proposed, embed=tracker.embed)
            decisions.append(_result(decision))
            frames = np.stack([env.step(a)[0] for a in decision.executed])  # one env, 4 frames
            tracker.observe(frames, decision.executed, np.zeros(4, bool))
        out[name] = {k: [d[k] for d in decisions] for k in FIELDS}
    return out


#: What the code before ``lbwrap.experimental`` and the predictors stored for a ``FilterConfig``
#: field left at its default (its own defaults then).
OLD_FILTER_DEFAULTS = {"dt": 1.0, "alpha": 1.0, "eps": 0.01}


def old_layout(config: dict[str, Any]) -> dict[str, Any]:
    """A ``SafetyModelConfig.to_dict()`` in the layout lbwrap wrote before the predictors and
    :mod:`lbwrap.experimental` (commit 6ded501): ``kl_balance``, ``ready_release_accuracy`` and
    ``filter.fallback`` as plain keys, ``filter.dt`` / ``alpha`` / ``eps`` always numbers, no
    ``action_barrier.margin``, no ``experimental`` keys."""
    old = {k: v for k, v in config.items() if k != "experimental"}
    old["ready_release_accuracy"] = config["experimental"]["ready_release_accuracy"]
    world_model = {k: v for k, v in config["world_model"].items() if k != "experimental"}
    world_model["kl_balance"] = config["world_model"]["experimental"]["kl_balance"]
    old["world_model"] = world_model
    if config["filter"] is not None:
        filt = {k: v for k, v in config["filter"].items() if k != "experimental"}
        for key, default in OLD_FILTER_DEFAULTS.items():
            filt[key] = default if filt[key] is None else filt[key]
        proposal = config["filter"]["experimental"]["proposal_fallback"]
        filt["fallback"] = "proposal" if proposal else "max_barrier"
        old["filter"] = filt
    if config["action_barrier"] is not None:
        old["action_barrier"] = {k: v for k, v in config["action_barrier"].items()
                                 if k != "margin"}
    return old


def record() -> dict[str, Any]:
    return {"filter": filter_decisions(), "model": model_decisions()}


def assert_same(actual: dict[str, dict[str, list]], expected: dict[str, dict[str, list]]) -> None:
    assert set(actual) == set(expected)
    for name, fields in expected.items():
        for field, want in fields.items():
            got = np.asarray(actual[name][field])
            want = np.asarray(want)
            if want.dtype == bool:
                assert np.array_equal(got, want), f"{name}: {field} differs"
            else:  # NaN (inactive) stays NaN
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, equal_nan=True,
                                           err_msg=f"{name}: {field} differs")


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


def test_the_recording_exercises_every_outcome_and_tells_the_settings_apart(recorded):
    """Kept, replaced by a passing action and infeasible proposals all occur, and the cases that
    differ only in a margin or a condition's dt / alpha / eps decide differently."""
    for group in recorded.values():
        intervened = np.concatenate([np.ravel(f["intervened"]) for f in group.values()])
        feasible = np.concatenate([np.ravel(f["feasible"]) for f in group.values()])
        assert (~intervened).any() and (intervened & feasible).any() and (~feasible).any()
    pairs = [("filter", "prior, cbf", "prior, cbf, dt 0.5 alpha 2 eps 0.1"),
             ("filter", "action barrier, eps 0", "action barrier, eps 1"),
             ("filter", "action barrier, eps 1", "action barrier, eps 2"),
             ("model", "default shield (action barrier)", "explicit filter, action barrier eps 1"),
             ("model", "prior shield (no action barrier), default barrier",
              "prior shield (no action barrier), dt 0.5 alpha 1 eps 0.1")]
    for group, a, b in pairs:
        assert recorded[group][a]["intervened"] != recorded[group][b]["intervened"], (a, b)


def _new_spelling(**kwargs: Any) -> Any:
    """``FilterConfig`` with ``fallback="proposal"`` written as its experimental option."""
    from lbwrap.barrier import FilterConfig
    from lbwrap.experimental import FilterExperimental

    if kwargs.pop("fallback", "max_barrier") == "proposal":
        kwargs["experimental"] = FilterExperimental(proposal_fallback=True)
    return FilterConfig(**kwargs)


def test_filter_decides_as_recorded(recorded):
    assert_same(filter_decisions(_new_spelling), recorded["filter"])


def test_filter_with_the_old_fallback_keyword_decides_as_recorded(recorded):
    with pytest.warns(DeprecationWarning, match=r"FilterExperimental\(proposal_fallback=True\)"):
        decisions = filter_decisions()
    assert_same(decisions, recorded["filter"])


def test_safety_model_shield_decides_as_recorded(recorded):
    assert_same(model_decisions(), recorded["model"])


def test_checkpoints_in_the_old_layout_load_to_the_recorded_decisions(recorded, tmp_path):
    """Files written before the predictors (``filter.eps`` a number, no ``margin``, the old keys)
    load without a warning and the loaded shield decides as the recording."""
    import warnings

    from lbwrap.safety_model import LatentSafetyModel

    def save_old_and_load(safety: Any) -> Any:
        payload = safety.checkpoint()
        payload["config"] = old_layout(payload["config"])
        path = tmp_path / "old.pt"
        torch.save(payload, path)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loaded = LatentSafetyModel.load(path, device="cpu")
        assert loaded.shield_filter.margin == safety.shield_filter.margin
        return loaded

    assert_same(model_decisions(through=save_old_and_load), recorded["model"])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps(record(), indent=1) + "\n")
    print(f"wrote {FIXTURE}")
