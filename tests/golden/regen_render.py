"""Regenerate the renderer goldens in tests/golden/render/ (never edit those files by hand).

    python tests/golden/regen_render.py          # rewrite the goldens
    python tests/golden/regen_render.py --check  # exit 1 if any golden is stale

`tests/test_render_golden.py` imports `OUTPUTS` from here and compares.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "100"})

from ftdsl.diagnostics import INFO, Diagnostic, Label, make  # noqa: E402
from ftdsl.diagnostics.github import render_github  # noqa: E402
from ftdsl.diagnostics.jsonfmt import render_json  # noqa: E402
from ftdsl.diagnostics.sarif import render_sarif  # noqa: E402
from ftdsl.diagnostics.text import format_concise, format_text  # noqa: E402
from ftdsl.syntax.ast import Span  # noqa: E402
from ftdsl.syntax.parser import parse  # noqa: E402

HERE = Path(__file__).resolve().parent / "render"
TOOL_VERSION = "0.0.0-golden"  # keeps the SARIF golden stable across releases


def span_at(path: str, text: str, needle: str, occurrence: int = 0, length: int | None = None) -> Span:
    """The span of the `occurrence`-th `needle` in `text` (or of its first `length` characters)."""
    i = -1
    for _ in range(occurrence + 1):
        i = text.index(needle, i + 1)
    j = i + (len(needle) if length is None else length)
    line = text.count("\n", 0, i) + 1
    col = i - (text.rfind("\n", 0, i) + 1) + 1
    eline = text.count("\n", 0, j) + 1
    ecol = j - (text.rfind("\n", 0, j) + 1) + 1
    return Span(path, line, col, eline, ecol, i, j)


# --- sources that the parser rejects ------------------------------------------------------------

PARSE_SOURCES = {
    "syntax/double_eq.ftp": "train t {\n  model = base\n  epochs = = 3\n}\n",
    "syntax/eof.ftp": "data d {\n  source = csv(\"reviews.csv\")\n",
    "syntax/string.ftp": "data d {\n  source = csv(\"reviews.csv)\n}\n",
    "syntax/tabs.ftp": "train t {\n\tmodel = base\n\tepochs = 3;\n}\n",
    "syntax/crlf.ftp": "data d {\r\n  split = { train = 0.8 }\r\n  shuffle = @\r\n}\r\n",
    "syntax/emoji.ftp": "model m {\n  name = \"\U0001F600 bot\" @\n}\n",
}


def parse_case():
    diags = []
    for path, text in PARSE_SOURCES.items():
        tree, ds = parse(text, path)
        assert tree is None and ds, f"{path} should not parse"
        diags.extend(ds)
    return diags, dict(PARSE_SOURCES)


# --- hand-built diagnostics -------------------------------------------------------------------

SENTIMENT = (
    "ftp 1\n"
    "\n"
    "data reviews {\n"
    "  source = csv(\"data/reviews.csv\")\n"
    "}\n"
    "\n"
    "train finetune {\n"
    "  model = base, data = reviews\n"
    "  epoch = 3, batch = 32\n"
    "}\n"
    "\n"
    "prune a {\n"
    "  from = b\n"
    "}\n"
    "prune b {\n"
    "  from = a\n"
    "}\n"
)
COMMON = "model base {\n  pretrained = \"distilbert-base-uncased\"\n}\n"
# A tab and a non-BMP emoji before the error, on the error's line.
WIDE = "model m {\n\tlabel = \"\U0001F600\U0001F600\",\tepoch = 3\n}\n"
# A long file, so line numbers have three digits; error on line 100.
# A second identical `batch = -1` line: its SARIF fingerprint gets a `:2` suffix.
LONG = "".join(f"# line {n}\n" for n in range(1, 99)) + "train t {\n  batch = -1\n}\ntrain u {\n  batch = -1\n}\n"


def handbuilt_case():
    P, Q, W, L = "pipelines/sentiment.ftp", "pipelines/common.ftp", "pipelines/wide.ftp", "pipelines/long.ftp"
    d201 = make("FTP201", "unknown attribute `epoch` in `train finetune`", span_at(P, SENTIMENT, "epoch"),
                label="unknown attribute", hint="did you mean `epochs`?",
                notes=["valid attributes: accumulate, batch, clip, data, epochs, ..."],
                fingerprint="finetune.epoch")
    d204 = make("FTP204", "`base` refers to no block", span_at(P, SENTIMENT, "base"), label="not defined here",
                hint="add `use \"common.ftp\"` to import it",
                secondary=[Label(span_at(P, SENTIMENT, "train finetune"), "in this stage"),
                           Label(span_at(Q, COMMON, "model base"), "a `base` model is defined here")])
    # A span over several lines: carets to the end of the first line.
    d205 = make("FTP205", "the stages `a` and `b` form a cycle",
                span_at(P, SENTIMENT, "prune a {\n  from = b\n}"), label="this stage depends on `b`",
                secondary=[Label(span_at(P, SENTIMENT, "from = a"), "... which depends on `a`")],
                notes=["a -> b -> a"])
    d221 = make("FTP221", "param `lr` is never used [bold]not markup[/] :smile:", span_at(P, SENTIMENT, "data reviews"),
                label="[red]a label with brackets[/]", hint="remove it\nor use it: `lr = ${lr}` 100%")
    d_wide = make("FTP201", "unknown attribute `epoch` in `model m`", span_at(W, WIDE, "epoch"),
                  label="unknown attribute", hint="did you mean `epochs`?")
    d_long = make("FTP203", "`batch` must be at least 1, got -1", span_at(L, LONG, "-1"), label="out of range")
    d_nospan = make("FTP213", "the file defines no stages", None, hint="add a `data` and a `train` block")
    d_missing = make("FTP001", "cannot read `pipelines/gone.ftp`: No such file or directory",
                     Span("pipelines/gone.ftp", 1, 1, 1, 1), hint="check the path")
    d_info = Diagnostic("FTP090", INFO, "`# ftdsl: ignore[FTP401]` suppresses nothing",
                        span_at(Q, COMMON, "pretrained"), label="here")
    d_long2 = make("FTP203", "`batch` must be at least 1, got -1", span_at(L, LONG, "-1", occurrence=1),
                   label="out of range")
    diags = [d_long2, d_long, d201, d204, d205, d221, d_wide, d_nospan, d_missing, d_info]
    return diags, {P: SENTIMENT, Q: COMMON, W: WIDE, L: LONG}


def all_case():
    d1, s1 = parse_case()
    d2, s2 = handbuilt_case()
    return d1 + d2, {**s1, **s2}


def _capture(fn, *args, **kw) -> str:
    import io

    buf = io.StringIO()
    fn(*args, buf, **kw)
    return buf.getvalue()


OUTPUTS = {
    "text_parse.txt": lambda: format_text(*parse_case()),
    "text_handbuilt.txt": lambda: format_text(*handbuilt_case()),
    "text_empty.txt": lambda: format_text([], {}),
    "concise.txt": lambda: format_concise(*all_case()),
    "diagnostics.json": lambda: _capture(render_json, *all_case()),
    "github.txt": lambda: _capture(render_github, *all_case()),
    "sarif.json": lambda: _capture(render_sarif, *all_case(), tool_version=TOOL_VERSION),
}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    HERE.mkdir(parents=True, exist_ok=True)
    stale = []
    for name, produce in OUTPUTS.items():
        path = HERE / name
        text = produce()
        old = path.read_text(encoding="utf-8") if path.exists() else None
        if old != text:
            stale.append(name)
            if not check:
                path.write_text(text, encoding="utf-8", newline="")
    for name in stale:
        print(("stale: " if check else "wrote: ") + f"tests/golden/render/{name}")
    return 1 if (check and stale) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
