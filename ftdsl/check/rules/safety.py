"""FTP301 (trust_remote_code), FTP302 (pickle weights), FTP303 (output path outside the pipeline: an error)."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from ftdsl.diagnostics import make
from ftdsl.ir.nodes import Lit

_SHA = re.compile(r"[0-9a-f]{40}")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


def trust_remote_code(ctx):
    """FTP301: `trust_remote_code = true` runs code from the model's repository."""
    for name, b in ctx.program.blocks.items():
        v = b.value("trust_remote_code") if b.kind == "model" else None
        if isinstance(v, Lit) and v.value is True:
            rev = b.value("revision")
            pinned = isinstance(rev, Lit) and isinstance(rev.value, str) and _SHA.fullmatch(rev.value)
            if pinned:
                msg = f"`model {name}` runs code shipped with the model (revision pinned)"
            else:
                msg = f"`model {name}` runs code shipped with the model, and no `revision` pins it"
            yield make("FTP301", msg, v.span, label="runs remote code",
                       hint=None if pinned else "pin `revision = \"<40-hex commit>\"` that you have reviewed")


def pickle_weights(ctx):
    """FTP302: a pretrained path naming a pickle file (.pt/.bin/.pkl)."""
    for name, b in ctx.program.blocks.items():
        v = b.value("pretrained") if b.kind == "model" else None
        if isinstance(v, Lit) and isinstance(v.value, str) and v.value.lower().endswith(PICKLE_SUFFIXES):
            yield make("FTP302", f"`model {name}` names a pickle file; it will only be loaded with "
                                 f"`torch.load(weights_only=True)`", v.span, label="pickle file",
                       hint="convert it to safetensors, or point at a folder with model.safetensors")


def output_paths(ctx):
    """FTP303 (an error: `run` refuses these paths, exit 4): an output path that leaves the
    pipeline's folder. `out` may leave it when the pipeline says `allow_outside_out = true`."""
    from ftdsl.paths import check_output_path

    targets = []
    if ctx.program.pipeline is not None and ctx.program.setting("allow_outside_out") is not True:
        targets.append(("pipeline.out", ctx.program.pipeline.attrs.get("out")))
    for name, b in ctx.program.blocks.items():
        if b.kind == "export":
            targets.append((f"{name}.path", b.attrs.get("path")))
    for where, a in targets:
        if a is None or not a.written or not isinstance(a.value, Lit) or not isinstance(a.value.value, str):
            continue
        p = a.value.value
        why = check_output_path(p)
        if why:
            hint = ("use a path relative to the pipeline's folder" if "absolute" in why
                    else "use a path relative to the pipeline, without `..`")
            if "`..`" in why and _stays_inside(p):
                # `a/../b` stays inside: `run` writes it, so it is only a warning (lint says what run does).
                yield make("FTP303", f"`{where}` has a `..` segment (it stays inside the pipeline's folder)",
                           a.value.span, label="`..` segment", hint=hint, severity="warning")
                continue
            if where == "pipeline.out" and ("absolute" in why or "`..`" in why):
                hint += "; to write outside it on purpose, add `allow_outside_out = true` to the `pipeline` block"
            yield make("FTP303", f"`{where}` writes outside the pipeline's folder: {why}", a.value.span,
                       label="outside the pipeline folder", hint=hint)


def _stays_inside(p: str) -> bool:
    """A relative POSIX path whose `..` segments never climb above its start (`a/../b`)."""
    depth = 0
    for part in PurePosixPath(p).parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            return False
    return not p.startswith("/")
