"""The one registry of the language: block kinds, their attributes, and every constructor.

The checker, `explain`, the docs generator and the lowering all read these declarations. Adding an
optimizer is one `Ctor(...)` line in `CONSTRUCTORS`; adding an attribute is one `Field(...)`.
Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ftdsl.ir.schema.metrics import METRIC_REGISTRY, METRICS, Metric, metric_mode, metrics_for  # noqa: F401

# --- value types ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Type:
    def describe(self) -> str:  # pragma: no cover - overridden
        return "value"


@dataclass(frozen=True)
class Int(Type):
    min: int | None = None
    max: int | None = None

    def describe(self) -> str:
        return "an integer" + _range(self.min, self.max, False, False)


@dataclass(frozen=True)
class Float(Type):
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # exclusive lower bound
    max_open: bool = False

    def describe(self) -> str:
        return "a number" + _range(self.min, self.max, self.min_open, self.max_open)


@dataclass(frozen=True)
class Str(Type):
    def describe(self) -> str:
        return "a string"


@dataclass(frozen=True)
class PathT(Type):
    """A file path string, relative to the pipeline's folder. `output` paths must stay inside it."""

    output: bool = False

    def describe(self) -> str:
        return "a path string"


@dataclass(frozen=True)
class Bool(Type):
    def describe(self) -> str:
        return "`true` or `false`"


@dataclass(frozen=True)
class Enum(Type):
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        return "one of " + ", ".join(f"`{c}`" for c in self.choices)


@dataclass(frozen=True)
class CtorT(Type):
    """A constructor call of one family (`adamw(lr = 1e-3)`), or the bare name (`constant`)."""

    family: str = ""

    def describe(self) -> str:
        names = ", ".join(f"`{n}(...)`" for n in CONSTRUCTORS.get(self.family, {}))
        return f"{article(self.family.replace('_', ' '))} ({names})"


@dataclass(frozen=True)
class RefT(Type):
    """A reference to a block producing one of `artifacts`. `split`: required | forbidden | optional."""

    artifacts: tuple[str, ...] = ()
    split: str = "forbidden"

    def describe(self) -> str:
        what = " or ".join(self.artifacts)
        if self.split == "required":
            return "a split of a data block (`NAME.test`)"
        return f"a reference to a stage producing a {what}"


@dataclass(frozen=True)
class ListT(Type):
    item: Type = field(default_factory=Type)
    min_len: int = 0
    max_len: int | None = None

    def describe(self) -> str:
        inner = self.item.describe()
        for art in ("a ", "an "):
            if inner.startswith(art):
                head, _, rest = inner[len(art):].partition(" ")
                plural = head[:-1] + "ies" if head.endswith("y") else head + ("es" if head.endswith("s") else "s")
                return f"a list of {plural}" + (f" {rest}" if rest else "")
        return f"a list of {inner}"


@dataclass(frozen=True)
class MapT(Type):
    """A dict with free keys (`over = { "optimizer.lr" = [..] }`)."""

    value: Type = field(default_factory=Type)

    def describe(self) -> str:
        return "a dict `{ key = value }`"


@dataclass(frozen=True)
class StructT(Type):
    """A dict with known keys (`early_stop = { metric = ..., patience = 2 }`)."""

    fields: tuple["Field", ...] = ()

    def describe(self) -> str:
        return "a dict with keys " + ", ".join(f"`{f.name}`" for f in self.fields)

    def get(self, name: str) -> "Field | None":
        for f in self.fields:
            if f.name == name:
                return f
        return None


@dataclass(frozen=True)
class OneOf(Type):
    options: tuple[Type, ...] = ()

    def describe(self) -> str:
        return " or ".join(o.describe() for o in self.options)


def article(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def _range(lo, hi, lo_open, hi_open) -> str:
    if lo is None and hi is None:
        return ""
    if hi is None:
        return f" {'>' if lo_open else '>='} {lo}"
    if lo is None:
        return f" {'<' if hi_open else '<='} {hi}"
    return f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


REQUIRED = object()  # a Field/Arg default meaning "must be given"


@dataclass(frozen=True)
class Field:
    name: str
    type: Type
    default: Any = None
    doc: str = ""
    nullable: bool = True  # `null` accepted (and is the default when default is None)

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


Arg = Field  # constructor arguments are declared like attributes


@dataclass(frozen=True)
class Ctor:
    name: str
    family: str
    args: tuple[Arg, ...]
    doc: str = ""

    def arg(self, name: str) -> Arg | None:
        for a in self.args:
            if a.name == name:
                return a
        return None


# --- shared pieces ------------------------------------------------------------------------

FRACTION = Float(min=0, max=1, min_open=True, max_open=True)  # (0, 1)
PRUNE_PARTS = ("heads", "ffn", "units", "channels", "vocab")  # = ftdsl.stages.prune_shrink.PARTS
PROB = Float(min=0, max=1, max_open=True)  # [0, 1)
TRACKERS = ("tensorboard", "mlflow", "wandb")  # = ftdsl.runtime.tracking.BACKENDS
SPLIT = RefT(("Dataset",), split="required")
DATASET = RefT(("Dataset",), split="forbidden")
TORCH_MODEL = RefT(("TorchModel",))
ANY_MODEL = RefT(("TorchModel", "OnnxModel"))

# Bounds (issue 6): every number has a generous but sane range, so an absurd value is a lint error
# at its span instead of a huge allocation or an overflow deep inside the engine.
WIDTH = Int(min=1, max=65536)  # layer widths, channels, embedding sizes
WIDE = Int(min=1, max=262144)  # feed-forward widths (4 x a wide model's dim)
DEPTH = Int(min=1, max=1024)  # layers, heads
SEED = Int(min=0, max=2**32 - 1)  # numpy's seed range
CLASSES = Int(min=2, max=1048576)
COUNT = Int(min=1, max=10**9)  # step counts and intervals
LR = Float(min=0, max=10, min_open=True)
DECAY = Float(min=0, max=10)
WARMUP = Float(min=0, max=10**9)  # < 1: a fraction of the steps; >= 1: a number of steps
SEQ_LEN = Int(min=1, max=1048576)
MAX_LIST = 1024  # items of a list of layer sizes
TARGETS_DOC = ("module names to adapt (default: peft's choice for a pretrained model, `query` and `value` in "
               "BERT-like ones; every Linear layer but the head in a from-scratch model)")

C = Ctor
F = Field

_CTORS: list[Ctor] = [
    # data sources
    C("csv", "source", (F("path", PathT(), REQUIRED, "CSV file, relative to the pipeline"),
                        F("delimiter", Str(), ",", "field separator (`\"\\t\"` for TSV)"),
                        F("header", Bool(), True, "the first row names the columns; without it columns are `c0, c1, ...`")),
      "Read a CSV (or TSV) file."),
    C("jsonl", "source", (F("path", PathT(), REQUIRED, "JSON-lines file"),), "Read one JSON object per line."),
    C("parquet", "source", (F("path", PathT(), REQUIRED, "Parquet file"),), "Read a Parquet file (pyarrow)."),
    C("sklearn", "source", (F("name", Enum(("digits", "iris", "wine", "breast_cancer")), REQUIRED,
                              "a dataset bundled with scikit-learn"),),
      "A dataset that ships with scikit-learn (no download). `digits` gives 1x8x8 images."),
    C("synthetic", "source", (F("task", Enum(("classify", "regress")), "classify"),
                              F("n", Int(min=2, max=10_000_000), 1000, "number of rows"),
                              F("features", Int(min=1, max=10_000), 16, "number of features"),
                              F("classes", Int(min=2, max=1000), 2, "number of classes (classify)"),
                              F("seed", SEED, 0, "generator seed")),
      "Generated data (scikit-learn's make_classification / make_regression)."),
    # tokenizers
    C("wordpiece", "tokenizer", (F("vocab", Int(min=50, max=1048576), 8000, "vocabulary size"),
                                 F("lowercase", Bool(), True, "lowercase before tokenizing")),
      "Train a WordPiece tokenizer on the train split (for text models built from scratch)."),
    C("bpe", "tokenizer", (F("vocab", Int(min=300, max=1048576), 4000, "vocabulary size (at least the 256 bytes plus specials)"),),
      "Train a byte-level BPE tokenizer on the train split, with `<pad>`, `<bos>`, `<eos>` and a chat template "
      "(for generative models built from scratch: `gpt`, `llama`, `t5`)."),
    # architectures
    C("mlp", "arch", (F("hidden", ListT(WIDTH, max_len=MAX_LIST), [128], "hidden layer widths"),
                      F("dropout", PROB, 0.0), F("activation", Enum(("relu", "gelu", "tanh")), "relu")),
      "A multi-layer perceptron over numeric features."),
    C("cnn", "arch", (F("channels", ListT(WIDTH, min_len=1, max_len=MAX_LIST), [16, 32], "channels per conv layer"),
                      F("kernel", Int(min=1, max=1024), 3, "kernel size"), F("hidden", WIDTH, 64, "width of the dense layer"),
                      F("dropout", PROB, 0.0)),
      "A convolutional network: Conv2d for image-shaped data (C,H,W), Conv1d over a feature vector."),
    C("rnn", "arch", (F("cell", Enum(("lstm", "gru")), "lstm"), F("hidden", WIDTH, 64),
                      F("layers", DEPTH, 1), F("bidirectional", Bool(), False),
                      F("embed", WIDTH, 64, "token embedding size"), F("dropout", PROB, 0.0)),
      "A recurrent text encoder (embedding, LSTM/GRU, masked mean pooling)."),
    C("transformer", "arch", (F("layers", DEPTH, 2), F("dim", WIDTH, 64), F("heads", DEPTH, 4),
                              F("ff", WIDE, 128), F("max_len", SEQ_LEN, 128), F("dropout", PROB, 0.1)),
      "A Transformer encoder for text built from scratch (needs a tokenizer: `wordpiece(...)`)."),
    C("gpt", "arch", (F("layers", DEPTH, 2), F("heads", DEPTH, 4), F("width", WIDTH, 128, "embedding size (divisible by `heads`)"),
                      F("max_len", SEQ_LEN, 256, "positions"), F("dropout", PROB, 0.0)),
      "A GPT-2 decoder built from scratch (transformers' GPT2Config; needs a tokenizer: `bpe(...)`)."),
    C("llama", "arch", (F("layers", DEPTH, 2), F("heads", DEPTH, 4), F("kv_heads", DEPTH, None, "key/value heads (grouped-query attention; default: `heads`)"),
                        F("width", WIDTH, 128, "hidden size (divisible by `heads`)"), F("ff", WIDE, None, "MLP width (default: 4 x width)"),
                        F("max_len", SEQ_LEN, 256, "positions"), F("rope_theta", Float(min=1, max=1e9), 10000.0)),
      "A Llama decoder built from scratch (transformers' LlamaConfig; needs a tokenizer: `bpe(...)`)."),
    C("t5", "arch", (F("layers", DEPTH, 2, "encoder and decoder layers"), F("heads", DEPTH, 4), F("width", WIDTH, 128, "model size"),
                     F("ff", WIDE, 256, "feed-forward width"), F("head_dim", WIDTH, None, "per-head size (default: width / heads)"),
                     F("dropout", PROB, 0.1)),
      "A T5 encoder-decoder built from scratch (transformers' T5Config; needs a tokenizer: `bpe(...)`)."),
    # tasks
    C("classify", "task", (F("labels", CLASSES, REQUIRED, "number of classes"),), "Classification head."),
    C("regress", "task", (F("outputs", WIDTH, 1, "number of targets"),), "Regression head."),
    C("causal_lm", "task", (F("packing", Bool(), False, "concatenate short examples into rows of `max_length` tokens "
                                                             "(attention and positions restart at each example)"),
                            F("mask_prompt", Bool(), True, "prompt/response and chat data: no loss on the prompt "
                                                                "(only the response or assistant tokens are learned)")),
      "Next-token prediction (supervised fine-tuning) on plain text, prompt/response pairs or chat messages."),
    C("seq2seq", "task", (F("max_target_length", SEQ_LEN, 128, "truncate targets (and generations) to this many tokens"),),
      "Sequence to sequence (an encoder-decoder such as T5 or BART): `text` in, `target` out."),
    C("token_classify", "task", (F("labels", ListT(Str(), min_len=1, max_len=100_000), REQUIRED,
                                   "the tag names, e.g. `[\"O\", \"B-PER\", \"I-PER\"]` (BIO tags for entity metrics)"),),
      "One label per word (named-entity tagging): the first sub-token of each word is labelled, the rest ignored."),
    # init
    C("normal", "init", (F("std", Float(min=0, max=10, min_open=True), 0.02),), "Normal(0, std) weights, zero biases."),
    # optimizers
    C("sgd", "optimizer", (F("lr", LR, 0.01, "learning rate"), F("momentum", PROB, 0.0),
                           F("weight_decay", DECAY, 0.0), F("nesterov", Bool(), False)), "SGD."),
    C("adam", "optimizer", (F("lr", LR, 1e-3), F("weight_decay", DECAY, 0.0)), "Adam."),
    C("adamw", "optimizer", (F("lr", LR, 1e-3), F("weight_decay", DECAY, 0.01)),
      "AdamW (decoupled weight decay)."),
    # schedules
    C("constant", "schedule", (F("warmup", WARMUP, 0),), "Constant learning rate (after an optional warmup)."),
    C("linear", "schedule", (F("warmup", WARMUP, 0),), "Linear warmup, then linear decay to 0."),
    C("cosine", "schedule", (F("warmup", WARMUP, 0), F("min_lr", Float(min=0, max=10), 0.0)),
      "Linear warmup, then cosine decay to `min_lr`."),
    C("step", "schedule", (F("every", COUNT, REQUIRED, "steps between decays"),
                           F("gamma", Float(min=0, max=1, min_open=True), 0.1)), "Multiply the LR by gamma every N steps."),
    # losses
    C("cross_entropy", "loss", (F("weights", OneOf((Enum(("balanced",)), ListT(Float(min=0, max=1e6), max_len=1048576))), None,
                                  "`balanced` (inverse class frequency) or one weight per class"),
                                F("label_smoothing", PROB, 0.0)), "Cross-entropy for classification."),
    C("bce", "loss", (), "Binary cross-entropy with logits (multi-label or 2-class)."),
    C("mse", "loss", (), "Mean squared error for regression."),
    # adapters
    C("lora", "adapter", (F("r", Int(min=1, max=4096), 8), F("alpha", Float(min=0, max=1e6, min_open=True), 16), F("dropout", PROB, 0.0),
                          F("targets", ListT(Str(), min_len=1, max_len=4096), None, TARGETS_DOC)),
      "LoRA adapters (peft). The trained artifact keeps the adapters apart from the base; `export` merges "
      "them (`hf(merge = true)`) or writes them as a PEFT adapter folder (`format = adapter`)."),
    C("adalora", "adapter", (F("r", Int(min=1, max=4096), 12), F("target_r", Int(min=1, max=4096), 8),
                             F("targets", ListT(Str(), min_len=1, max_len=4096), None, TARGETS_DOC)), "AdaLoRA adapters (peft)."),
    C("ia3", "adapter", (F("targets", ListT(Str(), min_len=1, max_len=4096), None, TARGETS_DOC),
                         F("feedforward", ListT(Str(), min_len=1, max_len=4096), None,
                           "the subset of `targets` that are feed-forward layers (scaled on their input)")),
      "(IA)^3 adapters (peft): learned scaling vectors on the targeted layers."),
    C("prefix", "adapter", (F("tokens", Int(min=1, max=4096), 20, "virtual tokens prepended to every layer's keys and values"),),
      "Prefix-tuning (peft) of a decoder or encoder-decoder: only the virtual tokens are trained."),
    # pruning
    C("magnitude", "prune_method", (F("amount", FRACTION, REQUIRED, "fraction of weights to zero, per layer"),),
      "L1 unstructured pruning of each Linear/Conv layer."),
    C("global_magnitude", "prune_method", (F("amount", FRACTION, REQUIRED, "fraction of all weights to zero"),),
      "L1 unstructured pruning across all layers at once."),
    C("structured", "prune_method", (
        F("amount", FRACTION, REQUIRED, "fraction of the units of each layer to remove (not used by `vocab`)"),
        F("what", OneOf((Enum(("all",) + PRUNE_PARTS), ListT(Enum(PRUNE_PARTS), min_len=1, max_len=len(PRUNE_PARTS)))),
          "all",
          "what to remove: attention `heads` and `ffn` rows (BERT-like encoders), hidden `units` (mlp) and "
          "`channels` (cnn); `vocab`: keep only the embedding rows of tokens the training data uses, plus every "
          "special and single-character token (pretrained WordPiece or BPE models; needs `recover.data`, whose train "
          "split decides; rewrites the tokenizer; `amount` does not apply); `all`: every kind of unit the model "
          "has, never `vocab` (it changes the tokenizer, so it is asked for by name)"),
        F("criterion", Enum(("l2", "l1")), "l2", "rank units by the norm of their weights")),
      "Remove whole attention heads, FFN rows, units or channels: the model gets smaller and faster."),
    # quantization
    C("dynamic", "quantize_method", (F("dtype", Enum(("int8", "uint8")), "int8"), F("per_channel", Bool(), True),
                                     F("fuse", Bool(), True, "ONNX transformers: fuse attention, LayerNorm, GELU and "
                                       "bias ops (onnxruntime's transformer optimizer) before quantizing; "
                                       "other graphs and PyTorch models are not fused")),
      "Dynamic int8 quantization of weights."),
    C("static", "quantize_method", (F("calibrate", SPLIT, REQUIRED, "split used for calibration"),
                                    F("samples", Int(min=1, max=1_000_000), 256)), "Static int8 quantization with calibration."),
    C("fp16", "quantize_method", (), "Convert weights to float16."),
    # export formats
    C("onnx", "export_format", (F("opset", Int(min=17, max=23), 17),), "ONNX (checked with onnxruntime)."),
    C("torchscript", "export_format", (), "TorchScript."),
    C("pt2", "export_format", (), "torch.export program (.pt2)."),
    C("safetensors", "export_format", (), "Weights only (safetensors)."),
    C("hf", "export_format", (F("merge", Bool(), True, "adapter-trained models: merge the adapters into the weights; "
                                                          "`false` writes the base folder with the adapter in `adapter/`"),),
      "A Hugging Face folder (`from_pretrained` loads it): config, weights, tokenizer, label maps, "
      "generation config and a model card."),
    C("adapter", "export_format", (), "The trained adapter alone, as a PEFT folder: `PeftModel.from_pretrained(base, folder)` loads it."),
    # sweep strategies
    C("grid", "strategy", (), "Every combination of `over`."),
    C("random", "strategy", (F("n", Int(min=1, max=100_000), REQUIRED), F("seed", SEED, 0)), "n random combinations."),
    C("optuna", "strategy", (F("n", Int(min=1, max=100_000), REQUIRED), F("seed", SEED, 0),
                             F("pruner", Enum(("median", "none")), "median",
                               "stop unpromising trials early: Optuna's MedianPruner on the per-epoch `valid.*` value")),
      "n trials of Optuna's TPE."),
    # sweep search spaces (`over = { "optimizer.lr" = loguniform(1e-5, 1e-2) }`; random and optuna only)
    C("uniform", "space", (F("lo", Float(), REQUIRED, "lower bound"), F("hi", Float(), REQUIRED, "upper bound")),
      "Real numbers drawn uniformly from [lo, hi] (Optuna's FloatDistribution)."),
    C("loguniform", "space", (F("lo", Float(min=0, min_open=True), REQUIRED, "lower bound (> 0)"),
                              F("hi", Float(min=0, min_open=True), REQUIRED, "upper bound")),
      "Real numbers drawn uniformly on a log scale from [lo, hi] (FloatDistribution(log = true)): learning rates."),
    C("int_range", "space", (F("lo", Int(), REQUIRED, "lower bound"), F("hi", Int(), REQUIRED, "upper bound (included)"),
                             F("step", Int(min=1), 1, "spacing: lo, lo + step, ..., hi")),
      "Integers lo, lo + step, ..., hi (Optuna's IntDistribution(step)); also enumerable by `grid`."),
]

CONSTRUCTORS: dict[str, dict[str, Ctor]] = {}
for _c in _CTORS:
    CONSTRUCTORS.setdefault(_c.family, {})[_c.name] = _c


_BY_NAME: dict[str, Ctor] = {c.name: c for c in _CTORS}


def all_constructors() -> dict[str, Ctor]:
    """Every constructor by name (one shared dict: the checker asks once per reference; do not mutate)."""
    return _BY_NAME


# --- block kinds -------------------------------------------------------------------------

_TRAIN_FIELDS: tuple[Field, ...] = (
    F("data", DATASET, REQUIRED, "the data block to train on (its train split; valid for evaluation)"),
    F("epochs", Int(min=1, max=100_000), None, "passes over the train split (or `max_steps`)"),
    F("max_steps", COUNT, None, "optimizer steps (instead of `epochs`)"),
    F("batch", Int(min=1, max=1048576), 32, "examples per micro-batch"),
    F("accumulate", Int(min=1, max=65536), 1, "micro-batches per optimizer step"),
    F("optimizer", CtorT("optimizer"), "adamw", "the optimizer"),
    F("schedule", CtorT("schedule"), "constant", "the learning-rate schedule"),
    F("loss", CtorT("loss"), None, "the loss (default: cross_entropy for classify, mse for regress)"),
    F("precision", Enum(("auto", "fp32", "bf16", "fp16")), "auto", "mixed precision (`auto`: bf16 where fast)"),
    F("clip", Float(min=0, max=1e6, min_open=True), None, "gradient-norm clipping"),
    F("compile", Bool(), False, "torch.compile the model"),
    F("freeze", ListT(Str()), [], "glob patterns of parameter names to freeze"),
    F("lora", CtorT("adapter"), None, "train adapters (`lora`, `adalora`, `ia3`, `prefix`) instead of all weights"),
    F("gradient_checkpointing", Bool(), False, "recompute activations in the backward pass (less memory, ~30 % slower; "
      "transformers models)"),
    F("early_stop", StructT((F("metric", Str(), REQUIRED, "`valid.accuracy`, `valid.loss`, `train.loss`, ..."),
                             F("mode", Enum(("min", "max")), None, "default: the metric's direction (`max` for accuracy, `min` for loss)"),
                             F("patience", Int(min=1, max=100_000), 2), F("min_delta", Float(min=0, max=1e6), 0.0))), None,
      "stop when a metric stops improving; the best weights are restored"),
    F("eval_every", COUNT, None, "evaluate every N steps (default: each epoch)"),
    F("checkpoint_every", COUNT, 100, "checkpoint every N optimizer steps (and at each epoch end)"),
    F("distributed", Enum(("none", "ddp", "fsdp")), "none", "multi-process training"),
    F("max_length", SEQ_LEN, None, "truncate text to this many tokens (default: the data's)"),
    F("threads", Int(min=1, max=4096), None, "CPU threads (default: torch's)"),
)


@dataclass(frozen=True)
class Kind:
    name: str
    fields: tuple[Field, ...]
    produces: str  # artifact type; "input" for quantize (same as its `from`), "target" for sweep
    doc: str = ""
    inputs: tuple[str, ...] = ()  # attribute names that are stage inputs (edges)

    def field(self, name: str) -> Field | None:
        for f in self.fields:
            if f.name == name:
                return f
        return None


KINDS: dict[str, Kind] = {k.name: k for k in [
    Kind("pipeline", (
        F("seed", SEED, 0, "global seed (splits, init, shuffling)"),
        F("device", Enum(("auto", "cpu", "cuda")), "auto", "where stages run"),
        F("cache", PathT(), None, "cache folder (default `.ftdsl/cache` or $FTDSL_CACHE)"),
        F("out", PathT(output=True), "out", "where stage outputs go (default `out/` beside the file)"),
        F("allow_outside_out", Bool(), False, "let `out` be a folder outside the pipeline's folder (absolute or "
          "`..`); without it that is FTP303"),
        F("track", ListT(Enum(TRACKERS), max_len=len(TRACKERS)), ["tensorboard"],
          "experiment trackers every training stage (train, distill, sweep trials, prune recovery) logs to: "
          "`tensorboard` (scalars and hparams under `out/NAME/tensorboard`), `mlflow` (a local `mlruns/` beside "
          "the pipeline, or $MLFLOW_TRACKING_URI), `wandb` (offline unless $WANDB_MODE says otherwise); "
          "`[]` for none. Not part of any cache key", nullable=False),
        F("description", Str(), None, "free text"),
    ), "Settings", "Pipeline-wide settings (at most one block)."),
    Kind("data", (
        F("source", CtorT("source"), None, "where the rows come from (or give `train`/`valid`/`test`)"),
        F("text", Str(), None, "the text column (text tasks; the source text of seq2seq; plain text for causal_lm)"),
        F("prompt", Str(), None, "causal_lm: the prompt (instruction) column; needs `response`"),
        F("response", Str(), None, "causal_lm: the response column (the tokens learned)"),
        F("messages", Str(), None, "causal_lm: a column holding chat messages, a list of `{role, content}` (jsonl), "
          "rendered with the tokenizer's chat template"),
        F("target", Str(), None, "seq2seq: the target text column"),
        F("tokens", Str(), None, "token_classify: a column holding each row's words (a list, jsonl)"),
        F("tags", Str(), None, "token_classify: a column holding each row's tags, one per word (names or indices)"),
        F("label", Str(), "label", "the label column"),
        F("features", ListT(Str(), min_len=1, max_len=100_000), None, "numeric feature columns (default: all but text/label)"),
        F("split", StructT((F("train", FRACTION, None), F("valid", FRACTION, None), F("test", FRACTION, None))),
          None, "fractions of `source` per split (default 0.8 / 0.1 / 0.1)"),
        F("train", CtorT("source"), None, "an explicit train file"),
        F("valid", CtorT("source"), None, "an explicit validation file"),
        F("test", CtorT("source"), None, "an explicit test file"),
        F("max_length", SEQ_LEN, None, "maximum tokens per text"),
        F("tokenizer", CtorT("tokenizer"), None, "train a tokenizer for from-scratch text models"),
        F("sampler", Enum(("shuffle", "balanced")), "shuffle", "`balanced` oversamples rare classes"),
    ), "Dataset", "Load, split and prepare data. Produces a Dataset with splits `NAME.train`, `NAME.valid`, `NAME.test`."),
    Kind("model", (
        F("pretrained", Str(), None, "a local folder or a model ID (resolved offline first)"),
        F("arch", CtorT("arch"), None, "an architecture built from scratch"),
        F("task", CtorT("task"), REQUIRED, "`classify(labels = N)`, `regress(outputs = N)`, `causal_lm()`, `seq2seq()` "
          "or `token_classify(labels = [..])`"),
        F("init", OneOf((Enum(("default", "xavier_uniform", "xavier_normal", "kaiming")), CtorT("init"))),
          "default", "weight initialization of from-scratch models"),
        F("trust_remote_code", Bool(), False, "run Python code shipped with a pretrained model"),
        F("revision", Str(), None, "pin a pretrained model's revision (a commit SHA)"),
        F("load_in", Enum(("full", "int8", "int4")), "full", "load a pretrained base in 8 bits (`int8`) or 4 bits (`int4`, NF4) (bitsandbytes, CUDA "
          "only) to train adapters on it"),
    ), "TorchModel", "A model, pretrained or built from an architecture, with a task head."),
    Kind("train", (F("model", TORCH_MODEL, REQUIRED, "the model to train"),) + _TRAIN_FIELDS,
         "TorchModel", "Train (fine-tune) a model. Produces the trained model and its metrics.", ("model", "data")),
    Kind("distill", (F("teacher", TORCH_MODEL, REQUIRED), F("student", TORCH_MODEL, REQUIRED),
                     F("temperature", Float(min=0, max=1000, min_open=True), 2.0, "softmax temperature"),
                     F("alpha", Float(min=0, max=1), 0.5, "weight of the distillation loss")) + _TRAIN_FIELDS,
         "TorchModel", "Train a student to match a teacher (knowledge distillation).", ("teacher", "student", "data")),
    Kind("prune", (
        F("from", TORCH_MODEL, REQUIRED, "the model to prune"),
        F("method", CtorT("prune_method"), REQUIRED, "how to prune"),
        F("recover", StructT((F("epochs", Int(min=1, max=100_000), 1), F("data", DATASET, None), F("batch", Int(min=1, max=1048576), 32),
                              F("optimizer", CtorT("optimizer"), "adamw"))), None,
          "fine-tune after pruning (`data` defaults to the training data)"),
    ), "TorchModel", "Prune weights; the pruning is made permanent in the artifact.", ("from",)),
    Kind("quantize", (
        F("from", ANY_MODEL, REQUIRED, "a TorchModel (quantized in PyTorch) or an ONNX export (onnxruntime)"),
        F("method", CtorT("quantize_method"), REQUIRED, "how to quantize"),
    ), "input", "Quantize a model; the result has the same kind as the input.", ("from",)),
    Kind("export", (
        F("from", TORCH_MODEL, REQUIRED, "the model to export"),
        F("format", CtorT("export_format"), "onnx", "the file format"),
        F("verify", OneOf((Bool(), StructT((F("data", SPLIT, None), F("atol", Float(min=0, max=1e6, min_open=True), 1e-4),
                                            F("rtol", Float(min=0, max=1e6), 1e-3))))), False,
          "check the export against PyTorch (`true` or `{ data, atol, rtol }`)"),
        F("path", PathT(output=True), None, "where to write the file (default `out/NAME/`)"),
    ), "export", "Export a model to a deployable file.", ("from",)),
    Kind("evaluate", (
        F("models", ListT(ANY_MODEL, min_len=1), REQUIRED, "the models to compare"),
        F("data", SPLIT, REQUIRED, "the split to evaluate on (`NAME.test`)"),
        F("metrics", ListT(Enum(METRICS), min_len=1), None,
          "what to measure (default: `[accuracy, f1]` for classifiers, `[mse, mae]` for regression)"),
        F("batch", Int(min=1, max=1048576), 64, "batch size for evaluation"),
        F("generate", StructT((F("max_new_tokens", Int(min=1, max=65536), 64), F("temperature", Float(min=0, max=100), 0.0,
                                                                                   "0: greedy (deterministic)"),
                               F("top_p", Float(min=0, max=1, min_open=True), 1.0), F("num_beams", Int(min=1, max=64), 1),
                               F("samples", Int(min=0, max=1_000_000), 100, "rows written to `samples.jsonl`"))), None,
          "causal_lm and seq2seq: how to generate on the split (written to `out/NAME/samples.jsonl`)"),
    ), "Report", "Compare models on a split: a table, JSON and plots.", ("models", "data")),
    Kind("sweep", (
        F("target", RefT(("TorchModel",)), REQUIRED, "a `train` or `distill` stage"),
        F("over", MapT(OneOf((ListT(OneOf((Int(), Float(), Str(), Bool())), min_len=1, max_len=100_000),
                              CtorT("space")))), REQUIRED,
          'attribute paths to values or ranges: `{ "optimizer.lr" = loguniform(1e-5, 1e-2), "batch" = [16, 32] }`'),
        F("strategy", CtorT("strategy"), "grid", "how to pick trials"),
        F("metric", Str(), REQUIRED, "the metric to optimize (`valid.accuracy`)"),
        F("mode", Enum(("min", "max")), None, "default: the metric's direction (`max` for accuracy, `min` for loss)"),
    ), "target", "Hyperparameter search over a train stage; produces the best trial's model.", ("target",)),
]}

STAGE_KINDS = tuple(k for k in KINDS if k != "pipeline")
ITEM_WORDS = ("pipeline", "param", "use", "ftp")
