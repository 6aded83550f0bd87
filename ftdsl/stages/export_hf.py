"""`format = hf`: a Hugging Face folder that transformers loads as it is.

The folder (the export's `out/NAME/`, and its `path` when set: no nested level) holds

* ``config.json`` + ``model.safetensors`` (``save_pretrained``), with ``id2label`` / ``label2id``
  from the data's label names (classify) or the task's tags (token_classify), so
  ``pipeline("text-classification", model=folder)`` answers with label names, not ``LABEL_0``;
* the tokenizer (``tokenizer.json``, ``tokenizer_config.json``), its ``model_max_length`` set to
  the pipeline's max length and its chat template, if it has one, inside ``tokenizer_config.json``
  (read by transformers 4 and 5 and by tools that read that file alone);
* ``generation_config.json`` for causal_lm and seq2seq: bos / eos / pad ids from the tokenizer
  and `evaluate`'s `generate` defaults (greedy, 64 new tokens);
* ``README.md``, the model card (:mod:`ftdsl.stages.model_card`), written atomically;
* for an adapter-trained model, the adapter merged into the weights: the export stage hands this
  module the merged model (``export_adapter.plain_source``); ``hf(merge = false)`` is written by
  :mod:`ftdsl.stages.export_adapter`.

``write_hf`` writes into a fresh folder and returns what it wrote; the stage moves the files into
its output folder (the whole cache entry is published atomically by the executor).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ftdsl.errors import StageError

__all__ = ["write_hf", "reload_hf", "label_names", "generation_defaults", "HF_README"]

HF_README = "README.md"
_GENERATIVE = ("causal_lm", "seq2seq")


def label_names(spec: dict) -> list[str] | None:
    """The class names of a classifier (the data's, else ``0..n-1``) or the tags of a token
    classifier, as strings; None for the tasks without labels."""
    task = spec.get("task") or {}
    name = task.get("$call")
    if name == "classify":
        names = spec.get("label_names")
        n = int(task.get("labels") or (len(names) if names else 0))
        if names and len(names) == n:
            return [str(x) for x in names]
        return [str(i) for i in range(n)] if n else None
    if name == "token_classify":
        labels = task.get("labels") or spec.get("label_names")
        return [str(x) for x in labels] if labels else None
    return None


def generation_defaults() -> dict:
    """`evaluate`'s `generate = { ... }` defaults, from the schema (the one declaration)."""
    from ftdsl.ir.schema import KINDS

    f = KINDS["evaluate"].field("generate")
    out = {g.name: g.default for g in getattr(f.type, "fields", ())} if f is not None else {}
    return {k: out[k] for k in ("max_new_tokens", "temperature", "top_p", "num_beams") if k in out}


def _set_generation(net, tk, task: str) -> dict | None:
    """Fill the net's GenerationConfig (saved as generation_config.json); returns what the card shows."""
    gc = getattr(net, "generation_config", None)
    if task not in _GENERATIVE or gc is None:
        return None
    cfg = net.config
    ids = {}
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = getattr(tk, k, None) if tk is not None else None
        if v is None:
            v = getattr(cfg, k, None)
        ids[k] = v
    if ids["pad_token_id"] is None:  # generate pads finished rows; the eos id is the usual stand-in
        ids["pad_token_id"] = ids["eos_token_id"]
    if task == "seq2seq" and getattr(cfg, "decoder_start_token_id", None) is not None:
        ids["decoder_start_token_id"] = cfg.decoder_start_token_id
    d = generation_defaults()
    temperature = float(d.get("temperature") or 0.0)
    settings: dict[str, Any] = {**ids, "max_new_tokens": int(d.get("max_new_tokens", 64)),
                                "num_beams": int(d.get("num_beams", 1)), "do_sample": temperature > 0}
    if temperature > 0:
        settings.update(temperature=temperature, top_p=float(d.get("top_p", 1.0)))
    for k, v in settings.items():
        setattr(gc, k, v)
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):  # the model's config agrees with the tokenizer
        if ids.get(k) is not None:
            setattr(cfg, k, ids[k])
    return {k: v for k, v in settings.items() if v is not None}


def _portable_tokenizer_class(folder: Path) -> None:
    """transformers 5 names a tokenizer.json-only tokenizer ``TokenizersBackend``, a class transformers
    4 does not have; ``PreTrainedTokenizerFast`` loads the same files in both (5 maps it to the same
    class)."""
    import json

    from ftdsl.stages.export_artifacts import write_json

    cfg_path = folder / "tokenizer_config.json"
    if not cfg_path.is_file():
        return
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if cfg.get("tokenizer_class") == "TokenizersBackend":
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        write_json(cfg_path, cfg)


def write_hf(src, module, folder: Path, *, stage: str, key: str, where: str, label: str) -> dict:
    """Write the Hugging Face folder of ``src`` (its built ``module``) into the fresh ``folder``.

    Returns ``{"files": [names], "labels": [...] | None, "generation": {...} | None}``."""
    import ftdsl
    from ftdsl.stages.export_artifacts import guarded_io, write_bytes
    from ftdsl.stages.model_card import render_card
    from ftdsl.stages.onnx_utils import quiet_exporter
    from ftdsl.stages.pretrained import quiet_transformers

    spec = src.spec
    task = (spec.get("task") or {}).get("$call", "classify")
    if not hasattr(getattr(module, "net", None), "save_pretrained"):
        raise StageError("FTP530", f"cannot export `{label}` as hf: it is not a Hugging Face model",
                         hint="export `format = safetensors()` or `onnx()`")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with quiet_transformers(), quiet_exporter():
        net = module.net
        names = label_names(spec)
        if names:
            net.config.id2label = {i: n for i, n in enumerate(names)}
            net.config.label2id = {n: i for i, n in enumerate(names)}
        tk = src.load_tokenizer()
        max_length = spec.get("max_length")
        generation = _set_generation(net, tk, task)
        guarded_io(lambda: net.save_pretrained(str(folder)), folder)
        if tk is not None:
            if max_length:
                tk.model_max_length = int(max_length)
            guarded_io(lambda: tk.save_pretrained(str(folder), save_jinja_files=False), folder)
            _portable_tokenizer_class(folder)
    card = render_card(spec=spec, metrics=dict(getattr(src, "metrics", None) or {}), labels=names,
                       max_length=max_length, stage=stage, key=key, version=ftdsl.__version__, where=where,
                       generation=generation, adapter=spec.get("merged_adapter"))
    write_bytes(folder / HF_README, card.encode("utf-8"))
    files = sorted(p.name for p in folder.iterdir())
    return {"files": files, "labels": names, "generation": generation}


def reload_hf(folder: Path, spec: dict):
    """The written folder loaded back as transformers would (the Auto class of the task),
    wrapped like the model it came from."""
    import torch

    from ftdsl.stages.pretrained import quiet_transformers

    task = spec.get("task") or {"$call": "classify"}
    name = task.get("$call", "classify")
    with quiet_transformers() as transformers:
        if name in ("classify", "regress"):
            from ftdsl.stages.modules import TextModule
            from ftdsl.stages.pretrained import load_hf_model

            module = TextModule(load_hf_model(folder, task), hf=True)
        else:
            from ftdsl.stages.model_card import AUTO_CLASSES
            from ftdsl.stages.tasks.module import SeqModule

            net = getattr(transformers, AUTO_CLASSES[name]).from_pretrained(str(folder), dtype=torch.float32)
            module = SeqModule(net, task=name, modality=spec.get("modality"))
    return module.eval()
