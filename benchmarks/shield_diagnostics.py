"""Why the shield helps some policies and hurts others: one-step predictions and shielded rollouts.

    python benchmarks/shield_diagnostics.py                     # PixelHazard level 1, ~5 min
    python benchmarks/shield_diagnostics.py --train-steps 30000 --updates 600 \
        --out benchmarks/results/shield_diagnostics/data30k      # more data, ~8 min
    python benchmarks/shield_diagnostics.py --no-rollouts --horizons 1:0.5 3:0.5 5:0.7 \
        --out benchmarks/results/shield_diagnostics/horizons     # label horizons, ~11 min

1. Trains a safety model (CPU preset) on random-policy PixelHazard data, as the core learning
   benchmark does, and reports its held-out balanced accuracy.
2. **One-step predictions** on held-out random episodes, by transition type (safe -> unsafe
   "entry", safe -> safe, unsafe -> safe "exit", unsafe -> unsafe): how often each shield
   predictor flags the action actually taken, and the *opposite* action (an action-aware
   predictor must differ): the paper's B at the prior mean, and the action-conditioned barrier
   ``B_next(embedding, action)`` (:mod:`lbwrap.barrier.action_barrier`); plus B at the next
   posterior (what the barrier knows once the frame arrives).
3. **Shielded rollouts** on held-out layouts with three proposal policies (uniform random, a
   greedy goal-seeker that ignores hazards, the goal-seeker plus Gaussian noise) under several
   filter settings: violating env steps, intervention rate and return.
4. With ``--horizons``: **label horizons** of the action barrier
   (``ActionBarrierConfig.horizon`` / ``discount``). On the trained model's fixed encoder and
   training data, a fresh action barrier is trained per setting (same seed, same steps) and the
   default filter (eps=2) is rolled out with each policy; also reported: how often it ranks the
   action taken below the opposite one at hazard entries (should be high) and exits (should be
   low: the action that left was the safer one).

Writes ``<out>/summary.md``, ``<out>/prediction.csv``, ``<out>/rollouts.csv`` and (with
``--horizons``) ``<out>/horizons.csv``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from pathlib import Path

import numpy as np
import torch
import tyro
from _report import machine, write_csv, write_markdown

import lbwrap
from lbwrap.barrier import BarrierConfig, FilterConfig, SafeActionFilter
from lbwrap.barrier.action_barrier import (
    ActionBarrierConfig,
    ActionBarrierNet,
    action_barrier_loss,
    transitions,
)
from lbwrap.eval.barrier_accuracy import add_episodes, heldout_barrier_accuracy, random_episodes
from lbwrap.experimental import FilterExperimental
from lbwrap.latent_tracker import LatentTracker
from lbwrap.safety_model import LatentSafetyModel, shield_decision

ACTION_BARRIER_EPS = ActionBarrierConfig().margin  # the library's default margin

POLICIES = ("random", "greedy", "noisy-greedy")
FILTERS: dict[str, FilterConfig | None] = {
    "no shield": None,
    "action barrier, eps=0": FilterConfig(condition="barrier", eps=0.0,
                                          predictor="action_barrier"),
    "action barrier, eps=0, fallback proposal": FilterConfig(condition="barrier", eps=0.0,
                                                             predictor="action_barrier",
                                                             experimental=FilterExperimental(
                                                                 proposal_fallback=True)),
    "action barrier, eps=1": FilterConfig(condition="barrier", eps=1.0,
                                          predictor="action_barrier"),
    "action barrier, eps=2 (default)": FilterConfig(condition="barrier", eps=ACTION_BARRIER_EPS,
                                                    predictor="action_barrier"),
    "prior, cbf, fallback max_barrier": FilterConfig(condition="cbf"),
    "prior, cbf, fallback proposal": FilterConfig(
        condition="cbf", experimental=FilterExperimental(proposal_fallback=True)),
    "prior, barrier eps=0": FilterConfig(condition="barrier", eps=0.0),
    "prior, cbf lookahead 2": FilterConfig(condition="cbf", lookahead=2),
}


@dataclass
class Args:
    level: int = 1
    """PixelHazard level."""
    size: int = 64
    """Image side."""
    train_steps: int = 6000
    """Random-policy agent steps to train the safety model on."""
    updates: int = 300
    """World-model + barrier updates."""
    heldout_steps: int = 3000
    """Random-policy agent steps for the prediction statistics (other layouts)."""
    episodes: int = 12
    """Rollout episodes per (policy, filter), each on its own held-out layout."""
    episode_steps: int = 250
    """Agent steps per rollout episode."""
    seed: int = 0
    """Seed of data, model and rollouts."""
    free_nats: float | None = None
    """World-model free nats (None: the CPU preset's 3)."""
    kl_balance: float | None = None
    """World-model KL balancing (None: plain KL)."""
    barrier_input: str = "stoch"
    """Barrier input: ``stoch`` (paper) or ``features``."""
    rollouts: bool = True
    """Run the shielded rollouts (part 3); off: predictions only."""
    filters: list[str] | None = None
    """Names of the filter settings to roll out (default: all of ``FILTERS``)."""
    out: Path = Path("benchmarks/results/shield_diagnostics")
    """Output folder."""
    model: Path | None = None
    """Safety-model checkpoint: loaded when it exists (no training), else written after training."""
    horizons: list[str] = field(default_factory=list)
    """Action-barrier label horizons to compare, each as ``H:discount`` (e.g. ``3:0.5``); empty:
    skip part 4."""
    horizon_steps: int = 1200
    """Gradient steps of each retrained action barrier (the default model makes 4 per update)."""


def make_env(args: Args):
    return lbwrap.make_pixel_env("lbwrap/PixelHazard-v0", size=args.size, action_repeat=2,
                                 level=args.level)


@torch.no_grad()
def one_step_predictions(safety: LatentSafetyModel, episodes) -> list[dict]:
    """Per transition type: fraction of negative predicted / actual barrier values."""
    wm, barrier = safety.world_model, safety.barrier
    kappa = safety.config.barrier.kappa
    rows = []
    for ep in episodes:
        posts, _ = wm.observe(torch.as_tensor(ep["obs"])[None], torch.as_tensor(ep["action"])[None],
                              torch.as_tensor(ep["is_first"])[None], sample=False)
        now = posts.map(lambda x: x[0, :-1])
        action = torch.as_tensor(ep["action"][1:])
        b_pred = barrier.value(wm.img_step(now, action, sample=False)).numpy()
        b_opp = barrier.value(wm.img_step(now, -action, sample=False)).numpy()
        b_post = barrier.value(posts.map(lambda x: x[0])).numpy()
        embed = wm.embed(torch.as_tensor(ep["obs"][:-1]))
        ab_pred = safety.action_barrier(embed, action).numpy()
        ab_opp = safety.action_barrier(embed, -action).numpy()
        unsafe = ep["cost"] > kappa
        for t in range(len(unsafe) - 1):
            rows.append((bool(unsafe[t]), bool(unsafe[t + 1]), b_pred[t] < 0, b_opp[t] < 0,
                         b_post[t + 1] < 0, b_post[t] < 0, ab_pred[t] < 0, ab_opp[t] < 0,
                         ab_pred[t] < ab_opp[t]))
    table = np.array(rows, dtype=float)
    kinds = {"entry (safe -> unsafe)": (0, 1), "safe -> safe": (0, 0),
             "exit (unsafe -> safe)": (1, 0), "unsafe -> unsafe": (1, 1)}
    out = []
    for name, (a, b) in kinds.items():
        sel = table[(table[:, 0] == a) & (table[:, 1] == b)]
        out.append({"transition": name, "n": len(sel),
                    "pred_negative": sel[:, 2].mean() if len(sel) else np.nan,
                    "pred_negative_opposite_action": sel[:, 3].mean() if len(sel) else np.nan,
                    "next_posterior_negative": sel[:, 4].mean() if len(sel) else np.nan,
                    "current_posterior_negative": sel[:, 5].mean() if len(sel) else np.nan,
                    "action_barrier_negative": sel[:, 6].mean() if len(sel) else np.nan,
                    "action_barrier_negative_opposite_action":
                        sel[:, 7].mean() if len(sel) else np.nan,
                    "action_barrier_taken_below_opposite": sel[:, 8].mean() if len(sel) else np.nan})
    return out


def rollout(safety: LatentSafetyModel, env, args: Args, policy: str,
            filter_cfg: FilterConfig | None) -> dict:
    """Violating env steps, intervention rate and mean return of one (policy, filter) pair."""
    if filter_cfg is not None:
        filter_cfg.seed = args.seed
        safety.shield_filter = SafeActionFilter(safety.world_model, safety.barrier, filter_cfg,
                                                safety.action_low, safety.action_high,
                                                action_barrier=safety.action_barrier)
    rng = np.random.default_rng(args.seed)
    violations = interventions = steps = 0
    returns = []
    for ep in range(args.episodes):
        tracker = LatentTracker(safety.world_model, 1)
        obs, _ = env.reset(seed=2_000_000 + ep)
        tracker.observe(obs[None], None, np.ones(1, bool))
        ret = 0.0
        for _ in range(args.episode_steps):
            if policy == "random":
                action = rng.uniform(-1, 1, (1, 2))
            else:
                base = env.unwrapped
                to_goal = base.goal_pos - base.robot_pos
                action = (to_goal / (np.linalg.norm(to_goal) + 1e-8))[None]
                if policy == "noisy-greedy":
                    action = np.clip(action + rng.normal(0.0, 0.5, action.shape), -1, 1)
            action = action.astype(np.float32)
            if filter_cfg is not None:
                decision = shield_decision(safety, tracker.state, action, embed=tracker.embed)
                action = decision.executed
                interventions += int(decision.intervened[0])
            obs, reward, terminated, truncated, info = env.step(action[0])
            tracker.observe(obs[None], action, np.zeros(1, bool))
            violations += int(info["violations"])
            steps += 1
            ret += float(reward)
            if terminated or truncated:
                break
        returns.append(ret)
    return {"violations": violations, "intervention_rate": interventions / max(steps, 1),
            "return_mean": float(np.mean(returns)), "return_std": float(np.std(returns))}


def main(args: Args) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    env = make_env(args)
    start = time.perf_counter()
    overrides = {k: v for k, v in (("free_nats", args.free_nats), ("kl_balance", args.kl_balance))
                 if v is not None}
    safety = LatentSafetyModel.for_env(env, seed=args.seed, device="cpu",
                                       world_model_overrides=overrides,
                                       barrier=BarrierConfig(input=args.barrier_input))
    if args.model is not None and args.model.exists():
        safety = LatentSafetyModel.load(args.model, device="cpu")
    else:
        add_episodes(safety, random_episodes(env, args.train_steps, args.seed))
        safety.update(args.updates)
        if args.model is not None:
            safety.save(args.model)
    safety.eval()
    heldout = random_episodes(env, args.heldout_steps, 20_000 + args.seed)
    accuracy = heldout_barrier_accuracy(safety, heldout)
    train_s = time.perf_counter() - start
    safety.force_ready = True

    prediction = one_step_predictions(safety, heldout)
    rollouts = []
    for policy in POLICIES if args.rollouts else ():
        for name, cfg in FILTERS.items():
            if args.filters is not None and name != "no shield" and name not in args.filters:
                continue
            result = rollout(safety, env, args, policy, None if cfg is None else FilterConfig(**asdict(cfg)))
            rollouts.append({"policy": policy, "filter": name, **result})
            print(f"{policy:13s} {name:40s} {result}", flush=True)
    horizons = []
    if args.horizons:
        if len(safety.replay) == 0:  # a loaded model: the same seeded training data again
            add_episodes(safety, random_episodes(env, args.train_steps, args.seed))
        horizons = compare_horizons(safety, env, args, heldout)
    env.close()

    write_csv(args.out / "prediction.csv", prediction, dated=False)
    if rollouts:
        write_csv(args.out / "rollouts.csv", rollouts, dated=False)
    lines = [(f"# shield diagnostics {date.today()}, {machine()}, PixelHazard level {args.level}, "
             f"{args.size}px; model: {args.train_steps} random agent steps, {args.updates} updates "
             f"({train_s:.0f} s); held-out balanced accuracy "
             f"{accuracy['heldout_balanced_accuracy']:.2f}; free_nats {args.free_nats or 'preset'}, "
             f"kl_balance {args.kl_balance}, barrier input {args.barrier_input}"), "",
             "## One-step predictions (held-out random episodes)", "",
             ("| transition | n | B(prior mean, taken action) < 0 | same, opposite action | "
             "B_next(embedding, taken action) < 0 | same, opposite action | "
             "B_next(taken) < B_next(opposite) | B(next posterior) < 0 | B(current posterior) < 0 |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for p in prediction:
        lines.append(f"| {p['transition']} | {p['n']} | {p['pred_negative']:.2f} | "
                     f"{p['pred_negative_opposite_action']:.2f} | "
                     f"{p['action_barrier_negative']:.2f} | "
                     f"{p['action_barrier_negative_opposite_action']:.2f} | "
                     f"{p['action_barrier_taken_below_opposite']:.2f} | "
                     f"{p['next_posterior_negative']:.2f} | "
                     f"{p['current_posterior_negative']:.2f} |")
    if rollouts:
        lines += rollout_table(rollouts, args)
    if horizons:
        write_csv(args.out / "horizons.csv", horizons, dated=False)
        lines += horizon_table(horizons, args)
    write_markdown(args.out / "summary.md", lines)


def retrain_action_barrier(safety: LatentSafetyModel, config: ActionBarrierConfig, steps: int,
                           seed: int) -> ActionBarrierNet:
    """A fresh action barrier trained on the safety model's replay, its encoder held fixed."""
    torch.manual_seed(seed)
    net = ActionBarrierNet.from_config(config, safety.world_model.embed_dim, safety.action_dim)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    cfg = safety.config
    for _ in range(steps):
        batch = safety.replay.sample_torch(cfg.batch_size, cfg.seq_len, "cpu",
                                           cost_fraction=cfg.cost_fraction)
        with torch.no_grad():
            embed = safety.world_model.embed(batch["obs"])
        pairs = transitions(embed, batch["action"], batch["cost"], batch["is_first"])
        loss, _ = action_barrier_loss(net, *pairs, kappa=cfg.barrier.kappa,
                                      horizon=config.horizon, discount=config.discount)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        opt.step()
    return net.eval()


def compare_horizons(safety: LatentSafetyModel, env, args: Args, heldout) -> list[dict]:
    """Part 4: one retrained action barrier per ``H:discount`` setting, rolled out under eps=2."""
    base_config = safety.config.action_barrier or ActionBarrierConfig()
    default_filter = FILTERS["action barrier, eps=2 (default)"]
    assert default_filter is not None
    results = []
    unshielded = {policy: rollout(safety, env, args, policy, None)["violations"] for policy in POLICIES}
    for setting in args.horizons:
        horizon, discount = setting.split(":")
        config = replace(base_config, horizon=int(horizon), discount=float(discount))
        safety.action_barrier = retrain_action_barrier(safety, config, args.horizon_steps, args.seed)
        ranks = {p["transition"]: p["action_barrier_taken_below_opposite"]
                 for p in one_step_predictions(safety, heldout)}
        for policy in POLICIES:
            result = rollout(safety, env, args, policy, FilterConfig(**asdict(default_filter)))
            results.append({"horizon": config.horizon, "discount": config.discount, "policy": policy,
                            "unshielded_violations": unshielded[policy],
                            "entry_taken_below_opposite": ranks["entry (safe -> unsafe)"],
                            "exit_taken_below_opposite": ranks["exit (unsafe -> safe)"], **result})
            print(f"horizon {setting:8s} {policy:13s} {result}", flush=True)
    return results


def horizon_table(results: list[dict], args: Args) -> list[str]:
    """Markdown lines of part 4."""
    lines = ["", (f"## Action-barrier label horizon (fixed encoder, a fresh action barrier per row, "
              f"{args.horizon_steps} steps; default filter eps=2; {args.episodes} held-out layouts "
              f"x {args.episode_steps} agent steps)"), "",
             ("| horizon | discount | entries: taken ranked below opposite | exits: same | policy | "
              "violating env steps | ratio vs no shield | intervention rate | return / episode |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['horizon']} | {r['discount']} | {r['entry_taken_below_opposite']:.2f} | "
                     f"{r['exit_taken_below_opposite']:.2f} | {r['policy']} | {r['violations']} | "
                     f"{r['violations'] / max(r['unshielded_violations'], 1):.2f} | "
                     f"{r['intervention_rate']:.2f} | "
                     f"{r['return_mean']:.1f} ± {r['return_std']:.1f} |")
    return lines


def rollout_table(rollouts: list[dict], args: Args) -> list[str]:
    """Markdown lines of the shielded-rollout results, ratios against each policy's no-shield row."""
    lines = ["", (f"## Shielded rollouts ({args.episodes} held-out layouts x {args.episode_steps} "
              "agent steps per cell)"), "",
              ("| policy | filter | violating env steps | ratio vs no shield | intervention rate | "
              "return / episode |"), "|---|---|---|---|---|---|"]
    for policy in POLICIES:
        rows = [r for r in rollouts if r["policy"] == policy]
        base = rows[0]["violations"]
        for r in rows:
            lines.append(f"| {policy} | {r['filter']} | {r['violations']} | "
                         f"{r['violations'] / max(base, 1):.2f} | {r['intervention_rate']:.2f} | "
                         f"{r['return_mean']:.1f} ± {r['return_std']:.1f} |")
    return lines


if __name__ == "__main__":
    main(tyro.cli(Args))
