"""The README's promise snippet runs as written (with a shorter budget)."""

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
