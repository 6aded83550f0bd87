"""FTP248/FTP249: a model built from scratch on text takes its vocabulary from the data's tokenizer.

- FTP248: a `train` stage starts a text architecture from scratch (`model` names a `model` block
  with `arch = rnn|transformer|gpt|llama|t5(...)`) on a data block without `tokenizer = ...`:
  the model has no vocabulary, and the train stage would stop (FTP510).
- FTP249: the same, on chat data (`messages`), with a tokenizer the data stage trains without a
  chat template (`wordpiece`): the conversation cannot be rendered, and the train stage would stop.

A train stage that continues a trained model (`model = <train>`) uses that model's tokenizer,
and a pretrained model its own: neither needs the data's. Which tokenizers carry a chat template
is the schema's `CHAT_TOKENIZERS` (`ftdsl/ir/schema/modality.py`), which the data stage follows.
"""

from __future__ import annotations

from ftdsl.check.rules.compat import data_of
from ftdsl.diagnostics import Label, make
from ftdsl.ir.nodes import CallV, Lit, RefV
from ftdsl.ir.schema import modality as M


def _text_arch(prog, mref) -> CallV | None:
    """The `arch` call of the `model` block `mref` names directly, if it reads tokens."""
    if not isinstance(mref, RefV):
        return None
    b = prog.blocks.get(mref.target)
    if b is None or b.kind != "model":
        return None
    arch = b.value("arch")
    if not isinstance(arch, CallV) or arch.name not in M.ARCH_INPUTS:
        return None
    return arch if any(m not in M.NUMERIC for m in M.ARCH_INPUTS[arch.name]) else None


def _suggested(arch: str) -> str:
    return "bpe(vocab = 4000)" if M.ARCH_INPUTS[arch] != (M.TEXT,) else "wordpiece(vocab = 8000)"


def from_scratch_vocabulary(ctx):
    prog = ctx.program
    for name, b in prog.blocks.items():
        if b.kind != "train":
            continue
        arch, dref = _text_arch(prog, b.value("model")), b.value("data")
        if arch is None or not isinstance(dref, RefV):
            continue
        d = data_of(prog, dref.target)
        db = prog.blocks.get(dref.target)
        if d is None or db is None or d.modality in M.NUMERIC:
            continue  # numeric data: FTP240 says the model takes text
        tok = db.value("tokenizer")
        model = b.value("model").target
        if tok is None or (isinstance(tok, Lit) and tok.value is None):
            yield make("FTP248", f"`train {name}` builds `{model}` (`{arch.name}(...)`) from scratch, but data "
                                 f"`{d.name}` trains no tokenizer: the model has no vocabulary",
                       dref.span, label="no `tokenizer`",
                       secondary=(Label(arch.span, f"{arch.name}(...) reads token ids"),) if arch.span else (),
                       hint=f"add `tokenizer = {_suggested(arch.name)}` to `data {d.name}`, or start from "
                            "`pretrained = \"FOLDER\"` (its own tokenizer)")
            continue
        chat = db.value("messages")
        if isinstance(tok, CallV) and tok.name not in M.CHAT_TOKENIZERS and isinstance(chat, Lit) \
                and isinstance(chat.value, str):
            yield make("FTP249", f"`train {name}` trains `{model}` from scratch on chat `messages` from `{d.name}`, "
                                 f"but `{tok.name}(...)` has no chat template to render them",
                       tok.span or dref.span, label=f"{tok.name}: no chat template",
                       secondary=(Label(chat.span, "chat messages"),) if chat.span else (),
                       hint=f"use `tokenizer = {' or '.join(f'{t}(...)' for t in M.CHAT_TOKENIZERS)}` (trained with "
                            "a chat template), or `prompt`/`response` columns")
