"""The README's main job: `ftdsl run pipelines/quickstart.ftp` trains to >= 0.95 test accuracy,
and a second run is fully cached."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ftdsl.cli import main

QUICKSTART = Path(__file__).resolve().parents[1] / "pipelines" / "quickstart.ftp"


def test_quickstart_reaches_its_accuracy_and_caches(tmp_path):
    p = tmp_path / "quickstart.ftp"
    shutil.copyfile(QUICKSTART, p)  # outputs go beside the file: keep them out of the repo
    summary = tmp_path / "summary.json"
    assert main(["run", str(p), "--cache", str(tmp_path / "cache"), "--quiet", "--summary-json", str(summary)]) == 0
    stages = {s["name"]: s for s in json.loads(summary.read_text())["stages"]}
    assert stages["fit"]["status"] == "ran"
    assert stages["fit"]["metrics"]["test.accuracy"] >= 0.95
    metrics = json.loads((tmp_path / "out" / "fit" / "metrics.json").read_text())
    assert metrics["test.accuracy"] >= 0.95
    assert main(["run", str(p), "--cache", str(tmp_path / "cache"), "--quiet", "--summary-json", str(summary)]) == 0
    assert {s["status"] for s in json.loads(summary.read_text())["stages"]} == {"cached"}
