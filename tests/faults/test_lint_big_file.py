"""Issue 6 defect 8: lint time and memory stay linear up to the 4 MiB size cap.

A 4 MiB file holding one list (`param p = [1,1,1,...]`, ~2 million elements) took 48.6 s and
692 MB to lint (one token, one parser step and two node objects per element). The lexer now packs
long runs of plain literals into one lazy list (`ast.PackedItems`). Measured on the 2-core
development machine: ~1 s and ~35 MB (docs/benchmarks.md). The bounds here are generous so the
test tolerates a loaded machine; the memory bound is the one from the issue.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from ftdsl.syntax.parser import MAX_BYTES, parse

# Runs `ftdsl lint FILE` as its own child and reports that child's wall time and peak RSS
# (RUSAGE_CHILDREN of a fresh process counts only that lint, not earlier tests' children).
_MEASURE = textwrap.dedent("""
    import json, os, resource, subprocess, sys, time
    env = dict(os.environ, NO_COLOR="1", TERM="dumb", COLUMNS="100")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ftdsl", "lint", sys.argv[1]], capture_output=True, text=True,
                       env=env, timeout=120)
    wall = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    print(json.dumps({"rc": r.returncode, "wall": wall, "rss_mb": rss / 1024, "err": r.stderr[:3000] + r.stderr[-3000:]}))
""")


def _big_list_file(path: Path, item: str = "1") -> int:
    n = (MAX_BYTES - 64) // (len(item) + 1)
    text = "param p = [" + ",".join([item] * n) + "]\n"
    assert len(text.encode()) <= MAX_BYTES
    path.write_text(text)
    return n


def _measure(path: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, timeout=180,
                       cwd=path.parent)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_four_mib_list_lints_in_bounded_time_and_memory(tmp_path):
    p = tmp_path / "big.ftp"
    n = _big_list_file(p)
    assert n > 2_000_000
    m = _measure(p)
    assert m["rss_mb"] <= 200, f"lint of a 4 MiB file peaked at {m['rss_mb']:.0f} MB"
    assert m["wall"] < 10, f"lint of a 4 MiB file took {m['wall']:.1f} s"
    assert m["rc"] == 0, m["err"]  # a warning (unused param), nothing else
    assert "FTP221" in m["err"] and "Traceback" not in m["err"]
    assert max(len(line) for line in m["err"].splitlines()) < 300  # the snippet shows a window of the line


def test_an_error_inside_a_huge_list_is_found_at_its_exact_place(tmp_path):
    p = tmp_path / "big.ftp"
    items = ["1.5"] * 200_000
    items[123_456] = "-1.0"  # class weights are >= 0
    body = ",\n".join(", ".join(items[i:i + 10]) for i in range(0, len(items), 10))
    p.write_text(f"data d {{ source = sklearn(\"digits\"), split = {{ train = 0.8, valid = 0.1, test = 0.1 }} }}\n"
                 "model m { task = classify(labels = 10), arch = mlp(hidden = [64]) }\n"
                 f"train t {{ model = m, data = d, epochs = 1, loss = cross_entropy(weights = [\n{body}\n]) }}\n")
    m = _measure(p)
    assert m["rc"] == 1, m["err"]
    line = 4 + 123_456 // 10  # 10 items per line from line 4
    col = 1 + 5 * (123_456 % 10)  # "1.5, " is 5 characters
    assert f"big.ftp:{line}:{col}" in m["err"], m["err"]
    assert "weights[123456]" in m["err"]
    assert m["wall"] < 30


def test_a_list_longer_than_its_attribute_allows_is_refused_before_converting_it(tmp_path):
    p = tmp_path / "big.ftp"
    n = 1_300_000
    p.write_text('data d { source = sklearn("digits"), split = { train = 0.8, valid = 0.1, test = 0.1 } }\n'
                 "model m { arch = mlp(hidden = h), task = classify(labels = 10) }\n"
                 "train t { model = m, data = d, epochs = 1 }\n"
                 "param h = [" + ",".join(["64"] * n) + "]\n")
    m = _measure(p)
    assert m["rc"] == 1 and f"takes at most 1024 items, found {n}" in m["err"], m["err"]
    assert m["rss_mb"] <= 200, f"peaked at {m['rss_mb']:.0f} MB"  # no IR node per element (was 570 MB)


def test_packed_and_ordinary_lists_build_the_same_ast():
    values = ['1', '-2', '3.5', '1e5', '"a"', 'true', 'false', 'null', '+7', '2.5E-3'] * 5
    comment = " # no packing"
    packed = "param p = [" + " " * len(comment) + "\n" + ", ".join(values) + "]\n"
    plain = "param p = [" + comment + "\n" + ", ".join(values) + "]\n"  # a comment: not packed
    fp, dp = parse(packed, "x.ftp")
    fo, do = parse(plain, "x.ftp")
    assert dp == do == []
    a, b = fp.items[0].value.items, fo.items[0].value.items
    assert type(a).__name__ == "PackedItems" and isinstance(b, tuple)
    assert len(a) == len(b) == len(values)
    assert tuple(a) == b  # same node types, values, texts and spans (line, column, offsets)
    assert fp.items[0].value.span == fo.items[0].value.span


def test_lists_the_lexer_must_not_pack_still_parse_exactly():
    # token boundaries the packer must not get wrong: 20-digit ints, `1.5.5`, `1e123`, names, signs
    for bad in ["9" * 20, "1.5.5", "1e123", "x", "1_000"]:
        text = "param p = [" + ", ".join(["1"] * 40 + [bad]) + "]\n"
        f, diags = parse(text, "x.ftp", recover=True)
        items = f.items[0].value.items if f and f.items else ()
        assert isinstance(items, tuple), bad


def test_packing_never_changes_what_a_list_means(monkeypatch):
    """Random long lists of literals, separators and near-misses (digits that overflow, `1.5.5`,
    names, comments): parsed with and without packing, the ASTs and diagnostics are identical."""
    import random
    import re

    from ftdsl.syntax import lexer

    rng = random.Random(0)
    packable = ["0", "7", "-3", "+4", "12.5", "1e5", "2E-3", "123456789012345678", '"s"', '""', '"a b"', "true",
                "false", "null"]
    atoms = packable + ["1234567890123456789", "99999999999999999999", "1.5.5", "1_000", ".5", "1e123", "x",
                        "truex", "f(1)", "[1]"]
    seps = [",", ", ", " ", "\n", ",\n  ", "", " ,", "\t"]
    texts = []
    for _ in range(300):
        n = rng.choice([31, 32, 33, 40, 64])
        items = [rng.choice(packable) for _ in range(n)]
        if rng.random() < 0.3:  # one near-miss: the run must not be packed, or be packed exactly right
            items[rng.randrange(n)] = rng.choice(atoms)
        body = "".join(x + (rng.choice(seps) if rng.random() < 0.01 else rng.choice(seps[:5])) for x in items)
        if rng.random() < 0.05:
            body += "# c\n"
        texts.append(f"param p = [{body}]\nparam q = 1\n")
    packed = [parse(t, "x.ftp", recover=True) for t in texts]
    assert sum(type(f.items[0].value.items).__name__ == "PackedItems" for f, _ in packed
               if f and f.items and hasattr(f.items[0].value, "items")) > 100  # the fast path is exercised
    monkeypatch.setattr(lexer, "_RUN", re.compile(r"(?!)"))  # never matches: no packing
    plain = [parse(t, "x.ftp", recover=True) for t in texts]
    for t, a, b in zip(texts, packed, plain):
        assert a == b, t


def test_a_big_file_full_of_syntax_errors_is_not_parsed_again_and_again(tmp_path):
    # Recovery re-parses the file after blanking each broken item: its total work is bounded, so a
    # 4 MiB file of broken blocks costs a few parses, not one per broken block.
    p = tmp_path / "broken.ftp"
    n = (MAX_BYTES - 100) // len('data d99999 { source = csv("x.csv") = }\n')
    p.write_text("".join(f'data d{i} {{ source = csv("x.csv") = }}\n' for i in range(n)))
    m = _measure(p)
    assert m["rc"] == 1 and "FTP101" in m["err"], m["err"]
    assert m["wall"] < 20, f"took {m['wall']:.1f} s"
    assert m["rss_mb"] <= 300


def test_many_suppression_comments_cost_linear_time(tmp_path):
    # 20,000 `# ftdsl: ignore[...]` comments used to take 25 s of CPU (every diagnostic compared with
    # every comment, and lines counted from the top for each comment).
    p = tmp_path / "sup.ftp"
    p.write_text("".join(f"param a{i} = 1  # ftdsl: ignore[FTP221]\n" for i in range(20_000)))
    m = _measure(p)
    assert m["wall"] < 10, f"took {m['wall']:.1f} s"
    assert m["rc"] == 0 and "FTP221" not in m["err"] and "FTP090" not in m["err"], m["err"]
