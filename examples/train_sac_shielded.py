"""Train a (shielded) SAC agent from pixels, co-training the latent world model and barrier B(z).

    python examples/train_sac_shielded.py                                  # lbwrap/PixelHazardRun-v0
    python examples/train_sac_shielded.py --env-id SafetyPointGoal1Vision-v0   # the paper's task
    python examples/train_sac_shielded.py --env-id lbwrap/PixelHazard-v0   # goal task, numpy
    python examples/train_sac_shielded.py --preset paper --device cuda     # paper-sized run
    python examples/train_sac_shielded.py --preset paper --help            # that preset's values
    python examples/train_sac_shielded.py --env-id lbwrap/PixelHazard-v0 --resume \\
        --total-env-steps 100000                                           # continue a run

The settings are one tree, :class:`lbwrap.sb3.TrainConfig` (env, safety model, co-training,
agent, run); each field is the flag ``--<name>``. ``--preset`` (quick, paper, gpu, debug) picks
the defaults the other flags start from (:func:`lbwrap.sb3.preset_config`), so ``--help`` after
``--preset X`` (and ``--env-id``, which sets the quick preset's budget) shows the values that run
gets. All step counts are env steps (action repeat included, all envs together).

The safety mode picks how B(z) enters (see ``lbwrap.sb3.recipes``): ``shield`` (default) replaces
unsafe actions (judged by the action-conditioned barrier, or with ``--shield-predictor prior`` by
B at the world model's one-step prior as in the paper), ``barrier`` adds the paper's barrier term
to the actor loss, ``penalty`` and ``lagrangian`` reshape the reward, ``none`` is the plain
baseline.

Writes to ``--out-dir`` (default ``runs/<env>-<mode>-<seed>``): ``metrics.csv`` and
``plot_{return,cost,violations}.png``, ``plot_vs_reference.png`` (this run next to the
committed plain-SAC reference run of the same env, preset and seed, where there is one, see
``examples/reference/``), ``episode.gif`` (camera | world-model reconstruction, B(z)
underneath), ``checkpoints/`` (one checkpoint set, replaced atomically at the end and every
``--checkpoint-every`` env steps: agent, safety model, how the agent acts on pixels and the run
state; ``lbwrap.SafePixelAgent.load(out_dir)`` loads it), ``run_config.json`` (the tree,
``TrainConfig.to_json``), ``summary.json``, ``report.md`` and TensorBoard logs in ``tb/``.
``--resume`` continues from that folder's checkpoint with the saved settings (flags given
explicitly override them; the ones that define the model or env must match). Any error other
than Ctrl-C is followed by a checkpoint attempt; weights that turn NaN/inf stop the run with the
model named, leaving the last finite checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import torch
import tyro

import lbwrap
from lbwrap.eval import write_json
from lbwrap.sb3.config import (
    BUILTIN_LEVELS,
    PRESET_OVERLAYS,
    PRESETS,
    QUICK_BUDGET,
    TINY_WORLD_MODEL,
    Mode,
    TrainConfig,
    preset_config,
)

__all__ = ["BUILTIN_LEVELS", "PRESET_OVERLAYS", "QUICK_BUDGET", "TINY_WORLD_MODEL", "Args", "Mode",
           "cli", "main", "resolve"]

DEFAULT_ENV_ID = lbwrap.PIXEL_HAZARD_RUN_ID
#: Committed reference runs (plain SAC, mode none) that a run's report is drawn against.
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


@dataclass
class Args:
    """The command line: the run's settings plus the flags that act on one invocation."""

    config: TrainConfig = field(default_factory=preset_config)
    resume: bool = False
    """Continue the run in --out-dir from its checkpoint, up to --total-env-steps, with its saved
    settings (flags given explicitly override them)."""
    write_reference: bool = False
    """Store this run (metrics.csv, summary.json, run_config.json and the command) as the
    reference that runs of the same env, preset and seed are drawn against (examples/reference/;
    made with ``--mode none``)."""
    given: tyro.conf.Suppress[tuple[str, ...]] = ()
    """Fields named on the command line (filled by :func:`cli`): with --resume, a flag given
    explicitly overrides the saved run even when it repeats the default (``--no-save-replay``)."""

    @classmethod
    def of(cls, **flags: Any) -> Args:
        """The Args of a command line that names these flags (field names, e.g.
        ``Args.of(preset="paper", batch_size=64)``): the preset's values for the env, then these."""
        own = {k: flags.pop(k) for k in ("resume", "write_reference") if k in flags}
        config = preset_config(flags.get("preset", "quick"), flags.get("env_id"))
        config = _with_default_out_dir(config.replace(**flags))
        return cls(config=config, given=tuple(sorted([*flags, *own])), **own)


#: Flags that act on one invocation only; --resume never takes them from the saved run.
PER_INVOCATION = ("resume", "write_reference", "given")
#: Sub-folder of --out-dir that holds the checkpoint sets (lbwrap.sb3.save_checkpoint_set).
CHECKPOINTS = "checkpoints"
#: Settings that define the model or the env: a resumed run must keep them.
IDENTITY = ("env_id", "mode", "size", "action_repeat", "level", "max_episode_steps", "num_envs",
            "tiny", "world_model", "shield_predictor")


class RunMismatchError(ValueError):
    """--resume asked for a run that the checkpoint in --out-dir does not match."""


def _with_default_out_dir(config: TrainConfig) -> TrainConfig:
    if config.run.out_dir is not None:
        return config
    return config.replace(out_dir=config.default_out_dir())


def _preparse(argv: list[str]) -> argparse.Namespace:
    """The flags that pick the defaults of the others (preset, env id) or the default --out-dir
    (mode, seed); a bad value is left for tyro to report."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for name in ("--preset", "--env-id", "--mode", "--seed"):
        parser.add_argument(name)
    known, _ = parser.parse_known_args(argv)
    return known


def describe_defaults(preset: str, env_id: str) -> str:
    """The --help description: which preset and env the shown defaults are for, and the quick
    preset's per-env budget."""
    budget = ", ".join(
        f"{'other envs' if env == 'slow' else env.removeprefix('lbwrap/')} {steps} / {episodes}"
        for env, (steps, episodes) in QUICK_BUDGET.items())
    cfg = preset_config(preset, env_id)
    return (
        "Train a (shielded) SAC agent from pixels, co-training the latent world model and the "
        f"barriers. The defaults shown are preset {preset!r} on {env_id}: "
        f"{cfg.run.total_env_steps} env steps, {cfg.run.eval_episodes} evaluation episodes. "
        f"The quick preset's budget depends on the env (total env steps / evaluation episodes: "
        f"{budget}); pass --preset and --env-id before --help to see another preset's or env's "
        "defaults. All step counts are env steps (action repeat included, all envs together). "
        "With --resume, flags not given keep the saved run's values.")


def cli(argv: list[str] | None = None) -> Args:
    """Parse the command line (``sys.argv[1:]`` by default): the preset's values for the env
    (``--preset``, ``--env-id``) are the defaults, which ``--help`` shows; records which flags
    were given."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = _preparse(argv)
    preset = pre.preset if pre.preset in PRESETS else "quick"
    env_id = pre.env_id or DEFAULT_ENV_ID
    default = preset_config(preset, env_id)
    probe: dict[str, Any] = {}
    if pre.mode in get_args(Mode):
        probe["mode"] = pre.mode
    if pre.seed is not None and pre.seed.lstrip("-").isdigit():
        probe["seed"] = int(pre.seed)
    default = default.replace(out_dir=default.replace(**probe).default_out_dir())
    args = tyro.cli(tyro.conf.OmitArgPrefixes[Args], default=Args(config=default), args=argv,
                    description=describe_defaults(preset, env_id))
    names = set(TrainConfig.field_sections()) | {"resume", "write_reference"}
    given = set()
    for token in argv:
        if not token.startswith("--"):
            continue
        name = token[2:].split("=", 1)[0].replace("-", "_")
        if name not in names and name.startswith("no_") and name[3:] in names:
            name = name[3:]
        if name in names:
            given.add(name)
    return dataclasses.replace(args, given=tuple(sorted(given)))


def resolve(args: Args, saved: TrainConfig | dict[str, Any] | None = None) -> TrainConfig:
    """The run's settings: explicit flag > saved run (``--resume``; a ``TrainConfig`` or a
    ``run_config.json`` dict of either format) > preset; checked (``TrainConfig.validate``).

    With ``saved``, a flag counts as explicit when it was named on the command line
    (``args.given``), so that a resumed run keeps its saved values, bools included. An explicit
    ``--preset`` on resume also sets the preset's world model (the only setting taken from it)."""
    cfg = args.config
    if saved is not None:
        base = saved if isinstance(saved, TrainConfig) else TrainConfig.from_json(saved)
        flat = cfg.flat()
        overrides = {k: flat[k] for k in args.given if k in flat}
        if "preset" in overrides and "world_model" not in overrides:
            overrides["world_model"] = preset_config(cfg.run.preset).safety.world_model
        cfg = base.replace(**overrides)
    cfg = _with_default_out_dir(cfg)
    cfg.validate()
    return cfg


def check_identity(cfg: TrainConfig, saved: TrainConfig, out_dir: Path) -> None:
    """Raise :class:`RunMismatchError` naming every setting that differs from the saved run."""
    now, then = cfg.flat(), saved.flat()
    diffs = [f"{k}: checkpoint {then[k]!r}, now {now[k]!r}" for k in IDENTITY if then[k] != now[k]]
    if diffs:
        raise RunMismatchError(
            f"Cannot resume {out_dir}: its checkpoint was trained with other settings ("
            + "; ".join(diffs) + "). Drop those flags to continue it as saved, or pick another "
            "--out-dir for a new run. Nothing in the folder was changed."
        )


# ------------------------------------------------------------------------------------ building
def build(cfg: TrainConfig):
    """The env stack, safety model, agent and callbacks (``lbwrap.sb3.recipes``)."""
    from lbwrap.sb3.recipes import build_safe_agent

    fns = [cfg.env_factory() for _ in range(cfg.env.num_envs)]
    assert cfg.run.out_dir is not None  # resolve() filled it in
    return build_safe_agent(fns, cfg.recipe(), seed=cfg.run.seed, device=cfg.run.device,
                            safety_kwargs=cfg.safety_kwargs(),
                            tensorboard_log=str(cfg.run.out_dir / "tb"))


# ------------------------------------------------------------------------------------ checkpoints
def run_config_json(cfg: TrainConfig) -> dict[str, Any]:
    """What run_config.json holds: the tree without the output folder (a moved run resumes)."""
    data = cfg.to_json()
    del data["run"]["out_dir"]
    return data


def pixel_settings(cfg: TrainConfig, built: Any):
    """How the trained agent acts on pixels (stored in each checkpoint set)."""
    return built.settings(cfg.env.env_id, cfg.env_kwargs())


def save_checkpoint(out_dir: Path, cfg: TrainConfig, built: Any, recorder: Any) -> Any:
    """Write agent, safety model, settings and run state as one set under ``out_dir/checkpoints``
    (``lbwrap.sb3.save_checkpoint_set``: assembled aside, renamed into place, older sets removed)."""
    from lbwrap.sb3 import save_checkpoint_set

    cot = built.cotrain
    run_state = {
        "agent_steps": int(built.agent.num_timesteps),
        "env_steps": int(recorder.env_steps),
        "recorder": recorder.state_dict(),
        "cotrain": {"cumulative_violations": cot.cumulative_violations,
                    "cumulative_cost": cot.cumulative_cost, "interventions": cot.interventions,
                    "shielded_steps": cot.shielded_steps},
    }
    saved = save_checkpoint_set(out_dir / CHECKPOINTS, built.agent, built.safety,
                                pixel_settings(cfg, built), run_state=run_state,
                                include_replay=cfg.run.save_replay)
    return saved


def make_checkpoint_callback(every: int, save: Any):
    """An SB3 callback calling ``save()`` every ``every`` timesteps."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Checkpoint(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.last = 0

        def _on_training_start(self) -> None:
            self.last = self.num_timesteps

        def _on_step(self) -> bool:
            if every > 0 and self.num_timesteps - self.last >= every:
                self.last = self.num_timesteps
                save()
            return True

    return Checkpoint()


def load_checkpoint(cfg: TrainConfig, built: Any, found: Any) -> dict[str, Any]:
    """Load the verified checkpoint set ``found`` (``check_resumable``) into ``built``; returns
    its run state (``RunMismatchError`` when it does not fit the run being resumed)."""
    from lbwrap.safety_model import IncompatibleCheckpointError

    out_dir = cfg.run.out_dir
    try:
        built.safety.load_checkpoint(found.safety_path)
    except (IncompatibleCheckpointError, RuntimeError) as exc:
        raise RunMismatchError(f"Cannot resume {out_dir}: {exc}") from exc
    expected = pixel_settings(cfg, built)
    if found.settings.algorithm != expected.algorithm:
        raise RunMismatchError(
            f"Cannot resume {out_dir}: its checkpoint holds a {found.settings.algorithm} agent, "
            f"mode {cfg.agent.mode} trains {expected.algorithm}")
    try:
        agent = found.load_agent(env=built.env, device=cfg.run.device, safety=built.safety,
                                 tensorboard_log=str(out_dir / "tb"),
                                 learning_starts=cfg.agent_steps(cfg.agent.learning_starts),
                                 batch_size=cfg.agent.batch_size,
                                 buffer_size=cfg.agent.buffer_size)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise RunMismatchError(
            f"Cannot resume {out_dir}: {found.agent_path} does not fit ({exc})") from exc
    found.restore_shield_rng(built.safety)
    built.set_agent(agent)
    state = found.run_state()
    for key, value in state.get("cotrain", {}).items():
        setattr(built.cotrain, key, value)
    return state


def describe_checkpoint(saved: Any) -> str:
    """A checkpoint set (or None: none yet), in words."""
    if saved is None:
        return "not saved (no checkpoint yet)"
    return f"checkpoint {saved.folder} (agent step {saved.step}; continue with --resume)"


def read_run_config(out_dir: Path) -> TrainConfig:
    """The settings saved in ``out_dir/run_config.json``: the nested tree
    (``TrainConfig.to_json``) or the flat form that runs saved before it (read by
    ``TrainConfig.from_json``); raises naming the file when it cannot be read."""
    path = out_dir / "run_config.json"
    try:
        return TrainConfig.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise RunMismatchError(f"Cannot resume {out_dir}: {path} is unreadable ({exc}). Start "
                               "a new run in another --out-dir.") from exc


def check_resumable(out_dir: Path) -> Any:
    """The verified checkpoint set the run in ``out_dir`` continues from (None: it stopped
    before its first one, so it starts again); raises, naming the fix, when there is no run or
    its checkpoints are unusable."""
    from lbwrap.sb3 import find_checkpoint

    if not (out_dir / "run_config.json").is_file():
        raise FileNotFoundError(
            f"--resume: {out_dir} holds no run (no run_config.json). Start the run without "
            "--resume, or pass the --out-dir of an earlier run.")
    if not (out_dir / CHECKPOINTS).is_dir() and (out_dir / "agent.zip").exists():
        raise FileNotFoundError(
            f"--resume: {out_dir} was written by an lbwrap before checkpoint sets (agent.zip and "
            f"safety_model.pt at the top, no {CHECKPOINTS}/): evaluate its files with "
            "lbwrap.eval.evaluate_agent, or start a new run in another --out-dir.")
    if not (out_dir / CHECKPOINTS).exists():
        return None  # stopped before its first checkpoint
    try:
        return find_checkpoint(out_dir / CHECKPOINTS)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"--resume: {out_dir} holds no complete checkpoint ({exc}). Start the run "
            "without --resume (in another --out-dir, or delete this one).") from exc


# ------------------------------------------------------------------------------------ main
def _ms(summary: dict[str, float], key: str, fmt: str = ".2f") -> str:
    return f"{summary[key + '_mean']:{fmt}} +- {summary[key + '_std']:{fmt}}"


def main(args: Args) -> dict[str, Any]:
    """Train, checkpoint, evaluate and report; returns the summary that is printed."""
    from lbwrap.eval import (
        MetricsRecorder,
        evaluate_agent,
        plot_run,
        record_episode_video,
        truncate_metrics,
    )
    from lbwrap.eval.evaluate import EVAL_SEED_OFFSET  # the recorded episode: first eval layout
    from lbwrap.sb3 import NonFiniteGuard, NonFiniteWeightsError, check_finite, explain_nonfinite
    from lbwrap.sb3.recipes import SHIELD_MODES

    start = time.perf_counter()
    found = None  # the checkpoint set to load (--resume of a run that has one)
    if args.resume:
        out_dir = _with_default_out_dir(args.config).run.out_dir  # the folder to continue
        assert out_dir is not None
        found = check_resumable(out_dir)
        saved = read_run_config(out_dir)
        cfg = resolve(args, saved).replace(out_dir=out_dir)
        check_identity(cfg, saved, out_dir)
        if found is None:
            print(f"{out_dir} holds no checkpoint yet (the run stopped before its first one): "
                  "starting it again from step 0 with its saved settings")
    else:
        cfg = resolve(args)
        out_dir = cfg.run.out_dir
        assert out_dir is not None
        taken = [n for n in (CHECKPOINTS, "agent.zip", "safety_model.pt") if (out_dir / n).exists()]
        if taken:
            raise FileExistsError(
                f"{out_dir} already holds a run ({', '.join(taken)}): pass --resume to continue "
                "it, or choose another --out-dir (or delete the folder)."
            )
    resuming = found is not None
    torch.set_num_threads(max(1, int(cfg.run.threads)))

    built = build(cfg)
    state: dict[str, Any] = {}
    if resuming:
        try:
            state = load_checkpoint(cfg, built, found)
        except Exception:
            built.env.close()
            raise
    # nothing in out_dir was written before this point
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "run_config.json", run_config_json(cfg))
    metrics_csv = out_dir / "metrics.csv"
    agent = built.agent
    ar = cfg.env.action_repeat
    if resuming:
        truncate_metrics(metrics_csv, agent.num_timesteps * ar)
        built.env.seed(cfg.run.seed + int(agent.num_timesteps))  # fresh layouts, reproducibly
    recorder = MetricsRecorder(metrics_csv, built.safety, every=cfg.run.metrics_every,
                               env_steps_per_step=ar, warmup_timesteps=agent.learning_starts,
                               cotrain=built.cotrain, append=resuming)
    if state:
        recorder.load_state_dict(state.get("recorder", {}))

    newest = [found]  # the newest set on disk (what a resume would load)

    def save() -> None:
        check_finite(built.agent, built.safety)  # never replace the last finite state
        newest[0] = save_checkpoint(out_dir, cfg, built, recorder)

    checkpoint = make_checkpoint_callback(cfg.agent_steps(cfg.run.checkpoint_every), save)
    guard = NonFiniteGuard(built.safety, check_every=max(1, cfg.agent_steps(cfg.run.metrics_every)))
    target = cfg.agent_steps(cfg.run.total_env_steps)
    remaining = target - int(agent.num_timesteps)
    print(f"{cfg.env.env_id} | mode {cfg.agent.mode} | preset {cfg.run.preset} | "
          f"{cfg.run.total_env_steps} env steps ({'resuming at ' + str(agent.num_timesteps * ar) if resuming else 'new run'})"
          f" | out {out_dir}")
    interrupted = False
    if remaining > 0:
        try:
            with explain_nonfinite(built.agent, built.safety):
                agent.learn(remaining, callback=built.callback(recorder, guard, checkpoint),
                            progress_bar=cfg.run.progress, reset_num_timesteps=not resuming,
                            tb_log_name="sac")
        except KeyboardInterrupt:
            interrupted = True
        except NonFiniteWeightsError:
            built.env.close()
            print(f"stopped: non-finite weights; the last finite state is {describe_checkpoint(newest[0])}")
            raise
        except Exception:  # keep what was learned, then let the error through
            try:
                save()
                print(f"checkpoint saved at agent step {agent.num_timesteps} after the error "
                      "below; fix it and continue with --resume")
            except Exception as save_exc:  # noqa: BLE001 - the original error matters more
                print(f"the checkpoint after the error failed too ({save_exc!r})")
            built.env.close()
            raise
        save()
    train_s = time.perf_counter() - start

    # ---------------------------------------------------------------- evaluation and report
    make_env = cfg.env_factory()
    shield = cfg.agent.mode in SHIELD_MODES
    ev = evaluate_agent(agent, make_env, built.safety, episodes=cfg.run.eval_episodes,
                        shield=shield, action_scorer=built.action_scorer,
                        ).summary() if cfg.run.eval_episodes > 0 and not interrupted else {}
    pngs = [str(p) for p in plot_run(metrics_csv, out_dir / "plot")]
    comparison = compare_with_reference(cfg, metrics_csv, recorder.cum_violations, ev, out_dir)
    if comparison:
        pngs.append(str(out_dir / "plot_vs_reference.png"))
    video = None
    if cfg.run.video_steps > 0 and not interrupted:
        video = record_episode_video(agent, make_env, built.safety, out_dir / "episode.gif",
                                     shield=shield, seed=EVAL_SEED_OFFSET, max_steps=cfg.run.video_steps)
    built.env.close()
    wall = time.perf_counter() - start
    summary: dict[str, Any] = {
        "env_id": cfg.env.env_id, "mode": cfg.agent.mode, "preset": cfg.run.preset,
        "seed": cfg.run.seed,
        "env_steps": int(agent.num_timesteps) * ar, "agent_steps": int(agent.num_timesteps),
        "train_violations": recorder.cum_violations,
        "warmup_violations": recorder.warmup_violations,
        "shield_interventions": recorder.interventions,
        "shield_active_steps": recorder.shield_active_steps,
        "barrier_ready": bool(built.safety.ready),
        "barrier_accuracy_ema": float(built.safety.accuracy_ema),
        "skipped_updates": built.safety.skipped_updates,
        "checkpoint": describe_checkpoint(newest[0]),
        "eval": ev, "interrupted": interrupted,
        "wall_s_session": wall, "train_wall_s_session": train_s,
        "train_wall_s_total": recorder.wall_s,
        "out_dir": str(out_dir), "plots": pngs, "vs_reference": comparison,
        "video": str(video.path) if video else None,
    }
    write_json(out_dir / "summary.json", summary)
    if args.write_reference and not interrupted:
        write_reference(cfg, out_dir, command_line(args))
    report = write_report(out_dir, summary)
    summary["report"] = str(report)
    print_summary(summary)
    return summary


# ------------------------------------------------------------------------------------ reference
#: Settings a reference run must share with a run to be drawn next to it.
REFERENCE_KEYS = ("env_id", "preset", "seed", "level", "max_episode_steps", "total_env_steps",
                  "size", "action_repeat", "tiny")


def reference_folder(cfg: TrainConfig) -> Path:
    """Where the reference run for ``cfg``'s env, preset and seed lives."""
    return REFERENCE_DIR / (f"{cfg.env.env_id.replace('/', '-')}-{cfg.run.preset}"
                            f"-seed{cfg.run.seed}")


def command_line(args: Args) -> str:
    """The command that reproduces ``args``: the flags given (``args.given``) and those that
    differ from the defaults of its preset for its env."""
    cfg = args.config
    defaults = preset_config(cfg.run.preset, cfg.env.env_id)
    defaults = defaults.replace(out_dir=cfg.default_out_dir()).flat()
    parts = ["python examples/train_sac_shielded.py"]
    values = {**cfg.flat(), "resume": args.resume, "write_reference": args.write_reference}
    for name, value in values.items():
        named = name in args.given or (name == "preset" and value != "quick") or (
            name == "env_id" and value != DEFAULT_ENV_ID)
        if not named and value == defaults.get(name, False):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            parts += [flag, str(value)]
    return " ".join(parts)


def reference_values(cfg: TrainConfig) -> dict[str, Any]:
    """The :data:`REFERENCE_KEYS` settings of ``cfg``."""
    flat = cfg.flat()
    return {k: flat[k] for k in REFERENCE_KEYS}


def write_reference(cfg: TrainConfig, out_dir: Path, command: str) -> Path:
    """Copy this run's metrics and summary into :func:`reference_folder`, with its command."""
    import platform
    import shutil
    from datetime import date

    folder = reference_folder(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.csv", "summary.json", "run_config.json"):
        shutil.copy2(out_dir / name, folder / name)
    write_json(folder / "reference.json", {
        **reference_values(cfg), "mode": cfg.agent.mode,
        "command": command,
        "date": str(date.today()), "machine": f"{platform.node()} ({os.cpu_count()} cores)",
    })
    return folder


def compare_with_reference(cfg: TrainConfig, metrics_csv: Path, violations: float,
                           ev: dict[str, float], out_dir: Path) -> str | None:
    """Draw this run next to the committed plain-SAC reference (plot_vs_reference.png) and
    return one line comparing them; None when there is no reference for these settings."""
    from lbwrap.eval import compare_runs, plot_comparison

    folder = reference_folder(cfg)
    mode = cfg.agent.mode
    if mode == "none" or not (folder / "reference.json").exists():
        return None
    ref = json.loads((folder / "reference.json").read_text())
    if any(ref.get(k) != v for k, v in reference_values(cfg).items()):
        return None
    ref_summary = json.loads((folder / "summary.json").read_text())
    label = f"reference: plain SAC ({ref['date']})"
    plot_comparison({f"{mode} (this run)": metrics_csv, label: folder / "metrics.csv"},
                    out_dir / "plot_vs_reference.png",
                    title=f"{cfg.env.env_id}, preset {cfg.run.preset}, seed {cfg.run.seed}")
    if not ev:
        return None
    return compare_runs(violations, ev["return_mean"], ref_summary["train_violations"],
                        ref_summary["eval"]["return_mean"], label=mode,
                        ref_label="plain SAC")


def write_report(out_dir: Path, s: dict[str, Any]) -> Path:
    """A short Markdown report next to the plots and the GIF."""
    ev = s["eval"]
    lines = [
        f"# {s['env_id']} — {s['mode']} (preset {s['preset']}, seed {s['seed']})", "",
        f"* env steps: {s['env_steps']}",
        (f"* training violations (violating env steps): {s['train_violations']} "
        f"(random warm-up: {s['warmup_violations']})"),
        (f"* shield: active {s['shield_active_steps']} steps, {s['shield_interventions']} interventions;"
        f" barrier ready: {s['barrier_ready']} (accuracy EMA {s['barrier_accuracy_ema']:.3f})"),
    ]
    if ev:
        lines.append(f"* evaluation ({ev['episodes']} held-out layouts): return {_ms(ev, 'return')}, "
                     f"cost {_ms(ev, 'cost', '.1f')}, violations {_ms(ev, 'violations', '.1f')}")
    skipped = ", ".join(f"{k} {v}" for k, v in s["skipped_updates"].items())
    lines += [f"* updates skipped for a NaN/inf loss or gradient: {skipped}",
              f"* {s['checkpoint']}",
              f"* training wall time: {s['train_wall_s_total']:.0f} s", ""]
    if s.get("vs_reference"):
        lines += [f"**Against the committed reference run:** {s['vs_reference']}.", "",
                  "![vs reference](plot_vs_reference.png)", ""]
    lines += ["![return](plot_return.png) ![cost](plot_cost.png) ![violations](plot_violations.png)"]
    if s["video"]:
        lines += ["", "![episode](episode.gif)"]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def print_summary(s: dict[str, Any]) -> None:
    ev = s["eval"]
    print("\n=== summary ===")
    print(f"{s['env_id']} | {s['mode']} | {s['env_steps']} env steps"
          + (" (interrupted: resume with --resume)" if s["interrupted"] else ""))
    print(f"training violations: {s['train_violations']} violating env steps "
          f"({s['warmup_violations']} during random warm-up)")
    print(f"shield: active {s['shield_active_steps']} steps, {s['shield_interventions']} "
          f"interventions | barrier ready: {s['barrier_ready']} "
          f"(accuracy EMA {s['barrier_accuracy_ema']:.3f})")
    if ev:
        print(f"evaluation over {ev['episodes']} held-out layouts: return {_ms(ev, 'return')} | "
              f"cost {_ms(ev, 'cost', '.1f')} | violations {_ms(ev, 'violations', '.1f')}")
    if s.get("vs_reference"):
        print(f"against the committed reference run: {s['vs_reference']}")
    print(f"wall time: {s['wall_s_session']:.0f} s this session "
          f"(training {s['train_wall_s_total']:.0f} s over all sessions)")
    print(f"report: {s['report']} (metrics.csv, plot_*.png"
          + (", episode.gif" if s["video"] else "") + f" in {s['out_dir']})")


if __name__ == "__main__":
    main(cli())
