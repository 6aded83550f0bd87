"""Renderer goldens: tests/golden/render/* are written by tests/golden/regen_render.py only."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"


def _regen():
    spec = importlib.util.spec_from_file_location("regen_render", GOLDEN / "regen_render.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


REGEN = _regen()


@pytest.mark.parametrize("name", sorted(REGEN.OUTPUTS))
def test_golden(name):
    path = GOLDEN / "render" / name
    assert path.exists(), f"missing golden {path}; run python tests/golden/regen_render.py"
    expected = path.read_text(encoding="utf-8")
    actual = REGEN.OUTPUTS[name]()
    assert actual == expected, f"{name} differs; if the change is intended run python tests/golden/regen_render.py"


def test_no_stray_goldens():
    on_disk = {p.name for p in (GOLDEN / "render").iterdir()}
    assert on_disk == set(REGEN.OUTPUTS)


def test_goldens_are_deterministic():
    for name, produce in REGEN.OUTPUTS.items():
        assert produce() == produce(), name
