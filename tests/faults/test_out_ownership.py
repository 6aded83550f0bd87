"""Issue 6 defect 1: ftdsl replaces or deletes only `out/` folders it created and can prove it
created (the `.ftdsl-key` marker listing its files); never a user's folder, never through a
symlink; `out` outside the project only with `allow_outside_out = true`.

Every test runs `python -m ftdsl` in a subprocess. The pipelines hold only a synthetic `data`
block (no training), so each run takes a second or two. Before the fix, `run` rmtree'd
whatever sat at `out/NAME` (following symlinks through `resolve()`), so the "user data intact"
assertions below failed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

DATA = 'data data { source = synthetic(task = classify, n = 60, features = 4, classes = 3, seed = 1) }\n'


def pipeline(root: Path, settings: str = "", name: str = "p.ftp") -> Path:
    p = root / name
    p.write_text((f"pipeline p {{ {settings} }}\n" if settings else "") + DATA)
    return p


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (symlinks not followed) with its bytes: a snapshot to compare."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for n in filenames:
            p = Path(dirpath) / n
            out[str(p.relative_to(folder))] = b"->" + os.readlink(p).encode() if p.is_symlink() else p.read_bytes()
    return out


def user_folder(path: Path) -> dict[str, bytes]:
    (path / "sub").mkdir(parents=True)
    (path / "train.csv").write_text("a,b,label\n1,2,0\n")
    (path / "sub" / "notes.txt").write_text("precious\n")
    return tree(path)


def run(ftdsl_cli, p: Path, *extra):
    return ftdsl_cli(["run", p.name, "--cache", ".cache", "--quiet", *extra], cwd=p.parent)


def test_out_dot_does_not_delete_a_user_folder_named_like_a_stage(tmp_path, ftdsl_cli):
    """The issue's reproduction: `out = "."`, a block named `data`, the user's own ./data/."""
    p = pipeline(tmp_path, 'out = "."')
    before = user_folder(tmp_path / "data")
    r = run(ftdsl_cli, p)
    assert r.returncode == 4, r.stderr
    assert "error[FTP516]" in r.stderr and str(tmp_path / "data") in r.stderr
    assert "ownership marker" in r.stderr and "Traceback" not in r.stderr
    assert tree(tmp_path / "data") == before
    assert not list(tmp_path.glob(".data.*"))  # no temp or set-aside folder either
    r = run(ftdsl_cli, p, "--summary-json", "s.json")
    summary = json.loads((tmp_path / "s.json").read_text())
    assert r.returncode == 4 and summary["exit_code"] == 4 and summary["error"]["code"] == "FTP516"
    assert not (tmp_path / ".cache" / "entries").exists() or not any((tmp_path / ".cache" / "entries").rglob(
        "manifest.json")), "refused before any stage ran"


def test_a_symlink_at_out_name_is_refused_and_its_target_kept(tmp_path, ftdsl_cli):
    """`out/data -> ../important`: the run must not empty (or replace) `important/`."""
    p = pipeline(tmp_path)
    before = user_folder(tmp_path / "important")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "data").symlink_to("../important")
    r = run(ftdsl_cli, p)
    assert r.returncode == 4, r.stderr
    assert "error[FTP516]" in r.stderr and "symlink" in r.stderr
    assert (tmp_path / "out" / "data").is_symlink()
    assert tree(tmp_path / "important") == before


def test_a_file_in_the_way_is_refused(tmp_path, ftdsl_cli):
    p = pipeline(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "data").write_text("mine\n")
    r = run(ftdsl_cli, p)
    assert r.returncode == 4 and "error[FTP516]" in r.stderr, r.stderr
    assert (tmp_path / "out" / "data").read_text() == "mine\n"


def test_own_folder_is_replaced_but_not_once_a_user_adds_a_file(tmp_path, ftdsl_cli):
    p = pipeline(tmp_path)
    r = run(ftdsl_cli, p)
    assert r.returncode == 0, r.stderr
    marker = json.loads((tmp_path / "out" / "data" / ".ftdsl-key").read_text())
    assert marker["stage"] == "data" and marker["format"] == "ftdsl-out/1" and "files" in marker
    # A new configuration replaces ftdsl's own folder.
    p.write_text(DATA.replace("seed = 1", "seed = 2"))
    r = run(ftdsl_cli, p)
    assert r.returncode == 0, r.stderr
    new_key = json.loads((tmp_path / "out" / "data" / ".ftdsl-key").read_text())["key"]
    assert new_key != marker["key"]
    # A file the user put there makes the folder theirs: refused, kept.
    (tmp_path / "out" / "data" / "my-analysis.ipynb").write_text("{}")
    p.write_text(DATA.replace("seed = 1", "seed = 3"))
    r = run(ftdsl_cli, p)
    assert r.returncode == 4 and "error[FTP516]" in r.stderr and "my-analysis.ipynb" in r.stderr, r.stderr
    assert (tmp_path / "out" / "data" / "my-analysis.ipynb").read_text() == "{}"
    assert json.loads((tmp_path / "out" / "data" / ".ftdsl-key").read_text())["key"] == new_key


def test_a_planted_marker_does_not_make_a_user_folder_deletable(tmp_path, ftdsl_cli):
    """A marker alone is not enough: it lists the files ftdsl wrote, and the user's are not in it."""
    p = pipeline(tmp_path)
    assert run(ftdsl_cli, p).returncode == 0
    marker = (tmp_path / "out" / "data" / ".ftdsl-key").read_bytes()
    (tmp_path / "out" / "data").rename(tmp_path / "out" / "was")
    before = user_folder(tmp_path / "out" / "data")
    (tmp_path / "out" / "data" / ".ftdsl-key").write_bytes(marker)  # e.g. copied along with a folder
    p.write_text(DATA.replace("seed = 1", "seed = 4"))
    r = run(ftdsl_cli, p)
    assert r.returncode == 4 and "error[FTP516]" in r.stderr, r.stderr
    assert {k: v for k, v in tree(tmp_path / "out" / "data").items() if k != ".ftdsl-key"} == before


def test_absolute_out_is_an_error_for_lint_and_run_without_the_opt_in(tmp_path, ftdsl_cli):
    elsewhere = tmp_path / "elsewhere"
    (tmp_path / "proj").mkdir()
    p = pipeline(tmp_path / "proj", f'out = "{elsewhere}"')
    lint = ftdsl_cli(["lint", p.name], cwd=p.parent)
    assert lint.returncode == 1 and "error[FTP303]" in lint.stderr and "allow_outside_out" in lint.stderr
    r = run(ftdsl_cli, p)
    assert r.returncode != 0 and "FTP303" in r.stderr
    assert not elsewhere.exists()
    # `..` too
    p = pipeline(tmp_path / "proj", 'out = "../elsewhere"')
    assert ftdsl_cli(["lint", p.name], cwd=p.parent).returncode == 1
    assert run(ftdsl_cli, p).returncode != 0 and not elsewhere.exists()


def test_allow_outside_out_opts_in_and_lint_agrees(tmp_path, ftdsl_cli):
    elsewhere = tmp_path / "elsewhere"
    (tmp_path / "proj").mkdir()
    p = pipeline(tmp_path / "proj", f'out = "{elsewhere}", allow_outside_out = true')
    lint = ftdsl_cli(["lint", p.name], cwd=p.parent)
    assert lint.returncode == 0 and "FTP303" not in lint.stderr, lint.stderr
    r = run(ftdsl_cli, p)
    assert r.returncode == 0, r.stderr
    assert (elsewhere / "data" / ".ftdsl-key").is_file()
    # ...and the ownership rules hold there too: a user folder at elsewhere/data is never replaced.
    (elsewhere / "data").rename(elsewhere / "old")
    before = user_folder(elsewhere / "data")
    p.write_text(p.read_text().replace("seed = 1", "seed = 5"))
    r = run(ftdsl_cli, p)
    assert r.returncode == 4 and "FTP516" in r.stderr
    assert tree(elsewhere / "data") == before


def test_out_symlinked_outside_the_project_is_refused(tmp_path, ftdsl_cli):
    """F8 through a subprocess: the out root itself a symlink leaving the project: FTP303, exit 4."""
    (tmp_path / "proj").mkdir()
    (tmp_path / "elsewhere").mkdir()
    p = pipeline(tmp_path / "proj")
    (tmp_path / "proj" / "out").symlink_to(tmp_path / "elsewhere")
    r = run(ftdsl_cli, p)
    assert r.returncode == 4 and "error[FTP303]" in r.stderr and "allow_outside_out" in r.stderr, r.stderr
    assert not any((tmp_path / "elsewhere").iterdir())


def test_a_killed_runs_temp_folder_is_cleaned_only_when_it_is_ftdsls(tmp_path, ftdsl_cli):
    p = pipeline(tmp_path)
    assert run(ftdsl_cli, p).returncode == 0
    out = tmp_path / "out"
    dead = 2 ** 22 + 12345  # above pid_max's default: no such process
    ours = out / f".data.tmp-{dead}-abc123"
    ours.mkdir()
    (ours / ".ftdsl-partial").write_text(f"{dead}\n")
    (ours / "half.json").write_text("{")
    theirs = out / f".data.tmp-{dead}-zzz999"
    before = user_folder(theirs)
    p.write_text(DATA.replace("seed = 1", "seed = 6"))
    assert run(ftdsl_cli, p).returncode == 0
    assert not ours.exists()
    assert tree(theirs) == before


def test_an_export_path_folder_follows_the_same_rules(tmp_path):
    """`export … path = "DIR"` of a folder format (hf, a tokenizer beside a file) replaced the folder at
    DIR with rmtree before; now only a folder ftdsl wrote there is replaced (called directly: a
    pretrained HF export through the CLI needs a downloaded model)."""
    import pytest

    from ftdsl.errors import ResourceError
    from ftdsl.stages.export import _replace_dir

    src = tmp_path / "entry" / "hf"
    src.mkdir(parents=True)
    (src / "config.json").write_text("{}")
    dest = tmp_path / "exports" / "model"
    before = user_folder(dest)
    with pytest.raises(ResourceError) as ei:
        _replace_dir(src, dest)
    assert ei.value.code == "FTP516" and str(dest) in ei.value.message
    assert tree(dest) == before
    dest2 = tmp_path / "exports" / "fresh"
    _replace_dir(src, dest2)
    assert (dest2 / "config.json").read_text() == "{}" and (dest2 / ".ftdsl-key").is_file()
    (src / "config.json").write_text('{"v": 2}')
    _replace_dir(src, dest2)  # its own folder: replaced
    assert (dest2 / "config.json").read_text() == '{"v": 2}'
    assert sorted(p.name for p in dest2.parent.iterdir()) == ["fresh", "model"]


def test_an_export_path_file_replaces_only_the_bytes_ftdsl_wrote_there(tmp_path):
    """`export … path = "model.onnx"` of a single file os.replace'd whatever was at that path, a user's
    file or a symlink's target included; now only nothing, or the unchanged bytes ftdsl wrote there
    last (its record `.model.onnx.ftdsl` beside them), is replaced (called directly, as above)."""
    import pytest

    from ftdsl.errors import ResourceError
    from ftdsl.runtime.outdir import publish_file

    src = tmp_path / "entry" / "model.onnx"
    src.parent.mkdir()
    src.write_bytes(b"onnx v1")
    exports = tmp_path / "exports"
    exports.mkdir()
    user = exports / "model.onnx"
    user.write_bytes(b"the user's own model")
    with pytest.raises(ResourceError) as ei:
        publish_file(src, user, "export `e`")
    assert ei.value.code == "FTP516" and str(user) in ei.value.message
    assert user.read_bytes() == b"the user's own model"

    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"precious")
    link = exports / "linked.onnx"
    link.symlink_to(victim)
    with pytest.raises(ResourceError):
        publish_file(src, link, "export `e`")
    assert victim.read_bytes() == b"precious" and link.is_symlink()

    mine = exports / "fresh.onnx"
    publish_file(src, mine, "export `e`")
    assert mine.read_bytes() == b"onnx v1" and (exports / ".fresh.onnx.ftdsl").is_file()
    src.write_bytes(b"onnx v2")
    publish_file(src, mine, "export `e`")  # the bytes ftdsl wrote: replaced
    assert mine.read_bytes() == b"onnx v2"
    mine.write_bytes(b"edited by hand")
    with pytest.raises(ResourceError):
        publish_file(src, mine, "export `e`")
    assert mine.read_bytes() == b"edited by hand"
    assert not [p for p in exports.iterdir() if p.name.endswith(".tmp")]


def test_a_dotdot_that_stays_inside_is_a_warning_and_runs_as_linted(tmp_path, ftdsl_cli):
    """Lint says what run does: `results/../out` stays inside, so it is a warning and the run writes there;
    `results/../../x` leaves, so it is an error."""
    p = pipeline(tmp_path, 'out = "results/../out"')
    lint = ftdsl_cli(["lint", p.name], cwd=tmp_path)
    assert lint.returncode == 0 and "warning[FTP303]" in lint.stderr, lint.stderr
    assert run(ftdsl_cli, p).returncode == 0
    assert (tmp_path / "out" / "data" / ".ftdsl-key").is_file()
    p = pipeline(tmp_path, 'out = "results/../../x"')
    lint = ftdsl_cli(["lint", p.name], cwd=tmp_path)
    assert lint.returncode == 1 and "error[FTP303]" in lint.stderr, lint.stderr


def _hammer(args):
    root, src, n = args
    from ftdsl.runtime import outdir

    errors = []
    for i in range(n):
        try:
            outdir.publish(Path(root), "s", Path(src), "a" * 64 if i % 2 else None)
            if i % 7 == 0:
                outdir.withdraw(Path(root), "s")
        except Exception as e:  # noqa: BLE001 - collected and shown by the assertion
            errors.append(repr(e))
    return errors


def test_concurrent_runs_swapping_one_out_folder_never_fail_or_leave_temps(tmp_path):
    """Two runs of one pipeline finish the same stage together (test_run_e2e's concurrent runs): the
    folder swap retries instead of failing, and nothing is left beside it. Four processes here."""
    import multiprocessing

    src = tmp_path / "entry"
    (src / "d").mkdir(parents=True)
    (src / "a.txt").write_text("x" * 1000)
    (src / "d" / "b.txt").write_text("y")
    out = tmp_path / "out"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        errors = sum(pool.map(_hammer, [(str(out), str(src), 40)] * 4), [])
    assert errors == []
    assert sorted(p.name for p in out.iterdir()) in (["s"], [])
    if (out / "s").exists():
        assert tree(out / "s").keys() == {".ftdsl-key", "a.txt", "d/b.txt"}


def test_an_out_folder_from_before_the_json_marker_is_still_ftdsls(tmp_path):
    """Folders written by ftdsl 0.1 hold a key-only `.ftdsl-key`: they are replaced, not refused."""
    from ftdsl.runtime import outdir

    old = tmp_path / "out" / "t"
    (old / "tensorboard").mkdir(parents=True)
    (old / ".ftdsl-key").write_text("ab" * 32 + "\n")
    (old / "metrics.json").write_text("{}")
    (old / "tensorboard" / "events").write_bytes(b"x")
    src = tmp_path / "entry"
    src.mkdir()
    (src / "metrics.json").write_text('{"new": 1}')
    assert outdir.why_not_ours(old) is None
    assert outdir.publish(tmp_path / "out", "t", src, "cd" * 32)
    assert tree(old).keys() == {".ftdsl-key", "metrics.json"}
    (old / ".ftdsl-key").write_text("not a key\n")  # a marker ftdsl never wrote
    assert "ownership marker" in outdir.why_not_ours(old)
