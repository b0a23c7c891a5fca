"""Tests of the RSSM world model, its trainer and checkpoints (tiny configs, CPU)."""

from __future__ import annotations

import os

import pytest
import torch

from lbwrap.experimental import WorldModelExperimental
from lbwrap.latent_state import LatentDynamics, LatentState
from lbwrap.world_model import WorldModel, WorldModelConfig, WorldModelTrainer

A = 2


def tiny_config(**overrides) -> WorldModelConfig:
    params = {"image_size": 32, "cnn_depth": 4, "deter_dim": 16, "stoch_dim": 4,
              "hidden_dim": 16, "head_hidden_dim": 16, "action_dim": A}
    params.update(overrides)
    return WorldModelConfig(**params)


def make_batch(b: int = 3, t: int = 6, size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    action = torch.rand(b, t, A, generator=g) * 2 - 1
    action[:, 0] = 0
    return {
        "obs": torch.randint(0, 256, (b, t, 3, size, size), generator=g, dtype=torch.uint8),
        "action": action,
        "reward": torch.randn(b, t, generator=g),
        "cost": (torch.rand(b, t, generator=g) < 0.3).float(),
        "is_first": is_first,
        "is_terminal": torch.zeros(b, t, dtype=torch.bool),
    }


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest single-threaded (and do not fight parallel test jobs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model() -> WorldModel:
    torch.manual_seed(0)
    return WorldModel(tiny_config())


def assert_states_close(a: LatentState, b: LatentState, atol: float = 1e-6) -> None:
    for name in ("deter", "stoch", "mean", "std"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=atol, rtol=0)


# ---------------------------------------------------------------------------- config
def test_paper_config_sizes() -> None:
    cfg = WorldModelConfig.paper(action_dim=12)
    assert (cfg.cnn_depth, cfg.deter_dim, cfg.stoch_dim, cfg.hidden_dim) == (32, 200, 30, 200)
    assert (cfg.min_std, cfg.free_nats, cfg.bit_depth, cfg.action_dim) == (0.1, 3.0, 5, 12)
    m = WorldModel(cfg)
    assert m.embed_dim == 1024 and m.feature_dim == 230
    assert [c.out_channels for c in m.encoder.net if isinstance(c, torch.nn.Conv2d)] == [
        32, 64, 128, 256]
    assert m.decode(torch.zeros(2, 230)).shape == (2, 3, 64, 64)
    cpu = WorldModel(WorldModelConfig.cpu(action_dim=2))
    assert sum(p.numel() for p in cpu.parameters()) < sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"image_size": 48}, "image_size"), ({"deter_dim": 0}, "deter_dim"),
     ({"min_std": 0.0}, "min_std"), ({"bit_depth": 9}, "bit_depth"),
     ({"free_nats": -1.0}, "free_nats"), ({"activation": "gelu"}, "activation"),
     ({"cnn_depth": 2.5}, "cnn_depth"), ({"experimental": {"kl_balance": 1.0}}, "kl_balance"),
     ({"experimental": {"kl_balance": 0.0}}, "kl_balance"),
     ({"experimental": {"kl_balance": True}}, "kl_balance"),
     ({"experimental": {"kl": 0.5}}, "unknown options")],
)
def test_config_validation(overrides, field) -> None:
    with pytest.raises(ValueError, match=field):
        WorldModelConfig(**overrides)


def test_config_dict_roundtrip() -> None:
    cfg = tiny_config()
    assert WorldModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        WorldModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})


# ---------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("size", [32, 64])
def test_shapes_and_protocol(size: int) -> None:
    cfg = tiny_config(image_size=size)
    m = WorldModel(cfg)
    assert isinstance(m, LatentDynamics)
    assert m.action_dim == A and m.config is cfg
    b, t, f = 3, 5, cfg.deter_dim + cfg.stoch_dim
    batch = make_batch(b, t, size)
    posts, priors = m.observe(batch["obs"], batch["action"], batch["is_first"])
    for s in (posts, priors):
        assert s.deter.shape == (b, t, 16) and s.stoch.shape == (b, t, 4)
        assert s.mean.shape == (b, t, 4) and s.std.shape == (b, t, 4)
        assert bool((s.std >= cfg.min_std).all())
    feat = m.features(posts)
    assert feat.shape == (b, t, f) and m.feature_dim == f
    assert m.decode(feat).shape == (b, t, 3, size, size)
    assert m.predict_reward(feat).shape == (b, t) and m.predict_cost(feat).shape == (b, t)
    state = m.observe_step(None, torch.zeros(b, A), batch["obs"][:, 0], torch.ones(b, dtype=bool))
    assert state.deter.shape == (b, 16)
    nxt = m.img_step(state, torch.zeros(b, A))
    assert nxt.stoch.shape == (b, 4)
    states, actions = m.imagine(state, lambda s: torch.tanh(s.stoch[:, :A]), horizon=7)
    assert states.deter.shape == (b, 7, 16) and actions.shape == (b, 7, A)
    init = m.initial_state(b)
    assert init.deter.shape == (b, 16) and float(init.deter.abs().sum()) == 0.0


def test_preprocess_postprocess() -> None:
    m = WorldModel(tiny_config())
    obs = torch.arange(256, dtype=torch.int32).to(torch.uint8).reshape(1, 1, 256)
    x = m.preprocess(obs)
    assert x.dtype == torch.float32
    assert float(x.min()) == -0.5 and float(x.max()) == pytest.approx(0.5 - 1 / 32)
    assert len(torch.unique(x)) == 32  # 5 bits
    back = m.postprocess(x)
    assert back.dtype == torch.uint8
    assert torch.equal(back, (obs // 8) * 8)
    with pytest.raises(TypeError, match="uint8"):
        m.preprocess(torch.zeros(2, 3))


# ------------------------------------------------------------------ filtering semantics
def test_reset_at_is_first_matches_fresh_start(model: WorldModel) -> None:
    batch = make_batch(b=2, t=7)
    is_first = batch["is_first"].clone()
    is_first[0, 3] = True  # row 0: a new episode starts at t=3; row 1 continues
    batch["action"][0, 3] = 0.7  # must be ignored (reset zeroes the previous action)
    posts, _ = model.observe(batch["obs"], batch["action"], is_first, sample=False)
    tail_first = is_first[:, 3:].clone()
    tail_first[:, 0] = True
    fresh, _ = model.observe(batch["obs"][:, 3:], batch["action"][:, 3:], tail_first,
                             sample=False)
    assert_states_close(posts[0, 3:], fresh[0])
    # Row 1 carried its history, so it must differ from a fresh start.
    assert not torch.allclose(posts.deter[1, 3:], fresh.deter[1], atol=1e-4)


def test_observe_step_matches_observe(model: WorldModel) -> None:
    batch = make_batch(b=3, t=6)
    is_first = batch["is_first"].clone()
    is_first[1, 4] = True
    posts, _ = model.observe(batch["obs"], batch["action"], is_first, sample=False)
    state = None
    for t in range(6):
        state = model.observe_step(state, batch["action"][:, t], batch["obs"][:, t],
                                   is_first[:, t], sample=False)
        assert_states_close(state, posts[:, t])


def test_observe_continues_from_state(model: WorldModel) -> None:
    batch = make_batch(b=2, t=6)
    full, _ = model.observe(batch["obs"], batch["action"], batch["is_first"], sample=False)
    head, _ = model.observe(batch["obs"][:, :2], batch["action"][:, :2],
                            batch["is_first"][:, :2], sample=False)
    tail, _ = model.observe(batch["obs"][:, 2:], batch["action"][:, 2:],
                            batch["is_first"][:, 2:], state=head[:, -1], sample=False)
    assert_states_close(tail, full[:, 2:])


def test_imagine_matches_img_step_and_carries_grad(model: WorldModel) -> None:
    batch = make_batch(b=2, t=3)
    posts, _ = model.observe(batch["obs"], batch["action"], batch["is_first"], sample=False)
    start = posts[:, -1]
    actions = torch.rand(2, 5, A, requires_grad=True)
    states, taken = model.imagine(start, actions, sample=False)
    assert torch.equal(taken, actions)
    state = start
    for t in range(5):
        state = model.img_step(state, actions[:, t], sample=False)
        assert_states_close(state, states[:, t])
    states.stoch.sum().backward()
    assert actions.grad is not None and float(actions.grad.abs().sum()) > 0
    short, _ = model.imagine(start, actions.detach(), horizon=2)
    assert short.deter.shape[1] == 2
    with pytest.raises(ValueError, match="horizon"):
        model.imagine(start, lambda s: torch.zeros(2, A))
    with pytest.raises(ValueError, match="horizon"):
        model.imagine(start, actions.detach(), horizon=9)


def test_img_step_sample_flag(model: WorldModel) -> None:
    state = model.initial_state(4)
    a = torch.zeros(4, A)
    det = model.img_step(state, a, sample=False)
    torch.testing.assert_close(det.stoch, det.mean)
    sampled = model.img_step(state, a, sample=True)
    assert not torch.allclose(sampled.stoch, sampled.mean)


# --------------------------------------------------------------------------- loss
def test_loss_metrics_and_detached_states(model: WorldModel) -> None:
    out = model.loss(make_batch())
    assert out.loss.requires_grad and out.loss.dim() == 0
    assert set(out.metrics) >= {"image_loss", "reward_loss", "cost_loss", "kl", "kl_loss",
                                "loss"}
    assert all(isinstance(v, float) for v in out.metrics.values())
    assert out.metrics["kl_loss"] >= model.config.free_nats - 1e-6
    for s in (out.posts, out.priors):
        for name in ("deter", "stoch", "mean", "std"):
            tensor = getattr(s, name)
            assert not tensor.requires_grad and tensor.grad_fn is None
    assert out.posts.deter.shape == (3, 6, 16)


def test_loss_rejects_bad_batch(model: WorldModel) -> None:
    batch = make_batch()
    with pytest.raises(KeyError, match="cost"):
        model.loss({k: v for k, v in batch.items() if k != "cost"})
    with pytest.raises(TypeError, match="uint8"):
        model.loss({**batch, "obs": batch["obs"].float()})
    with pytest.raises(ValueError, match="action"):
        model.loss({**batch, "action": batch["action"][..., :1]})


def structured_batch(b: int = 4, t: int = 8, size: int = 32, seed: int = 1):
    """A learnable batch: coloured background per sequence, a bright square moving in time."""
    batch = make_batch(b, t, size, seed)
    g = torch.Generator().manual_seed(seed)
    obs = torch.zeros(b, t, 3, size, size, dtype=torch.uint8)
    background = torch.randint(0, 3, (b,), generator=g)
    for i in range(b):
        obs[i, :, background[i]] = 60
        for j in range(t):
            x = (4 * j + 5 * i) % (size - 8)
            obs[i, j, :, 8:16, x:x + 8] = 250
    batch["obs"] = obs
    batch["reward"] = torch.linspace(-1, 1, t).repeat(b, 1)
    return batch


def test_kl_balance_keeps_the_value_and_scales_the_prior_gradient() -> None:
    """Balanced KL has the plain KL's value; the prior-only net gets ``a`` x its plain gradient."""
    only_kl = {"image_weight": 0.0, "reward_weight": 0.0, "cost_weight": 0.0, "free_nats": 0.0}
    plain = WorldModel(tiny_config(**only_kl))
    balanced = WorldModel(tiny_config(**only_kl,
                                      experimental=WorldModelExperimental(kl_balance=0.8)))
    balanced.load_state_dict(plain.state_dict())
    batch = make_batch()
    grads = []
    for model in (plain, balanced):
        torch.manual_seed(0)  # the same posterior samples in both
        out = model.loss(batch)
        out.loss.backward()
        grads.append((out.metrics["kl_loss"],
                      [p.grad.clone() for p in model.prior_net.parameters()],
                      [p.grad.clone() for p in model.post_net.parameters()]))
    (kl_plain, prior_plain, post_plain), (kl_bal, prior_bal, post_bal) = grads
    assert kl_bal == pytest.approx(kl_plain, rel=1e-5)
    for g_plain, g_bal in zip(prior_plain, prior_bal):
        torch.testing.assert_close(g_bal, 0.8 * g_plain, rtol=1e-4, atol=1e-7)
    ratio = sum(g.norm() for g in post_bal) / sum(g.norm() for g in post_plain)
    assert ratio < 0.5  # the posterior is pulled towards the prior much less


def test_loss_decreases_on_fixed_batch() -> None:
    torch.manual_seed(0)
    m = WorldModel(tiny_config(cnn_depth=8))
    trainer = WorldModelTrainer(m, lr=3e-3)
    batch = structured_batch()
    first, _ = trainer.update(batch)
    for _ in range(40):
        metrics, _ = trainer.update(batch)
    # Measured over 5 seeds: loss falls to 0.17-0.29x of the first step's (729 -> 149 here),
    # reward loss to 0.45-0.77x.
    assert metrics["loss"] < 0.45 * first["loss"]
    assert metrics["image_loss"] < 0.45 * first["image_loss"]
    assert metrics["reward_loss"] < 0.95 * first["reward_loss"]
    assert trainer.num_updates == 41 and trainer.num_skipped == 0


# ----------------------------------------------------------------------- trainer
def _params(m: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def test_trainer_skips_nan_loss(model: WorldModel) -> None:
    trainer = WorldModelTrainer(model)
    trainer.update(make_batch())
    before = _params(model)
    moments = [v["exp_avg"].clone() for v in trainer.optimizer.state.values()]
    bad = make_batch()
    bad["reward"][0, 2] = float("nan")
    metrics, _ = trainer.update(bad)
    assert metrics["step_skipped"] == 1.0 and metrics["nonfinite_skipped"] == 1.0
    assert trainer.num_skipped == 1 and trainer.num_updates == 1
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b.detach())
    for m1, v in zip(moments, trainer.optimizer.state.values()):
        assert torch.equal(m1, v["exp_avg"])
    assert all(p.grad is None for p in model.parameters())
    metrics, _ = trainer.update(make_batch())  # recovers on a good batch
    assert metrics["step_skipped"] == 0.0 and trainer.num_updates == 2


def test_trainer_skips_nonfinite_gradient(model: WorldModel) -> None:
    trainer = WorldModelTrainer(model)
    before = _params(model)
    handle = model.reward_head.net[0].weight.register_hook(lambda g: g * float("inf"))
    metrics, _ = trainer.update(make_batch())
    handle.remove()
    assert metrics["step_skipped"] == 1.0 and trainer.num_skipped == 1
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b.detach())


def test_trainer_state_dict_roundtrip(model: WorldModel) -> None:
    trainer = WorldModelTrainer(model, lr=3e-4, grad_clip=10.0)
    trainer.update(make_batch())
    state = trainer.state_dict()
    other = WorldModelTrainer(model)
    other.load_state_dict(state)
    assert other.num_updates == 1 and other.grad_clip == 10.0
    assert other.optimizer.param_groups[0]["lr"] == 3e-4
    with pytest.raises(ValueError, match="lr"):
        WorldModelTrainer(model, lr=0.0)


# -------------------------------------------------------------------- checkpoints
def _deterministic_outputs(m: WorldModel, batch) -> torch.Tensor:
    with torch.no_grad():
        posts, _ = m.observe(batch["obs"], batch["action"], batch["is_first"], sample=False)
        return torch.cat([m.features(posts), m.predict_cost(m.features(posts))[..., None]], -1)


def test_save_load_roundtrip(model: WorldModel, tmp_path) -> None:
    path = tmp_path / "wm.pt"
    model.save(path)
    batch = make_batch()
    loaded = WorldModel.load(path)
    assert loaded.config == model.config
    assert torch.equal(_deterministic_outputs(model, batch), _deterministic_outputs(loaded, batch))
    fresh = WorldModel(tiny_config())
    fresh.load_weights(path)
    assert torch.equal(_deterministic_outputs(model, batch), _deterministic_outputs(fresh, batch))
    assert [p.name for p in tmp_path.iterdir()] == ["wm.pt"]  # no temp files left


def test_load_weights_config_mismatch(model: WorldModel, tmp_path) -> None:
    path = tmp_path / "wm.pt"
    model.save(path)
    other = WorldModel(tiny_config(stoch_dim=6))
    with pytest.raises(ValueError, match=r"checkpoint has stoch_dim=4, this model has stoch_dim=6"):
        other.load_weights(path)
    loss_only = WorldModel(tiny_config(kl_weight=0.5))
    with pytest.raises(ValueError, match="kl_weight"):
        loss_only.load_weights(path)
    loss_only.load_weights(path, strict_config=False)
    assert loss_only.config.kl_weight == 0.5


def test_load_rejects_foreign_files(tmp_path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(256))
    with pytest.raises(ValueError, match="not an lbwrap world-model checkpoint"):
        WorldModel.load(junk)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match="not an lbwrap world-model checkpoint"):
        WorldModel(tiny_config()).load_weights(other)
    with pytest.raises(FileNotFoundError):
        WorldModel.load(tmp_path / "missing.pt")


def test_save_is_atomic(model: WorldModel, tmp_path, monkeypatch) -> None:
    path = tmp_path / "wm.pt"
    model.save(path)
    original = path.read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["wm.pt"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_follows_parameters() -> None:  # pragma: no cover - GPU only
    m = WorldModel(tiny_config()).cuda()
    batch = make_batch()  # CPU tensors are moved to the model's device
    out = m.loss(batch)
    assert out.posts.deter.device.type == "cuda"
    state = m.observe_step(None, torch.zeros(3, A), batch["obs"][:, 0])
    assert state.deter.device.type == "cuda"


def test_one_rollout_steps_every_imagination():
    """lbwrap.latent_state.rollout: horizon states, each after its action; the world model's
    imagine gives the same states for the same actions."""
    from lbwrap.latent_state import rollout

    torch.manual_seed(0)
    model = WorldModel(WorldModelConfig(action_dim=2, image_size=32, cnn_depth=4, deter_dim=16,
                                        stoch_dim=4, hidden_dim=16, head_hidden_dim=16))
    start = model.initial_state(3)
    actions = torch.rand(3, 4, 2) * 2 - 1
    states, taken = rollout(model, start, 4, lambda t, _s: actions[:, t], sample=False)
    assert len(states) == 4 and all(torch.equal(a, actions[:, t]) for t, a in enumerate(taken))
    imagined, _ = model.imagine(start, actions, sample=False)
    torch.testing.assert_close(imagined.deter[:, -1], states[-1].deter)
    with pytest.raises(ValueError, match="horizon"):
        rollout(model, start, 0, lambda t, _s: actions[:, 0])
