"""The network against the authors' code, and loading weights files safely."""

import numpy as np
import pytest
import torch

from pipstrack import Pips, PipsConfig, WeightsError, load_model
from pipstrack.engine.weights import read_checkpoint, save_model


def run_reference_input(model, reference):
    with torch.no_grad():
        preds, vis = model(
            torch.from_numpy(reference["xys"]), torch.from_numpy(reference["rgbs"]), iters=int(reference["iters"])
        )
    return torch.stack(preds).numpy(), vis.numpy()


def test_reproduces_the_authors_output_for_seeded_weights(reference, official_state):
    model = Pips(stride=4).eval()
    model.load_state_dict(official_state, strict=True)
    coords, vis = run_reference_input(model, reference)
    assert coords.shape == reference["coords"].shape
    # Tolerances from shared/docs/pips-model.md: the refinement is chaotic for random weights.
    np.testing.assert_allclose(coords[0], reference["coords"][0], atol=1e-3)
    np.testing.assert_allclose(coords[1], reference["coords"][1], atol=2e-2)
    np.testing.assert_allclose(vis, reference["vis_logits"], atol=2e-2)


def test_a_wrong_detail_would_be_caught(reference, official_state):
    """The fixture test can fail: a stride-8 network gives visibly different tracks."""
    model = Pips(stride=8).eval()
    model.load_state_dict(official_state, strict=True)
    coords, _ = run_reference_input(model, reference)
    assert np.abs(coords[0] - reference["coords"][0]).max() > 0.1


def test_state_dict_names_and_sizes_match_the_official_checkpoint(reference):
    import json

    expected = {k: tuple(s) for k, s in json.loads(str(reference["state_dict_keys"]))}
    got = {k: tuple(v.shape) for k, v in Pips(stride=4).state_dict().items()}
    assert got == expected
    assert sum(np.prod(s) for s in expected.values()) == 28_677_713


def test_loads_the_official_layout_with_module_prefixes(tmp_path, reference, official_state):
    path = tmp_path / "model-000200000.pth"
    torch.save(
        {"model_state_dict": {f"module.{k}": v for k, v in official_state.items()}, "optimizer_state_dict": {}}, path
    )
    model = load_model(path)
    coords, _ = run_reference_input(model, reference)
    np.testing.assert_allclose(coords[0], reference["coords"][0], atol=1e-3)
    assert read_checkpoint(path).kind == "official"


def test_own_files_carry_their_config(tmp_path):
    cfg = PipsConfig(encoder_widths=(16, 16, 24, 24), encoder_hidden=32, latent_dim=32, mixer_dim=64, mixer_depth=2)
    model = Pips(config=cfg)
    save_model(model, tmp_path / "small.pt", meta={"step": 3})
    loaded = load_model(tmp_path / "small.pt")
    assert loaded.config == cfg
    assert loaded.meta == {"step": 3}
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_default_model_loads_and_is_small():
    from pipstrack.engine.weights import DEFAULT_MODEL

    model = load_model()
    assert not model.training
    assert DEFAULT_MODEL.stat().st_size < 20 * 2**20


def test_missing_and_unexpected_keys_are_named(tmp_path, official_state):
    state = dict(official_state)
    state.pop("vis_predictor.0.weight")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as e:
        load_model(path)
    msg = str(e.value)
    assert str(path) in msg and "vis_predictor.0.weight" in msg and "extra.weight" in msg


def test_shape_mismatch_is_named(tmp_path, official_state):
    state = dict(official_state)
    state["fnet.conv3.weight"] = torch.zeros(64, 256, 1, 1)
    path = tmp_path / "wrong.pth"
    torch.save({"model_state_dict": state}, path)
    with pytest.raises(WeightsError, match=r"fnet\.conv3\.weight: file \(64, 256, 1, 1\) vs model \(128, 256, 1, 1\)"):
        load_model(path)


def test_truncated_and_foreign_files(tmp_path, official_state):
    good = tmp_path / "good.pth"
    torch.save(official_state, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    other = tmp_path / "other.pth"
    torch.save({"layer.weight": torch.zeros(3)}, other)
    for path, words in [
        (truncated, "truncated"),
        (text, "not a PyTorch checkpoint"),
        (other, "not a PIPs checkpoint"),
        (tmp_path / "absent.pth", "no such file"),
    ]:
        with pytest.raises(WeightsError) as e:
            load_model(path)
        assert str(path) in str(e.value) and words in str(e.value)


class Boom:
    def __reduce__(self):
        return (open, ("/tmp/pipstrack-pwned", "w"))


def test_never_unpickles_arbitrary_objects(tmp_path):
    import os

    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {"fnet.conv1.weight": torch.zeros(1)}, "payload": Boom()}, path)
    if os.path.exists("/tmp/pipstrack-pwned"):
        os.unlink("/tmp/pipstrack-pwned")
    with pytest.raises(WeightsError, match="cannot be read safely"):
        load_model(path)
    assert not os.path.exists("/tmp/pipstrack-pwned")


def test_official_lookup_uses_environment(tmp_path, monkeypatch, official_state):
    from pipstrack.engine.weights import find_official

    monkeypatch.setenv("PIPSTRACK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PIPSTRACK_WEIGHTS", raising=False)
    assert find_official() is None
    with pytest.raises(WeightsError, match="was not found; looked in"):
        load_model("official")
    target = tmp_path / "home" / "weights" / "model-000200000.pth"
    target.parent.mkdir(parents=True)
    torch.save({"model_state_dict": official_state}, target)
    assert find_official() == target
    assert load_model("official").config == PipsConfig()
    other = tmp_path / "elsewhere.pth"
    torch.save({"model_state_dict": official_state}, other)
    monkeypatch.setenv("PIPSTRACK_WEIGHTS", str(other))
    assert find_official() == other
