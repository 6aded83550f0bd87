"""Issue 6 defects 5 and 9: cached artifacts are validated when loaded; bad labels are blamed on
the rows that hold them.

Defect 5: a cached data artifact that is not valid safetensors, with a manifest whose size and
sha256 were fixed up to match (so only the load can tell), exited 70 (SafetensorError); NaN rows
planted in a cached dataset passed silently. Now every such entry is FTP503: quarantined and
recomputed, and the run succeeds with the same result as an untouched cache.

Defect 9: labels {0, 1, 2} plus one `7` and one `-1` with `classify(labels = 3)` said "label '2'
is class 3 ... 32 row(s)". Now the message names the values 7 and -1 and their rows/lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spec_example import TINY  # noqa: E402  (the shared tiny pipeline: data d, model m, train t)

from cache_tamper import entry_of, tamper  # noqa: E402  (tests/faults is on sys.path)

PIPELINE = TINY.replace("max_steps = 24", "max_steps = 4")




def _weights(cache: Path) -> bytes:
    return (entry_of(cache, "t") / "artifact" / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, bytes]:
    """A pipeline folder with one clean run; returns (folder, the trained weights' bytes)."""
    from conftest import _env  # the fault suite's env, the same as ftdsl_cli's

    d = tmp_path_factory.mktemp("integrity")
    (d / "p.ftp").write_text(PIPELINE)
    r = subprocess.run([sys.executable, "-m", "ftdsl", "run", "p.ftp", "--cache", "cache", "--quiet"], cwd=d,
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return d, _weights(d / "cache")


def _fresh_copy(trained, tmp_path: Path) -> Path:
    import shutil

    src, _ = trained
    dst = tmp_path / "proj"
    shutil.copytree(src, dst, symlinks=True)
    for p in (dst / "cache" / "entries").rglob("*"):  # copies keep 0o444; make the copy editable
        if p.is_file():
            os.chmod(p, 0o644)
    return dst


def _rerun_and_check(ftdsl_cli, proj: Path, weights: bytes, why: str, stage: str = "d") -> str:
    # --force t: the train stage runs again, so it loads the (tampered) cached dataset.
    r = ftdsl_cli(["run", "p.ftp", "--cache", "cache", "--force", "t", "--summary-json", "s.json"], cwd=proj,
                  timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert f"warning[FTP503]: cache entry for `{stage}` is corrupt" in r.stderr and why in r.stderr, r.stderr
    assert "recomputing" in r.stderr and "internal error" not in r.stderr
    status = {s["name"]: s["status"] for s in json.loads((proj / "s.json").read_text())["stages"]}
    assert status[stage] == "ran" and status["t"] == "ran"
    assert any((proj / "cache" / "quarantine").iterdir())
    assert _weights(proj / "cache") == weights  # recomputed data -> the same training result
    return r.stderr


def test_data_artifact_that_is_not_safetensors_is_recomputed(ftdsl_cli, trained, tmp_path: Path) -> None:
    proj = _fresh_copy(trained, tmp_path)
    tamper(entry_of(proj / "cache", "d"), "artifact/arrays.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    _rerun_and_check(ftdsl_cli, proj, trained[1], "not a valid safetensors file")


def test_nan_rows_planted_in_a_cached_dataset_are_caught(ftdsl_cli, trained, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    proj = _fresh_copy(trained, tmp_path)
    entry = entry_of(proj / "cache", "d")
    arrays = load_file(str(entry / "artifact" / "arrays.safetensors"))
    feats = arrays["train.features"].copy()
    feats[[3, 17], 2] = np.nan
    feats[20, 0] = np.inf
    arrays["train.features"] = feats
    tmp = tmp_path / "a.safetensors"
    save_file(arrays, str(tmp))
    tamper(entry, "artifact/arrays.safetensors", tmp.read_bytes())
    _rerun_and_check(ftdsl_cli, proj, trained[1], "NaN or infinite values (3 row(s)")


def test_damaged_dataset_metadata_is_recomputed(ftdsl_cli, trained, tmp_path: Path) -> None:
    proj = _fresh_copy(trained, tmp_path)
    tamper(entry_of(proj / "cache", "d"), "artifact/dataset.json",
            b'{"format_version": 1, "splits": {"train": {"n": -4}}}')
    _rerun_and_check(ftdsl_cli, proj, trained[1], "the record of split `train` is malformed")


def test_any_artifact_that_does_not_load_is_recomputed_not_exit_70(ftdsl_cli, trained, tmp_path: Path) -> None:
    # The same for the model stage's artifact: the executor treats every load failure of a cached
    # artifact as corruption (FTP503), not as an internal error.
    proj = _fresh_copy(trained, tmp_path)
    tamper(entry_of(proj / "cache", "m"), "artifact/spec.json", b"[1, 2")
    _rerun_and_check(ftdsl_cli, proj, trained[1], "the artifact does not load", stage="m")


def test_labels_out_of_range_are_blamed_on_their_rows(ftdsl_cli, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = [i % 3 for i in range(40)]
    labels[12] = 7  # data row 13, file line 14
    labels[29] = -1  # data row 30, file line 31
    lines = ["x1,x2,label"] + [f"{rng.normal():.3f},{rng.normal():.3f},{y}" for y in labels]
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "p.ftp").write_text(PIPELINE.replace(
        "source = synthetic(task = classify, n = 240, features = 8, classes = 3, seed = 1)",
        'source = csv("rows.csv")\n  label = "label"').replace("max_steps = 4", "max_steps = 2"))
    r = ftdsl_cli(["run", "p.ftp", "--cache", "cache"], cwd=tmp_path, timeout=300)
    assert r.returncode == 3, r.stderr
    err = " ".join(r.stderr.split())  # the console wraps long lines
    assert "error[FTP510]" in err and "`rows.csv`, column `label`" in err, err
    assert "2 row(s) have a label outside the model's classify(labels = 3)" in err, err
    assert "row 13 (line 14) has 7" in err and "row 30 (line 31) has -1" in err, err
    assert "label(s) outside: -1, 7" in err, err
    assert "label '2'" not in err and "32 row(s)" not in err
    assert "5 distinct labels (-1, 0, 1, 2, 7)" in err and "classify(labels = 5)" in err, err
