"""`lint`, `plan`, `fmt` and `explain` never import the engine (SPEC §5), and the parser never uses
Lark's pickle cache (reliability.md §8 B, F6c; formats.md §7: lark-parser/lark#1628).

Each check runs in a fresh interpreter: an import made by another test in this process would
otherwise hide (or fake) the result.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ftdsl

PIPELINE = """\
ftp 1
# Fine-tune a small pretrained encoder, prune it, export it, quantize the ONNX graph.
pipeline sentiment { seed = 13 }

param lr = 3e-5

data reviews {
  source = csv("data/reviews.csv")
  text = "sentence", label = "label"
  split = { train = 0.8, valid = 0.1, test = 0.1 }
  max_length = 64
}

model base {
  pretrained = "sentence-transformers/all-MiniLM-L6-v2"
  task = classify(labels = 2)
  trust_remote_code = false
}

train finetune {
  model = base, data = reviews
  epochs = 3, batch = 32
  optimizer = adamw(lr = lr, weight_decay = 0.01)
  schedule = linear(warmup = 0.1)
  precision = auto
  lora = lora(r = 8, alpha = 16, targets = ["query", "value"])
  early_stop = { metric = "valid.accuracy", mode = max, patience = 2 }
}

prune sparse { from = finetune, method = global_magnitude(amount = 0.3), recover = { epochs = 1 } }
export onnx  { from = sparse, format = onnx(opset = 17), verify = true }
quantize q8  { from = onnx, method = dynamic(dtype = int8) }
evaluate report { models = [finetune, sparse, onnx, q8], data = reviews.test, metrics = [accuracy, f1, latency, size] }
"""

ENGINE = ("torch", "transformers", "onnxruntime")
HEAVY = ENGINE + ("onnx", "onnxscript", "peft", "optuna", "sklearn", "numpy", "matplotlib", "tensorboard",
                  "safetensors", "tokenizers", "pyarrow")

PROBE = textwrap.dedent("""
    import contextlib, io, json, os, sys, tempfile
    import lark

    cache_kwargs = []
    _init = lark.Lark.__init__

    def spy(self, *args, **kwargs):
        cache_kwargs.append(kwargs.get("cache", False))
        return _init(self, *args, **kwargs)

    lark.Lark.__init__ = spy
    table_loads = []
    _from_dict = lark.Lark._load_from_dict.__func__

    def load_spy(cls, data, memo, **kwargs):  # the committed tables (ftdsl/syntax/tables.py)
        table_loads.append(sorted(kwargs))
        return _from_dict(cls, data, memo, **kwargs)

    lark.Lark._load_from_dict = classmethod(load_spy)
    tmp = tempfile.gettempdir()
    before = sorted(n for n in os.listdir(tmp) if n.startswith(".lark_cache"))

    from ftdsl.cli import main

    codes = {}
    for argv in json.loads(sys.argv[1]):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            codes[" ".join(argv)] = main(argv)
    after = sorted(n for n in os.listdir(tmp) if n.startswith(".lark_cache"))
    print(json.dumps({"codes": codes, "modules": sorted(sys.modules), "cache_kwargs": cache_kwargs,
                      "table_loads": table_loads, "lark_cache_before": before, "lark_cache_after": after}))
""")


def probe(tmp_path: Path, *commands: list[str]) -> dict:
    (tmp_path / "p.ftp").write_text(PIPELINE, encoding="utf-8")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir(exist_ok=True)
    env = dict(os.environ, NO_COLOR="1", TMPDIR=str(tmpdir), FTDSL_CACHE=str(tmp_path / "cache"))
    env.pop("FTDSL_DEBUG", None)
    p = subprocess.run([sys.executable, "-c", PROBE, json.dumps([list(c) for c in commands])], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def front_end_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("noimport")
    return probe(tmp, ["lint", "p.ftp"], ["lint", "--format", "sarif", "p.ftp"], ["plan", "p.ftp"],
                 ["plan", "--format", "json", "p.ftp"], ["fmt", "--check", "p.ftp"], ["explain", "FTP201"])


def test_the_commands_ran(front_end_run):
    codes = front_end_run["codes"]
    assert codes["lint p.ftp"] == 0 and codes["plan p.ftp"] == 0 and codes["explain FTP201"] == 0
    assert codes["fmt --check p.ftp"] in (0, 1)


@pytest.mark.parametrize("module", ENGINE)
def test_lint_plan_fmt_do_not_import_the_engine(front_end_run, module):
    loaded = [m for m in front_end_run["modules"] if m == module or m.startswith(module + ".")]
    assert loaded == [], f"{module} was imported by lint/plan/fmt"


def test_no_heavy_library_is_imported_either(front_end_run):
    # Each of these costs start-up time that `lint` in a pre-commit hook pays on every call.
    tops = {m.split(".")[0] for m in front_end_run["modules"]}
    assert sorted(tops & set(HEAVY)) == []


def test_lint_of_a_broken_file_does_not_import_the_engine(tmp_path):
    (tmp_path / "bad.ftp").write_text(PIPELINE.replace("epochs = 3", "epochs = -3").replace("}\n", "", 1))
    r = probe(tmp_path, ["lint", "bad.ftp"], ["plan", "bad.ftp"])
    assert r["codes"] == {"lint bad.ftp": 1, "plan bad.ftp": 1}
    assert not {m.split(".")[0] for m in r["modules"]} & set(ENGINE)


# --- F6c: no Lark pickle cache -------------------------------------------------------------------

def test_lark_is_never_built_with_cache(front_end_run):
    # The parser is loaded from the committed tables (or, when they are stale, built from the grammar).
    assert front_end_run["cache_kwargs"] or front_end_run["table_loads"], "the parser was not made by lark.Lark"
    assert not any(front_end_run["cache_kwargs"])
    assert all("cache" not in kw for kw in front_end_run["table_loads"])


def test_no_lark_cache_file_appears_in_the_temp_dir(front_end_run):
    assert front_end_run["lark_cache_after"] == front_end_run["lark_cache_before"] == []


def _lark_calls():
    root = Path(ftdsl.__file__).parent
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
            if name == "Lark" or (owner == "Lark" and name in ("open", "open_from_package")):
                yield path, node


def test_no_source_file_passes_cache_to_lark():
    calls = list(_lark_calls())
    assert calls, "found no Lark(...) call in ftdsl: did the parser move?"
    for path, node in calls:
        for kw in node.keywords:
            if kw.arg == "cache":
                assert isinstance(kw.value, ast.Constant) and kw.value.value in (False, None), \
                    f"{path}:{node.lineno} passes cache= to Lark"
            assert kw.arg is not None, f"{path}:{node.lineno} passes **kwargs to Lark; cannot check `cache`"
