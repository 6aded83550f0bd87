"""FTP233: a `track` backend whose library this install lacks (found with find_spec; nothing imported)."""

from __future__ import annotations

from ftdsl import capabilities
from ftdsl.diagnostics import make
from ftdsl.ir.nodes import ListIR, Sym
from ftdsl.runtime.tracking import BACKENDS, installed


def trackers_installed(ctx):
    """FTP233 for each tracker in the pipeline's `track` that cannot be imported here. The light install
    (no engine: it cannot run the pipeline anyway) checks only the names, as `distributed` does."""
    pipe = ctx.program.pipeline
    attr = pipe.attrs.get("track") if pipe is not None else None
    value = attr.value if attr is not None else None
    if not isinstance(value, ListIR) or not capabilities._torch_installed():
        return
    for item in value.items:
        if isinstance(item, Sym) and item.name in BACKENDS and not installed(item.name):
            b = BACKENDS[item.name]
            yield make("FTP233", f"`track`: {item.name} is not installed here, so training stages will not log "
                                 f"to it", item.span, label=f"`{b.module}` not found",
                       hint=f"{b.install}, or remove `{item.name}` from `track`")
