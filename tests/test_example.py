"""examples/train_sac_shielded.py end to end (tiny model, PixelHazard at 32 px): outputs, resume,
refusal of a mismatching checkpoint; and the report pieces it uses."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
from conftest import import_example

import lbwrap
from lbwrap.eval import (
    METRICS_COLUMNS,
    compose_video_frame,
    plot_run,
    read_metrics,
    truncate_metrics,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_sac_shielded.py"


@pytest.fixture(scope="module")
def example():
    yield from import_example("train_sac_shielded")


#: The debug preset's values as flags (for presets other than debug).
TINY_FLAGS = [
    "--tiny", "--size", "32", "--max-episode-steps", "200",
    "--total-env-steps", "600", "--learning-starts", "100", "--model-learning-starts", "100",
    "--train-every", "50", "--updates-per-train", "2", "--batch-size", "32",
    "--buffer-size", "2000", "--model-batch", "4", "--model-seq-len", "8",
    "--metrics-every", "100", "--checkpoint-every", "400", "--eval-episodes", "2",
    "--video-steps", "20",
]


def tiny_argv(out_dir: Path, *extra: str) -> list[str]:
    return ["--preset", "debug", "--env-id", "lbwrap/PixelHazard-v0", "--no-progress",
            "--out-dir", str(out_dir), *extra]


def test_debug_preset_is_the_tiny_flags(example):
    debug = example.cli(["--preset", "debug", "--env-id", "lbwrap/PixelHazard-v0"]).config
    flags = example.cli(["--env-id", "lbwrap/PixelHazard-v0", *TINY_FLAGS]).config
    assert debug == flags.replace(preset="debug")


def run(example, argv: list[str]) -> dict:
    return example.main(example.cli(argv))


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def test_train_resume_and_refuse_mismatch(example, tmp_path):
    from stable_baselines3 import SAC

    from lbwrap.safety_model import LatentSafetyModel
    from lbwrap.sb3 import SafePixelAgent, find_checkpoint, save_checkpoint_set

    out = tmp_path / "run"
    summary = run(example, tiny_argv(out))

    # outputs
    for name in ("metrics.csv", "plot_return.png", "plot_cost.png", "plot_violations.png",
                 "episode.gif", "run_config.json", "summary.json", "report.md",
                 "checkpoints/latest"):
        assert (out / name).is_file(), name
    assert any((out / "tb").rglob("events.out.tfevents*"))
    with open(out / "metrics.csv", newline="") as f:
        assert next(csv.reader(f)) == list(METRICS_COLUMNS)
    m = read_metrics(out / "metrics.csv")
    assert m["env_steps"][-1] == 600 and np.all(np.diff(m["env_steps"]) > 0)
    assert m["cum_violations"][-1] == summary["train_violations"]
    assert m["warmup_violations"][-1] <= m["cum_violations"][-1]
    assert m["world_model_skipped"][-1] == summary["skipped_updates"]["world_model"] == 0
    frames = imageio.mimread(out / "episode.gif")
    assert len(frames) > 2 and frames[0].shape[1] > 2 * 32 * 3  # side by side, upscaled
    found = find_checkpoint(out)
    assert found.step == 300 and found.run_state()["env_steps"] == 600
    assert found.settings.env_kwargs == {"size": 32, "action_repeat": 2, "level": 1,
                                         "max_episode_steps": 200}
    assert SAC.load(found.agent_path).num_timesteps == 300
    assert summary["agent_steps"] == 300 and summary["eval"]["episodes"] == 2
    assert "agent step 300" in summary["checkpoint"]
    assert "skipped for a NaN/inf" in (out / "report.md").read_text()
    loaded = SafePixelAgent.load(out, device="cpu")
    assert loaded.settings.shield and loaded.safety.ready == summary["barrier_ready"]
    # the run folder, in a fresh process: SB3's evaluate_policy on the raw pixel env
    code = ("import sys; from stable_baselines3.common.evaluation import evaluate_policy; "
            "from lbwrap import SafePixelAgent; a = SafePixelAgent.load(sys.argv[1], device='cpu'); "
            "print(evaluate_policy(a, a.settings.make_env(), n_eval_episodes=1, warn=False)); "
            "print('shield' if a.settings.shield and a.safety.ready else 'off')")
    fresh = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True,
                           timeout=300, check=False)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert fresh.stdout.split()[-1] == ("shield" if summary["barrier_ready"] else "off")

    # a second plain start must not overwrite the run
    before = digests(out)
    with pytest.raises(FileExistsError, match="--resume"):
        run(example, tiny_argv(out))
    assert digests(out) == before

    # resume: the saved settings are reused, only the budget grows
    resumed = run(example, ["--out-dir", str(out), "--resume", "--total-env-steps", "1000",
                            "--no-progress", "--video-steps", "0", "--eval-episodes", "1"])
    assert resumed["agent_steps"] == 500 and resumed["env_steps"] == 1000
    assert find_checkpoint(out).step == 500
    sets = sorted(p.name for p in (out / "checkpoints").iterdir())  # older sets are removed
    assert len(sets) == 2 and sets[0] == "latest" and sets[1].startswith("step-0000000500")
    m2 = read_metrics(out / "metrics.csv")
    assert len(m2["env_steps"]) > len(m["env_steps"]) and m2["env_steps"][-1] == 1000
    np.testing.assert_array_equal(m2["env_steps"][: len(m["env_steps"])], m["env_steps"])
    assert np.all(np.diff(m2["env_steps"]) > 0) and np.all(np.diff(m2["cum_violations"]) >= 0)
    assert resumed["train_violations"] >= summary["train_violations"]

    # a checkpoint that does not fit the request: clear error, nothing touched
    before = digests(out)
    with pytest.raises(example.RunMismatchError, match="size: checkpoint 32, now 64"):
        run(example, ["--out-dir", str(out), "--resume", "--size", "64",
                      "--total-env-steps", "2000", "--no-progress"])
    with pytest.raises(example.RunMismatchError, match="mode"):
        run(example, ["--out-dir", str(out), "--resume", "--mode", "barrier", "--no-progress"])
    with pytest.raises(example.RunMismatchError, match="tiny: checkpoint True, now False"):
        run(example, ["--out-dir", str(out), "--resume", "--no-tiny", "--no-progress"])
    assert digests(out) == before

    # a set whose safety model has other sizes: refused, folder intact
    other = tmp_path / "other"
    shutil.copytree(out, other)
    foreign = LatentSafetyModel.for_env(
        lbwrap.make_pixel_env("lbwrap/PixelHazard-v0", size=32), device="cpu", replay_capacity=1000,
        world_model_overrides={**example.TINY_WORLD_MODEL, "stoch_dim": 6})
    saved = find_checkpoint(other)
    save_checkpoint_set(other / "checkpoints", SAC.load(saved.agent_path), foreign, saved.settings,
                        run_state=saved.run_state())
    before = digests(other)
    with pytest.raises(example.RunMismatchError, match="stoch_dim"):
        run(example, ["--out-dir", str(other), "--resume", "--total-env-steps", "2000",
                      "--no-progress"])
    assert digests(other) == before

    # --resume without a run; a damaged set; a run from before checkpoint sets
    with pytest.raises(FileNotFoundError, match="holds no run"):
        run(example, ["--out-dir", str(tmp_path / "empty"), "--resume", "--no-progress"])
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    (find_checkpoint(damaged).agent_path).write_bytes(b"truncated")
    with pytest.raises(FileNotFoundError, match="agent.zip does not match its checksum"):
        run(example, ["--out-dir", str(damaged), "--resume", "--no-progress"])
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(out / "run_config.json", legacy)
    shutil.copy(find_checkpoint(out).agent_path, legacy)
    with pytest.raises(FileNotFoundError, match="before checkpoint sets"):
        run(example, ["--out-dir", str(legacy), "--resume", "--no-progress"])


def test_resume_before_the_first_checkpoint_starts_the_run_again(example, tmp_path, monkeypatch):
    """A run killed before its first checkpoint left only run_config.json and part of
    metrics.csv: --resume starts it again from step 0 with its saved settings."""
    out = tmp_path / "run"
    calls = {"n": 0}

    def fail_first_save(*args, **kwargs):
        calls["n"] += 1
        raise KeyboardInterrupt  # stands in for a kill before anything was saved

    real_save = example.save_checkpoint
    monkeypatch.setattr(example, "save_checkpoint", fail_first_save)
    with pytest.raises(KeyboardInterrupt):
        run(example, tiny_argv(out, "--total-env-steps", "400", "--checkpoint-every", "200"))
    monkeypatch.setattr(example, "save_checkpoint", real_save)
    assert calls["n"] >= 1 and not (out / "checkpoints").exists()
    assert (out / "run_config.json").is_file()
    # written in the flat form of earlier lbwraps (before num_envs, sac_gradient_steps and
    # autocast existed): the resume reads it, filling those from the saved preset
    nested = json.loads((out / "run_config.json").read_text())
    flat = {k: v for section in ("env", "safety", "cotrain", "agent", "run")
            for k, v in nested[section].items()
            if k not in ("num_envs", "sac_gradient_steps", "autocast")}
    (out / "run_config.json").write_text(json.dumps({**flat, "resume": False, "tiny": True}))
    resumed = run(example, ["--out-dir", str(out), "--resume", "--video-steps", "0",
                            "--eval-episodes", "0"])
    assert resumed["agent_steps"] == 200 and resumed["env_steps"] == 400
    m = read_metrics(out / "metrics.csv")
    assert m["env_steps"][0] == 0 and np.all(np.diff(m["env_steps"]) > 0)


def test_presets_and_explicit_flags(example):
    quick = example.resolve(example.Args())
    assert quick.env.env_id == "lbwrap/PixelHazardRun-v0" and quick.agent.mode == "shield"
    assert quick.env.level == 2 and quick.run.total_env_steps == 10_000
    assert quick.safety.world_model == "cpu"
    assert quick.run.out_dir == Path("runs/lbwrap-PixelHazardRun-v0-shield-0")
    safety = example.resolve(example.Args.of(env_id="SafetyPointGoal1Vision-v0"))
    assert safety.env.level is None and safety.run.total_env_steps <= 20_000
    assert safety.run.out_dir == Path("runs/SafetyPointGoal1Vision-v0-shield-0")
    hazard = example.resolve(example.Args.of(env_id="lbwrap/PixelHazard-v0", seed=3))
    assert hazard.run.total_env_steps >= quick.run.total_env_steps
    assert hazard.run.out_dir == Path("runs/lbwrap-PixelHazard-v0-shield-3")
    paper = example.resolve(example.Args.of(preset="paper", batch_size=64))
    assert paper.run.total_env_steps == 1_000_000 and paper.safety.world_model == "paper"
    assert (paper.safety.model_batch, paper.safety.model_seq_len, paper.agent.batch_size) == (
        32, 50, 64)
    # the command line gives the same settings
    assert example.resolve(example.cli(["--preset", "paper", "--batch-size", "64"])) == paper
    assert example.cli(["--seed", "3", "--mode", "none"]).config.run.out_dir == Path(
        "runs/lbwrap-PixelHazardRun-v0-none-3")
    with pytest.raises(ValueError, match="total-env-steps"):
        example.resolve(example.Args.of(total_env_steps=0))


def test_presets_defer_the_pretraining_burst_to_the_first_hazard_contact(example):
    for preset in ("quick", "paper"):
        assert example.resolve(example.Args.of(preset=preset)).cotrain.pretrain_min_unsafe == 3
    cfg = example.resolve(example.Args.of(env_id="lbwrap/PixelHazard-v0", tiny=True, size=32,
                                          pretrain_min_unsafe=7, out_dir=Path("unused")))
    built = example.build(cfg)
    assert built.cotrain.pretrain_min_unsafe == 7
    assert built.cotrain.pretrain_updates == cfg.cotrain.pretrain_updates == 200
    built.env.close()


def test_shield_predictor_flag(example):
    quick = example.resolve(example.Args())
    assert quick.safety.shield_predictor == "action_barrier"
    assert "action_barrier" not in quick.safety_kwargs()  # the model's default: on
    prior = example.resolve(example.Args.of(shield_predictor="prior"))
    assert prior.safety_kwargs()["action_barrier"] is None
    # a run saved before the flag existed resumes with the predictor it was trained with
    old = example.resolve(example.Args(), saved={"env_id": "lbwrap/PixelHazard-v0"})
    assert old.safety.shield_predictor == "prior"


def test_report_draws_the_run_next_to_the_committed_reference(example, tmp_path, monkeypatch):
    """A plain-SAC run written with --write-reference is drawn next to a shield run of the same
    settings, with a one-line comparison; other settings find no reference."""
    monkeypatch.setattr(example, "REFERENCE_DIR", tmp_path / "reference")
    plain = run(example, tiny_argv(tmp_path / "plain", "--mode", "none", "--write-reference"))
    assert plain["vs_reference"] is None  # a plain run is not compared with itself
    folder = tmp_path / "reference" / "lbwrap-PixelHazard-v0-debug-seed0"
    stored = json.loads((folder / "reference.json").read_text())
    assert stored["mode"] == "none" and "--write-reference" in stored["command"]
    assert (folder / "metrics.csv").exists() and (folder / "summary.json").exists()

    shielded = run(example, tiny_argv(tmp_path / "shield"))
    line = shielded["vs_reference"]
    assert line.startswith("shield: ") and "plain SAC's" in line and " of plain SAC's " in line
    assert (tmp_path / "shield" / "plot_vs_reference.png").stat().st_size > 1000
    assert line in (tmp_path / "shield" / "report.md").read_text()
    other = run(example, tiny_argv(tmp_path / "other", "--total-env-steps", "500"))
    assert other["vs_reference"] is None  # another budget: no reference to compare with


def test_committed_reference_matches_the_quick_preset(example):
    """The reference that `make run` is drawn against was made with the quick preset's settings."""
    cfg = example.resolve(example.Args.of(mode="none"))
    folder = example.reference_folder(cfg)
    ref = json.loads((folder / "reference.json").read_text())
    assert ref["mode"] == "none"
    assert {k: ref[k] for k in example.REFERENCE_KEYS} == example.reference_values(cfg)
    assert read_metrics(folder / "metrics.csv")["env_steps"][-1] == cfg.run.total_env_steps
    # its run_config.json (the flat form) reads as the quick preset with its own flags
    saved = example.TrainConfig.from_json(json.loads((folder / "run_config.json").read_text()))
    assert saved == example.preset_config("quick").replace(mode="none", progress=False)


def test_compare_runs_line():
    from lbwrap.eval import compare_runs

    assert compare_runs(50, 18.0, 1000, 24.0, label="shield") == (
        "shield: 50 training violations, 0.05x plain SAC's 1000; evaluation return 18.00, 75 % "
        "of plain SAC's 24.00")


def test_truncate_metrics_and_plot(tmp_path):
    path = tmp_path / "metrics.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(METRICS_COLUMNS)
        for k in range(1, 6):
            row = {c: 0 for c in METRICS_COLUMNS}
            row.update(env_steps=100 * k, ep_return_mean=k, ep_cost_mean="nan", cum_violations=k,
                       warmup_violations=min(k, 2), ready=int(k > 3))
            writer.writerow([row[c] for c in METRICS_COLUMNS])
    assert truncate_metrics(path, 300) == 2
    assert truncate_metrics(path, 300) == 0
    assert list(read_metrics(path)["env_steps"]) == [100, 200, 300]
    # a row cut off by a kill: no line end (even if its first columns are complete)
    with open(path, "a") as f:
        f.write("400,200,1.5,3,0.5")
    assert truncate_metrics(path, 10_000) == 1
    assert path.read_text().endswith("\n")
    with open(path, "a") as f:  # a complete line with too few columns
        f.write("400,200\n")
    assert truncate_metrics(path, 10_000) == 1
    assert list(read_metrics(path)["env_steps"]) == [100, 200, 300]
    pngs = plot_run(path, tmp_path / "p")
    assert [p.name for p in pngs] == ["p_return.png", "p_cost.png", "p_violations.png"]
    assert all(p.stat().st_size > 1000 for p in pngs)


def test_compose_video_frame_marks_cost_and_negative_barrier():
    cam = np.zeros((3, 16, 16), np.uint8)
    rec = np.zeros((16, 16, 3), np.uint8)
    b = np.array([0.5, 0.2, -0.4, -0.5, 0.1])
    frame = compose_video_frame(cam, rec, b, [0, 0, 1, 0, 0], t=2, scale=4, strip_height=40)
    assert frame.shape == (16 * 4 + 2 + 40, 16 * 4 * 2 + 4, 3) and frame.dtype == np.uint8
    assert tuple(frame[0, 0]) == (230, 40, 40)  # cost at t=2: red border on the camera image
    strip = frame[-40:]
    red = np.all(strip == (230, 40, 40), axis=-1)
    green = np.all(strip == (60, 200, 90), axis=-1)
    assert red.any() and green.any()
    assert red.nonzero()[0].min() > green.nonzero()[0].min()  # B < 0 drawn below B >= 0
    quiet = compose_video_frame(cam, rec, b, [0, 0, 1, 0, 0], t=1, scale=4, strip_height=40)
    assert tuple(quiet[0, 0]) == (0, 0, 0)


@pytest.mark.slow
def test_subproc_envs(example, tmp_path):
    summary = run(example, tiny_argv(tmp_path / "sub", "--num-envs", "2", "--video-steps", "0",
                                     "--eval-episodes", "1"))
    assert summary["agent_steps"] >= 300
    assert read_metrics(tmp_path / "sub" / "metrics.csv")["env_steps"][-1] == summary["env_steps"]


def test_resume_keeps_every_saved_setting_not_given_again(example, tmp_path):
    """Each kind of flag (int, float, str, Literal, bool, Path-free defaults) keeps its saved
    value on --resume unless named on the command line, even when named with its default."""
    saved = example.resolve(example.cli([
        "--env-id", "lbwrap/PixelHazard-v0", "--tiny", "--save-replay", "--no-progress",
        "--batch-size", "64", "--reward-scale", "3.5", "--ent-coef", "0.2",
        "--shield-selection", "critic", "--video-steps", "7", "--threads", "2",
        "--device", "cpu", "--out-dir", str(tmp_path)]))
    saved = example.run_config_json(saved)  # as run_config.json holds it
    cfg = example.resolve(example.cli(["--resume", "--out-dir", str(tmp_path)]), saved).flat()
    for key, value in {"tiny": True, "save_replay": True, "progress": False, "batch_size": 64,
                       "reward_scale": 3.5, "ent_coef": "0.2", "shield_selection": "critic",
                       "video_steps": 7, "threads": 2, "device": "cpu",
                       "env_id": "lbwrap/PixelHazard-v0"}.items():
        assert cfg[key] == value, key
    again = example.resolve(example.cli([
        "--resume", "--out-dir", str(tmp_path), "--no-save-replay", "--progress",
        "--batch-size", "32", "--reward-scale", "1.0", "--ent-coef", "auto",
        "--shield-selection", "closest", "--video-steps", "200", "--threads", "1",
        "--device", "auto"]), saved).flat()
    for key, value in {"save_replay": False, "progress": True, "batch_size": 32,
                       "reward_scale": 1.0, "ent_coef": "auto", "shield_selection": "closest",
                       "video_steps": 200, "threads": 1, "device": "auto"}.items():
        assert again[key] == value, key
    # the flat run_config.json of earlier runs: the same settings; its per-invocation keys
    # (resume, write_reference) are no settings and are ignored
    flat = {**{k: v for k, v in example.resolve(example.cli(["--resume", "--out-dir",
                                                             str(tmp_path)]), saved).flat().items()
               if k != "out_dir"}, "resume": True, "write_reference": True}
    old = example.resolve(example.cli(["--resume", "--out-dir", str(tmp_path)]), flat).flat()
    assert old == {**cfg, "out_dir": old["out_dir"]}
    assert example.cli(["--no-tiny"]).given == ("tiny",)
    assert example.cli(["--resume", "--write-reference"]).given == ("resume", "write_reference")


def test_nonfinite_weights_stop_the_run_naming_the_model_and_keep_the_last_finite_set(
        example, tmp_path, monkeypatch):
    import torch
    from stable_baselines3.common.callbacks import BaseCallback

    from lbwrap.sb3 import NonFiniteWeightsError, find_checkpoint, nonfinite_models
    from lbwrap.sb3.recipes import SafeAgent

    class Poison(BaseCallback):
        """Turns one barrier weight into NaN at agent step 250 (after the set at 200)."""

        def _on_step(self) -> bool:
            if self.num_timesteps == 250:
                safety = self.locals["callback"].callbacks[0].safety
                with torch.no_grad():
                    next(safety.barrier.parameters()).view(-1)[0] = float("nan")
            return True

    original = SafeAgent.callback
    monkeypatch.setattr(SafeAgent, "callback", lambda self, *extra: original(self, *extra, Poison()))
    out = tmp_path / "run"
    with pytest.raises(NonFiniteWeightsError, match=r"safety\.barrier") as info:
        run(example, tiny_argv(out, "--checkpoint-every", "400", "--metrics-every", "50"))
    assert info.value.models == ["safety.barrier"]
    found = find_checkpoint(out)
    assert found.step == 200  # the last finite state stays the newest set
    from lbwrap.sb3 import SafePixelAgent

    loaded = SafePixelAgent.load(out, device="cpu")
    assert nonfinite_models(loaded.agent, loaded.safety) == []


def test_an_error_during_training_is_followed_by_a_checkpoint(example, tmp_path, monkeypatch):
    from stable_baselines3.common.callbacks import BaseCallback

    from lbwrap.sb3 import find_checkpoint
    from lbwrap.sb3.recipes import SafeAgent

    class Fail(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps == 130:
                raise RuntimeError("disk full (simulated)")
            return True

    original = SafeAgent.callback
    monkeypatch.setattr(SafeAgent, "callback", lambda self, *extra: original(self, *extra, Fail()))
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="disk full"):
        run(example, tiny_argv(out))
    assert find_checkpoint(out).step == 130


def test_example_offers_every_recipe_mode(example):
    from typing import get_args

    from lbwrap.sb3.recipes import MODES

    assert set(get_args(example.Mode)) == set(MODES)


def test_gpu_preset_lays_out_a_cuda_box_and_runs_on_cpu(example, tmp_path):
    """--preset gpu: envs in worker processes, bf16 safety-model updates, several SAC gradient
    steps per vector step; the same layout runs (tiny, 2 envs) on this CPU."""
    cfg = example.resolve(example.Args.of(preset="gpu"))
    assert (cfg.env.num_envs, cfg.agent.sac_gradient_steps, cfg.safety.autocast) == (8, 8, "bf16")
    assert cfg.safety.world_model == "paper" and cfg.safety.model_batch == 64
    assert cfg.safety_kwargs()["autocast"] == "bf16"
    assert example.resolve(example.Args()).safety.autocast == "off"
    summary = run(example, ["--preset", "gpu", "--env-id", "lbwrap/PixelHazard-v0", *TINY_FLAGS,
                            "--total-env-steps", "400", "--num-envs", "2", "--device", "cpu",
                            "--no-progress", "--out-dir", str(tmp_path / "gpu")])
    assert summary["env_steps"] == 400 and summary["agent_steps"] == 200
    built_cfg = json.loads((tmp_path / "gpu" / "run_config.json").read_text())
    assert built_cfg["format"] == 2 and built_cfg["run"]["preset"] == "gpu"
    assert built_cfg["env"]["num_envs"] == 2 and built_cfg["agent"]["sac_gradient_steps"] == 8
