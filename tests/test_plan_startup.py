"""`plan`'s start-up stays lean: no importlib.metadata (versions read from dist-info), no `regex`
(Lark's optional import), and the versions in cache keys are exactly importlib.metadata's."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

PIPE = """\
pipeline p { seed = 1 }
data d { source = synthetic(task = classify, n = 40, features = 4, classes = 2, seed = 1) }
model m { arch = mlp(hidden = [4]), task = classify(labels = 2) }
train t { model = m, data = d, max_steps = 1, precision = fp32 }
"""


def test_versions_equal_importlib_metadata():
    from ftdsl.plan import LIBS, lib_versions
    from ftdsl.runtime.versions import version

    got = lib_versions()
    for lib in LIBS:
        try:
            want = metadata.version(lib)
        except metadata.PackageNotFoundError:
            want = "absent"
        assert got[lib] == want, lib
    for dist in ("lark", "numpy", "PyYAML", "typing_extensions", "typing-extensions"):
        try:
            want = metadata.version(dist)
        except metadata.PackageNotFoundError:
            want = None
        assert version(dist) == want, dist
    assert version("surely-not-installed-ftdsl-xyz") is None


def test_plan_imports_neither_importlib_metadata_nor_regex(tmp_path: Path):
    (tmp_path / "p.ftp").write_text(PIPE)
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "ftdsl", "plan", "p.ftp", "--cache", "c"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    imported = {ln.rsplit("|", 1)[1].strip() for ln in p.stderr.splitlines() if ln.startswith("import time:")}
    assert "lark" in imported  # the check would be vacuous otherwise
    assert "importlib.metadata" not in imported and "email.message" not in imported
    assert not any(m == "regex._regex_core" or m.startswith("regex.") for m in imported)
