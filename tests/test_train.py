"""Training machinery: losses, a few real optimisation steps, resuming."""

import json

import numpy as np
import pytest
import torch

from pipstrack import Pips, PipsConfig, load_model
from pipstrack.datasets import synth
from pipstrack.training.trainer import TrainOptions, balanced_vis_loss, sequence_loss, train, train_step

TINY = PipsConfig(encoder_widths=(16, 16, 24, 24), encoder_hidden=32, latent_dim=32, mixer_dim=64, mixer_depth=2)


def test_losses_weight_later_iterations_and_balance_visibility():
    trajs = torch.zeros(1, 8, 4, 2)
    valid = torch.ones(1, 8, 4)
    early_good = [trajs, trajs + 1.0]
    late_good = [trajs + 1.0, trajs]
    assert sequence_loss(late_good, trajs, valid, 0.8) < sequence_loss(early_good, trajs, valid, 0.8)
    vis = torch.zeros(1, 8, 4)
    vis[..., 0] = 1  # a quarter visible
    logits = torch.where(vis > 0, torch.tensor(5.0), torch.tensor(-5.0))
    assert balanced_vis_loss(logits, vis, valid) < 0.01
    assert balanced_vis_loss(-logits, vis, valid) > 4


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_few_steps_reduce_the_loss(precision):
    """Also with the encoder under bfloat16 autocast (train --precision bf16): the weights it
    updates stay float32."""
    torch.manual_seed(0)
    cfg = synth.SynthConfig(frames=8, height=64, width=80, points=16)
    clips = [synth.make_clip(np.random.default_rng([1, k]), cfg) for k in range(2)]
    model = Pips(config=TINY)
    opts = TrainOptions(out=None, iters=2, precision=precision)
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    with torch.no_grad():
        before = float(train_step(model, clips, opts, "cpu")["loss"])
    for _ in range(25):
        loss = train_step(model, clips, opts, "cpu")["loss"]
        optim.zero_grad()
        loss.backward()
        optim.step()
    with torch.no_grad():
        after = float(train_step(model, clips, opts, "cpu")["loss"])
    assert after < 0.8 * before
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bf16_runs_the_encoder_in_bfloat16_and_stays_near_float32():
    torch.manual_seed(0)
    cfg = synth.SynthConfig(frames=8, height=64, width=80, points=16)
    clips = [synth.make_clip(np.random.default_rng([2, k]), cfg) for k in range(2)]
    model = Pips(config=TINY)
    with torch.no_grad():
        full, half = (float(train_step(model, clips, TrainOptions(out=None, iters=2, precision=p), "cpu")["loss"])
                      for p in ("fp32", "bf16"))  # fmt: skip
    assert full != half and abs(half - full) < 0.05 * full
    with pytest.raises(ValueError, match="precision"):
        train(TrainOptions(out=None, precision="fp16"), log=lambda m: None)


def tiny_run(out, **overrides) -> TrainOptions:
    """A training run of the TINY network on small clips, evaluated and saved every 2 steps."""
    kw = dict(config="tiny", batch=1, points=8, height=64, width=80, iters=2, eval_every=2, eval_clips=2, save_every=2)
    return TrainOptions(out=out, **{**kw, **overrides})


def test_train_command_runs_resumes_and_writes_loadable_weights(tmp_path, monkeypatch):
    import pipstrack.training.trainer as T

    monkeypatch.setitem(T.CONFIGS, "tiny", TINY)
    opts = tiny_run(tmp_path, steps=4)
    best = train(opts, log=lambda m: None)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4]
    assert load_model(best).config == TINY
    opts.steps = 6
    train(opts, log=lambda m: None)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]  # resumed at 4, not restarted


def test_a_run_from_init_weights_is_judged_against_them_on_the_same_windows(tmp_path, monkeypatch):
    """Fine-tuning shipped weights: they are scored first (step 0) on the run's own held-out
    windows, and best.pt is written only by a step that beats that score."""
    import pipstrack.training.trainer as T
    from pipstrack.engine.weights import save_model

    monkeypatch.setitem(T.CONFIGS, "tiny", TINY)
    torch.manual_seed(0)
    init = tmp_path / "init.pt"
    save_model(Pips(config=TINY), init, meta={"config_name": "tiny"})
    opts = tiny_run(tmp_path / "run", steps=2, init=str(init), lr=1e-9)
    real_eval = T.evaluate_windows
    scores = iter([0.5, 0.4])  # the init scores 0.5, the trained step 0.4: no improvement
    monkeypatch.setattr(T, "evaluate_windows", lambda *a, **k: {**real_eval(*a, **k), "delta_avg": next(scores)})
    best = train(opts, log=lambda m: None)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 2]
    assert metrics[0]["init"] == str(init)
    assert best == init and not (tmp_path / "run" / "best.pt").exists()


def test_worker_processes_render_the_same_batches_and_a_time_budget_stops_the_run(tmp_path, monkeypatch):
    """A GPU run renders clips in worker processes: the batches must be the ones the training loop
    renders itself (a resumed or moved run sees the same data). A time budget ends a run early
    with its weights saved and evaluated."""
    import pipstrack.training.trainer as T
    from pipstrack.datasets import synth

    scfg = synth.SynthConfig(frames=8, height=48, width=64, points=8)
    serial = T._batches(TrainOptions(out=tmp_path, steps=3, batch=2), scfg, 1)
    pooled = T._batches(TrainOptions(out=tmp_path, steps=3, batch=2, workers=2), scfg, 1)
    pairs = list(zip(serial, pooled))
    assert len(pairs) == 2
    for a, b in pairs:
        for ca, cb in zip(a, b):
            np.testing.assert_array_equal(ca["rgbs"], cb["rgbs"])
            np.testing.assert_array_equal(ca["trajs"], cb["trajs"])

    monkeypatch.setitem(T.CONFIGS, "tiny", TINY)
    opts = TrainOptions(
        out=tmp_path / "run", config="tiny", steps=10_000, batch=1, points=8, height=64, width=80, iters=2,
        eval_every=10_000, eval_clips=2, time_budget_s=0.0,
    )  # fmt: skip
    best = train(opts, log=lambda m: None)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1]  # stopped after its first step, and evaluated there
    assert load_model(best).config == TINY
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] == 1


def test_the_prepared_gpu_training_script_runs_on_the_cpu(tmp_path):
    """tools/train_on_gpu.py is the one command for a borrowed GPU: dry-run here for a few
    seconds, it trains, saves loadable weights and scores them beside the shipped ones."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu-run"
    cmd = [sys.executable, str(root / "tools" / "train_on_gpu.py"), "--device", "cpu", "--minutes", "0.05"]
    cmd += ["--batch", "1", "--workers", "1", "--heldout-clips", "2", "--size", "128x160", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] >= 1 and set(summary["heldout_delta_avg"]) == {"shipped", "new"}
    assert summary["size"] == "128x160"  # the size asked for, not the GPU default (256x320)
    assert 0.0 < summary["heldout_delta_avg"]["shipped"] <= 1.0
    load_model(summary["best"])


def test_the_gpu_script_names_a_malformed_size_before_it_starts(tmp_path):
    """A typo in --size costs no GPU time: the script stops at once with what it expected."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "tools" / "train_on_gpu.py"), "--device", "cpu", "--size", "256by320"]
    proc = subprocess.run(cmd + ["--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--size must be HxW" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_held_out_windows_from_another_clip_mix_are_named_when_a_run_starts(tmp_path, monkeypatch):
    """Windows copied in from a run without the mix flags are other clips: the run says so,
    naming what differs, and says nothing when they match (their config survives the file)."""
    import shutil

    import pipstrack.training.trainer as T

    monkeypatch.setitem(T.CONFIGS, "tiny", TINY)
    train(tiny_run(tmp_path / "plain", steps=2), log=lambda m: None)
    for name, mix, expect in (("same", {}, False), ("shaken", {"shake_prob": 0.3}, True)):
        (tmp_path / name).mkdir()
        shutil.copy(tmp_path / "plain" / "heldout.npz", tmp_path / name / "heldout.npz")
        lines = []
        train(tiny_run(tmp_path / name, steps=2, **mix), log=lines.append)
        notes = [line for line in lines if "another clip mix" in line]
        assert bool(notes) == expect, lines
        if expect:
            assert "shake_prob 0.0 (this run 0.3)" in notes[0]


def test_averaged_weights_follow_training_are_scored_beside_it_and_survive_a_resume(tmp_path, monkeypatch):
    """--ema keeps a running average of the weights: it moves from the start towards the trained
    weights, each evaluation scores both, best.pt takes the better, and a resumed run carries on
    with the average it had (not a fresh copy of the weights)."""
    import pipstrack.training.trainer as T

    monkeypatch.setitem(T.CONFIGS, "tiny", TINY)
    torch.manual_seed(0)
    model = Pips(config=TINY)
    avg = T.WeightAverage(model, 0.9)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    avg.update(model)  # first update: decay (1+1)/(10+1), so it moves 9/11 of the way
    moved = next(avg.model.parameters()) - start[0]
    assert torch.allclose(moved, torch.full_like(moved, 9 / 11), atol=1e-6)
    with pytest.raises(ValueError, match="decay"):
        T.WeightAverage(model, 1.0)

    opts = tiny_run(tmp_path, steps=2, ema=0.99)
    real_eval = T.evaluate_windows
    scores = iter([0.3, 0.6, 0.2, 0.1])  # step 2: trained 0.3, averaged 0.6; step 4: 0.2, 0.1
    monkeypatch.setattr(T, "evaluate_windows", lambda *a, **k: {**real_eval(*a, **k), "delta_avg": next(scores)})
    best = train(opts, log=lambda m: None)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("weights")) for r in rows] == [(2, None), (2, "ema")]
    assert load_model(best).meta["ema"] == 0.99  # the average won
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["ema"]["updates"] == 2
    opts.steps = 4
    train(opts, log=lambda m: None)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["ema"]["updates"] == 4
    assert load_model(best).meta["step"] == 2  # neither score at step 4 beat 0.6
