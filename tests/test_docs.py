"""The documentation site builds without a warning, and no file points at documents that are not
in the repository."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Background documents that live outside the repository: no tracked file may refer to them.
MISSING_DOCUMENTS = ("METHOD.md", "ANCHORS.md", "STACK.md", "DESIGN.md", "HISTORY.md", "shared/docs")


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                    reason="mkdocs is not installed (it comes with the docs extra: pip install -e .[docs])")
def test_docs_build_strict(tmp_path):
    """``mkdocs build --strict``: a broken link, a missing anchor, a page left out of the nav or an
    API block that does not resolve fails the build."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT, check=False, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "index.html").is_file()


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", "*.md", "*.py"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (git ls-files failed)")
    return [ROOT / name for name in out.split("\0") if name]


def test_no_file_refers_to_documents_outside_the_repository():
    pattern = re.compile("|".join(re.escape(name) for name in MISSING_DOCUMENTS))
    this_file = Path(__file__).resolve()
    offenders = []
    for path in _tracked_files():
        if path.resolve() == this_file or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "references to documents that are not in the repository:\n" + "\n".join(offenders)
