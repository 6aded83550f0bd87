"""Issue 7 item 6: cached model weights are validated when the artifact loads, not when a stage
first reads them.

Before: TorchModel.load kept only the path of ``model.safetensors`` and read it inside
``state_dict()``, so a tampered weights file (its manifest's size and sha256 fixed up, so only the
load can tell) failed the *downstream* stage: FTP503 (not safetensors) or FTP507 (NaN) with exit
3, and the damaged entry stayed in the cache. Now the load reads the weights and checks them up
front (the safetensors header parses, the tensors are those the spec builds with their shapes, the
values are finite), so the executor quarantines the entry and trains again: exit 0, the same
weights as the untouched run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spec_example import TINY  # noqa: E402  (the shared tiny pipeline: data d, model m, train t)

from cache_tamper import entry_of, tamper  # noqa: E402  (tests/faults is on sys.path)

PIPELINE = TINY.replace("max_steps = 24", "max_steps = 4") + "evaluate e {\n  models = [t]\n  data = d.test\n}\n"
WEIGHTS = "artifact/model.safetensors"




@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, bytes]:
    """A pipeline folder with one clean run; returns (folder, the trained weights' bytes)."""
    from conftest import _env  # the fault suite's env, the same as ftdsl_cli's

    d = tmp_path_factory.mktemp("weights")
    (d / "p.ftp").write_text(PIPELINE)
    r = subprocess.run([sys.executable, "-m", "ftdsl", "run", "p.ftp", "--cache", "cache", "--quiet"], cwd=d,
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return d, (entry_of(d / "cache", "t") / WEIGHTS).read_bytes()


def _not_safetensors(weights: bytes, tmp: Path) -> bytes:
    return b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage"


def _nan_weight(weights: bytes, tmp: Path) -> bytes:
    from safetensors.numpy import load, save

    arrays = load(weights)
    name = sorted(k for k in arrays if k.endswith("weight"))[0]
    w = arrays[name].copy()
    w.flat[0] = float("nan")
    arrays[name] = w
    return save(arrays)


def _wrong_shape(weights: bytes, tmp: Path) -> bytes:
    from safetensors.numpy import load, save

    arrays = load(weights)
    name = sorted(k for k in arrays if k.endswith("weight"))[0]
    arrays[name] = arrays[name][:-1].copy()  # one output row fewer: the spec's module does not fit
    return save(arrays)


def _missing_tensor(weights: bytes, tmp: Path) -> bytes:
    from safetensors.numpy import load, save

    arrays = load(weights)
    arrays.pop(sorted(arrays)[0])
    return save(arrays)


@pytest.mark.parametrize("damage, why", [
    (_not_safetensors, "cannot read weights"),
    (_nan_weight, "NaN or infinite values"),
    (_wrong_shape, "wrong shape"),
    (_missing_tensor, "do not fit the model spec"),
])
def test_tampered_cached_weights_are_recomputed(ftdsl_cli, trained, tmp_path: Path, damage, why) -> None:
    src, weights = trained
    proj = tmp_path / "proj"
    shutil.copytree(src, proj, symlinks=True)
    entry = entry_of(proj / "cache", "t")
    tamper(entry, WEIGHTS, damage(weights, tmp_path))
    # --force e: evaluate runs again and loads the (tampered) cached weights of t
    r = ftdsl_cli(["run", "p.ftp", "--cache", "cache", "--force", "e", "--summary-json", "s.json"], cwd=proj,
                  timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr)
    err = " ".join(r.stderr.split())  # the console wraps long lines
    assert "warning[FTP503]: cache entry for `t` is corrupt" in err and why in err, err
    assert "recomputing" in err and "internal error" not in err
    status = {s["name"]: s["status"] for s in json.loads((proj / "s.json").read_text())["stages"]}
    assert status["t"] == "ran" and status["e"] == "ran", status
    assert any((proj / "cache" / "quarantine").iterdir())
    assert (entry_of(proj / "cache", "t") / WEIGHTS).read_bytes() == weights  # the same training result
