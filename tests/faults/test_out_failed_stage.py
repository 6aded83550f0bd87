"""Issue 7 item 5 (second half): `run` never leaves an output in `out/` that a failed stage did not
produce. Before the fix, an export whose verification failed (FTP502) left the previous passing
`out/e/model.onnx` and a `verify.json` saying `"passed": true`.

The export's graph is perturbed in the subprocess (one initializer + 1.0, as F14 in
test_export_stage.py) when FTDSL_TEST_PERTURB_ONNX=1; FTDSL_TEST_FAIL_KIND=train makes the train
stage raise FTP501; then `ftdsl.cli.main` runs the pipeline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spec_example import TINY  # noqa: E402

FAST = TINY.replace("max_steps = 24", "max_steps = 4")
EXPORT = "export e {{ from = t, format = onnx(opset = 17), verify = {{ atol = {atol} }} }}\n"

# `python -c` program: run the CLI, with the ONNX exporter perturbed when asked.
PROGRAM = """
import os, sys
import numpy as np
if os.environ.get("FTDSL_TEST_PERTURB_ONNX") == "1":
    from onnx import numpy_helper
    import ftdsl.stages.onnx_utils as ou
    real = ou.export_onnx
    def perturbed(*a, **k):
        proto, how, log = real(*a, **k)
        init = max(proto.graph.initializer, key=lambda i: int(np.prod(i.dims)))
        w = numpy_helper.to_array(init).copy()
        w.reshape(-1)[0] += 1.0
        init.CopyFrom(numpy_helper.from_array(w, init.name))
        return proto, how, log
    ou.export_onnx = perturbed
fail = os.environ.get("FTDSL_TEST_FAIL_KIND")
if fail:  # that kind's stage function raises FTP501, as a NaN loss would
    import ftdsl.runtime.executor as ex
    from ftdsl.errors import StageError
    from ftdsl.stages import STAGES
    real_load = ex.load_object
    def failing(*a, **k):
        raise StageError("FTP501", "the training loss became NaN at step 1 (injected by the test)")
    ex.load_object = lambda spec: failing if spec == STAGES[fail] else real_load(spec)
from ftdsl.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def run(root: Path, *args, perturb: bool = False, fail: str = "") -> subprocess.CompletedProcess:
    from conftest import _env

    env = _env({"FTDSL_TEST_PERTURB_ONNX": "1" if perturb else "0", "FTDSL_TEST_FAIL_KIND": fail})
    return subprocess.run([sys.executable, "-c", PROGRAM, "run", "p.ftp", "--cache", ".cache", "--quiet", *args],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_a_failed_stage_leaves_no_earlier_output_in_out(tmp_path):
    (tmp_path / "p.ftp").write_text(FAST + EXPORT.format(atol="1e-4"))
    r = run(tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "e" / "model.onnx").is_file()
    assert json.loads((tmp_path / "out" / "e" / "verify.json").read_text())["passed"] is True

    # `t` fails with other settings, so `e` is skipped: neither keeps the earlier run's folder.
    r = run(tmp_path, "--set", "lr=0.02", fail="train")
    assert r.returncode == 3, r.stderr
    assert "error[FTP501]" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "t").exists() and not (tmp_path / "out" / "e").exists()
    assert "removed" in r.stderr and "earlier run" in r.stderr
    assert (tmp_path / "out" / "d").is_dir() and (tmp_path / "out" / "m").is_dir()  # those succeeded

    # The earlier results are still in the cache: the old settings bring them back without training.
    r = run(tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "e" / "model.onnx").is_file()

    # The export alone fails (other settings: a new cache key; the graph now disagrees): FTP502.
    (tmp_path / "p.ftp").write_text(FAST + EXPORT.format(atol="2e-4"))
    r = run(tmp_path, perturb=True)
    assert r.returncode == 3, r.stderr
    assert "error[FTP502]" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "e").exists(), "the earlier run's model.onnx must not look current"
    assert (tmp_path / "out" / "t" / "metrics.json").is_file()  # the stages that succeeded keep theirs
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_a_failed_stage_never_removes_a_folder_it_does_not_own(tmp_path):
    """Withdrawing is an ownership-checked delete too: a user's folder at out/t stays (and the
    run stops before training, FTP516)."""
    (tmp_path / "p.ftp").write_text(FAST)
    (tmp_path / "out" / "t").mkdir(parents=True)
    (tmp_path / "out" / "t" / "notes.txt").write_text("mine\n")
    r = run(tmp_path, fail="train")
    assert r.returncode == 4 and "error[FTP516]" in r.stderr, r.stderr
    assert (tmp_path / "out" / "t" / "notes.txt").read_text() == "mine\n"
