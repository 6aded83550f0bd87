"""Generate the parts of the docs that the registries define, so they cannot drift from the code.

    python -m ftdsl.docgen            # rewrite the generated parts of docs/
    python -m ftdsl.docgen --check    # exit 1 when any of them is stale (CI, tests/test_docs.py)

What is generated:

- `docs/language.md`, between `<!-- BEGIN GENERATED REFERENCE -->` and
  `<!-- END GENERATED REFERENCE -->`: every block kind (description, attributes with their type,
  default and meaning, inputs, what it produces) and every constructor family (each constructor
  with its arguments), read from `ftdsl/ir/schema/`. The rest of the file is hand-written.
- `docs/diagnostics.md`, whole: `ftdsl.explain.diagnostics_markdown()` over
  `ftdsl/diagnostics/codes.py`.
- `docs/cli.md`, between `<!-- BEGIN GENERATED: NAME -->` / `<!-- END GENERATED: NAME -->`
  pairs: the example outputs, produced by running the CLI in-process on the small files in
  `CLI_FILES` (in a temporary folder, with colour off and a fresh cache).

Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from ftdsl.ir import schema as S

ROOT = Path(__file__).resolve().parents[1]
BEGIN_REFERENCE = "<!-- BEGIN GENERATED REFERENCE -->"
END_REFERENCE = "<!-- END GENERATED REFERENCE -->"

# --- formatting helpers ----------------------------------------------------------------------


def _cell(text: str) -> str:
    """Text made safe for one Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _symbolic(t: S.Type, v: Any) -> bool:
    """Whether a string default is written as a bare symbol (`adamw`, `max`) rather than quoted."""
    if isinstance(t, (S.Enum, S.CtorT)):
        return True
    if isinstance(t, S.OneOf):
        return any(_symbolic(o, v) for o in t.options if not isinstance(o, (S.Str, S.PathT)))
    return False


def value_text(v: Any, t: S.Type) -> str:
    """A default value as it would be written in a .ftp file."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, str):
        return v if _symbolic(t, v) else json.dumps(v)
    if isinstance(v, (list, tuple)):
        item = t.item if isinstance(t, S.ListT) else S.Type()
        return "[" + ", ".join(value_text(x, item) for x in v) + "]"
    return repr(v)


def default_cell(f: S.Field) -> str:
    if f.required:
        return "**required**"
    if f.default is None:
        return "—"
    return f"`{value_text(f.default, f.type)}`"


def signature(c: S.Ctor) -> str:
    """`csv(path, delimiter = ",", header = true)`: required arguments bare, the others with defaults."""
    parts = []
    for a in c.args:
        if a.required:
            parts.append(a.name)
        elif a.default is None:
            parts.append(f"{a.name} = null")
        else:
            parts.append(f"{a.name} = {value_text(a.default, a.type)}")
    return f"{c.name}({', '.join(parts)})"


def _structs(t: S.Type) -> list[S.StructT]:
    if isinstance(t, S.StructT):
        return [t]
    if isinstance(t, S.OneOf):
        return [o for o in t.options if isinstance(o, S.StructT)]
    return []


def _refs(t: S.Type) -> list[S.RefT]:
    if isinstance(t, S.RefT):
        return [t]
    if isinstance(t, S.ListT):
        return _refs(t.item)
    if isinstance(t, S.OneOf):
        return [r for o in t.options for r in _refs(o)]
    return []


def _walk_fields(fields, prefix: str = ""):
    """(dotted name, field) for every field and every key of a dict-valued field."""
    for f in fields:
        yield prefix + f.name, f
        for st in _structs(f.type):
            yield from _walk_fields(st.fields, prefix + f.name + ".")


def _ref_text(r: S.RefT, many: bool = False) -> str:
    what = " or ".join(r.artifacts)
    if r.split == "required":
        return "a split of a data block (`NAME.SPLIT`)"
    if "Dataset" in r.artifacts:
        return "a data block (the whole Dataset, no split)"
    return ("a list of stages" if many else "a stage") + f" producing a {what}"


PRODUCES_TEXT = {
    "Settings": "pipeline-wide settings (not a stage; nothing can refer to it)",
    "Dataset": "a **Dataset** with the splits it declares (`NAME.train`, `NAME.valid`, `NAME.test`)",
    "TorchModel": "a **TorchModel**",
    "Report": "a **Report** (a table of metrics per model, as Markdown and JSON, and a plot)",
    "input": "the kind of its `from`: a quantized **TorchModel** for a TorchModel, an **OnnxModel** for an "
             "ONNX export",
    "export": "an **OnnxModel** with `format = onnx(...)`, otherwise an **ExportedFile**",
    "target": "the artifact of its `target`'s best trial (a **TorchModel**) and a table of the trials",
}

FAMILY_TITLES = {
    "source": "Data sources", "tokenizer": "Tokenizers", "arch": "Architectures", "task": "Task heads",
    "init": "Weight initialization", "optimizer": "Optimizers", "schedule": "Learning-rate schedules",
    "loss": "Losses", "adapter": "Adapters", "prune_method": "Pruning methods",
    "quantize_method": "Quantization methods", "export_format": "Export formats", "strategy": "Sweep strategies",
}


def _ctor_families(t: S.Type) -> list[str]:
    if isinstance(t, S.CtorT):
        return [t.family]
    if isinstance(t, S.OneOf):
        return [f for o in t.options for f in _ctor_families(o)]
    return []


def family_users() -> dict[str, list[str]]:
    """family -> the attributes (`train.optimizer`, `prune.recover.optimizer`) that take it."""
    out: dict[str, list[str]] = {}
    for kind in S.KINDS.values():
        for path, f in _walk_fields(kind.fields):
            for fam in _ctor_families(f.type):
                out.setdefault(fam, []).append(f"{kind.name}.{path}")
    return out


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lowercase, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


# --- the language reference ------------------------------------------------------------------


def kind_section(kind: S.Kind) -> list[str]:
    lines = [f"### `{kind.name}`", "", kind.doc, ""]
    produces = PRODUCES_TEXT.get(kind.produces, f"a **{kind.produces}**")
    lines += [f"**Produces:** {produces}.", ""]
    inputs = []
    for path, f in _walk_fields(kind.fields):
        for r in _refs(f.type):
            inputs.append(f"`{path}`: {_ref_text(r, isinstance(f.type, S.ListT))}")
    if inputs:
        lines += ["**Inputs** (references that become edges of the graph): " + "; ".join(inputs) + ".", ""]
    lines += ["| attribute | type | default | description |", "|---|---|---|---|"]
    for path, f in _walk_fields(kind.fields):
        lines.append(f"| `{path}` | {_cell(f.type.describe())} | {_cell(default_cell(f))} | {_cell(f.doc)} |")
    return lines + [""]


def ctor_section(c: S.Ctor) -> list[str]:
    lines = [f"#### `{c.name}`", "", f"`{signature(c)}`", "", c.doc]
    if not c.args:
        lines += ["", f"No arguments: `{c.name}` and `{c.name}()` are the same."]
        return lines + [""]
    if not any(a.required for a in c.args):
        lines[-1] += f" Written bare, `{c.name}` means `{c.name}()` (every argument at its default)."
    lines += ["", "| argument | type | default | required | description |", "|---|---|---|---|---|"]
    for a in c.args:
        default = "—" if a.required or a.default is None else f"`{value_text(a.default, a.type)}`"
        lines.append(f"| `{a.name}` | {_cell(a.type.describe())} | {_cell(default)} | "
                     f"{'yes' if a.required else 'no'} | {_cell(a.doc)} |")
    return lines + [""]


def reference_markdown() -> str:
    """The generated reference section of docs/language.md (without the markers)."""
    users = family_users()
    lines = ["## Reference", "",
             "*Generated from `ftdsl/ir/schema/` by `python -m ftdsl.docgen`; do not edit by hand.*", "",
             "Types: *a number* accepts integers and decimals; *an integer* does not accept `3.0`. "
             "Ranges use interval notation: `(0, 1)` excludes both ends, `[0, 1)` includes 0. "
             "A default of `—` means *unset* (`null`): the stage decides, as the description says. "
             "Any attribute that is not required may also be written `null`. Every number has a range "
             "(generous, but an absurd value such as `hidden = [1000000000]` or `epochs = 1e9` is FTP203 at lint "
             "time instead of a failed allocation at run time).", "",
             "### Block kinds", "",
             "| kind | produces | description |", "|---|---|---|"]
    for kind in S.KINDS.values():
        produces = PRODUCES_TEXT.get(kind.produces, kind.produces).split(" (")[0]
        lines.append(f"| [`{kind.name}`](#{_anchor(kind.name)}) | {_cell(produces)} | {_cell(kind.doc)} |")
    lines.append("")
    for kind in S.KINDS.values():
        lines += kind_section(kind)

    lines += ["### Constructor families", "",
              "A constructor is written `name(positional, ..., key = value, ...)`. Each attribute accepts one "
              "family; a constructor of another family is an error (FTP202), an unknown name is FTP215.", "",
              "| family | constructors | accepted by |", "|---|---|---|"]
    for fam, ctors in S.CONSTRUCTORS.items():
        title = FAMILY_TITLES.get(fam, fam.replace("_", " "))
        names = ", ".join(f"[`{n}`](#{_anchor(n)})" for n in ctors)
        where = ", ".join(f"`{u}`" for u in users.get(fam, [])) or "—"
        lines.append(f"| [{title}](#{_anchor(title)}) | {names} | {where} |")
    lines.append("")
    for fam, ctors in S.CONSTRUCTORS.items():
        title = FAMILY_TITLES.get(fam, fam.replace("_", " "))
        where = ", ".join(f"`{u}`" for u in users.get(fam, [])) or "—"
        lines += [f"### {title}", "", f"Family `{fam}`, accepted by {where}.", ""]
        for c in ctors.values():
            lines += ctor_section(c)

    lines += metrics_section() + compatibility_section()
    return "\n".join(lines).rstrip("\n") + "\n"


def metrics_section() -> list[str]:
    """The metric registry (`ftdsl/ir/schema/metrics.py`) as a table."""
    from ftdsl.ir.schema.metrics import METRIC_REGISTRY

    lines = ["### Metrics", "",
             "Symbols accepted in `evaluate.metrics`: every row below. `early_stop.metric` and `sweep.metric` "
             "name a metric tracked during training as `SPLIT.METRIC`: `train.loss`, or `valid.` followed by a "
             "tracked metric of the model's task. Their `mode` defaults to the metric's direction (`plan` shows "
             "it).", "",
             "| metric | tasks | better | tracked in training | how it is computed |", "|---|---|---|---|---|"]
    for m in METRIC_REGISTRY.values():
        tasks = ", ".join(f"`{t}`" for t in m.tasks) or "any model"
        better = "higher (`max`)" if m.higher_is_better else "lower (`min`)"
        lines.append(f"| `{m.name}` | {tasks} | {better} | {'yes' if m.tracked else 'no (evaluate only)'} | "
                     f"{_cell(m.doc)} |")
    return lines + [""]


def compatibility_section() -> list[str]:
    """What each model consumes, what known data sets yield, and what each artifact supports
    (`ftdsl/ir/schema/modality.py`): the tables behind FTP240-FTP243."""
    from ftdsl.ir.schema import modality as M

    lines = ["### Compatibility", "",
             "Checked by `ftdsl lint` (FTP240-FTP244) from these tables, so a run does not fail on them.", "",
             "| model | takes |", "|---|---|"]
    for arch, ins in M.ARCH_INPUTS.items():
        lines.append(f"| `arch = {arch}(...)` | {', '.join(M.describe_modality(i) for i in ins)} |")
    lines.append(f"| `pretrained = \"ID\"` | {', '.join(M.describe_modality(i) for i in M.PRETRAINED_INPUTS)} |")
    lines += ["", "A data block yields text when it sets `text = \"COLUMN\"`, numeric features otherwise. "
              "Data sets known without reading a file:", "",
              "| source | yields | labels |", "|---|---|---|"]
    for name, info in M.SKLEARN_DATASETS.items():
        shape = "x".join(map(str, info.shape)) if info.shape else ""
        lines.append(f"| `sklearn(\"{name}\")` | {M.describe_modality(info.modality)} ({shape}) | "
                     f"{info.classes} classes |")
    lines.append("| `synthetic(task = classify, classes = K)` | numeric features | K classes |")
    lines.append("| `synthetic(task = regress)` | numeric features | 1 real-valued target |")
    lines += ["", "| quantize `from` | method | restriction |", "|---|---|---|"]
    words = {"TorchModel": "a TorchModel (PyTorch)", "OnnxModel": "an ONNX export (onnxruntime)"}
    for art, methods in M.QUANTIZE_SUPPORT.items():
        for meth, rules in methods.items():
            r = "; ".join(f"{k}: {', '.join(M.describe_modality(x) if k == 'inputs' else x for x in v)}"
                          for k, v in rules.items()) or "—"
            lines.append(f"| {words.get(art, art)} | `{meth}` | {_cell(r)} |")
    lines += ["", "| export format | models |", "|---|---|"]
    origin = {"arch": "built from scratch (`arch`)", "pretrained": "pretrained"}
    for fmt, origins in M.EXPORT_ORIGINS.items():
        lines.append(f"| `{fmt}` | {', '.join(origin.get(o, f'`{o}(...)`') for o in origins)} |")
    return lines + [""]


# --- CLI examples for docs/cli.md ------------------------------------------------------------

# The files the examples run on, written into a temporary folder (paths as shown in the output).
CLI_FILES = {
    "pipelines/broken.ftp": """\
ftp 1
data digits { source = sklearn("digits") }
model net { arch = mlp(hidden = [64]), task = classify(labels = 10) }
train fit {
  model = nett
  data = digits
  epochs = 3
}
export onnx { from = fit, format = onnx() }
""",
    "pipelines/demo.ftp": """\
ftp 1
pipeline demo { seed = 0 }
data digits { source = sklearn("digits") }
model net { arch = mlp(hidden = [64]), task = classify(labels = 10) }
train fit {
  model = net, data = digits
  epochs = 5, optimizer = adamw(lr = 1e-3)
  early_stop = { metric = "valid.accuracy", patience = 2 }
}
evaluate report { models = [fit], data = digits.test, metrics = [accuracy, f1] }
""",
    "pipelines/suppress.ftp": """\
ftp 1
data digits { source = sklearn("digits") }
# ftdsl: ignore[unused-block] -- kept for the next experiment
model spare { arch = cnn(), task = classify(labels = 10) }
model net { arch = mlp(), task = classify(labels = 10) }
train fit { model = net, data = digits, epochs = 3 }  # ftdsl: ignore[FTP230]
""",
}

# name -> (argv, which streams to show, fence language, post-processing)
_Example = tuple[list[str], str, str, Callable[[str], str] | None]


def _plan_json_excerpt(out: str) -> str:
    """The first stage of `plan --format json`, with cache keys shortened (they change with versions)."""
    d = json.loads(out)
    d["stages"] = d["stages"][:1]
    for s in d["stages"]:
        s["cache_key"] = "sha256:..."
    return json.dumps(d, indent=2) + "\n"


CLI_EXAMPLES: dict[str, _Example] = {
    "broken-file": ([], "", "ftp", None),
    "lint-text": (["lint", "pipelines/broken.ftp"], "both", "text", None),
    "lint-concise": (["lint", "--format", "concise", "pipelines/broken.ftp"], "both", "text", None),
    "lint-json": (["lint", "--format", "json", "pipelines/broken.ftp"], "stdout", "json", None),
    "lint-github": (["lint", "--format", "github", "pipelines/broken.ftp"], "stdout", "text", None),
    "lint-sarif": (["lint", "--format", "sarif", "pipelines/broken.ftp"], "stdout", "json", None),
    "demo-file": ([], "", "ftp", None),
    "plan-text": (["plan", "--device", "cpu", "--cache", ".cache", "pipelines/demo.ftp"], "stdout", "text", None),
    "plan-json": (["plan", "--device", "cpu", "--cache", ".cache", "--format", "json", "pipelines/demo.ftp"],
                  "stdout", "json", _plan_json_excerpt),
    "plan-mermaid": (["plan", "--device", "cpu", "--cache", ".cache", "--format", "mermaid", "pipelines/demo.ftp"],
                     "stdout", "mermaid", None),
    "fmt-diff": (["fmt", "--diff", "pipelines/demo.ftp"], "stdout", "diff", None),
    "fmt-check": (["fmt", "--check", "pipelines/demo.ftp"], "both", "text", None),
    "suppress-file": ([], "", "ftp", None),
    "lint-suppress": (["lint", "pipelines/suppress.ftp"], "both", "text", None),
    "explain": (["explain", "FTP204"], "stdout", "text", None),
}

_ENV_DROP = ("FORCE_COLOR", "TTY_COMPATIBLE", "FTDSL_DEVICE", "FTDSL_CACHE", "GITHUB_STEP_SUMMARY", "FTDSL_DEBUG",
             "CLICOLOR_FORCE")


@contextlib.contextmanager
def _quiet_env(folder: Path):
    """Run in `folder` with colour off and no environment that changes the output."""
    saved_env = {k: os.environ.get(k) for k in _ENV_DROP + ("NO_COLOR", "TERM", "COLUMNS")}
    cwd = os.getcwd()
    try:
        for k in _ENV_DROP:
            os.environ.pop(k, None)
        os.environ.update(NO_COLOR="1", TERM="dumb", COLUMNS="100")
        os.chdir(folder)
        yield
    finally:
        os.chdir(cwd)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_cli(argv: list[str]) -> tuple[int, str, str]:
    from ftdsl.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 2
    return rc, out.getvalue(), err.getvalue()


def cli_examples() -> dict[str, str]:
    """name -> the Markdown that goes between that name's markers in docs/cli.md."""
    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="ftdsl-docgen-") as tmp:
        folder = Path(tmp)
        for rel, text in CLI_FILES.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(text, encoding="utf-8")
        with _quiet_env(folder):
            for name, (argv, streams, lang, post) in CLI_EXAMPLES.items():
                if not argv:  # a file shown as it is: `NAME-file` shows pipelines/NAME.ftp
                    body = CLI_FILES[f"pipelines/{name.removesuffix('-file')}.ftp"]
                else:
                    rc, so, se = _run_cli(argv)
                    body = {"stdout": so, "stderr": se, "both": so + se}[streams]
                    if post is not None:
                        body = post(body)
                    body = f"$ ftdsl {' '.join(argv)}\n{body}" if lang == "text" else body
                    if lang == "text":
                        body += f"$ echo $?\n{rc}\n"
                out[name] = f"```{lang}\n{body.rstrip()}\n```"
    return out


# --- splicing and the command ----------------------------------------------------------------


class MarkerError(ValueError):
    pass


def splice(text: str, begin: str, end: str, content: str) -> str:
    """`text` with what lies between the `begin` and `end` marker lines replaced by `content`."""
    i = text.find(begin)
    j = text.find(end, i + len(begin)) if i >= 0 else -1
    if i < 0 or j < 0:
        raise MarkerError(f"markers {begin!r} ... {end!r} not found")
    return text[: i + len(begin)] + "\n\n" + content.strip("\n") + "\n\n" + text[j:]


def generated_files(root: Path = ROOT) -> dict[Path, str]:
    """Each generated file and the text it should have now."""
    from ftdsl.explain import diagnostics_markdown

    docs = root / "docs"
    out: dict[Path, str] = {docs / "diagnostics.md": diagnostics_markdown()}
    lang = docs / "language.md"
    if lang.exists():
        out[lang] = splice(lang.read_text(encoding="utf-8"), BEGIN_REFERENCE, END_REFERENCE, reference_markdown())
    cli = docs / "cli.md"
    if cli.exists():
        text = cli.read_text(encoding="utf-8")
        for name, md in cli_examples().items():
            begin, end = f"<!-- BEGIN GENERATED: {name} -->", f"<!-- END GENERATED: {name} -->"
            if begin in text:
                text = splice(text, begin, end, md)
        out[cli] = text
    return out


def stale(root: Path = ROOT) -> list[Path]:
    """The generated files whose content on disk differs from what `generated_files` makes."""
    return [p for p, text in generated_files(root).items()
            if not p.exists() or p.read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ftdsl.docgen", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a generated file is stale; write nothing")
    ap.add_argument("--root", type=Path, default=ROOT, help="the repository root (default: this checkout)")
    args = ap.parse_args(argv)
    try:
        files = generated_files(args.root)
    except MarkerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    bad = [p for p, text in files.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
    for p in bad:
        shown = p.relative_to(args.root) if p.is_relative_to(args.root) else p
        if args.check:
            print(f"stale: {shown} (run `python -m ftdsl.docgen`)", file=sys.stderr)
        else:
            p.write_text(files[p], encoding="utf-8", newline="\n")
            print(f"wrote {shown}", file=sys.stderr)
    if not bad:
        print("docs are up to date", file=sys.stderr)
    return 1 if args.check and bad else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
