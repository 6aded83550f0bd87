"""SARIF 2.1.0 renderer (formats.md §4), validated against the OASIS schema."""

from __future__ import annotations

import io
import json
from pathlib import Path

import jsonschema
import pytest

import ftdsl
from ftdsl.diagnostics import INFO, Diagnostic, Label, make
from ftdsl.diagnostics.codes import CODES
from ftdsl.diagnostics.sarif import render_sarif, sarif_log
from ftdsl.syntax.ast import Span
from ftdsl.syntax.parser import parse

SCHEMA = json.loads((Path(__file__).parent / "golden" / "sarif-schema-2.1.0.json").read_text(encoding="utf-8"))
# This copy of the schema keeps the log's own schema under `definitions.Root` and has no top-level
# `type`/`properties`: validating against the file's root would accept anything. Point at Root.
ROOT = {"$schema": SCHEMA["$schema"], "$ref": "#/definitions/Root", "definitions": SCHEMA["definitions"]}
jsonschema.Draft7Validator.check_schema(ROOT)
VALIDATOR = jsonschema.Draft7Validator(ROOT)


def validate(log):
    errors = sorted(VALIDATOR.iter_errors(log), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def _log(diags, sources=None):
    buf = io.StringIO()
    render_sarif(diags, sources, buf)
    log = json.loads(buf.getvalue())
    validate(log)
    return log


SRC = "train finetune {\n  model = base\n  epoch = 3\n}\n"


def sample():
    return [
        make("FTP201", "unknown attribute `epoch`", Span("pipelines/sentiment.ftp", 3, 3, 3, 8), hint="did you mean `epochs`?",
             fingerprint="finetune.epoch"),
        make("FTP204", "`base` refers to no block", Span("pipelines/sentiment.ftp", 2, 11, 2, 15),
             secondary=[Label(Span("pipelines/sentiment.ftp", 1, 1, 1, 15), "in this stage")]),
        make("FTP221", "unused", Span("pipelines/sentiment.ftp", 1, 1, 4, 2)),
        make("FTP213", "no stages", None),
        Diagnostic("FTP090", INFO, "unused suppression", Span("pipelines/sentiment.ftp", 4, 1, 4, 2)),
    ]


def test_minimal_and_empty_logs_validate():
    validate({"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "ftdsl"}}, "results": [{"message": {"text": "x"}}]}]})
    log = _log([])
    assert log["runs"][0]["results"] == [] and log["runs"][0]["tool"]["driver"]["rules"] == []


@pytest.mark.parametrize("bad", [
    {"version": "2.1.0", "runs": [{"tool": {"driver": {}}}]},  # driver without name
    {"runs": []},  # no version
    {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "x"}}, "results": [{"ruleId": "A"}]}]},  # no message
    {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "x"}}, "columnKind": "bytes"}]},
    {"version": "2.1.0", "runs": [], "extra": 1},
])
def test_schema_rejects_broken_logs(bad):
    with pytest.raises(AssertionError):
        validate(bad)


def test_shape():
    log = _log(sample(), {"pipelines/sentiment.ftp": SRC})
    assert log["version"] == "2.1.0" and log["$schema"].startswith("https://")
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "ftdsl" and driver["version"] == ftdsl.__version__
    assert driver["informationUri"].startswith("https://")
    assert run["columnKind"] == "unicodeCodePoints"
    ids = [r["id"] for r in driver["rules"]]
    assert ids == sorted({"FTP201", "FTP204", "FTP221", "FTP213", "FTP090"})
    for rule in driver["rules"]:
        c = CODES[rule["id"]]
        assert rule["name"] == c.name
        assert rule["shortDescription"]["text"] == c.summary
        assert rule["fullDescription"]["text"]
        assert rule["defaultConfiguration"]["level"] == {"error": "error", "warning": "warning"}[c.severity]
        assert rule["helpUri"] == f"https://ftdsl.dev/diagnostics#{rule['id'].lower()}"
    for res in run["results"]:
        assert driver["rules"][res["ruleIndex"]]["id"] == res["ruleId"]
    by = {r["ruleId"]: r for r in run["results"]}
    r201 = by["FTP201"]
    assert r201["level"] == "error"
    assert r201["message"]["text"] == "unknown attribute `epoch`; did you mean `epochs`?"
    assert r201["locations"] == [{"physicalLocation": {
        "artifactLocation": {"uri": "pipelines/sentiment.ftp", "uriBaseId": "%SRCROOT%"},
        "region": {"startLine": 3, "startColumn": 3, "endLine": 3, "endColumn": 8}}}]
    assert r201["partialFingerprints"] == {"ftdslRuleLine/v1": "FTP201:pipelines/sentiment.ftp:finetune.epoch"}
    assert by["FTP221"]["level"] == "warning"
    assert by["FTP221"]["locations"][0]["physicalLocation"]["region"] == {
        "startLine": 1, "startColumn": 1, "endLine": 4, "endColumn": 2}
    assert by["FTP090"]["level"] == "note"
    assert "locations" not in by["FTP213"]
    rel = by["FTP204"]["relatedLocations"]
    assert rel[0]["message"]["text"] == "in this stage" and rel[0]["physicalLocation"]["region"]["startLine"] == 1


def test_fingerprints_stable_under_line_moves_and_unique():
    d = make("FTP221", "unused", Span("a.ftp", 2, 3, 2, 8))
    fp1 = sarif_log([d], {"a.ftp": "x\n  param lr = 1\n"})["runs"][0]["results"][0]["partialFingerprints"]
    moved = make("FTP221", "unused", Span("a.ftp", 5, 3, 5, 8))
    fp2 = sarif_log([moved], {"a.ftp": "\n\n\nx\n  param   lr = 1\n"})["runs"][0]["results"][0]["partialFingerprints"]
    assert fp1 == fp2
    src = "a = 1\na = 1\n"
    two = [make("FTP206", "dup", Span("a.ftp", n, 1, n, 2)) for n in (1, 2)]
    fps = [r["partialFingerprints"]["ftdslRuleLine/v1"] for r in sarif_log(two, {"a.ftp": src})["runs"][0]["results"]]
    assert len(set(fps)) == 2 and fps[1] == fps[0] + ":2"


def test_uri_is_percent_encoded_relative_path():
    d = make("FTP201", "m", Span("my pipelines/a#1.ftp", 1, 1, 1, 2))
    log = _log([d])
    loc = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert loc == {"uri": "my%20pipelines/a%231.ftp", "uriBaseId": "%SRCROOT%"}


def test_columns_are_code_points_after_emoji():
    src = "model m {\n  name = \"\U0001F600\" @\n}\n"
    _, diags = parse(src, "e.ftp")
    log = _log(diags, {"e.ftp": src})
    region = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]
    assert region["startColumn"] == src.split("\n")[1].index("@") + 1 == 14


def test_unknown_code_still_valid():
    log = _log([Diagnostic("FTP999", "error", "boom")])
    rule = log["runs"][0]["tool"]["driver"]["rules"][0]
    assert rule["id"] == "FTP999" and rule["name"] == "unknown"


def test_golden_sarif_validates():
    log = json.loads((Path(__file__).parent / "golden" / "render" / "sarif.json").read_text(encoding="utf-8"))
    validate(log)
