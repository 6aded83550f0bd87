"""FTP255: generation asked of an `evaluate` that cannot generate or has nothing to compare with.

- `generate = {...}` on an evaluate whose models are not generative (`classify`, `regress`,
  `token_classify`): only `causal_lm` and `seq2seq` models generate text.
- a generation metric (`exact_match`, `rouge_l`, `bleu`) of a `causal_lm` model evaluated on
  plain text (a data block with `text` and no `prompt`/`response`/`messages`): a row is not split
  into a prompt and a reference, so there is nothing to compare a generation with.

The metric/task table is the schema's registry (`ftdsl/ir/schema/metrics.py`); the data columns
that make a structured modality are `MODALITY_COLUMNS` (`ftdsl/ir/schema/modality.py`).
"""

from __future__ import annotations

from ftdsl.check.graph import model_task
from ftdsl.diagnostics import make
from ftdsl.ir.nodes import ListIR, Lit, RefV, Sym
from ftdsl.ir.schema import modality as M
from ftdsl.ir.schema.metrics import CAUSAL_LM, GENERATIVE

GENERATION_METRICS = ("exact_match", "rouge_l", "bleu")


def _plain_text(prog, data_name: str) -> bool:
    b = prog.blocks.get(data_name)
    if b is None or b.kind != "data":
        return False
    structured = M.MODALITY_COLUMNS[M.INSTRUCTIONS] + M.MODALITY_COLUMNS[M.TEXT_PAIRS] + M.MODALITY_COLUMNS[M.TAGGED]
    if any(isinstance(b.value(c), Lit) and b.value(c).value is not None for c in structured):
        return False
    text = b.value("text")
    return isinstance(text, Lit) and isinstance(text.value, str)


def generation_applies(ctx):
    prog = ctx.program
    memo: dict = {}
    for name, b in prog.blocks.items():
        if b.kind != "evaluate":
            continue
        models = b.value("models")
        refs = [r for r in (models.items if isinstance(models, ListIR) else ()) if isinstance(r, RefV)]
        tasks = {r.target: model_task(prog, r.target, memo) for r in refs}
        gen = b.value("generate")
        if gen is not None and not (isinstance(gen, Lit) and gen.value is None):
            others = sorted({t for t in tasks.values() if t is not None and t not in GENERATIVE})
            if others:
                yield make("FTP255", f"`{name}.generate`: {', '.join(others)} models do not generate text",
                           getattr(gen, "span", None) or b.name_span, label="nothing generates here",
                           hint="`generate` applies to causal_lm and seq2seq models; remove it")
        ms = b.value("metrics")
        data = b.value("data")
        if not isinstance(ms, ListIR) or not isinstance(data, RefV) or CAUSAL_LM not in tasks.values():
            continue
        if not _plain_text(prog, data.target):
            continue
        for s in ms.items:
            if isinstance(s, Sym) and s.name in GENERATION_METRICS:
                yield make("FTP255", f"`{name}.metrics`: `{s.name}` compares generations with references, and "
                           f"`{data.target}` is plain text (no prompt/response or messages)", s.span,
                           label="no reference to compare with",
                           hint=f"give `{data.target}` `prompt = ...` and `response = ...` (or `messages = ...`), "
                                "or measure `perplexity` and `token_accuracy`")
