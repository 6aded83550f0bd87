"""Task families beyond classify/regress: their data contract, batches, loss, metrics and outputs.

One module per task (registry below, imported lazily). Classification and regression stay on the
original path (``train_factories`` losses, ``metrics.quality_metrics``); a task named here plugs
into the same trainer (resume, accumulation, precision, DDP), evaluate and predict through the
interface of :class:`SeqTask`.

The data a task reads is a ``Dataset`` (``ftdsl.stages.dataset``) whose splits carry ``records``
(``Split.records``, a list of dicts, one per row) for the structured modalities of
``ftdsl.ir.schema.modality``:

    instructions   {"prompt": str, "response": str}  or  {"messages": [{"role": str, "content": str}, ...]}
    text_pairs     {"source": str, "target": str}
    tagged         {"tokens": [str, ...], "tags": [str, ...]}     (tags as written in the file)

and plain text (modality ``text``, ``Split.texts``; ``Dataset.labeled`` false when the file has
no label column) for ``causal_lm``.

Every task encodes a row into token id lists; the trainer batches and pads them. A batch is a
dict of int64 tensors holding the module's ``input_names`` plus ``"y"``: the token labels, with
``IGNORE`` (-100) where no loss is taken. The module (``SeqModule``, in
``ftdsl.stages.tasks.module``) returns logits; the task's ``criterion`` turns (logits, y) into
the mean loss over labelled tokens. ``y`` is aligned with the logits: ``y[b, i]`` is the target of
output position ``i`` (a causal LM's labels are shifted at encode time). Shared pieces (collate,
the token cross-entropy, batches, metric statistics): ``ftdsl.stages.tasks.common``.

Optional hooks a task may define (callers use ``getattr``):

    length_note(split, examples, call, max_length) -> str | None   what max_length did (the trainer logs it)
    generation_inputs(split, tokenizer, call) -> [(ids, reference, shown)]   generation prompts (seq2seq)
    references(split) -> [str]                   the texts generations are compared with (seq2seq)
    prompt_ids(tokenizer, row) -> [int]          a causal LM's generation prefix of one row (or a module function)

and ``token_classify.predict_tags(module, tokenizer, records, call, ...)`` maps predictions back
to words (predict). A seq2seq batch carries ``decoder_labels`` (the target ids); ``SeqModule``
turns them into the model's own shifted decoder inputs (``seq2seq.decoder_inputs``).
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

__all__ = ["TASKS", "IGNORE", "SeqTask", "get_task", "is_seq_task"]

IGNORE = -100  # label of a token that carries no loss (torch's CrossEntropyLoss ignore_index)

# task name -> "module:attribute" (an object implementing SeqTask)
TASKS: dict[str, str] = {
    "causal_lm": "ftdsl.stages.tasks.causal_lm:TASK",
    "seq2seq": "ftdsl.stages.tasks.seq2seq:TASK",
    "token_classify": "ftdsl.stages.tasks.token_classify:TASK",
}


class SeqTask(Protocol):
    name: str  # "causal_lm"
    auto_class: str  # the transformers Auto class of a pretrained model: "AutoModelForCausalLM"
    input_names: tuple[str, ...]  # what the module's forward takes, e.g. ("input_ids", "attention_mask")
    generative: bool  # generates text (evaluate's `generate`, predict's "text")

    def check_data(self, data: Any, task: dict) -> None:
        """StageError FTP510 when the Dataset does not fit the task (modality, tag names, ...)."""

    def encode(self, data: Any, split: Any, tokenizer: Any, task: dict, max_length: int | None) -> list[dict[str, list[int]]]:
        """One dict of token-id lists per row of ``split`` (``input_ids`` and ``labels``, and the
        task's other inputs). May merge rows (packing); never drops a token silently."""

    def collate(self, examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
        """Pad a list of encoded examples into a batch: the module's inputs + ``y``."""

    def criterion(self) -> Any:
        """An nn.Module: (logits float, y int64) -> the mean loss over tokens with y != IGNORE."""

    def batch_stats(self, logits: Any, y: Any) -> Any:
        """A small picklable summary of one evaluated batch (never the logits: a vocabulary-wide
        tensor per token would not fit); ``common.token_stats`` for the language-model metrics."""

    def metrics(self, parts: Any, task: dict) -> dict[str, float]:
        """Teacher-forced metrics of one split from the list of ``batch_stats`` of its batches, in
        order (loss, perplexity, token_accuracy; entity_* for token_classify)."""


def get_task(name: str) -> SeqTask:
    module, _, attr = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def is_seq_task(name: str | None) -> bool:
    return name in TASKS
