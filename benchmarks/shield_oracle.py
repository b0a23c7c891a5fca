"""The shield's decisions against the truth, on PixelHazardRun: where does the return go?

    python benchmarks/safety_benchmark.py --env-id lbwrap/PixelHazardRun-v0 --level 2 \
        --modes shield --seeds 0 --agent-steps 5000 --save-agents /tmp/agents      # train, save
    python benchmarks/shield_oracle.py --agent /tmp/agents/shield-seed0 \
        --out benchmarks/results/shield_oracle                                    # ~2 min

A trained agent (a ``SafePixelAgent`` checkpoint) is driven through held-out layouts of
``lbwrap/PixelHazardRun-v0``; at every agent step the action barrier's verdicts are compared
with the truth that the env's privileged state gives (robot position and hazard centres, never
shown to the agent): an action is *truly unsafe* when executing it for ``--truth-steps`` agent
steps (action repeat included) puts the robot's centre inside a hazard at any env step.

Per driver (how the executed action is chosen) it reports:

- **discrimination** of ``B_next(embedding, a)`` over ``--candidates`` uniform random actions per
  step: ROC AUC, and per margin ``eps`` the share of truly safe actions it blocks (false alarms)
  and of truly unsafe ones it passes (misses);
- **what the agent proposes and what runs**: the share of proposals that are truly unsafe, that
  the shield blocks, the share of executed actions that are truly unsafe, and the mean forward
  component of proposals and executed actions;
- **the progress left on the table**: at steps where the proposal is blocked, the largest
  forward component among the truly safe candidates against that among the passing ones;
- the episode return, cost and interventions.

Drivers: ``agent`` (the saved agent exactly as trained: its shield, margin and substitute
selection), ``eps=E`` (the agent's proposal, the action barrier at margin ``E``, substitute the
passing candidate closest to the proposal), ``progress eps=E`` (substitute: the passing candidate
with the largest forward component), ``oracle`` (substitute: the truly safe candidate closest to
the proposal; a privileged upper bound of any shield that judges ``--truth-steps`` ahead) and
``oracle progress`` (the truly safe candidate with the largest forward component).

Then a **probe** (``--probe-episodes``): does the agent's observation carry the hazard ahead? A
small MLP learns, from the latent features and from the encoder embedding, whether holding
"straight ahead" is truly unsafe, at the steps that start outside every hazard (held-out ROC
AUC).

Writes ``<out>/summary.md``, ``<out>/oracle.csv`` and ``<out>/probe.csv``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import torch
import tyro
from _report import machine, write_csv, write_markdown

from lbwrap.envs import PIXEL_HAZARD_RUN_ID
from lbwrap.eval.evaluate import EVAL_SEED_OFFSET
from lbwrap.latent_tracker import LatentTracker
from lbwrap.safety_model import bind_observations, shield_decision
from lbwrap.sb3 import SafePixelAgent


@dataclass
class Args:
    agent: Path
    """A SafePixelAgent checkpoint (a run folder of ``safety_benchmark.py --save-agents``)."""
    drivers: list[str] = field(default_factory=lambda: ["agent", "eps=0", "eps=1", "eps=2",
                                                        "progress eps=2", "oracle"])
    """How the executed action is chosen (module docstring)."""
    episodes: int = 3
    """Held-out layouts (reset seeds from lbwrap.eval.EVAL_SEED_OFFSET) per driver."""
    candidates: int = 64
    """Uniform random actions judged per step (besides the proposal)."""
    truth_steps: int = 1
    """Agent steps an action is held for when judging it truly unsafe."""
    margins: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0])
    """Margins ``eps`` of the discrimination columns."""
    seed: int = 0
    """Seed of the random candidates."""
    probe_episodes: int = 12
    """Episodes of a forward-random policy (ax ~ U(0.3, 1), ay ~ U(-1, 1)) on which a small MLP
    learns, from the agent's latent features and from the encoder embedding, whether holding
    "straight ahead" (1, 0) is truly unsafe (held-out ROC AUC; 0: no probe)."""
    out: Path = Path("benchmarks/results/shield_oracle")
    """Output folder."""


def sanitise(actions: np.ndarray) -> np.ndarray:
    """What PixelHazardRun executes: clipped to [-1, 1], rescaled to norm <= 1 (rows of (K, 2))."""
    a = np.clip(np.nan_to_num(actions, nan=0.0, posinf=0.0, neginf=0.0), -1.0, 1.0)
    norm = np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1.0)
    return a / norm


def truly_unsafe(core, actions: np.ndarray, env_steps: int) -> np.ndarray:
    """(K,) bools: holding each action for ``env_steps`` env steps enters a hazard (privileged)."""
    cfg = core.config
    a = sanitise(actions)
    x, y = (float(v) for v in core.robot_pos)
    bound = cfg.corridor_half - cfg.robot_radius
    reach = env_steps * cfg.max_step + cfg.hazard_radius
    hazards = core.hazards_between(x - reach, x + reach)
    if hazards.shape[0] == 0:
        return np.zeros(a.shape[0], bool)
    k = np.arange(1, env_steps + 1)[None, :]  # (1, S)
    xs = x + k * cfg.max_step * a[:, :1]  # (K, S); inertia 0: velocity = action
    ys = np.clip(y + k * cfg.max_step * a[:, 1:], -bound, bound)
    d2 = ((xs[..., None] - hazards[:, 0]) ** 2 + (ys[..., None] - hazards[:, 1]) ** 2)
    return (d2 < cfg.hazard_radius ** 2).any(axis=(1, 2))


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``scores`` for ``positive`` (ties count half); NaN without both classes."""
    pos, neg = scores[positive], scores[~positive]
    if pos.size == 0 or neg.size == 0:
        return math.nan
    values = np.concatenate([pos, neg])
    order = np.argsort(values, kind="stable")
    _, start, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(values.size)
    ranks[order] = np.repeat(start + (counts + 1) / 2.0, counts)  # 1-based, ties averaged
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def run_driver(pixel_agent: SafePixelAgent, driver: str, args: Args) -> dict:
    safety, agent = pixel_agent.safety, pixel_agent.agent
    settings = pixel_agent.settings
    repeat = int(settings.env_kwargs.get("action_repeat", 2))
    env_steps = repeat * args.truth_steps
    rng = np.random.default_rng(args.seed)
    low, high = safety.action_low.cpu().numpy(), safety.action_high.cpu().numpy()
    margin = None
    if driver.startswith(("eps=", "progress eps=")):
        margin = float(driver.split("=")[1])
    scores_all, unsafe_all = [], []
    prop_unsafe, prop_blocked, exec_unsafe, prop_fwd, exec_fwd = [], [], [], [], []
    best_true, best_pass = [], []
    returns, costs, interventions = [], [], []
    for episode in range(args.episodes):
        env = settings.make_env()
        core = env.unwrapped
        obs, _ = env.reset(seed=EVAL_SEED_OFFSET + episode)
        tracker = LatentTracker(safety.world_model, 1)
        executed = np.zeros((1, safety.action_dim), np.float32)
        first, done = True, False
        ret = cost = 0.0
        n_int = 0
        while not done:
            frames = np.asarray(obs)[None]
            if not settings.channel_first:
                frames = frames.transpose(0, 3, 1, 2)
            features = tracker.observe(np.ascontiguousarray(frames), executed,
                                       np.array([first]))
            first = False
            proposal, _ = agent.predict(features, deterministic=True)
            proposal = np.clip(np.asarray(proposal, np.float32).reshape(1, -1), low, high)
            cand = rng.uniform(low, high, size=(args.candidates, safety.action_dim))
            cand = cand.astype(np.float32)
            judged = np.concatenate([proposal, cand])
            with torch.no_grad():
                emb = tracker.embed.expand(judged.shape[0], -1)
                b = safety.action_barrier(emb, torch.as_tensor(judged, device=emb.device))
                b = b.float().cpu().numpy()
            truth = truly_unsafe(core, judged, env_steps)
            scores_all.append(b[1:])
            unsafe_all.append(truth[1:])
            fwd = sanitise(judged)[:, 0]
            if driver == "agent" and not settings.shield:  # trained without a shield
                act, blocked = proposal, False
            elif driver == "agent":
                decision = shield_decision(
                    safety, tracker.state, proposal, embed=tracker.embed,
                    scorer=bind_observations(pixel_agent.action_scorer, features))
                act = decision.executed.reshape(1, -1)
                blocked = bool(decision.intervened[0])
            elif driver in ("oracle", "oracle progress"):
                blocked = bool(truth[0])
                act = proposal
                if blocked:
                    safe = np.flatnonzero(~truth[1:])
                    if safe.size and driver == "oracle":
                        d = np.linalg.norm(cand[safe] - proposal, axis=1)
                        act = cand[safe[np.argmin(d)]][None]
                    elif safe.size:
                        act = cand[safe[np.argmax(fwd[1:][safe])]][None]
            else:
                assert margin is not None
                blocked = bool(b[0] < margin)
                act = proposal
                if blocked:
                    ok = np.flatnonzero(b[1:] >= margin)
                    if ok.size == 0:
                        act = cand[np.argmax(b[1:])][None]
                    elif driver.startswith("progress"):
                        act = cand[ok[np.argmax(fwd[1:][ok])]][None]
                    else:
                        d = np.linalg.norm(cand[ok] - proposal, axis=1)
                        act = cand[ok[np.argmin(d)]][None]
            passing = b[1:] >= (margin if margin is not None else 2.0)
            if blocked:
                safe_fwd = fwd[1:][~truth[1:]]
                pass_fwd = fwd[1:][passing]
                best_true.append(float(safe_fwd.max()) if safe_fwd.size else math.nan)
                best_pass.append(float(pass_fwd.max()) if pass_fwd.size else math.nan)
            prop_unsafe.append(bool(truth[0]))
            prop_blocked.append(blocked)
            exec_unsafe.append(bool(truly_unsafe(core, act, env_steps)[0]))
            prop_fwd.append(float(fwd[0]))
            exec_fwd.append(float(sanitise(act)[0, 0]))
            n_int += int(blocked)
            executed = act.astype(np.float32)
            obs, reward, terminated, truncated, info = env.step(executed[0])
            ret += float(reward)
            cost += float(info["cost"])
            done = terminated or truncated
        env.close()
        returns.append(ret)
        costs.append(cost)
        interventions.append(n_int)
    scores, unsafe = np.concatenate(scores_all), np.concatenate(unsafe_all)
    row = {"driver": driver, "return": float(np.mean(returns)), "cost": float(np.mean(costs)),
           "interventions": float(np.mean(interventions)),
           "auc": auc(-scores, unsafe), "truly_unsafe_share": float(unsafe.mean())}
    for eps in args.margins:
        safe = ~unsafe
        row[f"false_alarm@{eps:g}"] = float((scores[safe] < eps).mean()) if safe.any() else math.nan
        row[f"miss@{eps:g}"] = float((scores[unsafe] >= eps).mean()) if unsafe.any() else math.nan
    row.update({
        "proposal_unsafe": float(np.mean(prop_unsafe)), "proposal_blocked": float(np.mean(prop_blocked)),
        "executed_unsafe": float(np.mean(exec_unsafe)),
        "proposal_forward": float(np.mean(prop_fwd)), "executed_forward": float(np.mean(exec_fwd)),
        "blocked_best_true_forward": float(np.nanmean(best_true)) if best_true else math.nan,
        "blocked_best_passing_forward": float(np.nanmean(best_pass)) if best_pass else math.nan,
    })
    return row


def probe(pixel_agent: SafePixelAgent, args: Args) -> list[dict]:
    """Does the agent's observation carry the hazard ahead? Held-out AUC of a small MLP probe
    on the steps that start outside every hazard."""
    safety, settings = pixel_agent.safety, pixel_agent.settings
    repeat = int(settings.env_kwargs.get("action_repeat", 2))
    rng = np.random.default_rng(args.seed)
    feats, embeds, targets = [], [], {1: [], 3: []}
    straight = np.array([[1.0, 0.0]])
    for episode in range(args.probe_episodes):
        env = settings.make_env()
        core = env.unwrapped
        obs, _ = env.reset(seed=EVAL_SEED_OFFSET // 2 + episode)  # neither training nor eval layouts
        tracker = LatentTracker(safety.world_model, 1)
        act, first, done = np.zeros((1, safety.action_dim), np.float32), True, False
        while not done:
            frames = np.asarray(obs)[None]
            if not settings.channel_first:
                frames = frames.transpose(0, 3, 1, 2)
            f = tracker.observe(np.ascontiguousarray(frames), act, np.array([first]))
            first = False
            if core.hazard_distance() > 0:  # outside: the target is the hazard *ahead*
                feats.append(np.asarray(f[0], np.float32))
                embeds.append(tracker.embed[0].float().cpu().numpy())
                for steps, values in targets.items():
                    values.append(bool(truly_unsafe(core, straight, repeat * steps)[0]))
            act = np.array([[rng.uniform(0.3, 1.0), rng.uniform(-1.0, 1.0)]], np.float32)
            obs, _, terminated, truncated, _ = env.step(act[0])
            done = terminated or truncated
        env.close()
    inputs = {"latent features (what SAC sees)": np.stack(feats),
              "encoder embedding (what the action barrier sees)": np.stack(embeds)}
    rows = []
    for name, x in inputs.items():
        row: dict = {"input": name, "dim": x.shape[1], "samples": x.shape[0]}
        for steps, y in targets.items():
            y_arr = np.array(y)
            row[f"unsafe share ({steps} step)"] = float(y_arr.mean())
            row[f"AUC ({steps} step)"] = _probe_auc(x, y_arr, args.seed)
        rows.append(row)
    return rows


def _probe_auc(x: np.ndarray, y: np.ndarray, seed: int, steps: int = 1500) -> float:
    """Held-out (30 %) ROC AUC of a one-hidden-layer MLP trained with class-weighted BCE."""
    gen = np.random.default_rng(seed + 1)
    idx = gen.permutation(len(x))
    train, test = idx[: int(0.7 * len(x))], idx[int(0.7 * len(x)):]
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.float32)
    mu, sd = xt[train].mean(0), xt[train].std(0) + 1e-6
    xt = (xt - mu) / sd
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 128), torch.nn.ELU(),
                              torch.nn.Linear(128, 1))
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-4)
    pos = float(yt[train].mean())
    if pos in (0.0, 1.0):
        return math.nan
    weight = torch.tensor((1 - pos) / pos)
    for _ in range(steps):
        batch = torch.as_tensor(gen.choice(train, 256))
        logits = net(xt[batch]).squeeze(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt[batch],
                                                                    pos_weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        scores = net(xt[test]).squeeze(-1).numpy()
    return auc(scores, y[test])


def table(rows: list[dict]) -> list[str]:
    """A Markdown table of dict rows (floats to 3 decimals)."""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c])
                                       for c in cols) + " |")
    return lines


def main(args: Args) -> None:
    torch.set_num_threads(1)
    pixel_agent = SafePixelAgent.load(args.agent, device="cpu")
    settings = pixel_agent.settings
    if settings.env_id != PIXEL_HAZARD_RUN_ID:
        raise SystemExit(f"shield_oracle needs an agent trained on {PIXEL_HAZARD_RUN_ID} "
                         f"(its privileged state gives the truth), got {settings.env_id!r}")
    if pixel_agent.safety.action_barrier is None:
        raise SystemExit("the agent's safety model has no action barrier to judge")
    if not pixel_agent.safety.ready:
        print("note: the saved safety model's readiness gate is closed; driver 'agent' then "
              "executes the proposals unshielded")
    rows = []
    for driver in args.drivers:
        row = run_driver(pixel_agent, driver, args)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()},
              flush=True)
        rows.append(row)
    lines = [(f"# shield oracle {date.today()}, {machine()}, agent {args.agent} "
              f"(mode {settings.mode}, selection {settings.shield_selection})"), "",
             (f"{args.episodes} held-out episodes per driver, {args.candidates} random candidates "
              f"per step, truth: the action held for {args.truth_steps} agent step(s)."), "",
             *table(rows)]
    probe_rows = probe(pixel_agent, args) if args.probe_episodes else []
    if probe_rows:
        lines += ["", ("Probe: is holding (1, 0) truly unsafe, from the agent's observation, at "
                       f"steps outside every hazard ({args.probe_episodes} forward-random "
                       "episodes, 70/30 split):"), "",
                  *table(probe_rows)]
        write_csv(args.out / "probe.csv", probe_rows)
    lines += ["", "args: " + str({k: (str(v) if isinstance(v, Path) else v)
                                  for k, v in asdict(args).items()})]
    write_markdown(args.out / "summary.md", lines)
    write_csv(args.out / "oracle.csv", rows)


if __name__ == "__main__":
    main(tyro.cli(Args))
