"""Regenerate the expected `ftdsl lint` output of tests/golden/broken/*.ftp (never edit the .txt by hand).

    python tests/golden/regen_broken.py          # rewrite broken/NAME.txt beside each broken/NAME.ftp
    python tests/golden/regen_broken.py --check  # exit 1 if any .txt is stale or missing

Each output is what `NO_COLOR=1 ftdsl lint broken/NAME.ftp` prints (the text format, on stderr),
run from tests/golden/ so paths read `broken/NAME.ftp`. Read the diff before keeping it: the
messages, spans and hints in these files are the contract. `tests/test_golden_diagnostics.py`
imports `lint_output` and `CASES` from here and compares.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

os.environ.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "100"})
os.environ.pop("FTDSL_DEBUG", None)

HERE = Path(__file__).resolve().parent
BROKEN = HERE / "broken"
sys.path.insert(0, str(HERE.parents[1]))

CASES = sorted(p.name for p in BROKEN.glob("*.ftp"))


def lint_output(name: str) -> tuple[int, str]:
    """(exit code, stderr) of `ftdsl lint broken/NAME.ftp`, run from tests/golden/."""
    from ftdsl.cli import main

    err, out = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(HERE)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = main(["lint", f"broken/{name}"])
    finally:
        os.chdir(old)
    assert out.getvalue() == "", "the text format writes to stderr only"
    return rc, err.getvalue()


def expected_path(name: str) -> Path:
    return BROKEN / (name[: -len(".ftp")] + ".txt")


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name in CASES:
        _, text = lint_output(name)
        path = expected_path(name)
        if not path.exists() or path.read_bytes() != text.encode("utf-8"):
            stale.append(path.name)
            if not check:
                path.write_bytes(text.encode("utf-8"))
    known = {expected_path(n).name for n in CASES}
    stray = sorted(p.name for p in BROKEN.glob("*.txt") if p.name not in known)
    for p in stray:
        print(f"stray golden without a .ftp: broken/{p}", file=sys.stderr)
    verb = "stale" if check else "rewritten"
    print(f"{len(CASES)} cases, {len(stale)} {verb}" + (f": {', '.join(stale)}" if stale else ""), file=sys.stderr)
    return 1 if (check and stale) or stray else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
