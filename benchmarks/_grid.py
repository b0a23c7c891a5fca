"""Run a benchmark grid on Ray: one result folder per run, finished runs skipped on restart.

    results = run_grid(jobs, run_fn, out=Path("benchmarks/results/x"), address=None, parallel=2)

Each job is ``(name, payload)``; ``run_fn(payload)`` returns a JSON-serialisable dict. The
driver writes it to ``<out>/runs/<name>/result.json`` (temp file + rename, so a kill never
leaves half a result) together with the job's ``settings``. A job whose folder already holds a
result made with the same settings is not run again, so a killed benchmark, started again,
picks up where it stopped; a result made with other settings is an error (choose another
``--out`` or delete the folder) rather than being mixed into a table silently.

Ray (``pip install "lbwrap[bench]"``) starts a local cluster with ``parallel`` CPUs by default;
``address`` joins a running one (``"auto"`` or ``"ray://host:10001"``). Each run takes one CPU.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lbwrap.eval.report import write_json

RESULT_FILE = "result.json"


def result_path(out: Path, name: str) -> Path:
    """Where run ``name``'s result lives."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"run names must be plain folder names, got {name!r}")
    return out / "runs" / name / RESULT_FILE


def write_result(out: Path, name: str, settings: dict[str, Any], result: dict[str, Any]) -> Path:
    """Atomically write one run's result (with its settings) and return the file's path."""
    path = result_path(out, name)
    write_json(path, {"name": name, "settings": settings, "result": result})
    return path


def read_result(out: Path, name: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The stored result of run ``name``, or None when it has not finished.

    Raises:
        RuntimeError: the stored result was made with other settings, or is unreadable.
    """
    path = result_path(out, name)
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RuntimeError(f"{path} is unreadable ({exc}); delete it to run {name!r} again") from exc
    if stored.get("settings") != settings:
        changed = sorted(k for k in set(settings) | set(stored.get("settings", {}))
                         if settings.get(k) != stored.get("settings", {}).get(k))
        raise RuntimeError(
            f"{path} was made with other settings (differs in {changed}); use another --out "
            f"or delete that folder to run it again"
        )
    return stored["result"]


def finished_results(jobs: Sequence[tuple[str, Any]], out: Path,
                     settings: Callable[[Any], dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """``{name: result}`` of the jobs already finished in ``out`` (settings checked when given)."""
    results = {}
    for name, payload in jobs:
        if settings is None:
            path = result_path(out, name)
            stored = json.loads(path.read_text())["result"] if path.exists() else None
        else:
            stored = read_result(out, name, settings(payload))
        if stored is not None:
            results[name] = stored
    return results


def run_grid(
    jobs: Sequence[tuple[str, Any]],
    run_fn: Callable[[Any], dict[str, Any]],
    out: Path,
    settings: Callable[[Any], dict[str, Any]],
    address: str | None = None,
    parallel: int = 2,
    on_result: Callable[[str, dict[str, Any], int, int], None] | None = None,
    gpus_per_run: float = 0.0,
) -> dict[str, dict[str, Any]]:
    """Run every job not finished yet on Ray and return ``{name: result}`` for all jobs.

    Args:
        jobs: ``(name, payload)`` pairs; names must be unique.
        run_fn: runs one payload (in a Ray worker) and returns its result dict.
        out: the benchmark's output folder.
        settings: the payload's identifying settings (stored beside the result and compared on
            restart).
        address: a running Ray cluster's address; None starts a local one.
        parallel: CPUs of the local cluster (ignored with ``address``).
        on_result: called in the driver as ``on_result(name, result, done, total)``.
        gpus_per_run: GPUs each run requests (e.g. 0.5: two runs share one GPU). Ray hides the
            GPUs from tasks that request none, so runs on CUDA must ask for a share.
    """
    names = [name for name, _ in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"run names must be unique, got {names}")
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for name, payload in jobs:
        stored = read_result(out, name, settings(payload))
        if stored is None:
            todo.append((name, payload))
        else:
            results[name] = stored
    if not todo:
        return results
    try:
        import ray
    except ImportError as exc:
        raise SystemExit(
            'The benchmark grid runs on Ray: pip install "lbwrap[bench]" (or make setup)'
        ) from exc
    started_here = not ray.is_initialized()
    if started_here:
        init_kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                                       "configure_logging": False}
        if address is None:
            init_kwargs["num_cpus"] = max(int(parallel), 1)
        else:
            init_kwargs["address"] = address
        ray.init(**init_kwargs)
    try:
        remote = ray.remote(num_cpus=1, num_gpus=gpus_per_run, max_retries=0)(run_fn)
        pending = {remote.remote(payload): (name, payload) for name, payload in todo}
        total, start = len(jobs), time.perf_counter()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            name, payload = pending.pop(ready[0])
            result = ray.get(ready[0])
            write_result(out, name, settings(payload), result)
            results[name] = result
            if on_result is not None:
                on_result(name, result, len(results), total)
            else:
                print(f"[{len(results)}/{total}, {(time.perf_counter() - start) / 60:.1f} min] "
                      f"{name} done", flush=True)
    finally:
        if started_here:
            ray.shutdown()
    return {name: results[name] for name in names}
