"""The long form of a diagnostic code, for `ftdsl explain` and the generated docs/diagnostics.md."""

from __future__ import annotations

from ftdsl.diagnostics.codes import CODES, Code


def explain_text(c: Code) -> str:
    out = [f"{c.code} ({c.name}) — {c.severity}", "", f"What it does: {c.summary}."]
    if c.why:
        out += ["", f"Why: {c.why}"]
    if c.example:
        out += ["", "Example:", "", *("    " + line for line in c.example.splitlines())]
    if c.instead:
        out += ["", "Use instead:", "", *("    " + line for line in c.instead.splitlines())]
    return "\n".join(out) + "\n"


def diagnostics_markdown() -> str:
    """docs/diagnostics.md, generated from the registry (`python -m ftdsl.explain > docs/diagnostics.md`)."""
    lines = ["# Diagnostics", "",
             "Generated from `ftdsl/diagnostics/codes.py` by `python -m ftdsl.docgen`; do not edit by hand.",
             "`ftdsl explain CODE` prints the same text. Suppress a warning with `# ftdsl: ignore[CODE]` on the",
             "line (or the line above), or `# ftdsl: ignore-file[CODE]`; errors cannot be suppressed.", "",
             "| code | name | severity | summary |", "|---|---|---|---|"]
    for c in CODES.values():
        lines.append(f"| [{c.code}](#{c.code.lower()}) | `{c.name}` | {c.severity} | {c.summary} |")
    for c in CODES.values():
        lines += ["", f"## {c.code}", "", f"`{c.name}` · {c.severity}", "", f"**What it does:** {c.summary}."]
        if c.why:
            lines += ["", f"**Why:** {c.why}"]
        if c.example:
            lines += ["", "**Example:**", "", "```", c.example, "```"]
        if c.instead:
            lines += ["", "**Use instead:**", "", "```", c.instead, "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.stdout.write(diagnostics_markdown())
