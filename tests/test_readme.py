"""The README's snippets run as written (with shorter budgets)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def snippet(marker: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", text, re.DOTALL)
    assert match, f"README has no python block after <!-- {marker} -->"
    return match.group(1)


def quickstart() -> str:
    code = snippet("snippet:quickstart")
    assert "agent.learn(5_000" in code and "AgentRecipe(mode=\"shield\")" in code
    return code.replace("agent.learn(5_000", "agent.learn(300")


def test_quickstart_snippet_runs_the_benchmarked_recipe():
    namespace: dict = {}
    exec(compile(quickstart(), "README.md", "exec"), namespace)  # noqa: S102 (running the README is the test)
    assert namespace["agent"].num_timesteps == 300
    recipe = namespace["built"].recipe
    # what the benchmark measured: the safety benchmark's settings (tests/test_train_config.py
    # checks that they are AgentRecipe's defaults)
    assert (recipe.reward_scale, recipe.intervention_penalty, recipe.pretrain_updates) == (10.0, 0.1, 200)


def test_save_load_evaluate_snippet_runs(tmp_path, monkeypatch, capsys):
    """The quick start's second block continues the first: save one set, load it, evaluate on
    pixels with SB3's evaluate_policy and lbwrap's evaluation."""
    monkeypatch.chdir(tmp_path)  # the snippet writes my-run/checkpoints
    follow = snippet("snippet:save-load")
    assert follow.count("n_eval_episodes=5") == 1 and follow.count("episodes=5") == 2
    follow = follow.replace("episodes=5", "episodes=1")
    namespace: dict = {}
    exec(compile(quickstart() + follow, "README.md", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "my-run" / "checkpoints" / "latest").is_file()
    loaded = namespace["agent"]
    assert type(loaded).__name__ == "SafePixelAgent" and loaded.settings.shield
    assert loaded.settings.env_id == "lbwrap/PixelHazardRun-v0"
    out = capsys.readouterr().out
    assert "return_mean" in out and "violations_mean" in out


def test_by_hand_snippet_runs():
    code = snippet("snippet:by-hand")
    assert "agent.learn(100_000" in code
    namespace: dict = {}
    exec(compile(code.replace("agent.learn(100_000", "agent.learn(300"), "README.md", "exec"),  # noqa: S102
         namespace)
    assert namespace["agent"].num_timesteps == 300


def test_offline_data_snippet_runs(capsys):
    code = snippet("snippet:offline")
    for full, short in (("collect_episodes(env, 4000", "collect_episodes(env, 150"),
                        ("collect_episodes(env, 2000", "collect_episodes(env, 100"),
                        ("safety.update(600)", "safety.update(2)")):
        assert full in code
        code = code.replace(full, short)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (running the README is the test)
    assert "heldout_balanced_accuracy" in capsys.readouterr().out
    namespace["env"].close()
