"""Train a (shielded) SAC agent from pixels, co-training the latent world model and barrier B(z).

    python examples/train_sac_shielded.py                                  # lbwrap/PixelHazardRun-v0
    python examples/train_sac_shielded.py --env-id SafetyPointGoal1Vision-v0   # the paper's task
    python examples/train_sac_shielded.py --env-id lbwrap/PixelHazard-v0   # goal task, numpy
    python examples/train_sac_shielded.py --preset paper --device cuda     # paper-sized run
    python examples/train_sac_shielded.py --env-id lbwrap/PixelHazard-v0 --resume \\
        --total-env-steps 100000                                           # continue a run

The safety mode picks how B(z) enters (see ``lbwrap.sb3.recipes``): ``shield`` (default) replaces
unsafe actions (judged by the action-conditioned barrier, or with ``--shield-predictor prior`` by
B at the world model's one-step prior as in the paper), ``barrier`` adds the paper's barrier term to the actor loss, ``penalty`` and
``lagrangian`` reshape the reward, ``none`` is the plain baseline. All step counts are env steps
(action repeat included, all envs together).

Writes to ``--out-dir`` (default ``runs/<env>-<mode>-<seed>``): ``metrics.csv`` and
``plot_{return,cost,violations}.png``, ``plot_vs_reference.png`` (this run next to the
committed plain-SAC reference run of the same env, preset and seed, where there is one, see
``examples/reference/``), ``episode.gif`` (camera | world-model reconstruction, B(z)
underneath), ``checkpoints/`` (one checkpoint set, replaced atomically at the end and every
``--checkpoint-every`` env steps: agent, safety model, how the agent acts on pixels and the run
state; ``lbwrap.SafePixelAgent.load(out_dir)`` loads it), ``run_config.json``, ``summary.json``,
``report.md`` and TensorBoard logs in ``tb/``. ``--resume`` continues from that folder's
checkpoint with the saved settings (flags given explicitly override them; the ones that define
the model or env must match). Any error other than Ctrl-C is followed by a checkpoint attempt;
weights that turn NaN/inf stop the run with the model named, leaving the last finite checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import tyro

import lbwrap

Mode = Literal["none", "shield", "penalty", "lagrangian", "barrier", "barrier+shield",
               "lagrangian+shield", "penalty+shield"]

DEFAULT_ENV_ID = lbwrap.PIXEL_HAZARD_RUN_ID
DEFAULT_MODE = "shield"
#: Default level of each built-in numpy env (PixelHazard: 8 hazards; PixelHazardRun: 2 per unit).
BUILTIN_LEVELS: dict[str, int] = {lbwrap.PIXEL_HAZARD_ID: 1, lbwrap.PIXEL_HAZARD_RUN_ID: 2}
#: Committed reference runs (plain SAC, mode none) that a run's report is drawn against.
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


@dataclass
class Args:
    env_id: str | None = None
    """Pixel env id: lbwrap/PixelHazardRun-v0 (default), lbwrap/PixelHazard-v0 or a
    safety-gymnasium vision task such as SafetyPointGoal1Vision-v0 (with --resume, the saved
    run's)."""
    mode: Mode | None = None
    """How safety enters (lbwrap.sb3.recipes.MODES; default shield)."""
    preset: Literal["quick", "paper", "gpu"] | None = None
    """Defaults for the fields left unset (default quick): `quick` finishes on a 2-core CPU in
    under ~12 minutes including evaluation and report; `paper` is the paper's budget (1M env
    steps, paper-size world model, world-model batches of 32 sequences x 50 steps); `gpu` is the
    paper's budget laid out for one CUDA box: 8 envs in worker processes, bf16 world-model and
    barrier updates in batches of 64 x 50, 8 SAC gradient steps per vector step (one per env
    transition, as the paper's one per agent step)."""
    total_env_steps: int | None = None
    """Env steps to train for, in total, resumed runs included (quick: 10000 on PixelHazardRun,
    16000 on PixelHazard, 14000 on other envs; paper: 1000000)."""
    action_repeat: int | None = None
    """Env steps per agent step (preset: 2)."""
    size: int | None = None
    """Camera image side in pixels, 32 or 64 (preset: 64)."""
    level: int | None = None
    """Level of the built-in envs: PixelHazard 0/1/2 = 0/8/16 hazards (default 1), PixelHazardRun
    0/1/2 hazards per unit of corridor (default 2); built-in envs only."""
    max_episode_steps: int | None = None
    """Episode length of the built-in envs in env steps (default the env's, 500)."""
    learning_starts: int | None = None
    """Random-action warm-up of SAC, in env steps (quick 1000, paper 5000)."""
    batch_size: int | None = None
    """SAC minibatch size (256)."""
    buffer_size: int | None = None
    """SAC replay capacity, in agent transitions (quick 100000, paper 500000)."""
    reward_scale: float | None = None
    """Multiplier of the reward SAC learns from (preset: 10; logs and evaluation stay in the env's
    units). PixelHazard and Safety Gym pay ~0.05 per step, which SAC's entropy bonus drowns."""
    ent_coef: str | None = None
    """SAC's entropy coefficient in SB3 syntax (preset: "auto_0.1", learned from 0.1)."""
    refresh_every: int | None = None
    """Env steps between re-filterings of SAC's stored latents with the current world model
    (LatentRefresher; 0: off; preset: 0)."""
    shield_predictor: Literal["action_barrier", "prior"] | None = None
    """How the shield predicts B after an action (preset: action_barrier): the action-conditioned
    barrier on the frame's embedding, or the paper's B at the world model's one-step prior (see
    benchmarks/shield_diagnostics.py for why the default differs from the paper)."""
    shield_eps: float | None = None
    """Margin of the action-barrier shield on its logit scale: a proposal passes when
    ``B_next >= shield_eps`` (preset: see PRESETS; None in a preset: the library's
    ``ACTION_BARRIER_EPS``)."""
    shield_selection: Literal["closest", "critic", "reward"] | None = None
    """Which passing action replaces a blocked proposal: the closest to it, the best by SAC's
    critic, or the one with the highest world-model reward at the next state (preset: see
    PRESETS)."""
    intervention_penalty: float | None = None
    """Reward (env units) subtracted whenever the shield replaces SAC's action, so SAC learns to
    stop proposing what the shield blocks (shield modes; preset 0.1)."""
    train_every: int | None = None
    """Env steps between safety-model (world model + barrier) training calls (quick 200,
    paper 1000)."""
    updates_per_train: int | None = None
    """World-model + barrier updates per training call (quick 10, paper 100)."""
    model_learning_starts: int | None = None
    """Env steps collected before the safety model's first update (quick 100, paper 5000)."""
    pretrain_updates: int | None = None
    """Extra safety-model updates in one training call, so the shield can act sooner
    (Dreamer's "pretrain"; quick 200, paper 100)."""
    pretrain_min_unsafe: int | None = None
    """Spend ``pretrain_updates`` once the safety model's replay holds this many unsafe steps
    (the first hazard contact), not before; 0: in the first training call (presets 3)."""
    model_batch: int | None = None
    """World-model batch: sequences per update (quick 16, paper 32)."""
    model_seq_len: int | None = None
    """World-model batch: steps per sequence (quick 32, paper 50)."""
    device: str = "auto"
    """Torch device for the agent and the safety model (auto: CUDA if available)."""
    seed: int | None = None
    """Seed of layouts, networks and replay sampling (default 0)."""
    num_envs: int | None = None
    """Parallel envs; > 1 runs them in SubprocVecEnv workers (default 1; gpu 8)."""
    sac_gradient_steps: int | None = None
    """SAC gradient steps per vector step (one vector step = num_envs transitions; default 1,
    gpu 8)."""
    autocast: Literal["off", "bf16"] | None = None
    """Mixed precision of the world-model / barrier training passes (default off, gpu bf16;
    bf16 is meant for CUDA)."""
    out_dir: Path | None = None
    """Output folder (default runs/<env>-<mode>-<seed>)."""
    eval_episodes: int | None = None
    """Deterministic evaluation episodes after training, each on its own held-out layout
    (quick: 5 on PixelHazard, 3 on other envs; paper 10)."""
    checkpoint_every: int | None = None
    """Env steps between checkpoints (sets in checkpoints/); 0: only at the end
    (quick 10000, paper 50000)."""
    metrics_every: int | None = None
    """Env steps between metrics.csv rows (quick 1000, paper 5000)."""
    save_replay: bool = False
    """Also save the replays in each checkpoint (the safety model's pixel replay inside
    safety_model.pt, SAC's as sac_replay.npz; both only the stored steps, compressed), so a
    resumed run trains on the data collected so far."""
    resume: bool = False
    """Continue the run in --out-dir from its checkpoint, up to --total-env-steps."""
    video_steps: int = 200
    """Agent steps of the evaluation episode recorded in episode.gif (0: no GIF)."""
    threads: int = 1
    """torch CPU threads (1 suits small models on shared CPUs)."""
    progress: bool = True
    """Show SB3's progress bar."""
    write_reference: bool = False
    """Store this run (metrics.csv, summary.json, run_config.json and the command) as the
    reference that runs of the same env, preset and seed are drawn against (examples/reference/;
    made with ``--mode none``)."""
    tiny: bool = False
    """Test-sized model: a tiny world model, barrier and SAC networks, and a readiness gate that
    opens after 10 barrier updates (so that short runs exercise the shield). For tests only."""
    given: tyro.conf.Suppress[tuple[str, ...]] = ()
    """Fields named on the command line (filled by :func:`cli`): with --resume, a flag given
    explicitly overrides the saved run even when it repeats the default (``--no-save-replay``)."""


def cli(argv: list[str] | None = None) -> Args:
    """Parse the command line (``sys.argv[1:]`` by default), recording which flags were given."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    args = tyro.cli(Args, args=argv)
    names = {f.name for f in dataclasses.fields(Args)}
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


# ------------------------------------------------------------------------------------ presets
# Step counts in env steps. The "quick" budgets were measured on a shared 2-core CPU (one torch
# thread, load average 2.5-4): ~33-37 s per 1000 env steps of training on either env (world-model
# updates and SAC dominate; MuJoCo rendering adds ~10 s), plus ~5 s (PixelHazard) or ~60 s
# (SafetyPointGoal1Vision) of evaluation, GIF and plots. PixelHazard 20k env steps took 671 s in
# all, SafetyPointGoal1Vision 12k took 455 s; the budgets below leave >= 25 % of 15 minutes spare
# (the shield, once the barrier is ready, adds a filter call per step).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "size": 64, "action_repeat": 2, "learning_starts": 1000, "batch_size": 256,
        "buffer_size": 100_000, "train_every": 200, "updates_per_train": 10,
        "model_learning_starts": 100, "pretrain_updates": 200, "pretrain_min_unsafe": 3,
        "model_batch": 16, "model_seq_len": 32,
        "checkpoint_every": 10_000, "metrics_every": 1000, "world_model": "cpu",
        "reward_scale": 10.0, "ent_coef": "auto_0.1", "refresh_every": 0,
        "shield_predictor": "action_barrier", "intervention_penalty": 0.1,
        "shield_eps": None, "shield_selection": "closest",
    },
    "gpu": {
        "total_env_steps": 1_000_000, "size": 64, "action_repeat": 2, "learning_starts": 5000,
        "batch_size": 512, "buffer_size": 1_000_000, "train_every": 1000, "updates_per_train": 50,
        "model_learning_starts": 5000, "pretrain_updates": 100, "pretrain_min_unsafe": 3,
        "model_batch": 64, "model_seq_len": 50, "num_envs": 8, "sac_gradient_steps": 8,
        "autocast": "bf16",
        "eval_episodes": 10, "checkpoint_every": 50_000, "metrics_every": 5000,
        "world_model": "paper", "reward_scale": 10.0, "ent_coef": "auto_0.1", "refresh_every": 0,
        "shield_predictor": "action_barrier", "intervention_penalty": 0.1,
        "shield_eps": None, "shield_selection": "closest",
    },
    "paper": {
        "total_env_steps": 1_000_000, "size": 64, "action_repeat": 2, "learning_starts": 5000,
        "batch_size": 256, "buffer_size": 500_000, "train_every": 1000, "updates_per_train": 100,
        "model_learning_starts": 5000, "pretrain_updates": 100, "pretrain_min_unsafe": 3,
        "model_batch": 32, "model_seq_len": 50,
        "eval_episodes": 10, "checkpoint_every": 50_000, "metrics_every": 5000,
        "world_model": "paper", "reward_scale": 10.0, "ent_coef": "auto_0.1", "refresh_every": 0,
        "shield_predictor": "action_barrier", "intervention_penalty": 0.1,
        "shield_eps": None, "shield_selection": "closest",
    },
}
#: quick-preset budgets per env (total env steps, evaluation episodes); others get the slow one.
QUICK_BUDGET: dict[str, tuple[int, int]] = {
    lbwrap.PIXEL_HAZARD_RUN_ID: (10_000, 5),
    lbwrap.PIXEL_HAZARD_ID: (16_000, 5),
    "slow": (14_000, 3),
}
#: Sub-folder of --out-dir that holds the checkpoint sets (lbwrap.sb3.save_checkpoint_set).
CHECKPOINTS = "checkpoints"
#: Flags that act on one invocation only; --resume never takes them from the saved run.
PER_INVOCATION = ("resume", "write_reference", "given")
#: Settings that define the model or the env: a resumed run must keep them.
IDENTITY = ("env_id", "mode", "size", "action_repeat", "level", "max_episode_steps", "num_envs",
            "tiny", "world_model", "shield_predictor")
TINY_WORLD_MODEL = {"cnn_depth": 4, "deter_dim": 16, "stoch_dim": 4, "hidden_dim": 16,
                    "head_hidden_dim": 16}


class RunMismatchError(ValueError):
    """--resume asked for a run that the checkpoint in --out-dir does not match."""


def _is_builtin(env_id: str) -> bool:
    return env_id in BUILTIN_LEVELS


def resolve(args: Args, saved: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fill every unset field: explicit flag > saved run (``--resume``) > preset > default.

    A field counts as explicit when it is set (not None), differs from its default, or was
    named on the command line (``args.given``), so that a resumed run keeps its saved bools."""
    explicit, fixed_defaults = {}, {}
    for f in dataclasses.fields(Args):
        value = getattr(args, f.name)
        if f.default is not None and f.default is not dataclasses.MISSING:
            fixed_defaults[f.name] = f.default
            if value == f.default and f.name not in args.given:
                continue
        if value is not None:
            explicit[f.name] = value
    for name in PER_INVOCATION:
        explicit[name] = getattr(args, name)
    base = {k: v for k, v in (saved or {}).items() if k not in PER_INVOCATION}
    if saved is not None:  # runs saved before the action barrier existed used the prior
        base.setdefault("shield_predictor", "prior")
    preset = explicit.get("preset", base.get("preset", "quick"))
    env_id = explicit.get("env_id", base.get("env_id", DEFAULT_ENV_ID))
    defaults: dict[str, Any] = {**fixed_defaults, **PRESETS[preset]}
    if preset == "quick":
        steps, episodes = QUICK_BUDGET.get(env_id, QUICK_BUDGET["slow"])
        defaults.update(total_env_steps=steps, eval_episodes=episodes)
    defaults = {"num_envs": 1, "sac_gradient_steps": 1, "autocast": "off", **defaults}
    defaults.update(preset=preset, env_id=env_id, mode=DEFAULT_MODE, seed=0,
                    level=BUILTIN_LEVELS.get(env_id), max_episode_steps=None)
    cfg = {**defaults, **base, **explicit}
    if not saved or "preset" in explicit:
        cfg["world_model"] = PRESETS[preset]["world_model"]
    if cfg.get("out_dir") is None:
        cfg["out_dir"] = Path("runs") / f"{env_id.replace('/', '-')}-{cfg['mode']}-{cfg['seed']}"
    cfg["out_dir"] = Path(cfg["out_dir"])
    for name in ("total_env_steps", "action_repeat", "train_every", "updates_per_train",
                 "metrics_every", "batch_size", "buffer_size", "model_batch", "model_seq_len",
                 "num_envs", "sac_gradient_steps"):
        if int(cfg[name]) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {cfg[name]}")
    if cfg["mode"] not in get_args(Mode):
        raise ValueError(f"--mode must be one of {get_args(Mode)}, got {cfg['mode']!r}")
    # Bad flags fail here, before any env, model or file exists, naming the fix.
    import re

    for name in ("checkpoint_every", "learning_starts", "eval_episodes", "model_learning_starts",
                 "pretrain_updates", "pretrain_min_unsafe", "refresh_every", "video_steps"):
        if cfg.get(name) is not None and int(cfg[name]) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {cfg[name]}: pass 0 or a positive count")
    builtin = _is_builtin(cfg["env_id"])
    for name in ("level", "max_episode_steps"):
        if cfg.get(name) is not None and not builtin:
            raise ValueError(
                f"--{name.replace('_', '-')} applies to the built-in envs only "
                f"({', '.join(BUILTIN_LEVELS)}), not to {cfg['env_id']}: drop the flag.")
    if cfg["max_episode_steps"] is not None and int(cfg["max_episode_steps"]) < 1:
        raise ValueError(f"--max-episode-steps must be >= 1, got {cfg['max_episode_steps']}")
    if builtin:  # episode length known: the flag, else the built-in envs' default (500)
        episode = math.ceil(int(cfg["max_episode_steps"] or 500) / int(cfg["action_repeat"]))
        if int(cfg["model_seq_len"]) > episode:
            raise ValueError(
                f"--model-seq-len {cfg['model_seq_len']} is longer than an episode ({episode} "
                f"agent steps = max_episode_steps {cfg['max_episode_steps'] or 500} / "
                f"action_repeat {cfg['action_repeat']}): pass --model-seq-len <= {episode}.")
    ent = cfg["ent_coef"]
    number = str(ent).removeprefix("auto_")
    try:
        ent_ok = str(ent) == "auto" or (math.isfinite(float(number)) and float(number) > 0)
    except ValueError:
        ent_ok = False
    if not ent_ok:
        raise ValueError(
            f"--ent-coef must be a float > 0 (e.g. 0.1), 'auto' or 'auto_<initial float > 0>' "
            f"(e.g. auto_0.1), got {ent!r}")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(cfg["device"])):
        raise ValueError(
            f"--device must be one of auto, cpu, cuda, cuda:N (N = GPU index), mps; got "
            f"{cfg['device']!r}")
    return cfg


def check_identity(cfg: dict[str, Any], saved: dict[str, Any], out_dir: Path) -> None:
    """Raise :class:`RunMismatchError` naming every setting that differs from the saved run."""
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {cfg.get(k)!r}" for k in IDENTITY
             if saved.get(k) != cfg.get(k)]
    if diffs:
        raise RunMismatchError(
            f"Cannot resume {out_dir}: its checkpoint was trained with other settings ("
            + "; ".join(diffs) + "). Drop those flags to continue it as saved, or pick another "
            "--out-dir for a new run. Nothing in the folder was changed."
        )


# ------------------------------------------------------------------------------------ building
def env_factory(cfg: dict[str, Any]) -> functools.partial:
    """A picklable ``() -> env`` (SubprocVecEnv workers rebuild the env from it)."""
    kwargs: dict[str, Any] = {}
    if _is_builtin(cfg["env_id"]):
        kwargs["level"] = cfg["level"]
        if cfg["max_episode_steps"] is not None:
            kwargs["max_episode_steps"] = cfg["max_episode_steps"]
    return functools.partial(lbwrap.make_pixel_env, cfg["env_id"], size=cfg["size"],
                             action_repeat=cfg["action_repeat"], **kwargs)


def agent_steps(cfg: dict[str, Any], env_steps: int) -> int:
    """Env steps -> SB3 timesteps (agent steps, all envs together), rounded up."""
    return math.ceil(env_steps / cfg["action_repeat"])


def safety_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    """Arguments of ``LatentSafetyModel.for_env`` for this run."""
    kwargs: dict[str, Any] = {"preset": cfg["world_model"], "batch_size": cfg["model_batch"],
                              "seq_len": cfg["model_seq_len"], "autocast": cfg["autocast"]}
    if cfg["shield_predictor"] == "prior":
        kwargs["action_barrier"] = None
    elif cfg.get("shield_eps") is not None:
        kwargs["filter"] = lbwrap.FilterConfig(condition="barrier", eps=cfg["shield_eps"],
                                               predictor="action_barrier")
    if cfg["tiny"]:
        kwargs.update(world_model_overrides=TINY_WORLD_MODEL, replay_capacity=20_000,
                      barrier=lbwrap.BarrierConfig(hidden_dim=16, imagine_starts=16,
                                                   imagine_horizon=3),
                      ready_min_updates=10, ready_min_unsafe=1, ready_accuracy=0.0)
    return kwargs


def build(cfg: dict[str, Any]):
    """The env stack, safety model, agent and callbacks (``lbwrap.sb3.recipes``)."""
    from lbwrap.sb3.recipes import AgentRecipe, build_safe_agent

    sac_kwargs: dict[str, Any] = {
        "learning_starts": agent_steps(cfg, cfg["learning_starts"]),
        "batch_size": cfg["batch_size"], "buffer_size": cfg["buffer_size"],
        "ent_coef": cfg["ent_coef"], "gradient_steps": cfg["sac_gradient_steps"],
    }
    if cfg["tiny"]:
        sac_kwargs["policy_kwargs"] = {"net_arch": [32, 32]}
    recipe = AgentRecipe(
        mode=cfg["mode"], num_envs=cfg["num_envs"], subproc=cfg["num_envs"] > 1,
        sac_kwargs=sac_kwargs, train_every=max(1, agent_steps(cfg, cfg["train_every"])),
        updates_per_train=cfg["updates_per_train"],
        model_learning_starts=agent_steps(cfg, cfg["model_learning_starts"]),
        pretrain_updates=cfg["pretrain_updates"], pretrain_min_unsafe=cfg["pretrain_min_unsafe"],
        intervention_penalty=cfg["intervention_penalty"],
        shield_selection=cfg.get("shield_selection") or "closest",
        reward_scale=cfg["reward_scale"],
        refresh_every=agent_steps(cfg, cfg["refresh_every"]) if cfg["refresh_every"] else 0,
    )
    fns = [env_factory(cfg) for _ in range(cfg["num_envs"])]
    return build_safe_agent(fns, recipe, seed=cfg["seed"], device=cfg["device"],
                            safety_kwargs=safety_kwargs(cfg),
                            tensorboard_log=str(cfg["out_dir"] / "tb"))


# ------------------------------------------------------------------------------------ checkpoints
def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def pixel_settings(cfg: dict[str, Any], built: Any):
    """How the trained agent acts on pixels (stored in each checkpoint set)."""
    return built.settings(cfg["env_id"], dict(env_factory(cfg).keywords))


def save_checkpoint(out_dir: Path, cfg: dict[str, Any], built: Any, recorder: Any) -> Any:
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
                                include_replay=cfg["save_replay"])
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


def load_checkpoint(cfg: dict[str, Any], built: Any, found: Any) -> dict[str, Any]:
    """Load the verified checkpoint set ``found`` (``check_resumable``) into ``built``; returns
    its run state (``RunMismatchError`` when it does not fit the run being resumed)."""
    from lbwrap.safety_model import IncompatibleCheckpointError

    out_dir: Path = cfg["out_dir"]
    try:
        built.safety.load_checkpoint(found.safety_path)
    except (IncompatibleCheckpointError, RuntimeError) as exc:
        raise RunMismatchError(f"Cannot resume {out_dir}: {exc}") from exc
    expected = pixel_settings(cfg, built)
    if found.settings.algorithm != expected.algorithm:
        raise RunMismatchError(
            f"Cannot resume {out_dir}: its checkpoint holds a {found.settings.algorithm} agent, "
            f"mode {cfg['mode']} trains {expected.algorithm}")
    try:
        agent = found.load_agent(env=built.env, device=cfg["device"], safety=built.safety,
                                 tensorboard_log=str(out_dir / "tb"),
                                 learning_starts=agent_steps(cfg, cfg["learning_starts"]),
                                 batch_size=cfg["batch_size"], buffer_size=cfg["buffer_size"])
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
    saved: dict[str, Any] | None = None
    found = None  # the checkpoint set to load (--resume of a run that has one)
    if args.resume:
        probe = resolve(args)  # only to find the folder
        out_dir = probe["out_dir"]
        found = check_resumable(out_dir)
        saved = json.loads((out_dir / "run_config.json").read_text())
        cfg = resolve(args, saved)
        check_identity(cfg, saved, out_dir)
        if found is None:
            print(f"{out_dir} holds no checkpoint yet (the run stopped before its first one): "
                  "starting it again from step 0 with its saved settings")
    else:
        cfg = resolve(args)
        out_dir = cfg["out_dir"]
        taken = [n for n in (CHECKPOINTS, "agent.zip", "safety_model.pt") if (out_dir / n).exists()]
        if taken:
            raise FileExistsError(
                f"{out_dir} already holds a run ({', '.join(taken)}): pass --resume to continue "
                "it, or choose another --out-dir (or delete the folder)."
            )
    out_dir = cfg["out_dir"]
    resuming = found is not None
    torch.set_num_threads(max(1, int(cfg["threads"])))

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
    _write_json(out_dir / "run_config.json", {k: v for k, v in cfg.items() if k not in ("out_dir", "given")})
    metrics_csv = out_dir / "metrics.csv"
    agent = built.agent
    ar = cfg["action_repeat"]
    if resuming:
        truncate_metrics(metrics_csv, agent.num_timesteps * ar)
        built.env.seed(cfg["seed"] + int(agent.num_timesteps))  # fresh layouts, reproducibly
    recorder = MetricsRecorder(metrics_csv, built.safety, every=cfg["metrics_every"],
                               env_steps_per_step=ar, warmup_timesteps=agent.learning_starts,
                               cotrain=built.cotrain, append=resuming)
    if state:
        recorder.load_state_dict(state.get("recorder", {}))

    newest = [found]  # the newest set on disk (what a resume would load)

    def save() -> None:
        check_finite(built.agent, built.safety)  # never replace the last finite state
        newest[0] = save_checkpoint(out_dir, cfg, built, recorder)

    checkpoint = make_checkpoint_callback(agent_steps(cfg, cfg["checkpoint_every"]), save)
    guard = NonFiniteGuard(built.safety, check_every=max(1, agent_steps(cfg, cfg["metrics_every"])))
    target = agent_steps(cfg, cfg["total_env_steps"])
    remaining = target - int(agent.num_timesteps)
    print(f"{cfg['env_id']} | mode {cfg['mode']} | preset {cfg['preset']} | "
          f"{cfg['total_env_steps']} env steps ({'resuming at ' + str(agent.num_timesteps * ar) if resuming else 'new run'})"
          f" | out {out_dir}")
    interrupted = False
    if remaining > 0:
        try:
            with explain_nonfinite(built.agent, built.safety):
                agent.learn(remaining, callback=built.callback(recorder, guard, checkpoint),
                            progress_bar=cfg["progress"], reset_num_timesteps=not resuming,
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
    make_env = env_factory(cfg)
    shield = cfg["mode"] in SHIELD_MODES
    ev = evaluate_agent(agent, make_env, built.safety, episodes=cfg["eval_episodes"],
                        shield=shield, action_scorer=built.action_scorer,
                        ).summary() if cfg["eval_episodes"] > 0 and not interrupted else {}
    pngs = [str(p) for p in plot_run(metrics_csv, out_dir / "plot")]
    comparison = compare_with_reference(cfg, metrics_csv, recorder.cum_violations, ev, out_dir)
    if comparison:
        pngs.append(str(out_dir / "plot_vs_reference.png"))
    video = None
    if cfg["video_steps"] > 0 and not interrupted:
        video = record_episode_video(agent, make_env, built.safety, out_dir / "episode.gif",
                                     shield=shield, seed=EVAL_SEED_OFFSET, max_steps=cfg["video_steps"])
    built.env.close()
    wall = time.perf_counter() - start
    summary: dict[str, Any] = {
        "env_id": cfg["env_id"], "mode": cfg["mode"], "preset": cfg["preset"], "seed": cfg["seed"],
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
    _write_json(out_dir / "summary.json", summary)
    if cfg["write_reference"] and not interrupted:
        write_reference(cfg, out_dir, command_line(args))
    report = write_report(out_dir, summary)
    summary["report"] = str(report)
    print_summary(summary)
    return summary


# ------------------------------------------------------------------------------------ reference
#: Settings a reference run must share with a run to be drawn next to it.
REFERENCE_KEYS = ("env_id", "preset", "seed", "level", "max_episode_steps", "total_env_steps",
                  "size", "action_repeat", "tiny")


def reference_folder(cfg: dict[str, Any]) -> Path:
    """Where the reference run for ``cfg``'s env, preset and seed lives."""
    return REFERENCE_DIR / f"{cfg['env_id'].replace('/', '-')}-{cfg['preset']}-seed{cfg['seed']}"


def command_line(args: Args) -> str:
    """The command that reproduces ``args`` (the flags that differ from their defaults)."""
    parts = ["python examples/train_sac_shielded.py"]
    for f in dataclasses.fields(Args):
        value = getattr(args, f.name)
        if f.name == "given" or value == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + f.name.replace("_", "-"))
        else:
            parts += [flag, str(value)]
    return " ".join(parts)


def write_reference(cfg: dict[str, Any], out_dir: Path, command: str) -> Path:
    """Copy this run's metrics and summary into :func:`reference_folder`, with its command."""
    import platform
    import shutil
    from datetime import date

    folder = reference_folder(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.csv", "summary.json", "run_config.json"):
        shutil.copy2(out_dir / name, folder / name)
    _write_json(folder / "reference.json", {
        **{k: cfg.get(k) for k in REFERENCE_KEYS}, "mode": cfg["mode"],
        "command": command,
        "date": str(date.today()), "machine": f"{platform.node()} ({os.cpu_count()} cores)",
    })
    return folder


def compare_with_reference(cfg: dict[str, Any], metrics_csv: Path, violations: float,
                           ev: dict[str, float], out_dir: Path) -> str | None:
    """Draw this run next to the committed plain-SAC reference (plot_vs_reference.png) and
    return one line comparing them; None when there is no reference for these settings."""
    from lbwrap.eval import compare_runs, plot_comparison

    folder = reference_folder(cfg)
    if cfg["mode"] == "none" or not (folder / "reference.json").exists():
        return None
    ref = json.loads((folder / "reference.json").read_text())
    if any(ref.get(k) != cfg.get(k) for k in REFERENCE_KEYS):
        return None
    ref_summary = json.loads((folder / "summary.json").read_text())
    label = f"reference: plain SAC ({ref['date']})"
    plot_comparison({f"{cfg['mode']} (this run)": metrics_csv, label: folder / "metrics.csv"},
                    out_dir / "plot_vs_reference.png",
                    title=f"{cfg['env_id']}, preset {cfg['preset']}, seed {cfg['seed']}")
    if not ev:
        return None
    return compare_runs(violations, ev["return_mean"], ref_summary["train_violations"],
                        ref_summary["eval"]["return_mean"], label=cfg["mode"],
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
