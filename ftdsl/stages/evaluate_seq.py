"""`evaluate` for the token-level tasks (causal_lm, seq2seq, token_classify).

- Teacher-forced metrics (loss, perplexity, token_accuracy; entity_* for token_classify): the
  split is encoded by the task (``task.encode``, the trainer's own encoding), run through the
  model in batches, and ``task.batch_stats`` / ``task.metrics`` compute them, as `train` does for
  its `valid` split.
- Generation (causal_lm, seq2seq), when a generation metric (exact_match, rouge_l, bleu) is asked
  for or the stage sets ``generate = {...}``: every row's prompt (the task's ``prompt_ids``; the
  source text for seq2seq) is generated from with ``ftdsl.stages.tasks.generation`` and compared
  with its reference (``ftdsl.stages.seq_metrics``); the first ``samples`` rows of each model go to
  ``samples.jsonl`` (``{"model", "row", "input", "reference", "generated"}``).
- latency: the fastest teacher-forced forward pass per row (as for the other models); size: the
  weights' bytes.

Models run in PyTorch (a TorchModel, or an `hf` / `adapter` export loaded back: ``seq_module``);
an ONNX graph of a token task is refused with FTP510 (evaluate the stage it was exported from).
"""

from __future__ import annotations

import time
from typing import Any

from ftdsl.errors import StageError

GENERATION_METRICS = ("exact_match", "rouge_l", "bleu")


def task_call(art) -> dict:
    from ftdsl.ir.lower import complete_call

    spec = getattr(art, "spec", None) or getattr(art, "meta", None) or {}
    return complete_call(spec["task"], "task")


def seq_tokenizer(art, data=None):
    """The transformers tokenizer of a token-task model (its own folder, else the data's)."""
    from ftdsl.stages.tasks.common import load_seq_tokenizer

    spec = getattr(art, "spec", {}) or {}
    tok = load_seq_tokenizer(getattr(art, "tokenizer_dir", None), pretrained=spec.get("source") == "pretrained",
                             trust_remote_code=bool(spec.get("trust_remote_code")))
    if tok is None and data is not None and getattr(data, "tokenizer_dir", None) is not None:
        tok = load_seq_tokenizer(data.tokenizer_dir, pretrained=False)
    if tok is None:
        raise StageError("FTP510", f"the {spec.get('task', {}).get('$call', 'token')} model has no tokenizer",
                         hint="give the data block `tokenizer = bpe(...)`, or use a pretrained folder with one")
    return tok


def seq_module(art):
    """(module, tokenizer or None) of a token-task model artifact: ``build()`` of a TorchModel;
    a ``format = hf`` export loaded by transformers (the Auto class of its task), an adapter export
    (``format = adapter`` / ``hf(merge = false)``) as its base with the peft adapter, each with
    the tokenizer written beside it. Anything else (an ONNX graph) is FTP510."""
    if hasattr(art, "build"):
        return art.build(), None
    fmt = getattr(art, "format", None)
    if fmt not in ("hf", "adapter"):
        raise StageError("FTP510", f"{((getattr(art, 'meta', None) or {}).get('task') or {}).get('$call', 'this')} "
                         f"models are evaluated and predicted in PyTorch, and this one is a "
                         f"{fmt or type(art).__name__} export",
                         hint="use the stage it was exported from, or export with format = hf or adapter")
    from ftdsl.stages.tasks.common import load_seq_tokenizer

    if fmt == "adapter" or art.meta.get("adapter"):
        from ftdsl.stages.export_adapter import reload_export

        module = reload_export(art)
    else:
        from ftdsl.stages.export_hf import reload_hf

        module = reload_hf(art.path, dict(art.meta))
    for d in (art.path, art.root / "tokenizer", art.path / "tokenizer"):
        if d.is_dir() and ((d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file()):
            return module, load_seq_tokenizer(d, pretrained=True)
    return module, None


def _encoded(task, data, split, tokenizer, call: dict, max_length):
    from ftdsl.stages.tasks.common import EncodedSplit

    return EncodedSplit(task.encode(data, split, tokenizer, call, max_length), "eval")


def teacher_forced(module, task, call: dict, enc, *, batch: int, pad_id: int, timings: list | None = None):
    """The task's batch statistics of every batch of ``enc`` (in order)."""
    import torch

    from ftdsl.stages.tasks.common import iter_example_batches

    parts = []
    module.eval()
    with torch.inference_mode():
        for b in iter_example_batches(enc, task, batch_size=batch, shuffle=False, pad_id=pad_id,
                                      length_grouped=False):
            inputs = {k: v for k, v in b.items() if k not in ("y", "index")}
            t0 = time.perf_counter()
            out = module(**inputs)
            if timings is not None:
                timings.append((time.perf_counter() - t0, int(b["y"].shape[0])))
            else:
                parts.append(task.batch_stats(out.float(), b["y"]))
    return parts


def latency(module, task, call, enc, *, batch: int, pad_id: int) -> dict:
    """As ``evaluate._latency``: the fastest timed batch per row, after two warm-up batches."""
    timings: list = []
    for _ in range(20):
        teacher_forced(module, task, call, enc, batch=batch, pad_id=pad_id, timings=timings)
        if len(timings) >= 12:
            break
    from ftdsl.stages.metrics import latency_summary

    return latency_summary(timings)


def generate_rows(module, task, call: dict, data, split, tokenizer, gen_attrs: dict | None, *, seed: int,
                  batch: int, max_length=None) -> list[dict]:
    """``{"row", "input", "reference", "generated"}`` for every row of ``split``."""
    from ftdsl.stages.tasks import generation as G

    settings = G.settings(gen_attrs)
    rows = G.task_rows(task, data, split)
    inputs = [G.prompt_of(task, call, tokenizer, r, max_length=max_length) for r in rows]
    texts = G.generate_texts(module, tokenizer, [p for p, _ in inputs], settings=settings, seed=seed, batch=batch,
                             max_new_tokens=G.max_new_tokens(call, settings))
    return [{"row": i + 1, "input": shown, "reference": G.reference_of(task, r), "generated": t}
            for i, (r, (_, shown), t) in enumerate(zip(rows, inputs, texts))]


def evaluate_model(art, module, name: str, data, split, attrs: dict, wanted: list[str], ctx,
                   tokenizer=None) -> tuple[dict, list]:
    """(metrics of one model, its sample records) on ``split`` (``tokenizer``: the model's, when
    it came with one; else :func:`seq_tokenizer`)."""
    from ftdsl.ir.schema.metrics import metrics_for
    from ftdsl.stages import metrics as M
    from ftdsl.stages.tasks import get_task
    from ftdsl.stages.tasks.common import special_ids

    call = task_call(art)
    tname = call["$call"]
    task = get_task(tname)
    task.check_data(data, call)
    tokenizer = tokenizer or seq_tokenizer(art, data)
    pad_id = special_ids(tokenizer)["pad"]
    # the length the model was trained with (train caps the data's by the model's positions), as predict uses
    max_length = (getattr(art, "spec", None) or getattr(art, "meta", {})).get("max_length") or getattr(data, "max_length", None)
    row: dict[str, Any] = {}
    tracked = set(metrics_for(tname, tracked_only=True))
    enc = None
    if any(m in tracked for m in wanted) or "latency" in wanted:
        enc = _encoded(task, data, split, tokenizer, call, max_length)
        if len(enc) == 0:
            raise StageError("FTP510", f"`{name}`: the split encodes to no rows")
    if any(m in tracked for m in wanted):
        q = M.quality_metrics(tname, teacher_forced(module, task, call, enc, batch=attrs["batch"], pad_id=pad_id), call)
        row.update({m: float(q[m]) for m in wanted if m in q})
    samples: list[dict] = []
    gen = [m for m in wanted if m in GENERATION_METRICS]
    if getattr(task, "generative", False) and (gen or attrs.get("generate")):
        samples = generate_rows(module, task, call, data, split, tokenizer, attrs.get("generate"), seed=ctx.seed,
                                batch=attrs["batch"], max_length=max_length)
        if gen:
            have = [s for s in samples if s["reference"] is not None]
            if not have:
                raise StageError("FTP510", f"`{name}`: the rows of this split have no reference to compare "
                                 f"generations with ({', '.join(gen)})",
                                 hint="give the data prompt/response (or messages) columns, or measure perplexity")
            row.update(M.generation_metrics(gen, [s["generated"] for s in have], [s["reference"] for s in have]))
    if "latency" in wanted:
        row.update(latency(module, task, call, enc, batch=attrs["batch"], pad_id=pad_id))
    return row, samples
