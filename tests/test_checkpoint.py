"""Checkpoints: round trip without pickle, atomicity, rotation, refusal of planted pickles,
config mismatch, non-finite weights, corruption fallback."""

from __future__ import annotations

import hashlib
import json
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from ftdsl.errors import StageError
from ftdsl.runtime import checkpoint as C


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    return model, opt, sched, scaler


def _train(model, opt, sched, steps=3):
    for _ in range(steps):
        loss = model(torch.randn(5, 4)).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()


def _save(d, model, opt, sched, scaler, step, **kw):
    g = torch.Generator().manual_seed(7)
    args = dict(model=model, optimizer=opt, scheduler=sched, scaler=scaler, step=step, epoch=1,
                batch_in_epoch=2, epoch_gen_state=g.get_state(), config_hash="h1", config={"lr": 1})
    args.update(kw)
    return C.save_checkpoint(d, **args)


def test_round_trip_restores_everything(tmp_path):
    model, opt, sched, scaler = _setup()
    _train(model, opt, sched)
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(9)
    path = _save(tmp_path, model, opt, sched, scaler, 3, history=[{"step": 1, "loss": 0.5}],
                 best={"value": 0.1, "step": 2}, best_state=model.state_dict())
    assert path.name == "step-3"
    assert sorted(p.name for p in path.iterdir()) == [
        "best.safetensors", "model.safetensors", "optim.safetensors", "rng.safetensors", "state.json"]
    # continue the original a little (drawing from the global RNG), to compare with the copy
    _train(model, opt, sched, 2)
    want = {k: v.clone() for k, v in model.state_dict().items()}

    ck = C.load_latest(tmp_path, config_hash="h1")
    assert ck is not None and ck.step == 3 and ck.epoch == 1 and ck.batch_in_epoch == 2
    assert ck.history == [{"step": 1, "loss": 0.5}] and ck.best == {"value": 0.1, "step": 2}
    assert torch.equal(ck.epoch_gen_state, torch.Generator().manual_seed(7).get_state())
    model2, opt2, sched2, scaler2 = _setup(seed=99)
    ck.restore(model=model2, optimizer=opt2, scheduler=sched2, scaler=scaler2)
    assert sched2.last_epoch == 3 and scaler2.get_scale() == scaler.get_scale()
    assert opt2.param_groups[0]["betas"] == (0.9, 0.999)
    _train(model2, opt2, sched2, 2)
    for k, v in model2.state_dict().items():
        assert torch.equal(v, want[k]), k
    # the global RNGs come back exactly
    ck.restore(rng=True)
    draws = (torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random())
    ck.restore(rng=True)
    assert draws == (torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random())
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(9)
    assert draws == (torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random())


def test_rotation_by_step_number_not_mtime(tmp_path):
    model, opt, sched, scaler = _setup()
    for step in (10, 2, 30):
        _save(tmp_path, model, opt, sched, scaler, step)
        # make the lower step look newest
        os.utime(tmp_path / "step-2", (2e9, 2e9)) if (tmp_path / "step-2").exists() else None
    assert [s for s, _ in C.list_checkpoints(tmp_path)] == [10, 30]
    assert C.load_latest(tmp_path).step == 30


def test_same_step_saved_twice_is_replaced(tmp_path):
    model, opt, sched, scaler = _setup()
    _save(tmp_path, model, opt, sched, scaler, 5, batch_in_epoch=1)
    _save(tmp_path, model, opt, sched, scaler, 5, batch_in_epoch=4)
    assert C.load_latest(tmp_path).batch_in_epoch == 4
    assert [p.name for p in tmp_path.iterdir()] == ["step-5"]


def test_killed_mid_write_leaves_previous_loadable(tmp_path, monkeypatch):
    model, opt, sched, scaler = _setup()
    _save(tmp_path, model, opt, sched, scaler, 1)
    calls = {"n": 0}
    real = C.save_file

    def dying_save_file(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(C, "save_file", dying_save_file)
    with pytest.raises(Exception) as e:
        _save(tmp_path, model, opt, sched, scaler, 2)
    assert getattr(e.value, "code", None) == "FTP505"  # mapped by ftdsl.runtime.atomic
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["step-1"]  # temp removed on failure
    # a SIGKILL skips cleanup: simulate the leftover half-written temp folder
    stale = tmp_path / ".tmp-deadbeef"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\x00" * 10)
    ck = C.load_latest(tmp_path)
    assert ck.step == 1 and not stale.exists()


class _Evil:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.makedirs, (self.sentinel,))


@pytest.mark.parametrize("name", ["rng_state.pth", "optimizer.pt", "step-1/model.bin", "trainer.pkl"])
def test_planted_pickle_is_refused_never_executed(tmp_path, name):
    import pickle

    model, opt, sched, scaler = _setup()
    ckdir = tmp_path / "ck"
    _save(ckdir, model, opt, sched, scaler, 1)
    sentinel = tmp_path / "PWNED"
    target = ckdir / name
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(pickle.dumps(_Evil(str(sentinel))))
    with pytest.raises(StageError) as e:
        C.load_latest(ckdir, config_hash="h1")
    assert e.value.code == "FTP302"
    assert f"refusing to load pickle checkpoint {target}" in e.value.message
    assert not sentinel.exists()


def test_pickle_disguised_as_safetensors_is_not_unpickled(tmp_path):
    import pickle

    model, opt, sched, scaler = _setup()
    path = _save(tmp_path / "ck", model, opt, sched, scaler, 1)
    sentinel = tmp_path / "PWNED"
    (path / "model.safetensors").write_bytes(pickle.dumps(_Evil(str(sentinel))))
    warnings = []
    with pytest.raises(StageError) as e:
        C.load_latest(tmp_path / "ck", warn=warnings.append)
    assert e.value.code == "FTP503" and warnings
    assert not sentinel.exists()


def test_changed_config_is_ftp506_unless_forced(tmp_path):
    model, opt, sched, scaler = _setup()
    _save(tmp_path, model, opt, sched, scaler, 4, config={"optimizer": {"lr": 0.001}, "batch": 8})
    with pytest.raises(StageError) as e:
        C.load_latest(tmp_path, config_hash="h2", config={"optimizer": {"lr": 0.01}, "batch": 8})
    assert e.value.code == "FTP506"
    assert "checkpoint was written with different settings (optimizer.lr: 0.001 -> 0.01)" in e.value.message
    assert "--force-resume" in e.value.message
    warnings = []
    ck = C.load_latest(tmp_path, config_hash="h2", config={"optimizer": {"lr": 0.01}}, force_resume=True,
                       warn=warnings.append)
    assert ck.step == 4 and "--force-resume" in warnings[0]


def test_non_finite_weights_are_ftp507(tmp_path):
    model, opt, sched, scaler = _setup()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    _save(tmp_path, model, opt, sched, scaler, 1)
    with pytest.raises(StageError) as e:
        C.load_latest(tmp_path)
    assert e.value.code == "FTP507" and "0.weight" in e.value.message


def test_corrupt_latest_falls_back_to_previous(tmp_path):
    model, opt, sched, scaler = _setup()
    _save(tmp_path, model, opt, sched, scaler, 1)
    p2 = _save(tmp_path, model, opt, sched, scaler, 2)
    f = p2 / "optim.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in a tensor value
    f.write_bytes(bytes(data))
    warnings = []
    ck = C.load_latest(tmp_path, warn=warnings.append)
    assert ck.step == 1 and "step-2" in warnings[0]


def test_safetensors_header_larger_than_file(tmp_path):
    model, opt, sched, scaler = _setup()
    p = _save(tmp_path, model, opt, sched, scaler, 1)
    f = p / "model.safetensors"
    raw = f.read_bytes()
    f.write_bytes((10**9).to_bytes(8, "little") + raw[8:])
    state = json.loads((p / "state.json").read_text())
    state["files"]["model.safetensors"] = {"size": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
    (p / "state.json").write_text(json.dumps(state))
    with pytest.raises(StageError) as e:
        C.load_latest(tmp_path)
    assert e.value.code == "FTP503"


def test_empty_or_missing_dir(tmp_path):
    assert C.load_latest(tmp_path / "nope") is None
    assert C.load_latest(tmp_path) is None


@pytest.mark.parametrize("tamper", ["escape", "negative_step", "missing_model", "wrong_format"])
def test_tampered_state_json_is_rejected_by_its_schema(tmp_path, tamper):
    """state.json is validated (pydantic) before use: a `../` file name never becomes a path."""
    model, opt, sched, scaler = _setup()
    _save(tmp_path, model, opt, sched, scaler, 1)
    p2 = _save(tmp_path, model, opt, sched, scaler, 2)
    state = json.loads((p2 / "state.json").read_text())
    if tamper == "escape":
        outside = tmp_path.parent / f"{tmp_path.name}-outside.safetensors"
        outside.write_bytes(b"x")
        state["files"]["../../" + outside.name] = state["files"].pop("optim.safetensors")
    elif tamper == "negative_step":
        state["step"] = -5
    elif tamper == "missing_model":
        del state["files"]["model.safetensors"]
    else:
        state["format_version"] = 99
    (p2 / "state.json").write_text(json.dumps(state))
    warnings = []
    ck = C.load_latest(tmp_path, warn=warnings.append)
    assert ck.step == 1 and "step-2" in warnings[0]
