"""`predict` for the token-level tasks: generated text (causal_lm, seq2seq) and tags per word
(token_classify), computed by the code `evaluate` runs on the same model, tokenizer and settings.

Input rows (the data stage's column names where the pipeline has them, else these names):

    causal_lm        `messages` (a list of {role, content}; in CSV a JSON string) -> chat prompt
                     `prompt` -> <bos> prompt (the prefix the model was trained to continue)
                     `text` -> a plain text, continued
    seq2seq          `text` (the source)
    token_classify   `tokens`: a list of words (in CSV a JSON list, or words separated by spaces)

Records: ``{"row", "line", "generated"}`` and ``{"row", "line", "tokens", "tags"}``; CSV cells
hold the tokens and tags as JSON lists. A row whose columns are missing or of the wrong type is a
BadRow with its line (skipped or fatal per ``--on-error``). Generation settings: the `generate`
of the first `evaluate` stage that evaluates the predicted stage (for an export: the stage it
was exported from), else the defaults; sampling is seeded with the pipeline seed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from ftdsl.ir.schema.modality import CHAT_ROLES
from ftdsl.predict.rows import BadRow, Row, _json_type, _shown

GENERATIVE = ("causal_lm", "seq2seq")


@dataclass
class SeqInput:
    """What a row must hold for a token-task model: ``kinds`` maps a column to what it carries
    (``messages`` | ``prompt`` | ``text`` | ``source`` | ``tokens``), tried in order."""

    task: str
    kinds: list[tuple[str, str]] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return [c for c, _ in self.kinds]


def seq_input(task: str, cfg: dict | None) -> SeqInput:
    cfg = cfg or {}

    def col(name: str) -> str:
        v = cfg.get(name)
        return v if isinstance(v, str) and v else name

    if task == "causal_lm":
        if isinstance(cfg.get("messages"), str) and cfg["messages"]:
            kinds = [(col("messages"), "messages")]
        elif isinstance(cfg.get("prompt"), str) and cfg["prompt"]:
            kinds = [(col("prompt"), "prompt")]
        elif isinstance(cfg.get("text"), str) and cfg["text"]:
            kinds = [(col("text"), "text")]
        else:
            kinds = [("messages", "messages"), ("prompt", "prompt"), ("text", "text")]
    elif task == "seq2seq":
        kinds = [(col("text"), "source")]
    else:
        kinds = [(col("tokens"), "tokens")]
    return SeqInput(task, kinds)


def _text(row: Row, column: str) -> str:
    v = row.values[column]
    if v is None or (isinstance(v, float) and math.isnan(v)):
        raise BadRow(row.line, f"column `{column}`: missing text")
    if not isinstance(v, str):
        raise BadRow(row.line, f"column `{column}`: expected text (a string), found {_json_type(v)} {_shown(v)}")
    return v


def _json_list(row: Row, column: str, what: str) -> list:
    v = row.values[column]
    if isinstance(v, str) and v.lstrip().startswith("["):
        try:
            v = json.loads(v)
        except json.JSONDecodeError as e:
            raise BadRow(row.line, f"column `{column}`: invalid JSON list of {what} ({e.msg})") from None
    if not isinstance(v, list):
        raise BadRow(row.line, f"column `{column}`: expected a list of {what}, found {_json_type(v)} {_shown(v)}")
    if not v:
        raise BadRow(row.line, f"column `{column}`: the list of {what} is empty")
    return v


def _messages(row: Row, column: str) -> list[dict]:
    out = []
    for j, m in enumerate(_json_list(row, column, "chat messages"), start=1):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise BadRow(row.line, f"column `{column}`: message {j} is not a {{role, content}} object: {_shown(m)}")
        if m["role"] not in CHAT_ROLES:
            raise BadRow(row.line, f"column `{column}`: message {j} has the unknown role {_shown(m['role'])} "
                                   f"(roles: {', '.join(CHAT_ROLES)})")
        if not isinstance(m["content"], str):
            raise BadRow(row.line, f"column `{column}`: message {j}'s content is {_json_type(m['content'])}, not text")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _tokens(row: Row, column: str) -> list[str]:
    v = row.values[column]
    if isinstance(v, str) and not v.lstrip().startswith("["):
        words = v.split()
        if not words:
            raise BadRow(row.line, f"column `{column}`: no words")
        return words
    out = []
    for j, w in enumerate(_json_list(row, column, "words"), start=1):
        if isinstance(w, bool) or not isinstance(w, (str, int, float)) or (isinstance(w, float) and not math.isfinite(w)):
            raise BadRow(row.line, f"column `{column}`: word {j} is {_json_type(w)} {_shown(w)}, not a string")
        s = w if isinstance(w, str) else str(w)
        if not s.strip():
            raise BadRow(row.line, f"column `{column}`: word {j} is empty")
        out.append(s)
    return out


def converter(spec: SeqInput) -> Callable[[Row], Any]:
    """Row -> what the task reads: a record dict (messages / prompt / source / tokens) or a plain text."""

    def convert(row: Row):
        for column, kind in spec.kinds:
            if column not in row.values:
                continue
            if kind == "messages":
                return {"messages": _messages(row, column)}
            if kind == "prompt":
                return {"prompt": _text(row, column)}
            if kind == "source":
                return {"source": _text(row, column)}
            if kind == "tokens":
                return {"tokens": _tokens(row, column)}
            return _text(row, column)
        raise BadRow(row.line, f"no column {' or '.join(f'`{c}`' for c in spec.columns)} (the model's input); "
                               "the row has: " + (", ".join(f"`{c}`" for c in row.values) or "(nothing)"))

    return convert


def check_header(source, spec: SeqInput) -> None:
    """A CSV header with none of the input columns is fatal, at the header's line."""
    if source.columns is None or any(c in source.columns for c in spec.columns):
        return
    import difflib

    close = difflib.get_close_matches(spec.columns[0], source.columns, n=1, cutoff=0.6)
    raise source.fatal(source.header_line,
                       f"no column {' or '.join(f'`{c}`' for c in spec.columns)} (the model's input); the header "
                       "has: " + ", ".join(f"`{c}`" for c in source.columns),
                       f"did you mean `{close[0]}`?" if close else None)


# --------------------------------------------------------------------------------------------
# Running


class SeqPredictor:
    """Rows (converted) -> records, with the model's module, tokenizer and task."""

    def __init__(self, module, tokenizer, call: dict, *, generate: dict | None, seed: int, max_length,
                 device: str = "cpu", onnx=None):
        from ftdsl.stages.tasks import get_task

        self.onnx = onnx  # an OnnxModel of a causal LM: greedy decoding in onnxruntime (onnx_generate)
        if module is not None:
            module = module.to(device).eval() if device != "cpu" else module.eval()
        self.module = module
        self.tokenizer = tokenizer
        self.call = call
        self.task = get_task(call["$call"])
        self.generate = generate
        self.seed = seed
        self.max_length = max_length
        self.device = device

    def records(self, values: list, batch: int) -> list[dict]:
        if self.call["$call"] in GENERATIVE:
            return [{"generated": t} for t in self._generate(values, batch)]
        return [{"tokens": list(v["tokens"]), "tags": tags} for v, tags in zip(values, self._tags(values, batch))]

    def _generate(self, values: list, batch: int) -> list[str]:
        from ftdsl.stages.tasks import generation as G

        settings = G.settings(self.generate)
        prompts = [G.prompt_of(self.task, self.call, self.tokenizer, v, max_length=self.max_length)[0] for v in values]
        if self.onnx is not None:
            from ftdsl.predict import onnx_generate
            from ftdsl.stages.tasks.common import special_ids

            ids = special_ids(self.tokenizer)
            got = onnx_generate.generate_ids(self.onnx, prompts, eos_id=ids["eos"], pad_id=ids["pad"],
                                             max_new_tokens=G.max_new_tokens(self.call, settings), batch=batch)
            return [G.decode(self.tokenizer, r).strip() for r in got]
        return G.generate_texts(self.module, self.tokenizer, prompts, settings=settings, seed=self.seed, batch=batch,
                                device=self.device, max_new_tokens=G.max_new_tokens(self.call, settings))

    def _tags(self, values: list, batch: int) -> list[list[str]]:
        from ftdsl.stages.tasks.token_classify import predict_tags

        return predict_tags(self.module, self.tokenizer, values, self.call, max_length=self.max_length, batch=batch,
                            device=self.device)


class OrtTagger:
    """An OnnxModel of a token-classification model called like its PyTorch module
    (``input_ids``, ``attention_mask`` -> logits ``[B, S, labels]`` as a torch tensor), for
    ``predict_tags``."""

    training = False

    def __init__(self, art):
        import torch

        self.art = art
        self.threads = torch.get_num_threads()
        art.session(self.threads)

    def eval(self):
        return self

    def to(self, device):
        return self

    def __call__(self, input_ids, attention_mask):
        import numpy as np
        import torch

        out = self.art.predict({"input_ids": input_ids.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy()},
                               threads=self.threads)
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


def flat(rec: dict) -> dict:
    """A record as CSV cells (tokens and tags as JSON lists)."""
    return {k: (json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v) for k, v in rec.items()}


def generate_settings(program, stage: str) -> dict | None:
    """The `generate` of the first evaluate block (in file order) that evaluates ``stage`` and
    sets it; for an export (or another stage with `from`), else its source's, and so on up the
    lineage (None: no evaluate sets it)."""
    from ftdsl.ir.lower import stage_config
    from ftdsl.ir.nodes import RefV

    settings: dict[str, dict] = {}
    for b in program.blocks.values():
        if b.kind != "evaluate":
            continue
        cfg = stage_config(b, program)
        for m in cfg.get("models") or []:
            if isinstance(m, dict) and cfg.get("generate"):
                settings.setdefault(m.get("$ref"), dict(cfg["generate"]))
    seen: set[str] = set()
    cur: str | None = stage
    while cur is not None and cur not in seen:
        if cur in settings:
            return settings[cur]
        seen.add(cur)
        b = program.blocks.get(cur)
        src = b.value("from") if b is not None and "from" in getattr(b, "attrs", {}) else None
        cur = src.target if isinstance(src, RefV) else None
    return None
