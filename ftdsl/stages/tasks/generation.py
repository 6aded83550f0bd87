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
  (for ``seq2seq`` at most the task's ``max_target_length``); a decoder's prompt is cut from the
  left when prompt + new tokens would pass the model's positions.

``generation_inputs`` turns a split's rows into (prompt ids, reference, shown input): the task's
own ``generation_inputs`` when it defines one (the rendering it trains with), else the
rendering below (prompt/response: the prompt's tokens, as the task's encoder begins a row;
chat: the chat template over the messages before the last assistant turn, with the generation
prompt; seq2seq: the source text).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

__all__ = ["Settings", "settings", "generate_ids", "generate_texts", "generation_inputs", "hf_model",
           "chat_prompt", "GEN_INPUT"]


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
    if limit is not None:
        new = max(1, min(new, limit - 1))
    kwargs: dict[str, Any] = {"max_new_tokens": new, "num_beams": settings.num_beams, "pad_token_id": pad_id,
                              "do_sample": settings.sampling}
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
                chunk = [list(p) for p in prompts[start:start + batch]]
                if limit is not None:  # keep the end of a prompt that leaves no room for new tokens
                    chunk = [p[-(limit - new):] if len(p) > limit - new else p for p in chunk]
                chunk = [p if p else [eos_id if eos_id is not None else pad_id] for p in chunk]
                width = max(len(p) for p in chunk)
                ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, p in enumerate(chunk):
                    if enc_dec:
                        ids[i, :len(p)], mask[i, :len(p)] = torch.tensor(p), 1
                    else:
                        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
                res = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs).cpu()
                # decoder-only: the output repeats the (padded) prompt; encoder-decoder: the decoder
                # start token comes first
                res = res[:, width:] if not enc_dec else res[:, 1:]
                for row in res.tolist():
                    out.append(_cut(row, eos_id, pad_id))
    finally:
        if was_training:
            model.train()
    return out


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
# Rows -> prompts

GEN_INPUT = {"causal_lm": ("prompt", "messages", "text"), "seq2seq": ("source", "text")}


def _ids(tokenizer, text: str, *, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def chat_prompt(tokenizer, messages: list[dict]) -> tuple[list[int], str | None]:
    """(prompt ids, reference): the chat template over the messages before the last assistant
    turn, ending with the generation prompt; the reference is that turn's content (None when the
    conversation has no assistant turn: all of it is the prompt)."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    history = messages if last is None else messages[:last]
    ref = None if last is None else str(messages[last].get("content", ""))
    ids = tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 may return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids), ref


def render_row(task_name: str, record: Any, tokenizer) -> tuple[list[int], str | None, str]:
    """(prompt ids, reference or None, the input shown in samples) of one row."""
    if task_name == "seq2seq":
        src = record.get("source", record.get("text")) if isinstance(record, dict) else record
        return _ids(tokenizer, str(src), special=True), (record.get("target") if isinstance(record, dict) else None), str(src)
    if isinstance(record, dict) and "messages" in record:
        ids, ref = chat_prompt(tokenizer, list(record["messages"]))
        last = max((i for i, m in enumerate(record["messages"]) if m.get("role") == "assistant"),
                   default=len(record["messages"]))
        shown = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in record["messages"][:last])
        return ids, ref, shown
    if isinstance(record, dict) and "prompt" in record:
        bos = _special(tokenizer, "bos")
        ids = _ids(tokenizer, str(record["prompt"]), special=False)
        if bos is not None and not (ids and ids[0] == bos):
            ids = [bos] + ids
        return ids, record.get("response"), str(record["prompt"])
    text = record.get("text") if isinstance(record, dict) else record
    return _ids(tokenizer, str(text), special=True), None, str(text)


def generation_inputs(task, task_cfg: dict, split, tokenizer) -> list[tuple[list[int], str | None, str]]:
    """One (prompt ids, reference, shown input) per row of ``split`` (records, else texts)."""
    own = getattr(task, "generation_inputs", None)
    if callable(own):
        return list(own(split, tokenizer, task_cfg))
    rows = split.records if getattr(split, "records", None) is not None else list(split.texts)
    name = getattr(task, "name", None) or task_cfg.get("$call")
    return [render_row(name, r, tokenizer) for r in rows]


def finite(v: float) -> bool:
    return isinstance(v, float) and math.isfinite(v)
