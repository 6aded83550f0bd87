"""The engine's module boundaries (docs/internals.md §2): stages meet through the artifact interface
(`ftdsl.stages.artifacts`), never through each other's internals.

Every import between `ftdsl/stages` modules is read with `ast` (module level and inside functions):

* no module imports a `_private` name from another module; a `_private` module has one importer
  (its owner);
* a name imported from a module that declares `__all__` is in it (the rest are internals);
* a stage module (one the `STAGES` registry names) is imported by no other module, except the
  training loop `train.fit` that `distill` and `prune` run; artifact types are reached through
  `artifacts.artifact_class`;
* the imports have no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ftdsl.stages import STAGES

ROOT = Path(__file__).resolve().parents[1] / "ftdsl" / "stages"
# modules by dotted name under ftdsl.stages: "train", and the subpackage's "tasks", "tasks.common", ...
MODULES = sorted(
    [p.stem for p in ROOT.glob("*.py") if p.stem != "__init__"]
    + [d.name for d in ROOT.iterdir() if (d / "__init__.py").is_file()]
    + [f"{d.name}.{p.stem}" for d in ROOT.iterdir() if (d / "__init__.py").is_file()
       for p in d.glob("*.py") if p.stem != "__init__"])


def _path(module: str) -> Path:
    p = ROOT.joinpath(*module.split("."))
    return p / "__init__.py" if p.is_dir() else p.with_suffix(".py")
STAGE_MODULES = {path.split(":")[0].rsplit(".", 1)[1] for path in STAGES.values()}
# (importer, stage module, name): the only uses of one stage module by another
ALLOWED_STAGE_IMPORTS = {("distill", "train", "fit"), ("prune", "train", "fit")}


def _imports(module: str) -> list[tuple[str, str, int]]:
    """(target module, imported name or "*module*", line) for each import of an ftdsl.stages module."""
    tree = ast.parse(_path(module).read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ftdsl.stages"):
            parts = node.module.split(".")
            base = ".".join(parts[2:])
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                if sub in MODULES:  # from ftdsl.stages import x / from ftdsl.stages.tasks import common
                    out.append((sub, "*module*", node.lineno))
                elif base:
                    out.append((base, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[:2] == ["ftdsl", "stages"] and len(parts) >= 3:
                    out.append((".".join(parts[2:]), "*module*", node.lineno))
    return [(t, n, line) for t, n, line in out if t != module]


def _public(module: str) -> set[str] | None:
    tree = ast.parse(_path(module).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return None


EDGES = {m: _imports(m) for m in MODULES}


def test_no_private_names_across_modules():
    bad = [f"{m}.py:{line} imports {n} from {t}" for m, imps in EDGES.items() for t, n, line in imps
           if n.startswith("_")]
    assert not bad, bad
    owners: dict[str, set[str]] = {}
    for m, imps in EDGES.items():
        for t, _, _ in imps:
            if t.startswith("_"):
                owners.setdefault(t, set()).add(m)
    assert all(len(o) == 1 for o in owners.values()), owners


def test_imported_names_are_public():
    bad = []
    for m, imps in EDGES.items():
        for t, n, line in imps:
            public = _public(t)
            if n != "*module*" and public is not None and n not in public:
                bad.append(f"{m}.py:{line} imports {n} from {t}, which does not list it in __all__")
    assert not bad, bad


def test_stages_meet_through_artifacts_not_each_other():
    bad = [f"{m}.py:{line} imports {t}.{n}" for m, imps in EDGES.items() for t, n, line in imps
           if t in STAGE_MODULES and (m, t, n) not in ALLOWED_STAGE_IMPORTS]
    assert not bad, bad


def test_no_import_cycles():
    graph = {m: {t for t, _, _ in imps} for m, imps in EDGES.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in MODULES:
        if m not in state:
            visit(m)


def test_the_checks_see_a_violation(tmp_path, monkeypatch):
    """The reader finds lazy imports inside functions (so a test above can fail)."""
    (tmp_path / "a.py").write_text("def f():\n    from ftdsl.stages.b import _x\n", encoding="utf-8")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "MODULES", ["a", "b"])
    assert _imports("a") == [("b", "_x", 2)]


def test_every_artifact_type_has_the_interface():
    from ftdsl.stages import ARTIFACTS
    from ftdsl.stages.artifacts import Artifact, ModelArtifact, artifact_class

    for name in ARTIFACTS:
        cls = artifact_class(name)
        assert callable(getattr(cls, "save", None)) and callable(getattr(cls, "load", None)), name
    for name in ("TorchModel", "QuantizedTorchModel", "OnnxModel"):
        cls = artifact_class(name)
        for attr in ("task", "modality", "trained", "size_bytes", "load_tokenizer", "save", "load"):
            assert hasattr(cls, attr), (name, attr)
        assert hasattr(cls, "build") or hasattr(cls, "predict"), name
    assert issubclass(ModelArtifact, Artifact)
