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


def test_quickstart_snippet_runs():
    code = snippet("snippet:quickstart")
    assert "agent.learn(100_000" in code
    code = code.replace("agent.learn(100_000", "agent.learn(300")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (running the README is the test)
    callback_steps = namespace["agent"].num_timesteps
    assert callback_steps == 300


def test_save_load_evaluate_snippet_runs(tmp_path, monkeypatch, capsys):
    """The quick start's second block continues the first: save, load, evaluate."""
    monkeypatch.chdir(tmp_path)  # the snippet writes agent.zip and safety_model.pt
    code = snippet("snippet:quickstart").replace("agent.learn(100_000", "agent.learn(300")
    follow = snippet("snippet:save-load")
    assert "episodes=5" in follow
    follow = follow.replace("episodes=5", "episodes=1")
    namespace: dict = {}
    exec(compile(code + follow, "README.md", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "agent.zip").is_file() and (tmp_path / "safety_model.pt").is_file()
    assert namespace["result"].summary()["episodes"] == 1
    assert "return_mean" in capsys.readouterr().out


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
