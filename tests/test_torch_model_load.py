"""Loading a from-scratch TorchModel checks its weights against the spec without importing
`torch._dynamo` (1.4 s on every `run`/`predict` that loads a model: building the skeleton on the
meta device ran Python decompositions that import it) and without touching the global RNG.
The checks themselves (tampered names, shapes, NaN) are tests/faults/test_weights_integrity.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys
import torch
from ftdsl.stages.modules import materialize
from ftdsl.stages.torch_model import TorchModel

arch = json.loads(sys.argv[2])
spec = {"source": "arch", "arch": arch, "init": "default", "seed": 3, "task": {"$call": "classify", "labels": 3},
        "modality": "text" if arch["$call"] in ("rnn", "transformer") else "features",
        "input_shape": [8], "norm": True, "vocab_size": 50, "pad_id": 0, "num_outputs": 3}
TorchModel(spec).with_module(materialize(spec, seed=3)).save(sys.argv[1])
"""

LOAD = r"""
import json, sys
import torch
from ftdsl.stages.torch_model import TorchModel

torch.manual_seed(123)
before = torch.get_rng_state()
art = TorchModel.load(sys.argv[1])
print(json.dumps({"dynamo": "torch._dynamo" in sys.modules, "rng_kept": bool(torch.equal(before, torch.get_rng_state())),
                  "trained": art.trained}))
"""


@pytest.mark.parametrize("arch", [{"$call": "mlp", "hidden": [16]}, {"$call": "rnn"}, {"$call": "transformer"}],
                         ids=lambda a: a["$call"])
def test_loading_a_from_scratch_model_does_not_import_dynamo(tmp_path, arch):
    subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "m"), json.dumps(arch)], check=True, cwd=ROOT,
                   timeout=120)
    out = subprocess.run([sys.executable, "-c", LOAD, str(tmp_path / "m")], check=True, cwd=ROOT, timeout=120,
                         capture_output=True, text=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {"dynamo": False, "rng_kept": True, "trained": True}
