"""lbwrap.sb3.TrainConfig and the example's command line built on it: every preset's --help shows
the values that preset runs, the library's defaults are the benchmarked ones, and run_config.json
files of both formats read back."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import pytest
from conftest import import_example

import lbwrap
from lbwrap.sb3 import TrainConfig, preset_config
from lbwrap.sb3.config import PRESET_OVERLAYS, QUICK_BUDGET
from lbwrap.sb3.recipes import BENCHMARKED_SAC_KWARGS, AgentRecipe

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "train_sac_shielded.py"
SAFETY_GYM = "SafetyPointGoal1Vision-v0"
#: The fields whose None is a real setting (the env's own episode length, the library's margin).
NONE_MEANS_DEFAULT = {"max_episode_steps", "shield_eps"}


@pytest.fixture(scope="module")
def example():
    yield from import_example("train_sac_shielded_config")


def help_text(example, monkeypatch, capsys, *argv: str) -> str:
    """``--help`` after ``argv``, as one line of words (no box drawing, no wrapping)."""
    monkeypatch.setenv("COLUMNS", "120")  # one column of groups (tyro lays wider ones side by side)
    with pytest.raises(SystemExit) as info:
        example.cli([*argv, "--help"])
    assert info.value.code == 0
    text = re.sub(r"[│╭╮╰╯─]", " ", capsys.readouterr().out)
    return " ".join(text.split())


def help_defaults(text: str) -> dict[str, str]:
    """Each option's default as --help prints it, by field name."""
    out: dict[str, str] = {}
    entry = re.compile(r"(?:^| )--([a-z][a-z0-9-]*)(?:, --no-\1| (?:\{[^}]*\}(?:\|[A-Z]+)?|[A-Z]+)) ")
    for match in entry.finditer(text):
        default = re.search(r"\(default: ([^)]*)\)", text[match.end():])
        assert default is not None, match.group(0)
        out.setdefault(match.group(1).replace("-", "_"), default.group(1))
    return out


CASES = [("quick", None), ("quick", lbwrap.PIXEL_HAZARD_ID), ("quick", SAFETY_GYM),
         ("paper", None), ("gpu", SAFETY_GYM), ("debug", lbwrap.PIXEL_HAZARD_ID)]


@pytest.mark.parametrize(("preset", "env_id"), CASES)
def test_help_shows_every_flag_with_the_presets_value(example, monkeypatch, capsys, preset,
                                                      env_id):
    argv = ["--preset", preset] + (["--env-id", env_id] if env_id else [])
    shown = help_defaults(help_text(example, monkeypatch, capsys, *argv))
    cfg = preset_config(preset, env_id)
    cfg = cfg.replace(out_dir=cfg.default_out_dir())
    expected = {k: str(v) for k, v in cfg.flat().items()}
    assert {k: shown.get(k) for k in expected} == expected
    assert {"resume", "write_reference"} <= set(shown)
    # None only where None is the setting (level: only for envs that have none)
    nones = {k for k, v in shown.items() if v == "None"}
    assert nones <= NONE_MEANS_DEFAULT | ({"level"} if env_id == SAFETY_GYM else set())
    assert "shield_eps" in nones and ("level" in nones) == (env_id == SAFETY_GYM)


def test_help_states_the_quick_budget_per_env(example, monkeypatch, capsys):
    quick = help_text(example, monkeypatch, capsys, "--preset", "quick")
    assert help_defaults(quick)["total_env_steps"] == "10000"
    for steps, episodes in QUICK_BUDGET.values():
        assert f"{steps} / {episodes}" in quick
    assert "preset 'quick' on lbwrap/PixelHazardRun-v0: 10000 env steps, 5 evaluation" in quick
    hazard = help_defaults(help_text(example, monkeypatch, capsys, "--env-id",
                                     lbwrap.PIXEL_HAZARD_ID))
    assert (hazard["total_env_steps"], hazard["eval_episodes"], hazard["level"]) == (
        "16000", "5", "1")
    other = help_defaults(help_text(example, monkeypatch, capsys, "--env-id", SAFETY_GYM))
    assert (other["total_env_steps"], other["eval_episodes"]) == ("14000", "3")
    paper = help_defaults(help_text(example, monkeypatch, capsys, "--preset", "paper"))
    assert (paper["total_env_steps"], paper["world_model"], paper["eval_episodes"]) == (
        "1000000", "paper", "10")
    # the flag that picks the defaults may come after the others
    late = help_defaults(help_text(example, monkeypatch, capsys, "--seed", "2", "--preset", "gpu"))
    assert (late["num_envs"], late["out_dir"]) == ("8", "runs/lbwrap-PixelHazardRun-v0-shield-2")


def test_a_bad_preset_is_refused_by_the_parser(example, capsys):
    with pytest.raises(SystemExit) as info:
        example.cli(["--preset", "fast"])
    assert info.value.code == 2
    assert "fast" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown preset 'fast': pick one of quick, paper"):
        preset_config("fast")


def test_library_defaults_are_the_quick_presets_values():
    quick = preset_config("quick")
    assert AgentRecipe() == quick.recipe()
    assert TrainConfig().replace(level=2) == quick  # the tree's own defaults are quick's
    assert PRESET_OVERLAYS["quick"] == {}
    recipe = AgentRecipe()
    assert (recipe.reward_scale, recipe.intervention_penalty, recipe.pretrain_updates,
            recipe.pretrain_min_unsafe, recipe.model_learning_starts, recipe.train_every) == (
        10.0, 0.1, 200, 3, 50, 100)
    assert AgentRecipe().sac_kwargs is not AgentRecipe().sac_kwargs  # no shared dict


def _benchmark_defaults() -> dict[str, object]:
    tree = ast.parse((ROOT / "benchmarks" / "safety_benchmark.py").read_text())
    args = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Args")
    out = {}
    for node in args.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            try:
                out[node.target.id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


def test_library_defaults_are_what_the_safety_benchmark_measured():
    """benchmarks/safety_benchmark.py passes its settings explicitly (agent steps); its defaults
    are AgentRecipe's."""
    bench, recipe = _benchmark_defaults(), AgentRecipe()
    for name in ("train_every", "updates_per_train", "model_learning_starts", "pretrain_updates",
                 "pretrain_min_unsafe", "intervention_penalty", "penalty_scale", "reward_scale",
                 "learn_from_executed", "shield_selection", "barrier_weight", "barrier_term"):
        assert getattr(recipe, name) == bench[name], name
    assert {"learning_starts": bench["learning_starts"], "ent_coef": bench["ent_coef"],
            "gradient_steps": bench["sac_gradient_steps"],
            "batch_size": bench["sac_batch_size"]} == {
        k: v for k, v in BENCHMARKED_SAC_KWARGS.items() if k != "buffer_size"}


def test_env_steps_become_agent_steps_in_one_place():
    cfg = preset_config("paper").replace(action_repeat=4, refresh_every=0)
    recipe = cfg.recipe()
    assert (recipe.train_every, recipe.model_learning_starts) == (250, 1250)
    assert recipe.sac_kwargs["learning_starts"] == 1250 == cfg.agent_steps(5000)
    assert cfg.agent_steps(5001) == 1251  # rounded up


def test_json_round_trip_and_the_flat_form():
    cfg = preset_config("gpu", lbwrap.PIXEL_HAZARD_ID).replace(seed=4, out_dir=Path("x/y"))
    data = json.loads(json.dumps(cfg.to_json()))
    assert data["format"] == 2 and data["agent"]["batch_size"] == 512
    assert TrainConfig.from_json(data) == cfg
    flat = {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.flat().items()}
    assert TrainConfig.from_json({**flat, "resume": True, "given": []}) == cfg
    # a flat file without the keys added later: its preset's values, the prior-based shield
    old = TrainConfig.from_json({"env_id": lbwrap.PIXEL_HAZARD_ID, "preset": "paper",
                                 "batch_size": 64})
    assert old == preset_config("paper", lbwrap.PIXEL_HAZARD_ID).replace(
        batch_size=64, shield_predictor="prior")
    with pytest.raises(ValueError, match="format 3.*upgrade lbwrap"):
        TrainConfig.from_json({**data, "format": 3})
    with pytest.raises(TypeError, match="no field batch"):
        cfg.replace(batch=3)


def test_validate_names_the_flag():
    with pytest.raises(ValueError, match="--train-every must be >= 1"):
        preset_config().replace(train_every=0).validate()
    with pytest.raises(ValueError, match="--mode must be one of"):
        preset_config().replace(mode="safe").validate()
    preset_config("debug").validate()
    for name in PRESET_OVERLAYS:
        for env_id in (None, lbwrap.PIXEL_HAZARD_ID, SAFETY_GYM):
            preset_config(name, env_id).validate()


def test_sections_hold_disjoint_fields():
    names = [f.name for kind in (lbwrap.sb3.EnvSection, lbwrap.sb3.SafetySection,
                                 lbwrap.sb3.CoTrainSection, lbwrap.sb3.AgentSection,
                                 lbwrap.sb3.RunSection) for f in dataclasses.fields(kind)]
    assert len(names) == len(set(names)) == len(TrainConfig.field_sections())


def test_refresh_every_reaches_the_recipe_in_agent_steps_without_a_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DeprecationWarning for the moved option
        recipe = preset_config().replace(refresh_every=1000).recipe()
    experimental = getattr(recipe, "experimental", None)
    every = experimental.refresh_every if experimental is not None else recipe.refresh_every
    assert every == 500
