"""Evaluation: deterministic episodes on held-out layouts, with the agent's own safety stack; run
reports (metrics CSV, plots, an evaluation-episode GIF); offline episodes for the safety model
(random or scripted hazard-visiting collection) and the held-out accuracy of its barrier."""

from lbwrap.eval.barrier_accuracy import add_episodes, heldout_barrier_accuracy
from lbwrap.eval.data_collection import COLLECTION_POLICIES, HazardVisitor, collect_episodes
from lbwrap.eval.evaluate import EvalResult, evaluate_agent, evaluate_pixel_agent
from lbwrap.eval.report import (
    METRICS_COLUMNS,
    EpisodeVideo,
    MetricsRecorder,
    compare_runs,
    compose_video_frame,
    plot_comparison,
    plot_run,
    read_metrics,
    record_episode_video,
    truncate_metrics,
    write_json,
)

__all__ = [
    "COLLECTION_POLICIES",
    "METRICS_COLUMNS",
    "EpisodeVideo",
    "EvalResult",
    "HazardVisitor",
    "MetricsRecorder",
    "add_episodes",
    "collect_episodes",
    "compare_runs",
    "compose_video_frame",
    "evaluate_agent",
    "evaluate_pixel_agent",
    "heldout_barrier_accuracy",
    "plot_comparison",
    "plot_run",
    "read_metrics",
    "record_episode_video",
    "truncate_metrics",
    "write_json",
]
