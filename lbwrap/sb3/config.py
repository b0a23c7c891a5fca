"""One configuration tree for a training run from pixels: env, safety model, co-training, agent, run.

:class:`TrainConfig` nests five sections (:class:`EnvSection`, :class:`SafetySection`,
:class:`CoTrainSection`, :class:`AgentSection`, :class:`RunSection`). Every step count in the
tree is in **env steps** (action repeat included, all envs together); :meth:`TrainConfig.agent_steps`
is the one place that converts them to SB3 timesteps (agent steps), when :meth:`TrainConfig.recipe`
builds the :class:`~lbwrap.sb3.recipes.AgentRecipe`.

The defaults are the ``quick`` preset on ``lbwrap/PixelHazardRun-v0``, the settings that
``benchmarks/safety_benchmark.py`` measured and ``make run`` runs. :func:`preset_config` lays a
preset (``quick``, ``paper``, ``gpu``, ``debug``) over them, including the quick preset's per-env
budget (:data:`QUICK_BUDGET`). Field names are unique across the sections, so
:meth:`TrainConfig.flat` / :meth:`TrainConfig.replace` address any field by its name alone, and
``examples/train_sac_shielded.py`` exposes each as the flag ``--<name-with-dashes>``; the
validation errors of :meth:`TrainConfig.validate` name those flags.

:meth:`TrainConfig.to_json` writes the nested form (``run_config.json``, format 2);
:meth:`TrainConfig.from_json` reads it and the flat form written before this module existed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from lbwrap.barrier import BarrierConfig, FilterConfig
from lbwrap.envs import PIXEL_HAZARD_ID, PIXEL_HAZARD_RUN_ID
from lbwrap.sb3.recipes import MODES, AgentRecipe

__all__ = [
    "BUILTIN_LEVELS",
    "PRESETS",
    "PRESET_OVERLAYS",
    "QUICK_BUDGET",
    "TINY_WORLD_MODEL",
    "AgentSection",
    "CoTrainSection",
    "EnvSection",
    "Mode",
    "RunSection",
    "SafetySection",
    "TrainConfig",
    "preset_config",
]

Mode = Literal["none", "shield", "penalty", "lagrangian", "barrier", "barrier+shield",
               "lagrangian+shield", "penalty+shield"]
PresetName = Literal["quick", "paper", "gpu", "debug"]
#: The presets :func:`preset_config` knows.
PRESETS: tuple[str, ...] = get_args(PresetName)
#: Default level of each built-in numpy env (PixelHazard: 8 hazards; PixelHazardRun: 2 per unit).
BUILTIN_LEVELS: dict[str, int] = {PIXEL_HAZARD_ID: 1, PIXEL_HAZARD_RUN_ID: 2}
#: The quick preset's budget per env: (total env steps, evaluation episodes); other envs get
#: ``"slow"``. Measured on a shared 2-core CPU (one torch thread): ~33-37 s per 1000 env steps of
#: training on either env, plus ~5 s (PixelHazard) or ~60 s (SafetyPointGoal1Vision) of
#: evaluation, GIF and plots, so that a quick run stays within about 15 minutes.
QUICK_BUDGET: dict[str, tuple[int, int]] = {
    PIXEL_HAZARD_RUN_ID: (10_000, 5),
    PIXEL_HAZARD_ID: (16_000, 5),
    "slow": (14_000, 3),
}
#: World-model sizes of ``tiny`` (test-sized) runs.
TINY_WORLD_MODEL: dict[str, int] = {"cnn_depth": 4, "deter_dim": 16, "stoch_dim": 4,
                                    "hidden_dim": 16, "head_hidden_dim": 16}
#: Format of :meth:`TrainConfig.to_json` (the flat form before it had none).
JSON_FORMAT = 2


@dataclass
class EnvSection:
    """The pixel env (``lbwrap.make_pixel_env``)."""

    env_id: str = PIXEL_HAZARD_RUN_ID
    """Pixel env id: lbwrap/PixelHazardRun-v0, lbwrap/PixelHazard-v0 or a safety-gymnasium
    vision task such as SafetyPointGoal1Vision-v0."""
    level: int | None = None
    """Level of the built-in envs: PixelHazard 0/1/2 = 0/8/16 hazards, PixelHazardRun 0/1/2
    hazards per unit of corridor; built-in envs only (None: the env's default, which the presets
    fill in: PixelHazard 1, PixelHazardRun 2)."""
    max_episode_steps: int | None = None
    """Episode length of the built-in envs in env steps (None: the env's own, 500)."""
    size: int = 64
    """Camera image side in pixels, 32 or 64."""
    action_repeat: int = 2
    """Env steps per agent step."""
    num_envs: int = 1
    """Parallel envs; > 1 runs them in SubprocVecEnv workers."""


@dataclass
class SafetySection:
    """The safety model: world model, barriers and the shield (``LatentSafetyModel.for_env``)."""

    world_model: Literal["cpu", "paper"] = "cpu"
    """World-model size: ``cpu`` (conv depth 8, GRU 128) or ``paper`` (PlaNet sizes)."""
    model_batch: int = 16
    """World-model batch: sequences per update."""
    model_seq_len: int = 32
    """World-model batch: steps per sequence."""
    autocast: Literal["off", "bf16"] = "off"
    """Mixed precision of the world-model / barrier training passes (bf16 is meant for CUDA)."""
    shield_predictor: Literal["action_barrier", "prior"] = "action_barrier"
    """How the shield predicts B after an action: the action-conditioned barrier on the frame's
    embedding, or the paper's B at the world model's one-step prior (see
    benchmarks/shield_diagnostics.py for why the default differs from the paper)."""
    shield_eps: float | None = None
    """Margin of the action-barrier shield on its logit scale: a proposal passes when
    ``B_next >= shield_eps`` (None: the action barrier's own margin,
    ``lbwrap.barrier.ActionBarrierConfig.margin``, 2.0)."""
    tiny: bool = False
    """Test-sized model: a tiny world model, barrier and SAC networks, and a readiness gate that
    opens after 10 barrier updates (so that short runs exercise the shield). For tests only."""


@dataclass
class CoTrainSection:
    """When and how much the safety model trains beside the agent (:class:`CoTrainCallback`)."""

    train_every: int = 200
    """Env steps between safety-model (world model + barrier) training calls."""
    updates_per_train: int = 10
    """World-model + barrier updates per training call."""
    model_learning_starts: int = 100
    """Env steps collected before the safety model's first update."""
    pretrain_updates: int = 200
    """Extra safety-model updates in one training call, so the shield can act sooner
    (Dreamer's "pretrain")."""
    pretrain_min_unsafe: int = 3
    """Spend ``pretrain_updates`` once the safety model's replay holds this many unsafe steps
    (the first hazard contact), not before; 0: in the first training call."""
    refresh_every: int = 0
    """Env steps between re-filterings of SAC's stored latents with the current world model
    (LatentRefresher, an experimental option of the recipe: lbwrap.experimental; 0: off)."""


@dataclass
class AgentSection:
    """The agent: safety mode and SAC."""

    mode: Mode = "shield"
    """How safety enters (lbwrap.sb3.recipes.MODES)."""
    learning_starts: int = 1000
    """Random-action warm-up of SAC, in env steps."""
    batch_size: int = 256
    """SAC minibatch size."""
    buffer_size: int = 100_000
    """SAC replay capacity, in agent transitions."""
    ent_coef: str = "auto_0.1"
    """SAC's entropy coefficient in SB3 syntax ("auto_0.1": learned, starting at 0.1)."""
    sac_gradient_steps: int = 1
    """SAC gradient steps per vector step (one vector step = num_envs transitions)."""
    reward_scale: float = 10.0
    """Multiplier of the reward SAC learns from (logs and evaluation stay in the env's units).
    PixelHazard and Safety Gym pay ~0.05 per step, which SAC's entropy bonus drowns."""
    intervention_penalty: float = 0.1
    """Reward (env units) subtracted whenever the shield replaces SAC's action, so SAC learns to
    stop proposing what the shield blocks (shield modes)."""
    shield_selection: Literal["closest", "critic", "reward"] = "closest"
    """Which passing action replaces a blocked proposal: the closest to it, the best by SAC's
    critic, or the one with the highest world-model reward at the next state."""


@dataclass
class RunSection:
    """The run around training: budget, evaluation, outputs, device."""

    preset: PresetName = "quick"
    """The preset these settings were laid over (:func:`preset_config`): ``quick`` finishes on a
    2-core CPU in under ~12 minutes including evaluation and report (its budget depends on the
    env, see ``total_env_steps``); ``paper`` is the paper's budget (1M env steps, paper-size
    world model, world-model batches of 32 sequences x 50 steps); ``gpu`` is the paper's budget
    laid out for one CUDA box: 8 envs in worker processes, bf16 world-model and barrier updates
    in batches of 64 x 50, 8 SAC gradient steps per vector step (one per env transition, as the
    paper's one per agent step); ``debug`` is a tiny model on a 600-env-step budget (seconds; for
    tests)."""
    total_env_steps: int = 10_000
    """Env steps to train for, in total, resumed runs included. The quick preset sets it per env:
    10000 on PixelHazardRun, 16000 on PixelHazard, 14000 on other envs (QUICK_BUDGET)."""
    eval_episodes: int = 5
    """Deterministic evaluation episodes after training, each on its own held-out layout. The
    quick preset sets it per env: 5 on PixelHazardRun and PixelHazard, 3 on other envs."""
    seed: int = 0
    """Seed of layouts, networks and replay sampling."""
    device: str = "auto"
    """Torch device for the agent and the safety model (auto: CUDA if available)."""
    out_dir: Path | None = None
    """Output folder (None: runs/<env>-<mode>-<seed>, see :meth:`TrainConfig.default_out_dir`)."""
    checkpoint_every: int = 10_000
    """Env steps between checkpoints (sets in checkpoints/); 0: only at the end."""
    metrics_every: int = 1000
    """Env steps between metrics.csv rows."""
    save_replay: bool = False
    """Also save the replays in each checkpoint (the safety model's pixel replay inside
    safety_model.pt, SAC's as sac_replay.npz; both only the stored steps, compressed), so a
    resumed run trains on the data collected so far."""
    video_steps: int = 200
    """Agent steps of the evaluation episode recorded in episode.gif (0: no GIF)."""
    threads: int = 1
    """torch CPU threads (1 suits small models on shared CPUs)."""
    progress: bool = True
    """Show SB3's progress bar."""


_SECTIONS = ("env", "safety", "cotrain", "agent", "run")


@dataclass
class TrainConfig:
    """Every setting of a training run (defaults: the quick preset on PixelHazardRun, with
    ``env.level`` None = the env's default; :func:`preset_config` fills it in)."""

    env: EnvSection = field(default_factory=EnvSection)
    safety: SafetySection = field(default_factory=SafetySection)
    cotrain: CoTrainSection = field(default_factory=CoTrainSection)
    agent: AgentSection = field(default_factory=AgentSection)
    run: RunSection = field(default_factory=RunSection)

    # ------------------------------------------------------------------ flat access
    @classmethod
    def field_sections(cls) -> dict[str, str]:
        """Each field name -> the section that holds it (names are unique across sections)."""
        out: dict[str, str] = {}
        for section, kind in zip(_SECTIONS, (EnvSection, SafetySection, CoTrainSection,
                                             AgentSection, RunSection)):
            for f in dataclasses.fields(kind):
                out[f.name] = section
        return out

    def flat(self) -> dict[str, Any]:
        """All fields as one dict, by field name."""
        return {name: getattr(getattr(self, section), name)
                for name, section in self.field_sections().items()}

    def replace(self, **values: Any) -> TrainConfig:
        """A copy with the named fields (by field name, any section) set; raises ``TypeError``
        naming an unknown field."""
        sections = self.field_sections()
        unknown = sorted(set(values) - set(sections))
        if unknown:
            raise TypeError(f"TrainConfig has no field {', '.join(unknown)}; its fields are "
                            f"{', '.join(sections)}")
        changed: dict[str, dict[str, Any]] = {}
        for name, value in values.items():
            changed.setdefault(sections[name], {})[name] = value
        return dataclasses.replace(self, **{
            s: dataclasses.replace(getattr(self, s), **kw) for s, kw in changed.items()})

    # ------------------------------------------------------------------ json
    def to_json(self) -> dict[str, Any]:
        """The nested form (``run_config.json``, format :data:`JSON_FORMAT`); paths as strings."""
        out: dict[str, Any] = {"format": JSON_FORMAT}
        for section in _SECTIONS:
            out[section] = {k: (str(v) if isinstance(v, Path) else v)
                            for k, v in dataclasses.asdict(getattr(self, section)).items()}
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        """Read :meth:`to_json`'s nested form or the flat form of earlier ``run_config.json``
        files (one dict of field names; keys that are no fields, such as ``resume``, are
        ignored). Fields the file lacks take the values of its preset for its env, except
        ``shield_predictor``, which a flat file without it ran as ``prior`` (runs saved before
        the action barrier existed)."""
        if isinstance(data.get("env"), dict):
            version = data.get("format")
            if not isinstance(version, int) or version > JSON_FORMAT:
                raise ValueError(
                    f"run_config.json has format {version!r}; this lbwrap reads format "
                    f"{JSON_FORMAT} and the flat form before it: upgrade lbwrap to resume it.")
            flat: dict[str, Any] = {}
            for section in _SECTIONS:
                flat.update(data.get(section) or {})
        else:
            flat = dict(data)
            flat.setdefault("shield_predictor", "prior")
        preset = flat.get("preset", "quick")
        if preset not in PRESETS:
            raise ValueError(f"run_config.json names preset {preset!r}; known presets: "
                             f"{', '.join(PRESETS)}")
        base = preset_config(preset, flat.get("env_id", PIXEL_HAZARD_RUN_ID))
        known = set(cls.field_sections())
        values = {k: v for k, v in flat.items() if k in known}
        if values.get("out_dir") is not None:
            values["out_dir"] = Path(values["out_dir"])
        return base.replace(**values)

    # ------------------------------------------------------------------ derived settings
    def agent_steps(self, env_steps: int) -> int:
        """Env steps -> SB3 timesteps (agent steps, all envs together), rounded up: the one
        conversion of the tree's env steps."""
        return math.ceil(env_steps / self.env.action_repeat)

    def default_out_dir(self) -> Path:
        """``runs/<env>-<mode>-<seed>`` (where a run goes when ``run.out_dir`` is None)."""
        return Path("runs") / f"{self.env.env_id.replace('/', '-')}-{self.agent.mode}-{self.run.seed}"

    @property
    def is_builtin_env(self) -> bool:
        """Whether the env is one of lbwrap's numpy envs (which take ``level`` and
        ``max_episode_steps``)."""
        return self.env.env_id in BUILTIN_LEVELS

    def env_kwargs(self) -> dict[str, Any]:
        """The ``lbwrap.make_pixel_env`` arguments besides the env id."""
        kwargs: dict[str, Any] = {"size": self.env.size, "action_repeat": self.env.action_repeat}
        if self.is_builtin_env:
            kwargs["level"] = self.env.level
            if self.env.max_episode_steps is not None:
                kwargs["max_episode_steps"] = self.env.max_episode_steps
        return kwargs

    def env_factory(self) -> functools.partial[Any]:
        """A picklable ``() -> env`` (SubprocVecEnv workers rebuild the env from it)."""
        import lbwrap

        return functools.partial(lbwrap.make_pixel_env, self.env.env_id, **self.env_kwargs())

    def sac_kwargs(self) -> dict[str, Any]:
        """SAC's arguments (learning starts converted to agent steps)."""
        a = self.agent
        kwargs: dict[str, Any] = {
            "learning_starts": self.agent_steps(a.learning_starts), "batch_size": a.batch_size,
            "buffer_size": a.buffer_size, "ent_coef": a.ent_coef,
            "gradient_steps": a.sac_gradient_steps,
        }
        if self.safety.tiny:
            kwargs["policy_kwargs"] = {"net_arch": [32, 32]}
        return kwargs

    def recipe(self) -> AgentRecipe:
        """The :class:`AgentRecipe` of this run (its step counts in agent steps)."""
        c, a = self.cotrain, self.agent
        extra: dict[str, Any] = {}
        if c.refresh_every:  # passed only when on (an experimental option of the recipe)
            every = self.agent_steps(c.refresh_every)
            if "experimental" in {f.name for f in dataclasses.fields(AgentRecipe)}:
                from lbwrap.experimental import RecipeExperimental

                extra["experimental"] = RecipeExperimental(refresh_every=every)
            else:
                extra["refresh_every"] = every
        return AgentRecipe(
            mode=a.mode, num_envs=self.env.num_envs, subproc=self.env.num_envs > 1,
            sac_kwargs=self.sac_kwargs(), train_every=max(1, self.agent_steps(c.train_every)),
            updates_per_train=c.updates_per_train,
            model_learning_starts=self.agent_steps(c.model_learning_starts),
            pretrain_updates=c.pretrain_updates, pretrain_min_unsafe=c.pretrain_min_unsafe,
            intervention_penalty=a.intervention_penalty, shield_selection=a.shield_selection,
            reward_scale=a.reward_scale, **extra)

    def safety_kwargs(self) -> dict[str, Any]:
        """Arguments of ``LatentSafetyModel.for_env`` for this run."""
        s = self.safety
        kwargs: dict[str, Any] = {"preset": s.world_model, "batch_size": s.model_batch,
                                  "seq_len": s.model_seq_len, "autocast": s.autocast}
        if s.shield_predictor == "prior":
            kwargs["action_barrier"] = None
        elif s.shield_eps is not None:
            kwargs["filter"] = FilterConfig(condition="barrier", eps=s.shield_eps,
                                            predictor="action_barrier")
        if s.tiny:
            kwargs.update(world_model_overrides=TINY_WORLD_MODEL, replay_capacity=20_000,
                          barrier=BarrierConfig(hidden_dim=16, imagine_starts=16,
                                                imagine_horizon=3),
                          ready_min_updates=10, ready_min_unsafe=1, ready_accuracy=0.0)
        return kwargs

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ``ValueError`` naming the flag (``--<field-name-with-dashes>``) and the fix for
        the first bad setting; before any env, model or file exists."""
        v = self.flat()

        def flag(name: str) -> str:
            return "--" + name.replace("_", "-")

        for name in ("total_env_steps", "action_repeat", "train_every", "updates_per_train",
                     "metrics_every", "batch_size", "buffer_size", "model_batch", "model_seq_len",
                     "num_envs", "sac_gradient_steps"):
            if int(v[name]) < 1:
                raise ValueError(f"{flag(name)} must be >= 1, got {v[name]}")
        if v["mode"] not in MODES:
            raise ValueError(f"--mode must be one of {MODES}, got {v['mode']!r}")
        for name in ("checkpoint_every", "learning_starts", "eval_episodes", "model_learning_starts",
                     "pretrain_updates", "pretrain_min_unsafe", "refresh_every", "video_steps"):
            if int(v[name]) < 0:
                raise ValueError(f"{flag(name)} must be >= 0, got {v[name]}: pass 0 or a "
                                 "positive count")
        builtin = self.is_builtin_env
        for name in ("level", "max_episode_steps"):
            if v[name] is not None and not builtin:
                raise ValueError(
                    f"{flag(name)} applies to the built-in envs only "
                    f"({', '.join(BUILTIN_LEVELS)}), not to {v['env_id']}: drop the flag.")
        if v["max_episode_steps"] is not None and int(v["max_episode_steps"]) < 1:
            raise ValueError(f"--max-episode-steps must be >= 1, got {v['max_episode_steps']}")
        if builtin:  # episode length known: the setting, else the built-in envs' default (500)
            length = int(v["max_episode_steps"] or 500)
            episode = math.ceil(length / int(v["action_repeat"]))
            if int(v["model_seq_len"]) > episode:
                raise ValueError(
                    f"--model-seq-len {v['model_seq_len']} is longer than an episode ({episode} "
                    f"agent steps = max_episode_steps {length} / action_repeat "
                    f"{v['action_repeat']}): pass --model-seq-len <= {episode}.")
        ent = v["ent_coef"]
        number = str(ent).removeprefix("auto_")
        try:
            ent_ok = str(ent) == "auto" or (math.isfinite(float(number)) and float(number) > 0)
        except ValueError:
            ent_ok = False
        if not ent_ok:
            raise ValueError(
                f"--ent-coef must be a float > 0 (e.g. 0.1), 'auto' or 'auto_<initial float > 0>' "
                f"(e.g. auto_0.1), got {ent!r}")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(v["device"])):
            raise ValueError(
                f"--device must be one of auto, cpu, cuda, cuda:N (N = GPU index), mps; got "
                f"{v['device']!r}")


# ------------------------------------------------------------------------------------ presets
_PAPER: dict[str, Any] = {
    "total_env_steps": 1_000_000, "learning_starts": 5000, "buffer_size": 500_000,
    "train_every": 1000, "updates_per_train": 100, "model_learning_starts": 5000,
    "pretrain_updates": 100, "model_batch": 32, "model_seq_len": 50, "eval_episodes": 10,
    "checkpoint_every": 50_000, "metrics_every": 5000, "world_model": "paper",
}
#: What each preset changes in :class:`TrainConfig`'s defaults (by field name). ``quick`` is the
#: defaults themselves, plus :data:`QUICK_BUDGET` for the env.
PRESET_OVERLAYS: dict[str, dict[str, Any]] = {
    "quick": {},
    "paper": _PAPER,
    "gpu": {**_PAPER, "batch_size": 512, "buffer_size": 1_000_000, "updates_per_train": 50,
            "model_batch": 64, "num_envs": 8, "sac_gradient_steps": 8, "autocast": "bf16"},
    "debug": {
        "tiny": True, "size": 32, "max_episode_steps": 200, "total_env_steps": 600,
        "learning_starts": 100, "model_learning_starts": 100, "train_every": 50,
        "updates_per_train": 2, "batch_size": 32, "buffer_size": 2000, "model_batch": 4,
        "model_seq_len": 8, "metrics_every": 100, "checkpoint_every": 400, "eval_episodes": 2,
        "video_steps": 20,
    },
}


def preset_config(name: str = "quick", env_id: str | None = None) -> TrainConfig:
    """:class:`TrainConfig` with preset ``name`` laid over the defaults, for ``env_id`` (default
    lbwrap/PixelHazardRun-v0): the quick preset's budget (:data:`QUICK_BUDGET`) and the built-in
    envs' level (:data:`BUILTIN_LEVELS`) filled in. Raises ``ValueError`` for an unknown name."""
    if name not in PRESET_OVERLAYS:
        raise ValueError(f"unknown preset {name!r}: pick one of {', '.join(PRESET_OVERLAYS)}")
    env_id = PIXEL_HAZARD_RUN_ID if env_id is None else env_id
    values: dict[str, Any] = {"preset": name, "env_id": env_id,
                              "level": BUILTIN_LEVELS.get(env_id), **PRESET_OVERLAYS[name]}
    if name == "quick":
        steps, episodes = QUICK_BUDGET.get(env_id, QUICK_BUDGET["slow"])
        values.update(total_env_steps=steps, eval_episodes=episodes)
    if env_id not in BUILTIN_LEVELS:
        values["max_episode_steps"] = None  # a built-in env's setting (debug's 200)
    return TrainConfig().replace(**values)
