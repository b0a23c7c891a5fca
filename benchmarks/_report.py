"""Shared output helpers of the benchmark scripts (run as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

import csv
import os
import platform
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any


def machine() -> str:
    """Host name and core count, for result headers."""
    return f"{platform.node()} ({os.cpu_count()} cores)"


def write_csv(path: Path, rows: Sequence[dict[str, Any]], dated: bool = True) -> None:
    """One row per dict, with a leading ``date`` column. Columns: every key, in the order of
    first appearance (rows written before a setting existed leave its cell empty)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    columns = (["date"] if dated else []) + keys
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({"date": date.today(), **row} if dated else row)


def write_markdown(path: Path, lines: Sequence[str]) -> None:
    """Write ``lines`` as a Markdown file and print them."""
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
