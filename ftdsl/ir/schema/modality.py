"""What flows between stages, declared once: modalities, known data sets, and what each artifact supports.

The checker's compatibility rules (`ftdsl/check/rules/compat.py`) read these tables to report at
lint time what the engine would otherwise refuse at run time; the engine reads the same tables
(`arch_modality`) so the two cannot drift. tests/test_schema_contract.py ties them to the
engine's implementations. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- modalities -----------------------------------------------------------------------------
# `features`: a numeric vector per row (CSV columns, iris); `image`: numeric (C, H, W) pixels
# (sklearn digits: 1x8x8) -- still numbers, so every features model takes them too; `text`:
# strings, tokenized by the model's tokenizer.
# `instructions`: prompt/response or chat records (causal_lm); `text_pairs`: source/target texts
# (seq2seq); `tagged`: words with one tag each (token_classify). `text` without a label column is
# plain text, which causal_lm also takes.
FEATURES, IMAGE, TEXT = "features", "image", "text"
INSTRUCTIONS, TEXT_PAIRS, TAGGED = "instructions", "text_pairs", "tagged"
MODALITIES = (FEATURES, IMAGE, TEXT, INSTRUCTIONS, TEXT_PAIRS, TAGGED)
NUMERIC = (FEATURES, IMAGE)

# What each from-scratch architecture consumes (its engine side: ftdsl/stages/nets.py ARCHS).
ARCH_INPUTS: dict[str, tuple[str, ...]] = {
    "mlp": NUMERIC,
    "cnn": NUMERIC,
    "rnn": (TEXT,),
    "transformer": (TEXT,),
    "gpt": (TEXT, INSTRUCTIONS),
    "llama": (TEXT, INSTRUCTIONS),
    "t5": (TEXT_PAIRS,),
}

# What each task consumes. A task's data contract (columns, loss, metrics) lives in its engine
# module, ftdsl/stages/tasks/ (TASKS there); the checker reads this table.
TASK_INPUTS: dict[str, tuple[str, ...]] = {
    "classify": MODALITIES[:3],
    "regress": MODALITIES[:3],
    "causal_lm": (TEXT, INSTRUCTIONS),
    "seq2seq": (TEXT_PAIRS,),
    "token_classify": (TAGGED,),
}
# The tasks each from-scratch architecture can carry (the others: classify and regress).
ARCH_TASKS: dict[str, tuple[str, ...]] = {
    "mlp": ("classify", "regress"), "cnn": ("classify", "regress"), "rnn": ("classify", "regress"),
    "transformer": ("classify", "regress"), "gpt": ("causal_lm",), "llama": ("causal_lm",), "t5": ("seq2seq",),
}
# The data block attributes that make each structured modality (ftdsl/stages/data.py reads them).
MODALITY_COLUMNS: dict[str, tuple[str, ...]] = {
    INSTRUCTIONS: ("prompt", "response", "messages"),
    TEXT_PAIRS: ("target",),
    TAGGED: ("tokens", "tags"),
}
# Tokenizers the data stage trains with a chat template (ftdsl/stages/tokenizer.py): a model built from
# scratch on chat `messages` needs one of these (FTP249).
CHAT_TOKENIZERS: tuple[str, ...] = ("bpe",)
# The roles a chat message (`messages` column) may have; the data stage refuses others.
CHAT_ROLES: tuple[str, ...] = ("system", "user", "assistant")
# Pretrained models are Hugging Face models: the Auto class follows the task
# (AutoModelForSequenceClassification, ...ForCausalLM, ...ForSeq2SeqLM, ...ForTokenClassification).
PRETRAINED_INPUTS: tuple[str, ...] = (TEXT, INSTRUCTIONS, TEXT_PAIRS, TAGGED)


# The loss a train stage uses when `loss` is not written, by the model's task.
# Generative and token tasks have their own token-level cross-entropy (`loss` may not be set).
TASK_LOSS: dict[str, str] = {"classify": "cross_entropy", "regress": "mse"}


def arch_modality(arch: str) -> str:
    """The engine's coarse modality of a from-scratch architecture: `text` or `features`."""
    return TEXT if ARCH_INPUTS.get(arch) == (TEXT,) else FEATURES


def describe_modality(m: str) -> str:
    return {FEATURES: "numeric features", IMAGE: "numeric images", TEXT: "text",
            INSTRUCTIONS: "prompt/response or chat records", TEXT_PAIRS: "source/target text pairs",
            TAGGED: "tagged words"}.get(m, m)


# --- data sets known without reading them ---------------------------------------------------


@dataclass(frozen=True)
class DataInfo:
    modality: str
    task: str  # the kind of labels: "classify" (integer classes) or "regress" (real numbers)
    classes: int | None = None  # number of classes (classify)
    outputs: int = 1  # number of regression targets (regress)
    shape: tuple[int, ...] | None = None


# scikit-learn's bundled data sets (ftdsl/stages/_sources.py reads them).
SKLEARN_DATASETS: dict[str, DataInfo] = {
    "digits": DataInfo(IMAGE, "classify", 10, shape=(1, 8, 8)),
    "iris": DataInfo(FEATURES, "classify", 3, shape=(4,)),
    "wine": DataInfo(FEATURES, "classify", 3, shape=(13,)),
    "breast_cancer": DataInfo(FEATURES, "classify", 2, shape=(30,)),
}


def source_info(call: str, args: dict) -> DataInfo | None:
    """What a data source yields, when it is known without reading a file (`args`: lowered values).
    Files (csv, jsonl, parquet) are only known by reading them: None."""
    if call == "sklearn":
        return SKLEARN_DATASETS.get(args.get("name"))
    if call == "synthetic":
        task = args.get("task") or "classify"
        k = args.get("features")
        shape = (int(k),) if isinstance(k, int) else None
        if task == "classify":
            return DataInfo(FEATURES, "classify", args.get("classes"), shape=shape)
        return DataInfo(FEATURES, "regress", None, shape=shape)
    return None


# --- what each artifact supports ------------------------------------------------------------
# quantize: artifact type of `from` -> method -> restrictions. A method missing from an
# artifact's table is not supported for it. `inputs`: modalities the method handles;
# `dtype`: the `dtype` values it accepts. (Engine: ftdsl/stages/quantize.py.)
QUANTIZE_SUPPORT: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "TorchModel": {
        "dynamic": {"dtype": ("int8",)},  # torch.ao stores dynamic weights as qint8 only
        "static": {"inputs": NUMERIC},  # FX graph mode: features nets (mlp, cnn)
        "fp16": {},
    },
    "OnnxModel": {
        "dynamic": {},
        "static": {},
        "fp16": {},
    },
}

# structured pruning: arch -> the units `structured(what = ...)` can remove (ftdsl.stages.prune_shrink
# families); a pretrained model is known at run time (heads and ffn for BERT-like encoders).
PRUNE_STRUCTURE: dict[str, tuple[str, ...]] = {
    "mlp": ("units",),
    "cnn": ("channels", "units"),
    "rnn": (),
    "transformer": (),
    "gpt": (),
    "llama": (),
    "t5": (),
}

# export: format -> the model origins it can write ("arch": built from scratch; "pretrained").
EXPORT_ORIGINS: dict[str, tuple[str, ...]] = {
    "onnx": ("arch", "pretrained"),
    "torchscript": ("arch", "pretrained"),
    "pt2": ("arch", "pretrained"),
    "safetensors": ("arch", "pretrained"),
    "hf": ("pretrained", "gpt", "llama", "t5"),  # save_pretrained needs a Hugging Face model
    "adapter": ("pretrained", "gpt", "llama", "t5"),  # and a model trained with `lora = ...`
}
# export: (format, task) pairs the engine refuses -> (why, what to do instead); lint says it (FTP243)
# and docs/language.md ("Exports of generative models") explains it. Measured on torch 2.13: the dynamo
# exporter fails on T5's attention (a view of a transposed tensor), and the TorchScript exporter's T5
# graph computes other logits (relative-position buckets baked in at the traced length).
EXPORT_REFUSED: dict[tuple[str, str], tuple[str, str]] = {
    ("onnx", "seq2seq"): (
        "an encoder-decoder model does not export to a correct ONNX graph with this torch version",
        "export `format = hf` and run that folder with transformers (`ftdsl predict`, AutoModelForSeq2SeqLM), "
        "or convert it with Hugging Face Optimum (`optimum-cli export onnx`: encoder and decoder graphs with "
        "past key values) where Optimum supports your transformers version"),
}
