"""Training machinery: losses, a few real optimisation steps, resuming."""

import json

import numpy as np
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


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    cfg = synth.SynthConfig(frames=8, height=64, width=80, points=16)
    clips = [synth.make_clip(np.random.default_rng([1, k]), cfg) for k in range(2)]
    model = Pips(config=TINY)
    opts = TrainOptions(out=None, iters=2)
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


def test_train_command_runs_resumes_and_writes_loadable_weights(tmp_path, monkeypatch):
    import pipstrack.training.trainer as T

    monkeypatch.setitem(T.CONFIGS, "tiny", TINY)
    opts = TrainOptions(
        out=tmp_path,
        config="tiny",
        steps=4,
        batch=1,
        points=8,
        height=64,
        width=80,
        iters=2,
        eval_every=2,
        eval_clips=2,
        save_every=2,
    )
    best = train(opts, log=lambda m: None)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4]
    assert load_model(best).config == TINY
    opts.steps = 6
    train(opts, log=lambda m: None)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]  # resumed at 4, not restarted
