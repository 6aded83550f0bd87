"""Text generation for the generative tasks (``causal_lm``, ``seq2seq``): what `evaluate` and
`predict` both call, so a row generates the same text in either.

``generate_ids`` runs transformers' ``generate`` on batches of prompts given as token-id lists:

- greedy when ``temperature = 0`` (deterministic), else sampling with ``temperature`` and
  ``top_p`` from torch's generator seeded with the pipeline seed at the start of the call (the
  same seed, rows and batch size give the same samples); ``num_beams > 1`` is beam search
  (sampled beams when ``temperature > 0``);
- decoder-only models get the batch left-padded (the new tokens follow every prompt directly;
  the attention mask hides the pads), encoder-decoder models right-padded (the encoder masks);
- a generation stops at the tokenizer's end-of-sequence token or after ``max_new_tokens``
  (for ``seq2seq`` at most the task's ``max_target_length``). A decoder with learned positions
  (``n_positions`` / ``max_position_embeddings``) keeps a prompt's last ``positions - 1``
  tokens and generates at most what fits after it; each row's budget depends on its own prompt
  only, so a row generates the same text whatever batch it is in.

``task_rows`` / ``prompt_of`` / ``reference_of`` turn a split's rows into prompts and references:
through the task's own hooks when it has them (``prompt_ids(tokenizer, row)``: the prefix it
trains on; or ``generation_inputs(split, tokenizer, call)``: the encoder input), else
the renderings at the end of this file (prompt/response: ``<bos> prompt``; chat: the chat template
over the messages before the last assistant turn, with the generation prompt; seq2seq: the
source text).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

__all__ = ["Settings", "settings", "generate_ids", "generate_texts", "hf_model", "task_rows", "prompt_of",
           "reference_of", "shown_input", "max_new_tokens"]


@dataclass(frozen=True)
class Settings:
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    num_beams: int = 1
    samples: int = 100  # rows written to samples.jsonl (evaluate)

    @property
    def sampling(self) -> bool:
        return self.temperature > 0


def settings(generate: dict | None) -> Settings:
    """Settings from an evaluate stage's lowered ``generate = {...}`` (None: the defaults)."""
    g = {k: v for k, v in (generate or {}).items() if k in Settings.__dataclass_fields__ and v is not None}
    return Settings(**g)


def hf_model(module: Any) -> Any:
    """The transformers model (anything with ``generate``) inside ``module``: the module itself,
    or what a wrapper holds (``net``, ``model``, ``hf``), a PEFT model included."""
    seen = 0
    m = module
    while m is not None and seen < 4:
        if callable(getattr(m, "generate", None)):
            return m
        m = next((getattr(m, a) for a in ("net", "model", "hf") if getattr(m, a, None) is not None), None)
        seen += 1
    raise TypeError(f"{type(module).__name__} holds no model that can generate")


def _is_encoder_decoder(model) -> bool:
    cfg = getattr(model, "config", None)
    return bool(getattr(cfg, "is_encoder_decoder", False))


def _max_positions(model) -> int | None:
    cfg = getattr(model, "config", None)
    for a in ("n_positions", "max_position_embeddings"):
        v = getattr(cfg, a, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _special(tokenizer, name: str) -> int | None:
    v = getattr(tokenizer, f"{name}_token_id", None)
    return int(v) if isinstance(v, int) else None


def generate_ids(model, prompts: Sequence[Sequence[int]], *, tokenizer=None, pad_id: int | None = None,
                 eos_id: int | None = None, settings: Settings = Settings(), seed: int = 0, batch: int = 16,
                 device: str = "cpu", max_new_tokens: int | None = None) -> list[list[int]]:
    """The new tokens generated after each prompt (without the prompt, the end-of-sequence
    token and anything after it). ``model``: a transformers model (or a module holding one)."""
    import torch

    model = hf_model(model)
    if pad_id is None:
        pad_id = _special(tokenizer, "pad") if tokenizer is not None else None
    if eos_id is None:
        eos_id = _special(tokenizer, "eos") if tokenizer is not None else None
    if pad_id is None:
        pad_id = eos_id if eos_id is not None else 0
    enc_dec = _is_encoder_decoder(model)
    new = int(max_new_tokens or settings.max_new_tokens)
    limit = None if enc_dec else _max_positions(model)
    kwargs: dict[str, Any] = {"num_beams": settings.num_beams, "pad_token_id": pad_id, "do_sample": settings.sampling}
    if eos_id is not None:
        kwargs["eos_token_id"] = eos_id
    if settings.sampling:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
    else:  # explicit, so a model's own generation_config (sampling, penalties) does not leak in
        kwargs.update(temperature=None, top_p=None, top_k=None)
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    out: list[list[int]] = []
    try:
        with torch.inference_mode(), _quiet():
            for start in range(0, len(prompts), max(1, batch)):
                chunk = [list(p) or [eos_id if eos_id is not None else pad_id] for p in prompts[start:start + batch]]
                if limit is not None:  # a prompt keeps its last `limit - 1` tokens: one new token fits
                    chunk = [p[-(limit - 1):] for p in chunk]
                # a row's budget depends on its own prompt only (batch mates change nothing): all
                # `new` tokens, or what fits in the positions after its prompt; rows of one budget
                # generate together
                budgets = [new if limit is None else min(new, limit - len(p)) for p in chunk]
                got: dict[int, list[int]] = {}
                for budget in sorted(set(budgets), reverse=True):
                    idx = [i for i, b in enumerate(budgets) if b == budget]
                    for i, row in zip(idx, _generate([chunk[i] for i in idx], model, budget, enc_dec, pad_id,
                                                     device, kwargs)):
                        got[i] = _cut(row, eos_id, pad_id)
                out.extend(got[i] for i in range(len(chunk)))
    finally:
        if was_training:
            model.train()
    return out


def _generate(chunk: list[list[int]], model, new: int, enc_dec: bool, pad_id: int, device: str, kwargs: dict):
    """transformers' generate on one padded batch: the new tokens of each row."""
    import torch

    width = max(len(p) for p in chunk)
    ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(chunk), width), dtype=torch.long)
    for i, p in enumerate(chunk):
        if enc_dec:
            ids[i, :len(p)], mask[i, :len(p)] = torch.tensor(p), 1
        else:
            ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
    res = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=new, **kwargs).cpu()
    # decoder-only: the output repeats the (padded) prompt; encoder-decoder: the decoder start token comes first
    res = res[:, width:] if not enc_dec else res[:, 1:]
    return res.tolist()


def _cut(row: list[int], eos_id: int | None, pad_id: int | None) -> list[int]:
    if eos_id is not None and eos_id in row:
        row = row[:row.index(eos_id)]
    # after an early stop the batch is filled with pads (pad = eos is cut above already)
    while row and pad_id is not None and row[-1] == pad_id and pad_id != eos_id:
        row = row[:-1]
    return row


class _quiet:
    """transformers' generation warnings (flags the config sets, left padding) off for a call."""

    def __enter__(self):
        import logging
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")
        self._log = logging.getLogger("transformers")
        self._level = self._log.level
        self._log.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self._log.setLevel(self._level)
        self._w.__exit__(*exc)


def decode(tokenizer, ids: Iterable[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True)


def generate_texts(model, tokenizer, prompts: Sequence[Sequence[int]], *, settings: Settings = Settings(),
                   seed: int = 0, batch: int = 16, device: str = "cpu", max_new_tokens: int | None = None) -> list[str]:
    ids = generate_ids(model, prompts, tokenizer=tokenizer, settings=settings, seed=seed, batch=batch,
                       device=device, max_new_tokens=max_new_tokens)
    return [decode(tokenizer, r).strip() for r in ids]


# --------------------------------------------------------------------------------------------
# Rows -> prompts. The task's own hooks first (``rows(data, split)``, ``prompt_ids(tokenizer, row)``,
# ``reference(row)``: methods of the task object or functions of its module), so generation is
# given exactly the prefix the task trains on; the renderings below otherwise.


def _hook(task: Any, name: str):
    import sys

    f = getattr(task, name, None)
    if callable(f):
        return f
    f = getattr(sys.modules.get(type(task).__module__), name, None)
    return f if callable(f) else None


def task_rows(task: Any, data: Any, split: Any) -> list:
    """The rows of ``split`` as the task reads them: records, else texts."""
    rows = _hook(task, "rows")
    if rows is not None:
        return list(rows(data, split))
    return list(split.records) if getattr(split, "records", None) is not None else list(split.texts)


def _ids(tokenizer, text: str, *, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _last_assistant(messages: list[dict]) -> int | None:
    return max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)


def shown_input(row: Any) -> str:
    """The input of a row as samples.jsonl shows it."""
    if not isinstance(row, dict):
        return str(row)
    if row.get("messages") is not None:
        msgs = list(row["messages"])
        last = _last_assistant(msgs)
        return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in (msgs if last is None else msgs[:last]))
    for k in ("prompt", "source", "text"):
        if row.get(k) is not None:
            return str(row[k])
    return ""


def reference_of(task: Any, row: Any) -> str | None:
    """What a generation for ``row`` is compared with; None for plain text (nothing to compare)."""
    if not isinstance(row, dict):
        return None
    f = _hook(task, "reference")
    if f is not None:
        return str(f(row))
    if row.get("messages") is not None:
        last = _last_assistant(list(row["messages"]))
        return None if last is None else str(row["messages"][last].get("content", ""))
    for k in ("response", "target"):
        if row.get(k) is not None:
            return str(row[k])
    return None


def prompt_of(task: Any, call: dict, tokenizer, row: Any, *, max_length: int | None = None) -> tuple[list[int], str]:
    """(prompt ids, shown input) of one row: a causal LM's training prefix, a seq2seq source."""
    f = _hook(task, "prompt_ids")
    name = getattr(task, "name", None) or call.get("$call")
    own = getattr(task, "generation_inputs", None)  # (split, tokenizer, call) -> [(ids, reference, shown)]
    if f is not None:
        ids = list(f(tokenizer, row))
    elif callable(own):
        from types import SimpleNamespace

        one = SimpleNamespace(records=[row] if isinstance(row, dict) else None,
                              texts=None if isinstance(row, dict) else [row])
        ids = list(own(one, tokenizer, {**call, "max_length": max_length})[0][0])
        return ids, shown_input(row)
    elif name == "seq2seq":
        src = row.get("source", row.get("text")) if isinstance(row, dict) else row
        ids = _ids(tokenizer, str(src), special=True)
    elif isinstance(row, dict) and row.get("messages") is not None:
        msgs = list(row["messages"])
        last = _last_assistant(msgs)
        ids = list(tokenizer(tokenizer.apply_chat_template(msgs if last is None else msgs[:last], tokenize=False,
                                                           add_generation_prompt=True),
                             add_special_tokens=False)["input_ids"])
    else:
        text = row.get("prompt", row.get("text")) if isinstance(row, dict) else row
        bos = _special(tokenizer, "bos")
        ids = _ids(tokenizer, str(text or ""), special=False)
        if bos is not None and not (ids and ids[0] == bos):
            ids = [bos] + ids
    if name == "seq2seq" and max_length and len(ids) > max_length:
        ids = ids[:max_length]  # the encoder's input, truncated as the task truncates it
    return ids, shown_input(row)


def max_new_tokens(call: dict, settings: Settings) -> int:
    """``generate.max_new_tokens``, for seq2seq at most the task's ``max_target_length``."""
    cap = call.get("max_target_length") if call.get("$call") == "seq2seq" else None
    return int(min(settings.max_new_tokens, cap)) if cap else int(settings.max_new_tokens)
