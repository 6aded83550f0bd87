"""ftdsl.paths: lint-time string checks and write-time resolution (reliability §6, B14, F8)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ftdsl.errors import ResourceError, StageError
from ftdsl.paths import check_output_path, resolve_input, resolve_output


@pytest.mark.parametrize(
    ("p", "why"),
    [
        ("../x", "`..`"),
        ("/etc/x", "absolute"),
        ("a/../../x", "`..`"),
        ("a/../b", "`..`"),  # harmless at runtime, but the linter still warns
        ("C:\\x", "drive letter"),
        ("c:x", "drive letter"),
        ("a\\..\\x", "backslash"),
        ("a\x00b", "NUL"),
        ("", "empty"),
    ],
)
def test_check_output_path_rejects(p: str, why: str) -> None:
    reason = check_output_path(p)
    assert reason is not None and why in reason


@pytest.mark.parametrize("p", ["model.onnx", "a/b/c.json", "./x", "%2e%2e/x", "..x/y", "x..", "~/x"])
def test_check_output_path_accepts(p: str) -> None:
    # `%2e%2e` is never decoded: it is a plain, odd, file name.
    assert check_output_path(p) is None


@pytest.mark.parametrize("p", ["../x", "/etc/x", "a/../../x", "C:\\x", "a\\..\\x", "a\x00b", "..", "x/../.."])
def test_resolve_output_refuses(tmp_path: Path, p: str) -> None:
    root = tmp_path / "out"
    root.mkdir()
    with pytest.raises(ResourceError) as ei:
        resolve_output(root, p)
    assert ei.value.code == "FTP303"


def test_resolve_output_accepts(tmp_path: Path) -> None:
    root = tmp_path / "out"
    root.mkdir()
    assert resolve_output(root, "m/model.onnx") == root.resolve() / "m" / "model.onnx"
    assert resolve_output(root, "%2e%2e/x") == root.resolve() / "%2e%2e" / "x"
    assert resolve_output(root, "a/../b") == root.resolve() / "b"  # stays inside
    assert resolve_output(root, ".") == root.resolve()


def test_symlink_escape(tmp_path: Path) -> None:
    root = tmp_path / "out"
    root.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(ResourceError) as ei:
        resolve_output(root, "link/x.onnx")
    assert ei.value.code == "FTP303" and "symlink" in ei.value.message
    # The pure lint check cannot see it (no filesystem access): that is why writers re-check.
    assert check_output_path("link/x.onnx") is None
    # A symlink that stays inside is fine.
    (root / "inner").mkdir()
    (root / "alias").symlink_to(root / "inner")
    assert resolve_output(root, "alias/x") == (root / "inner" / "x").resolve()


def test_root_itself_a_symlink_is_fine(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "out").symlink_to(real)
    assert resolve_output(tmp_path / "out", "x") == real.resolve() / "x"


def test_out_replaced_by_symlink_after_lint(tmp_path: Path) -> None:
    # F8: lint passes, then out/ becomes a symlink outside: the write-time check refuses.
    base = tmp_path / "proj"
    base.mkdir()
    assert check_output_path("out/model.onnx") is None
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (base / "out").symlink_to(elsewhere)
    with pytest.raises(ResourceError):
        resolve_output(base, "out/model.onnx")


def test_resolve_input(tmp_path: Path) -> None:
    assert resolve_input(tmp_path, "data/x.csv") == tmp_path / "data" / "x.csv"
    assert resolve_input(tmp_path, "../x.csv") == tmp_path.parent / "x.csv"
    assert resolve_input(tmp_path, "/abs/x.csv") == Path("/abs/x.csv")
    assert resolve_input(str(tmp_path), Path("a.csv")).is_absolute()
    with pytest.raises(StageError):
        resolve_input(tmp_path, "a\x00b")


def test_resolve_input_relative_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_input("pipes", "d.csv") == Path(os.getcwd()) / "pipes" / "d.csv"


# --- the out root (runtime/outdir.py): inside the pipeline's folder unless the pipeline opts out ---

def test_out_root_inside_the_project_is_resolved(tmp_path: Path) -> None:
    from ftdsl.runtime.outdir import resolve_out_root

    assert resolve_out_root(tmp_path, tmp_path / "out") == (tmp_path / "out").resolve()
    assert resolve_out_root(tmp_path, tmp_path / ".") == tmp_path.resolve()
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    assert resolve_out_root(tmp_path, tmp_path / "alias") == (tmp_path / "real").resolve()


@pytest.mark.parametrize("out", ["../elsewhere", "/abs/elsewhere", "link"])
def test_out_root_outside_the_project_needs_the_opt_in(tmp_path: Path, out: str) -> None:
    from ftdsl.runtime.outdir import resolve_out_root

    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "link").symlink_to(tmp_path)
    with pytest.raises(ResourceError) as ei:
        resolve_out_root(proj, proj / out)
    assert ei.value.code == "FTP303" and "allow_outside_out = true" in ei.value.hint
    assert resolve_out_root(proj, proj / out, allow_outside=True) == (proj / out).resolve()
