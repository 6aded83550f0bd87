"""Tokenizers of text data: train a BERT-style WordPiece tokenizer (encoders) or a byte-level BPE
tokenizer with a chat template (generative models: gpt, llama, t5) on the train split, and load
one saved in a folder (``tokenizer.json`` + ``tokenizer_config.json``; ``AutoTokenizer`` loads it too).

Its own module so that the data stage (which trains one) and batching (which applies one) both
import it without importing each other. No torch here; ``tokenizers``/``transformers`` are
imported when a tokenizer is trained or loaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ftdsl.errors import StageError

__all__ = ["SPECIAL_TOKENS", "BPE_SPECIAL_TOKENS", "ROLE_TOKENS", "CHAT_TEMPLATE", "train_wordpiece", "train_bpe",
           "load_tokenizer"]

NOT_FOUND = "FTP511"
SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
# byte-level BPE: ids 0..3 in this order, then the chat role markers (4..6)
BPE_SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "unk_token": "<unk>",
}
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
# Renders `messages` as  <bos><|user|>\nHi\n<|assistant|>\nHello<eos><|user|>\n...: each message after
# its role marker and a newline, closed by a newline, or by <eos> for an assistant message (what
# generation stops at). `add_generation_prompt` ends with the assistant marker and its newline, so
# a model continues with the answer; the rendering of messages[:k] with it is a prefix of the
# rendering of the whole conversation when messages[k] is the assistant's.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + '\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' + '\n' }}{% endif %}"
)
_CONFIG_SPECIALS = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token", "bos_token", "eos_token")


def train_wordpiece(texts: list[str], vocab: int, out_dir: Path, *, lowercase: bool = True,
                    max_length: int | None = None) -> Path:
    """Train a BERT-style WordPiece tokenizer ([PAD]=0, [UNK], [CLS] x [SEP]) and save it."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = [SPECIAL_TOKENS[k] for k in ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")]
    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # The trainer numbers each continuing piece `##c` in the order it meets it while iterating a
    # Rust hash map (seeded at random per process), and breaks ties between merges of equal count
    # by those numbers: two runs on the same rows learned different vocabularies. Numbering the
    # `##c` pieces up front, sorted, as extra special tokens of the trainer fixes every id and so
    # every tie; they are then taken out of the added (special) tokens, staying in the vocabulary.
    pieces = _continuing_pieces(tk, texts)
    trainer = trainers.WordPieceTrainer(vocab_size=int(vocab), special_tokens=specials + pieces,
                                        show_progress=False)
    tk.train_from_iterator(texts, trainer=trainer, length=len(texts))
    tk = _without_added(tk, set(pieces))
    cls_id, sep_id = tk.token_to_id("[CLS]"), tk.token_to_id("[SEP]")
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tk.decoder = decoders.WordPiece(prefix="##")
    assert tk.token_to_id("[PAD]") == 0
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    tk.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": int(max_length) if max_length else 512,
        "do_lower_case": lowercase,
        "clean_up_tokenization_spaces": False,
        **SPECIAL_TOKENS,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS, indent=1), encoding="utf-8")
    return out_dir


def train_bpe(texts: list[str], vocab: int, out_dir: Path, *, max_length: int | None = None) -> Path:
    """Train a byte-level BPE tokenizer (GPT-2 style: every byte is in the alphabet, so nothing is
    unknown) with ``<pad>``=0, ``<bos>``=1, ``<eos>``=2, ``<unk>``=3 and the chat role markers
    ``<|system|>``, ``<|user|>``, ``<|assistant|>``; save it with a chat template.

    Nothing is added around an encoded text (no post-processor): a task puts ``<bos>``/``<eos>``
    where it wants them, and the chat template writes them itself.

    Deterministic: the initial alphabet is the 256 byte symbols, numbered in sorted order, and the
    trainer breaks ties between equally frequent merges by those ids, so the same rows give the
    same ``tokenizer.json`` bytes in every process (tests/test_data_generative.py)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = list(BPE_SPECIAL_TOKENS.values()) + list(ROLE_TOKENS.values())
    tk = Tokenizer(models.BPE(unk_token=BPE_SPECIAL_TOKENS["unk_token"]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(vocab), special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer=trainer, length=len(texts))
    assert [tk.token_to_id(t) for t in specials] == list(range(len(specials)))
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    tk.save(str(out_dir / "tokenizer.json"))
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **BPE_SPECIAL_TOKENS,
        "extra_special_tokens": list(ROLE_TOKENS.values()),
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    if max_length:
        config["model_max_length"] = int(max_length)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(BPE_SPECIAL_TOKENS, indent=1), encoding="utf-8")
    return out_dir


def _continuing_pieces(tk, texts: list[str]) -> list[str]:
    """``##c`` for each character that follows another inside a word (as the trainer splits
    words: normalized, pre-tokenized), sorted by code point.

    The normalizer works character by character and a space ends a word, so only the distinct
    space-separated pieces of the rows are normalized and pre-tokenized (each row's words one by
    one cost more than the training itself)."""
    norm, pre = tk.normalizer, tk.pre_tokenizer
    raw: set[str] = set()
    for text in texts:
        raw.update(text.split(" "))
    pieces = set(norm.normalize_str("\n".join(raw)).split(" "))
    chars: set[str] = set()
    for piece in pieces:
        if len(piece) > 1:
            for word, _ in pre.pre_tokenize_str(piece):
                chars.update(word[1:])
    return [f"##{c}" for c in sorted(chars)]


def _without_added(tk, names: set[str]):
    """``tk`` without the added tokens ``names`` (their vocabulary ids stay)."""
    from tokenizers import Tokenizer

    if not names:
        return tk
    state = json.loads(tk.to_str())
    state["added_tokens"] = [t for t in state["added_tokens"] if t["content"] not in names]
    return Tokenizer.from_str(json.dumps(state))


def load_tokenizer(path_or_dir: str | Path):
    """A `transformers.PreTrainedTokenizerFast` from a folder holding tokenizer.json (or the file)."""
    p = Path(path_or_dir)
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        raise StageError(NOT_FOUND, f"no tokenizer at {p} (expected tokenizer.json)")
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    try:
        tk = Tokenizer.from_file(str(file))
    except Exception as e:  # the Rust reader's own error type: a damaged saved tokenizer
        raise StageError("FTP503", f"cannot read the tokenizer {file}: {str(e)[:200]}",
                         hint="rerun the stage that produced it with --force") from None
    config: dict = {}
    cfg = file.parent / "tokenizer_config.json"
    if cfg.is_file():
        try:
            config = json.loads(cfg.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            config = {}
        if not isinstance(config, dict):
            config = {}
    # the special tokens the config names (a bpe tokenizer's <pad>/<bos>/<eos>), else the BERT ones
    specials = {k: config[k] for k in _CONFIG_SPECIALS
                if isinstance(config.get(k), str) and tk.token_to_id(config[k]) is not None}
    if not specials:
        specials = {k: v for k, v in SPECIAL_TOKENS.items() if tk.token_to_id(v) is not None}
    kwargs: dict[str, Any] = dict(specials)
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list) and all(isinstance(t, str) and tk.token_to_id(t) is not None for t in extra):
        kwargs["extra_special_tokens"] = extra
    max_len = config.get("model_max_length")
    if isinstance(max_len, int):
        kwargs["model_max_length"] = max_len
    if isinstance(config.get("chat_template"), str):
        kwargs["chat_template"] = config["chat_template"]
    return PreTrainedTokenizerFast(tokenizer_object=tk, **kwargs)
