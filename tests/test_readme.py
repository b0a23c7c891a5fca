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
    """The quick start's second block continues the first: save one set, load it, evaluate on
    pixels with SB3's evaluate_policy and lbwrap's evaluation."""
    monkeypatch.chdir(tmp_path)  # the snippet writes my-run/checkpoints
    code = snippet("snippet:quickstart").replace("agent.learn(100_000", "agent.learn(300")
    follow = snippet("snippet:save-load")
    assert follow.count("n_eval_episodes=5") == 1 and follow.count("episodes=5") == 2
    follow = follow.replace("episodes=5", "episodes=1")
    namespace: dict = {}
    exec(compile(code + follow, "README.md", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "my-run" / "checkpoints" / "latest").is_file()
    loaded = namespace["agent"]
    assert type(loaded).__name__ == "SafePixelAgent" and loaded.settings.shield
    out = capsys.readouterr().out
    assert "return_mean" in out and "violations_mean" in out


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
