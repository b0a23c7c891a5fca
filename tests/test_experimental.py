"""Experimental options (lbwrap.experimental): one ``experimental`` field per host, the old keywords
still accepted for one release (a DeprecationWarning naming the new spelling), old files loading
silently with the same settings, and a documentation page that links each measurement."""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from test_safety_model import hazard

import lbwrap
from lbwrap.barrier import FilterConfig
from lbwrap.experimental import (
    FilterExperimental,
    RecipeExperimental,
    SafetyModelExperimental,
    WorldModelExperimental,
)
from lbwrap.safety_model import LatentSafetyModel, SafetyModelConfig
from lbwrap.world_model import WorldModel, WorldModelConfig

DOCS = Path(__file__).resolve().parents[1] / "docs" / "experimental.md"


def _recipe(**kwargs: Any) -> Any:
    from lbwrap.sb3.recipes import AgentRecipe

    return AgentRecipe(**kwargs)


#: host factory, old keyword, an experimental value of it, the options' class, option, new value
MOVES = [
    (WorldModelConfig, "kl_balance", 0.8, WorldModelExperimental, "kl_balance", 0.8),
    (SafetyModelConfig, "ready_release_accuracy", 0.7, SafetyModelExperimental,
     "ready_release_accuracy", 0.7),
    (FilterConfig, "fallback", "proposal", FilterExperimental, "proposal_fallback", True),
    (_recipe, "refresh_every", 500, RecipeExperimental, "refresh_every", 500),
]
#: the old keyword's default, accepted silently
OLD_DEFAULTS = {"kl_balance": None, "ready_release_accuracy": None, "fallback": "max_barrier",
                "refresh_every": 0}


@pytest.mark.parametrize("host, old, value, options, new, moved", MOVES)
def test_an_old_keyword_warns_naming_the_new_spelling_and_moves_the_value(host, old, value,
                                                                          options, new, moved):
    with pytest.warns(DeprecationWarning) as record:
        cfg = host(**{old: value})
    message = str(record[0].message)
    assert f"{options.__name__}({new}={moved!r})" in message and "docs/experimental.md" in message
    assert record[0].filename == __file__  # points at the caller, not at lbwrap
    assert getattr(cfg.experimental, new) == moved
    assert getattr(cfg, old) is None  # the value lives in experimental only
    assert cfg == host(experimental=options(**{new: moved}))


@pytest.mark.parametrize("host, old, value, options, new, moved", MOVES)
def test_the_old_default_is_accepted_silently_and_both_spellings_must_agree(host, old, value,
                                                                            options, new, moved):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert host(**{old: OLD_DEFAULTS[old]}) == host()
    if isinstance(moved, bool):  # its only other value is the default, which means "not set"
        return
    other = 0.6 if isinstance(moved, float) else 7
    with pytest.raises(ValueError, match="disagree; give the option once"):
        host(**{old: value, "experimental": options(**{new: other})})


def test_options_validate_and_hosts_convert_dicts():
    with pytest.raises(ValueError, match=r"kl_balance must be None or a number in \(0, 1\)"):
        WorldModelExperimental(kl_balance=1.0)
    with pytest.raises(ValueError, match="ready_release_accuracy must be None or a number"):
        SafetyModelExperimental(ready_release_accuracy=1.5)
    with pytest.raises(ValueError, match="refresh_every must be an int >= 0"):
        RecipeExperimental(refresh_every=-1)
    with pytest.raises(TypeError, match="must be a FilterExperimental"):
        FilterConfig(experimental=WorldModelExperimental())  # type: ignore[arg-type]
    cfg = FilterConfig(experimental={"proposal_fallback": True})  # type: ignore[arg-type]
    assert cfg.experimental == FilterExperimental(proposal_fallback=True)
    with pytest.raises(ValueError, match="unknown options"):
        SafetyModelConfig(experimental={"hysteresis": 0.7})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ready_release_accuracy must be in"):
        SafetyModelConfig(ready_accuracy=0.6,
                          experimental=SafetyModelExperimental(ready_release_accuracy=0.7))
    assert lbwrap.experimental.FilterExperimental is FilterExperimental


def test_dicts_and_files_with_the_old_keys_load_silently_with_the_same_settings(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old = {k: v for k, v in WorldModelConfig.cpu().to_dict().items() if k != "experimental"}
        wm = WorldModelConfig.from_dict({**old, "kl_balance": 0.8})  # a file from before the move
        assert wm.experimental.kl_balance == 0.8 and wm.kl_balance is None
        filt = FilterConfig.from_dict({"condition": "barrier", "eps": 0.01, "fallback": "proposal"})
        assert filt.experimental.proposal_fallback and filt.eps == 0.01
        assert not FilterConfig.from_dict({"fallback": "max_barrier"}).experimental.proposal_fallback
    with pytest.raises(ValueError, match="fallback"):
        FilterConfig.from_dict({"fallback": "random"})
    saved = WorldModelConfig.cpu(experimental=WorldModelExperimental(kl_balance=0.8)).to_dict()
    assert "kl_balance" not in saved and saved["experimental"] == {"kl_balance": 0.8}
    model = WorldModel(WorldModelConfig.from_dict(saved))
    path = tmp_path / "wm.pt"
    model.save(path)
    payload = torch.load(path, weights_only=True)
    payload["config"] = {k: v for k, v in payload["config"].items() if k != "experimental"}
    payload["config"]["kl_balance"] = 0.8  # what lbwrap wrote before the move
    torch.save(payload, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert WorldModel.load(path).config.experimental.kl_balance == 0.8


def test_safety_model_checkpoints_keep_the_experimental_options(tiny_safety, tmp_path):
    safety = tiny_safety(
        hazard(), world_model_overrides={"cnn_depth": 4, "deter_dim": 16, "stoch_dim": 4,
                                         "hidden_dim": 16, "head_hidden_dim": 16,
                                         "experimental": {"kl_balance": 0.8}},
        experimental=SafetyModelExperimental(ready_release_accuracy=0.7),
        filter=FilterConfig(condition="barrier", predictor="action_barrier",
                            experimental=FilterExperimental(proposal_fallback=True)))
    path = tmp_path / "safety.pt"
    safety.save(path)
    config = torch.load(path, weights_only=True)["config"]
    assert "ready_release_accuracy" not in config and "fallback" not in config["filter"]
    assert config["experimental"] == {"ready_release_accuracy": 0.7}
    loaded = LatentSafetyModel.load(path, device="cpu")
    assert loaded.config.experimental.ready_release_accuracy == 0.7
    assert loaded.config.world_model.experimental.kl_balance == 0.8
    assert loaded.shield_filter.config.experimental.proposal_fallback


def test_for_env_keyword_warns_at_the_callers_line(tiny_safety):
    with pytest.warns(DeprecationWarning, match="SafetyModelExperimental") as record:
        LatentSafetyModel.for_env(hazard(), device="cpu", ready_release_accuracy=0.7)
    assert record[0].filename == __file__


def test_action_barrier_eps_is_deprecated_for_the_action_barriers_margin():
    import lbwrap.safety_model as sm

    with pytest.warns(DeprecationWarning, match="ActionBarrierConfig.margin"):
        assert sm.ACTION_BARRIER_EPS == 2.0
    with pytest.raises(AttributeError):
        _ = sm.NO_SUCH_NAME


def test_the_docs_page_lists_every_option_with_its_old_spelling_and_a_measurement():
    text = DOCS.read_text()
    for _host, old, _value, options, new, _moved in MOVES:
        assert f"{options.__name__}" in text and new in text, options.__name__
        assert f"{old}=" in text, old  # the old spelling, for those who search for it
    for options in (WorldModelExperimental, SafetyModelExperimental, FilterExperimental,
                    RecipeExperimental):
        for field in dataclasses.fields(options):
            section = re.search(rf"## `{options.__name__}\({field.name}=.*?(?=\n## |\Z)", text,
                                re.DOTALL)
            assert section, f"no section for {options.__name__}.{field.name}"
            assert re.search(r"\]\((benchmarks/[\w-]+\.md|design-decisions\.md)", section[0]), \
                f"{options.__name__}.{field.name}: no link to its measurement"
