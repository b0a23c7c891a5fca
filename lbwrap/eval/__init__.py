"""Evaluation: deterministic episodes on held-out layouts, with the agent's own safety stack."""

from lbwrap.eval.evaluate import EvalResult, evaluate_agent

__all__ = ["EvalResult", "evaluate_agent"]
