"""The ``causal_lm`` task: next-token prediction on plain text, prompt/response pairs or chat records.

Encoding (one example per row; ``labels[i]`` is the target of position ``i``, i.e. ``ids[i + 1]``):

* plain text (modality ``text``, ``Split.texts``): ``<bos> text <eos>`` (each added when the
  tokenizer has it and the tokenizer did not add it already); every token after the first is learned.
* prompt/response (``{"prompt", "response"}``): ``<bos> prompt response <eos>``, the two parts
  tokenized apart and concatenated (what :func:`prompt_ids` gives generation is exactly the
  prefix). With ``mask_prompt = true`` (the default) only the response tokens and ``<eos>`` carry
  loss: the positions that predict a prompt token are ``IGNORE``.
* chat (``{"messages": [...]}``): rendered with the tokenizer's chat template
  (``apply_chat_template``); with ``mask_prompt`` only the assistant turns (the text each adds
  after the generation prompt, up to and including its end-of-turn token) are learned. The
  assistant spans are found as character ranges of the rendering, so the token ids are those of
  one tokenization of the whole conversation. A template without that prefix property, or a
  tokenizer without a template, is FTP510.

Rows longer than ``max_length`` are truncated (the trainer says how many). With ``packing =
true`` examples are instead cut into pieces of at most ``max_length`` (labels are already shifted,
so a cut loses no label) and packed in order into rows of ``max_length`` tokens with
``position_ids`` restarting at each piece; no ``attention_mask`` is passed, so transformers builds
a block-diagonal causal mask from the positions (``masking_utils.find_packed_sequence_indices``):
attention and positions restart at each example, and no label crosses an example boundary.
"""

from __future__ import annotations

from typing import Any

from ftdsl.errors import StageError
from ftdsl.stages.tasks import IGNORE
from ftdsl.stages.tasks.common import TokenCrossEntropy, collate, lm_metrics, token_stats

__all__ = ["TASK", "CausalLM", "prompt_ids", "encode_row", "pack"]

BAD_DATA = "FTP510"


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _wrap(tokenizer: Any, ids: list[int], *, bos: bool = True, eos: bool = True) -> list[int]:
    b, e = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos and b is not None and (not ids or ids[0] != b):
        ids = [int(b)] + ids
    if eos and e is not None and (not ids or ids[-1] != e):
        ids = ids + [int(e)]
    return ids


def _shifted(ids: list[int], learn: list[bool]) -> dict[str, list[int]]:
    """``labels[i] = ids[i + 1]`` where token ``i + 1`` is learned, else IGNORE; the last is IGNORE."""
    labels = [ids[i + 1] if learn[i + 1] else IGNORE for i in range(len(ids) - 1)] + [IGNORE]
    return {"input_ids": list(ids), "labels": labels}


def _chat_template(tokenizer: Any) -> str:
    tpl = getattr(tokenizer, "chat_template", None)
    if not tpl:
        raise StageError(BAD_DATA, "the data holds chat `messages`, but the model's tokenizer has no chat template",
                         hint="use `prompt`/`response` columns instead, or a tokenizer with a chat template "
                         "(a pretrained folder whose tokenizer_config.json has `chat_template`, or the data "
                         "stage's `tokenizer = bpe(...)`)")
    return tpl


def _render(tokenizer: Any, messages: list[dict], *, gen: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def _chat(tokenizer: Any, messages: list[dict], mask_prompt: bool, where: str) -> dict[str, list[int]]:
    _chat_template(tokenizer)
    msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
    full = _render(tokenizer, msgs)
    spans: list[tuple[int, int]] = []  # character ranges of the assistant turns
    for k, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        try:
            before = _render(tokenizer, msgs[:k], gen=True)
        except Exception:  # noqa: BLE001 - a template that refuses an empty conversation (k = 0)
            before = ""
        upto = _render(tokenizer, msgs[: k + 1])
        if not (full.startswith(upto) and upto.startswith(before)):
            raise StageError(BAD_DATA, f"{where}: the tokenizer's chat template does not render a conversation "
                             "as a prefix of its continuation, so the assistant turns cannot be located",
                             hint="use `prompt`/`response` columns, or `mask_prompt = false` to learn every token")
        spans.append((len(before), len(upto)))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    if not mask_prompt:
        return _shifted(ids, [True] * len(ids))
    learn = [any(lo <= s < hi for lo, hi in spans) and e > s for s, e in enc["offset_mapping"]]
    return _shifted(ids, learn)


def encode_row(tokenizer: Any, row: Any, task: dict, where: str = "row") -> dict[str, list[int]]:
    """One example (unpacked, untruncated) of a plain text (str) or an instructions record (dict)."""
    mask = bool(task.get("mask_prompt", True))
    if isinstance(row, str):
        ids = _wrap(tokenizer, _ids(tokenizer, row))
        return _shifted(ids, [True] * len(ids))
    if "messages" in row and row["messages"] is not None:
        return _chat(tokenizer, row["messages"], mask, where)
    prompt = _wrap(tokenizer, _ids(tokenizer, str(row.get("prompt") or "")), eos=False)
    response = _ids(tokenizer, str(row.get("response") or ""))
    e = tokenizer.eos_token_id
    if e is not None:
        response = response + [int(e)]
    ids = prompt + response
    learn = [not mask or i >= len(prompt) for i in range(len(ids))]
    return _shifted(ids, learn)


def prompt_ids(tokenizer: Any, row: Any) -> list[int]:
    """What a model is given to generate the answer of ``row``: the prompt part of its training
    encoding (``<bos> prompt``, or the chat up to the last assistant turn plus the generation
    prompt); a plain text is given whole."""
    if isinstance(row, str):
        return _wrap(tokenizer, _ids(tokenizer, row), eos=False)
    if "messages" in row and row["messages"] is not None:
        _chat_template(tokenizer)
        msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in row["messages"]]
        while msgs and msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]
        return list(tokenizer(_render(tokenizer, msgs, gen=True), add_special_tokens=False)["input_ids"])
    return _wrap(tokenizer, _ids(tokenizer, str(row.get("prompt") or "")), eos=False)


def reference(row: Any) -> str:
    """The text a generation for ``row`` is compared with (the response / last assistant turn)."""
    if isinstance(row, str):
        return row
    if "messages" in row and row["messages"] is not None:
        answers = [m["content"] for m in row["messages"] if m.get("role") == "assistant"]
        return str(answers[-1]) if answers else ""
    return str(row.get("response") or "")


def pack(examples: list[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """Cut examples into pieces of at most ``max_length`` and pack them, in order, into rows of at
    most ``max_length`` tokens; ``position_ids`` restart at each piece. Every token and label of
    every example is in exactly one row, in order."""
    if max_length < 2:
        raise StageError(BAD_DATA, f"packing needs max_length >= 2 (got {max_length})")
    rows: list[dict[str, list[int]]] = []
    cur: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for ex in examples:
        ids, labels = ex["input_ids"], ex["labels"]
        for s in range(0, len(ids), max_length):
            piece, lab = ids[s: s + max_length], labels[s: s + max_length]
            if len(cur["input_ids"]) + len(piece) > max_length:
                rows.append(cur)
                cur = {"input_ids": [], "labels": [], "position_ids": []}
            cur["input_ids"] += piece
            cur["labels"] += lab
            cur["position_ids"] += list(range(len(piece)))
    if cur["input_ids"]:
        rows.append(cur)
    return rows


class CausalLM:
    name = "causal_lm"
    auto_class = "AutoModelForCausalLM"
    input_names = ("input_ids", "attention_mask")
    generative = True

    def check_data(self, data: Any, task: dict) -> None:
        if data.modality not in ("text", "instructions"):
            raise StageError(BAD_DATA, f"causal_lm() learns from plain text or prompt/response/chat records, but "
                             f"`{data.source}` has {data.modality.replace('_', ' ')}",
                             hint="give the data block `text = \"column\"`, or `prompt`/`response`, or `messages`")
        for name, split in data.splits.items():
            if data.modality == "text" and split.texts is None:
                raise StageError(BAD_DATA, f"`{data.source}` ({name} split) has no texts")
            if data.modality == "instructions" and split.records is None:
                raise StageError(BAD_DATA, f"`{data.source}` ({name} split) has no prompt/response or chat records")

    def rows(self, data: Any, split: Any) -> list:
        return list(split.texts) if data.modality == "text" else list(split.records)

    def encode(self, data: Any, split: Any, tokenizer: Any, task: dict, max_length: int | None) -> list[dict[str, list[int]]]:
        out = []
        for i, row in enumerate(self.rows(data, split)):
            where = split.where(i) if hasattr(split, "where") else f"row {i + 1}"
            out.append(encode_row(tokenizer, row, task, where))
        if task.get("packing"):
            if not max_length:
                raise StageError(BAD_DATA, "causal_lm(packing = true) needs a row length",
                                 hint="set `max_length` on the train block")
            return pack(out, int(max_length))
        if max_length:
            out = [ex if len(ex["input_ids"]) <= max_length else
                   {k: v[:max_length] for k, v in ex.items()} for ex in out]
        return out

    def collate(self, examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
        return collate(examples, pad_id)

    def criterion(self) -> Any:
        return TokenCrossEntropy()

    def batch_stats(self, logits: Any, y: Any) -> Any:
        return token_stats(logits, y)

    def metrics(self, parts: Any, task: dict) -> dict[str, float]:
        return lm_metrics(parts)


TASK = CausalLM()
