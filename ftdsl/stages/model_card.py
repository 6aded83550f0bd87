"""The model card (``README.md``) of a Hugging Face folder export. No torch here.

The card says what a user of the folder needs without the pipeline at hand: the model (base or
architecture, task, label names, max length), the data it was trained on (source and split sizes,
when the trained model records them), the training settings, the metrics the train stage measured,
where it came from (the ftdsl version, the export stage and its cache key) and how to load it in
three lines of ``transformers``. Everything in it is read from the model artifact and the export's
attributes, so the same cache key always gives the same card (no clock, no host name).

Hugging Face's hub reads the YAML front matter (``library_name``, ``pipeline_tag``, ``base_model``,
``tags``); the rest is Markdown.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["PIPELINE_TAGS", "AUTO_CLASSES", "render_card", "metrics_rows", "training_record"]

# task -> (the transformers pipeline, the Auto class that loads the folder)
PIPELINE_TAGS: dict[str, str] = {
    "classify": "text-classification",
    "regress": "text-classification",
    "causal_lm": "text-generation",
    "seq2seq": "text2text-generation",
    "token_classify": "token-classification",
}
AUTO_CLASSES: dict[str, str] = {
    "classify": "AutoModelForSequenceClassification",
    "regress": "AutoModelForSequenceClassification",
    "causal_lm": "AutoModelForCausalLM",
    "seq2seq": "AutoModelForSeq2SeqLM",
    "token_classify": "AutoModelForTokenClassification",
}
_EXAMPLE_INPUT = {
    "classify": "This is a sentence to classify.",
    "regress": "This is a sentence to score.",
    "causal_lm": "Once upon a time",
    "seq2seq": "A text to transform.",
    "token_classify": "Ada Lovelace was born in London.",
}
_SETTINGS = ("epochs", "max_steps", "batch", "accumulate", "optimizer", "schedule", "precision", "max_length",
             "lora", "freeze", "gradient_checkpointing", "early_stop")


def training_record(data: Any, attrs: dict) -> dict:
    """What a trained model's spec keeps for its card (the train stage calls this): the data's
    source and split sizes (``trained_on``) and the training settings (``train_settings``)."""
    from ftdsl.runtime.atomic import json_safe

    splits = {k: len(v) for k, v in (getattr(data, "splits", None) or {}).items()}
    return {"trained_on": {"source": str(getattr(data, "source", "") or ""), "splits": splits},
            "train_settings": json_safe({k: attrs[k] for k in _SETTINGS if attrs.get(k) is not None})}


def _call(v: Any) -> str:
    """A lowered value as the pipeline language writes it: ``adamw(lr = 0.001)``."""
    if isinstance(v, dict) and "$call" in v:
        args = ", ".join(f"{k} = {_call(x)}" for k, x in v.items() if k != "$call" and x is not None)
        return f"{v['$call']}({args})" if args else str(v["$call"])
    if isinstance(v, dict) and "$ref" in v:
        return ".".join(str(x) for x in (v["$ref"], v.get("split")) if x)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_call(x)}" for k, x in v.items() if x is not None) + " }"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_call(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, str) and v.isidentifier():
        return v
    return json.dumps(v)


def _md(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def metrics_rows(metrics: dict) -> list[tuple[str, str]]:
    """(name, value) of the split metrics (``train.*``, ``valid.*``, ``test.*``) in a stable order."""
    order = {"train": 0, "valid": 1, "test": 2}
    rows = []
    for k, v in metrics.items():
        split = k.split(".", 1)[0]
        if split in order and isinstance(v, (int, float)) and not isinstance(v, bool):
            rows.append((order[split], k, f"{v:.4g}"))
    return [(k, v) for _, k, v in sorted(rows)]


def _task_line(task: dict, labels: list[str] | None) -> str:
    name = task.get("$call", "?")
    if name in ("classify", "token_classify") and labels:
        shown = ", ".join(f"`{x}`" for x in labels[:50]) + (f" and {len(labels) - 50} more" if len(labels) > 50 else "")
        return f"`{name}`, {len(labels)} labels: {shown}"
    if name == "regress":
        return f"`regress`, {task.get('outputs', 1)} output(s)"
    return f"`{_call(task)}`"


def render_card(*, spec: dict, metrics: dict, labels: list[str] | None, max_length: int | None,
                stage: str, key: str, version: str, where: str, generation: dict | None = None,
                adapter: str | None = None) -> str:
    """The README.md text. ``where``: the folder a user loads (the export's `path`, or `out/NAME`)."""
    task = spec.get("task") or {"$call": "classify"}
    tname = task.get("$call", "classify")
    pipe, auto = PIPELINE_TAGS.get(tname, "text-classification"), AUTO_CLASSES.get(tname, "AutoModel")
    pretrained = spec.get("pretrained") if spec.get("source") == "pretrained" else None
    base = (f"`{pretrained}` (pretrained)" if pretrained else
            f"`{_call(spec.get('arch'))}`, trained from scratch" if spec.get("arch") else "?")
    front = ["---", "library_name: transformers", f"pipeline_tag: {pipe}", "tags:", "- ftdsl", f"- {tname}"]
    local = str(spec.get("resolved_from") or "").startswith("local folder")
    if pretrained and not local and "/" in str(pretrained) and not str(pretrained).startswith((".", "/")):
        front.append(f"base_model: {pretrained}")  # a hub id (not a folder on this machine)
    front.append("---")
    title = spec.get("trained_by") or stage
    lines = [*front, "", f"# {title}", "",
             f"Fine-tuned with [ftdsl](https://pypi.org/project/ftdsl/) {version}: the `export {stage}` stage of "
             f"the model trained by `{spec.get('trained_by') or '?'}`.", "", "## Model", "",
             f"- base: {base}", f"- task: {_task_line(task, labels)}"]
    if max_length:
        lines.append(f"- max length: {max_length} tokens (the tokenizer's `model_max_length`)")
    if spec.get("shrunk"):
        lines.append("- structurally pruned (smaller than its base)")
    if adapter:
        lines.append(f"- adapter: `{adapter}`, merged into the weights")
    data = spec.get("trained_on") or {}
    if data:
        lines += ["", "## Data", "", f"- source: `{data.get('source', '?')}`"]
        splits = data.get("splits") or {}
        if splits:
            order = sorted(splits, key=lambda k: (("train", "valid", "test") + (k,)).index(k))
            lines.append("- splits: " + ", ".join(f"{k} {splits[k]:,} rows" for k in order))
    given = spec.get("train_settings") or {}
    settings = {k: given[k] for k in _SETTINGS if given.get(k) not in (None, [], {})}
    if spec.get("precision"):
        settings.setdefault("precision", spec["precision"])
    if spec.get("steps"):
        settings["steps (run)"] = spec["steps"]
    if settings:
        lines += ["", "## Training", "", "| setting | value |", "|---|---|"]
        lines += [f"| {_md(k)} | `{_md(_call(v))}` |" for k, v in settings.items()]
    rows = metrics_rows(metrics)
    if rows:
        lines += ["", "## Metrics", "", f"Measured by the train stage `{spec.get('trained_by') or '?'}`"
                  + (" on the splits above." if data else "."), "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {_md(k)} | {v} |" for k, v in rows]
    if generation:
        lines += ["", "## Generation", "", "`generation_config.json` holds the defaults `generate` uses:", ""]
        lines += [f"- {k}: `{json.dumps(v)}`" for k, v in generation.items()]
    example = json.dumps(_EXAMPLE_INPUT.get(tname, "Some text."))
    # text-classification pipelines do not truncate unless asked: longer texts than the model's
    # positions would fail (the tokenizer's model_max_length is where truncation cuts)
    trunc = ", truncation=True" if tname in ("classify", "regress") else ""
    lines += ["", "## Use it", "", "```python", "from transformers import pipeline", "",
              f"model = pipeline({json.dumps(pipe)}, model={json.dumps(where)})",
              f"print(model({example}{trunc}))", "```", "",
              f"or `{auto}.from_pretrained(folder)` with `AutoTokenizer.from_pretrained(folder)`.", "",
              "## Provenance", "", f"- ftdsl {version}, stage `{stage}`", f"- cache key `{key}`" if key else "",
              ""]
    return "\n".join(x for i, x in enumerate(lines) if x or (i and lines[i - 1]))
