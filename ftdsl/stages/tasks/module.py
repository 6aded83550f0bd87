"""``SeqModule``: the FtdslModule of a token-level task (causal_lm, seq2seq, token_classify).

It wraps a transformers model (the task's ``auto_class``: ``AutoModelForCausalLM`` /
``...Seq2SeqLM`` / ``...TokenClassification``, pretrained or built from a config by ``ftdsl.stages.hf_archs``) and
returns its logits as float32: ``[B, S, V]`` (vocabulary) or ``[B, S, labels]``. ``input_names``
are the task's (``ftdsl.stages.tasks.TASKS``); a batch may carry more of the net's inputs
(``position_ids`` of packed rows), which ``forward`` passes on. ``modality`` is the data's.
"""

from __future__ import annotations

import torch
from torch import nn

from ftdsl.stages.modules import FtdslModule

__all__ = ["SeqModule"]

_GENERATIVE = ("causal_lm", "seq2seq")


class SeqModule(FtdslModule):
    """``forward(input_ids, attention_mask=None, **more)`` -> float logits of every position."""

    hf = True  # the wrapped net is a transformers model (export, adapters, gradient checkpointing)
    modality = "text"
    input_names: tuple[str, ...] = ("input_ids", "attention_mask")

    def __init__(self, net: nn.Module, *, task: str, modality: str | None = None):
        super().__init__(net)
        from ftdsl.stages.tasks import get_task

        self.task_name = str(task)
        self.input_names = tuple(get_task(self.task_name).input_names)
        if modality:
            self.modality = str(modality)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **inputs: torch.Tensor) -> torch.Tensor:
        if self.task_name in _GENERATIVE:
            inputs.setdefault("use_cache", False)  # training and teacher-forced evaluation: no KV cache
        if "decoder_labels" in inputs:  # seq2seq: the target shifted behind the model's decoder start token
            from ftdsl.stages.tasks.seq2seq import decoder_inputs

            inputs["decoder_input_ids"] = decoder_inputs(self.net, inputs.pop("decoder_labels"))
        out = self.net(input_ids=input_ids, attention_mask=attention_mask, **inputs)
        return out.logits.float()
