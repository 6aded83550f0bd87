"""The `export` stage: a trained model written as `OnnxModel` (format = onnx) or `ExportedFile` (the rest).

An export takes what the data block reads, raw (SPEC §6): features models take ``x`` (float32
``[B, *input_shape]``; the normalization is inside the graph), text models take ``input_ids``
and ``attention_mask`` (int64 ``[B, S]``) and ship their tokenizer beside the file. The batch
axis is dynamic (and the sequence axis for text), so any batch size runs.

Files under ``out/<stage>/`` (and copied to ``path`` when the block sets one)::

    onnx(opset)    model.onnx (one file, weights inside) + tokenizer/ (text) + onnx.json
    torchscript    model.pt (torch.jit.trace)            + tokenizer/ (text) + export.json
    pt2            model.pt2 (torch.export.save)          + tokenizer/ (text) + export.json
    safetensors    model.safetensors + spec.json (TorchModel.load reads the folder) + tokenizer/
    hf(merge)      the folder itself is a Hugging Face folder (export_hf.py): config with label
                   maps, weights, tokenizer, generation_config.json, README.md (model card)

plus ``verify.json`` when ``verify`` is set. A user ``path`` gets the main file (or, for `hf`, the
Hugging Face folder itself, without ``export.json``/``verify.json``) written atomically; a text
model's tokenizer goes beside a file as ``<stem>.tokenizer/``.

ONNX files carry what a deployment needs in ``metadata_props`` (onnxruntime:
``InferenceSession.get_modelmeta().custom_metadata_map``): ``ftdsl.labels`` (JSON list of label
names), ``ftdsl.max_length``, ``ftdsl.task`` (JSON), ``ftdsl.inputs`` (comma-separated input
names: a BERT tokenizer's ``token_type_ids`` is not one of them, so call the tokenizer with
``return_token_type_ids=False`` or drop it), ``ftdsl.version``, ``ftdsl.stage``, ``ftdsl.source``.
A causal LM's graph is a decoder with past key values in Optimum's layout
(:mod:`~ftdsl.stages.export_decoder`; logits-only when its cache does not trace); a seq2seq model has
no ONNX export (schema ``EXPORT_REFUSED``: FTP243 at lint).

``verify = true`` compares the export with PyTorch on random but valid inputs (features:
noise at the scale of the data's normalization; text: token ids within the vocabulary with
random lengths) at three batch sizes; ``verify = { data = d.test, atol, rtol }`` uses up to
256 real rows of that split, tokenized with the model's tokenizer. A difference beyond
``|ort - torch| <= atol + rtol * |torch|`` is StageError FTP502 (exit 3).

Modules: this one (the stage and the formats), :mod:`~ftdsl.stages.export_artifacts` (the two
artifacts and the file helpers), :mod:`~ftdsl.stages.export_verify` (``verify``),
:mod:`~ftdsl.stages.probe_inputs` (example, random and real inputs, shared with `quantize`) and
:mod:`~ftdsl.stages.onnx_utils` (the exporters, and the reasons for the choice between them).
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from ftdsl.errors import FtdslError, StageError
from ftdsl.stages.export_artifacts import (FORMAT_VERSION, ONNX_FILE, TOKENIZER_DIR, ExportedFile, OnnxModel,
                                           copy_tokenizer, guarded_io, raise_if_resource, write_bytes, write_json)
from ftdsl.stages.export_common import base_meta, summary_line, write_user_copy
from ftdsl.stages.export_common import replace_dir as _replace_dir  # noqa: F401 - tests/faults call it
from ftdsl.stages.export_verify import (VERIFY_ATOL, VERIFY_RTOL, verification_batches, verify_decoder,
                                        verify_metrics, verify_onnx, verify_reloaded, verify_settings)
from ftdsl.stages.onnx_utils import OUTPUT_NAME
from ftdsl.stages.probe_inputs import example_inputs, random_batches, takes_tokens, text_limits

__all__ = ["OnnxModel", "ExportedFile", "run", "verify_onnx", "random_batches", "VERIFY_ATOL", "VERIFY_RTOL",
           "FORMAT_VERSION"]

# How to generate with a causal LM's graph (docs/language.md, "Exports of generative models").
PAST_NOTE = ("past key values (optimum layout): run the prompt with empty past_key_values.* (length 0), then "
             "feed each new token with the present.* outputs as the next past_key_values.*")
DECODING_NOTE = ("logits for every position, no past key values: to generate, feed the whole sequence each "
                 "step and take the next token from the last position's logits")
DEFAULT_FILES = {"onnx": ONNX_FILE, "torchscript": "model.pt", "pt2": "model.pt2",
                 "safetensors": "model.safetensors", "hf": ".",  # hf: the folder itself
                 "adapter": "adapter"}  # a PEFT folder (ftdsl.stages.export_adapter)


# --------------------------------------------------------------------------------------------
# The stage


def _format(v) -> tuple[str, dict]:
    """(format, its arguments), defaults from the schema (the front end guarantees a known format)."""
    from ftdsl.ir.lower import complete_call

    call = complete_call(v, "export_format")
    return call["$call"], {k: x for k, x in call.items() if k != "$call"}


def _label(attrs: dict) -> str:
    ref = attrs.get("from")
    return ref.get("$ref", "model") if isinstance(ref, dict) else str(ref or "model")


def run(inputs: dict, attrs: dict, ctx):
    src = inputs["from"]
    label = _label(attrs)
    if not getattr(src, "trained", False) or not hasattr(src, "build"):
        raise StageError("FTP510", f"`{label}` is an untrained model; export a `train` stage instead",
                         hint=f"train it first: `train t {{ model = {label}, data = ... }}`, then "
                              "`export ... { from = t }`")
    fmt, args = _format(attrs.get("format", "onnx"))
    from ftdsl.stages import export_adapter

    if export_adapter.wants_adapter(fmt, args):  # `adapter`, `hf(merge = false)`: the adapter itself
        return export_adapter.run(fmt, src, args, attrs, inputs, label, ctx)
    src = export_adapter.plain_source(src)  # the other formats: an adapter merged into the weights
    from ftdsl.ir.schema.modality import EXPORT_ORIGINS, EXPORT_REFUSED

    refused = EXPORT_REFUSED.get((fmt, (src.spec.get("task") or {}).get("$call")))
    if refused is not None:  # lint says it too (FTP243)
        raise StageError("FTP530", f"cannot export `{label}` as {fmt}: {refused[0]}", hint=refused[1])

    origin = src.spec.get("source", "arch")
    if origin == "arch" and (src.spec.get("arch") or {}).get("$call") in EXPORT_ORIGINS.get(fmt, ()):
        origin = src.spec["arch"]["$call"]  # gpt, llama, t5: Hugging Face models built from scratch
    if fmt not in DEFAULT_FILES or origin not in EXPORT_ORIGINS[fmt]:
        # the front end guarantees a known format that suits the model's origin (FTP215, FTP243)
        raise TypeError(f"export format {fmt!r} for a {src.spec.get('source')!r} model")
    settings = verify_settings(attrs.get("verify"))
    if attrs.get("path"):  # refuse a path outside the pipeline's folder before the work, not after
        from ftdsl.paths import resolve_output

        resolve_output(Path(ctx.pipeline_dir), attrs["path"])
    module = src.build()
    module.eval()
    out = Path(ctx.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = base_meta(src, module, label, ctx)
    ctx.reporter.start(None, f"export {label} ({fmt})")
    if fmt == "onnx":
        art = _run_onnx(src, module, args, meta, settings, inputs, label, ctx)
    else:
        art = _run_file(fmt, src, module, meta, settings, inputs, label, ctx, args, attrs)
    if attrs.get("path"):
        write_user_copy(art, attrs["path"], ctx)
    return art


def _run_onnx(src, module, args, meta, settings, inputs, label, ctx) -> OnnxModel:
    from ftdsl.stages.onnx_utils import export_onnx, serialize

    opset = int(args["opset"])  # completed from the schema (`_format`): its default is the one declaration
    out = Path(ctx.out_dir)
    example = example_inputs(src, module, ctx.seed)
    names = list(module.input_names)
    max_seq = text_limits(src, module)[2] if takes_tokens(module) else None
    t0 = time.perf_counter()
    decoder = None
    if (meta.get("task") or {}).get("$call") == "causal_lm":  # a decoder with past key values (export_decoder.py)
        from ftdsl.stages.export_decoder import export_decoder

        try:
            proto, decoder = export_decoder(module, opset=opset, max_seq=max_seq or None,
                                            vocab=text_limits(src, module)[0], seed=ctx.seed)
            exporter, log, names = "dynamo", "", list(decoder["inputs"])
        except Exception as e:  # noqa: BLE001 - fall back to the logits-only graph, and say so
            if getattr(e, "signum", None) is not None:
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            ctx.reporter.log(f"warning: cannot export `{label}` with past key values ({type(e).__name__}: {first}); "
                             "exported the logits-only graph (no past key values) instead")
    if decoder is None:
        try:
            proto, exporter, log = export_onnx(module, [example[n] for n in names], input_names=names,
                                               opset=opset, max_seq=max_seq or None)
        except RuntimeError as e:
            raise StageError("FTP530", f"cannot export `{label}` to ONNX (opset {opset}): {str(e)[:600]}",
                             hint="try another opset (`format = onnx(opset = 18)`), or `format = pt2`") from e
    meta["inputs"], meta["past"] = names, decoder
    export_s = time.perf_counter() - t0
    if exporter != "dynamo":
        first = (log.splitlines() or ["?"])[0]
        ctx.reporter.log(f"warning: the dynamo exporter could not export `{label}` ({first}); used the "
                         "deprecated TorchScript-based exporter instead")
    import onnx

    from ftdsl.stages.onnx_legalize import legalize

    legalize(proto)  # opset < 18: Split sizes as an input, where torch's down-conversion left an attribute
    for k, v in onnx_metadata(meta, names, ctx.name, label).items():
        p = proto.metadata_props.add()
        p.key, p.value = k, v
    proto.producer_name = proto.producer_name or "ftdsl"
    try:
        if proto.ByteSize() < 2_000_000_000:  # the checker takes a proto only below protobuf's limit
            onnx.checker.check_model(proto)
    except Exception as e:  # noqa: BLE001 - an invalid graph is the exporter's fault; say so clearly
        raise StageError("FTP530", f"the ONNX exporter produced an invalid model for `{label}`: "
                                   f"{str(e).strip().splitlines()[0][:300]}",
                         hint="try another opset (`format = onnx(opset = 18)`)") from e
    model_bytes, data_bytes = serialize(proto)
    del proto
    if data_bytes is not None:  # pragma: no cover - > 2 GB models only
        write_bytes(out / (ONNX_FILE + ".data"), data_bytes)
    write_bytes(out / ONNX_FILE, model_bytes)
    tok = copy_tokenizer(src.tokenizer_dir, out / TOKENIZER_DIR) if takes_tokens(module) else None
    meta.update({"format": "onnx", "opset": opset, "exporter": exporter, "quantization": None,
                 "external_data": data_bytes is not None})
    art = OnnxModel(out / ONNX_FILE, meta, tok)
    metrics = {"size_mb": art.size_bytes / 1e6, "export_s": export_s}
    if settings is not None:
        batches, where = verification_batches(settings, src, module, inputs, ctx)
        t1 = time.perf_counter()
        if decoder is not None:
            p = verify_decoder(art, module, batches, decoder, atol=settings["atol"], rtol=settings["rtol"],
                               label=label)
        else:
            p = verify_onnx(art, module, batches, atol=settings["atol"], rtol=settings["rtol"], label=label)
        metrics.update(verify_metrics(p, time.perf_counter() - t1))
        write_json(out / "verify.json", {**p.as_dict(), "data": where, "format": "onnx", "opset": opset,
                                          "exporter": exporter, "onnxruntime": _ort_version()})
    art.metrics = metrics
    write_json(out / "onnx.json", {**meta, "format_version": FORMAT_VERSION, "metrics": metrics})
    ctx.reporter.log(summary_line(label, f"{ONNX_FILE} (opset {opset}, {exporter})", art.size_bytes, metrics))
    return art


def onnx_metadata(meta: dict, names: list[str], stage: str, label: str) -> dict[str, str]:
    """The ``metadata_props`` of an exported graph (strings; read back with onnxruntime's
    ``get_modelmeta().custom_metadata_map``)."""
    import ftdsl
    from ftdsl.stages.export_hf import label_names

    labels = label_names({"task": meta.get("task"), "label_names": meta.get("label_names")})
    props = {"ftdsl.version": ftdsl.__version__, "ftdsl.stage": stage, "ftdsl.source": label,
             "ftdsl.modality": str(meta.get("modality")), "ftdsl.task": json.dumps(meta.get("task"), sort_keys=True),
             "ftdsl.inputs": ",".join(names), "ftdsl.output": OUTPUT_NAME}
    if labels:
        props["ftdsl.labels"] = json.dumps(labels)
    if meta.get("max_length"):
        props["ftdsl.max_length"] = str(int(meta["max_length"]))
    if meta.get("past"):
        props["ftdsl.decoding"] = PAST_NOTE
        props["ftdsl.past"] = json.dumps({k: meta["past"][k] for k in ("layers", "kv_heads", "head_dim")})
    elif (meta.get("task") or {}).get("$call") == "causal_lm":
        props["ftdsl.decoding"] = DECODING_NOTE
    return props


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


# -- torchscript / pt2 / safetensors / hf -----------------------------------------------------


def _program_bytes(fmt: str, module, example: tuple, src) -> bytes:
    """The module traced (torchscript) or exported (pt2, dynamic batch and sequence axes), saved."""
    import torch

    from ftdsl.stages.onnx_utils import dynamic_dims

    buf = io.BytesIO()
    if fmt == "torchscript":
        with torch.inference_mode(False), torch.no_grad():
            torch.jit.save(torch.jit.trace(module, example, check_trace=False, strict=False), buf)
    else:
        limit = text_limits(src, module)[2] if takes_tokens(module) else None
        torch.export.save(torch.export.export(module, example, dynamic_shapes=dynamic_dims(module, example, limit)),
                          buf)
    return buf.getvalue()


def _load_program(fmt: str, data: bytes):
    import torch

    if fmt == "torchscript":
        return torch.jit.load(io.BytesIO(data), map_location="cpu")
    return torch.export.load(io.BytesIO(data)).module()


def _run_file(fmt, src, module, meta, settings, inputs, label, ctx, args=None, attrs=None) -> ExportedFile:
    if fmt == "hf" and (src.spec.get("shrunk") or {}).get("heads"):
        # a Hugging Face config has one head count for every layer (transformers 5 has no `pruned_heads`)
        raise StageError("FTP530", f"cannot export `{label}` as hf: structured pruning removed attention heads, "
                         "which a Hugging Face config cannot describe (from_pretrained would rebuild every head)",
                         hint="export `format = safetensors()` or `onnx()`, or prune with `what = [ffn]`")
    out = Path(ctx.out_dir)
    names = list(module.input_names)
    example = example_inputs(src, module, ctx.seed)
    ex = tuple(example[n] for n in names)
    main = DEFAULT_FILES[fmt]
    files = [main]
    t0 = time.perf_counter()
    reload: Callable[[], Any] | None = None
    from ftdsl.stages.onnx_utils import quiet_exporter

    try:
        if fmt in ("torchscript", "pt2"):
            with quiet_exporter():
                data = _program_bytes(fmt, module, ex, src)
            write_bytes(out / main, data)

            def reload():
                with quiet_exporter():
                    return _load_program(fmt, data)
        elif fmt == "safetensors":
            from safetensors.torch import save as st_save

            state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            spec = {**src.spec, "format_version": 1, "trained": True}
            spec_json = json.dumps(spec, indent=1, sort_keys=True, default=str)
            write_bytes(out / main, st_save(state, metadata={"format": "pt", "ftdsl_spec": spec_json}))
            write_bytes(out / "spec.json", spec_json.encode("utf-8"))
            files.append("spec.json")
            hf_cfg = getattr(getattr(module, "net", None), "config", None)
            if getattr(module, "hf", False) and hf_cfg is not None:
                guarded_io(lambda: hf_cfg.save_pretrained(str(out / "hf_config")), out / "hf_config")
                files.append("hf_config")

            def reload():
                from safetensors.torch import load_file

                from ftdsl.stages.torch_model import TorchModel

                return TorchModel(spec, load_file(str(out / main)),
                                  hf_config=out / "hf_config" if (out / "hf_config").is_dir() else None).build()
        elif fmt == "hf":
            from ftdsl.stages.export_hf import write_hf

            tmp = out / ".hf.tmp"
            where = str(attrs.get("path") or f"out/{ctx.name}").rstrip("/")
            info = write_hf(src, module, tmp, stage=ctx.name, key=getattr(ctx, "key", ""), where=where,
                            label=label)
            for name in info["files"]:  # the folder is the stage's output folder itself (no nested level)
                os.replace(tmp / name, out / name)
            tmp.rmdir()
            files = list(info["files"])
            meta.update({"id2label": info["labels"], "generation": info["generation"]})

            def reload():
                from ftdsl.stages.export_hf import reload_hf

                return reload_hf(out, src.spec)
    except (FtdslError, KeyboardInterrupt):
        raise
    except Exception as e:
        raise_if_resource(e, out / main)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:400]
        raise StageError("FTP530", f"cannot export `{label}` as {fmt}: {type(e).__name__}: {first}",
                         hint="try `format = onnx(...)` or `format = safetensors`") from e
    export_s = time.perf_counter() - t0
    if takes_tokens(module) and fmt != "hf" and copy_tokenizer(src.tokenizer_dir, out / TOKENIZER_DIR):
        files.append(TOKENIZER_DIR)
    meta.update({"format": fmt, "main": main, "files": files})
    art = ExportedFile(out, meta)
    metrics = {"size_mb": art.size_bytes / 1e6, "export_s": export_s}
    if settings is not None:
        batches, where = verification_batches(settings, src, module, inputs, ctx)
        t1 = time.perf_counter()
        with quiet_exporter():
            candidate = reload()
        p = verify_reloaded(f"`{fmt}` export", label, module, candidate, batches, settings["atol"], settings["rtol"])
        metrics.update(verify_metrics(p, time.perf_counter() - t1))
        write_json(out / "verify.json", {**p.as_dict(), "data": where, "format": fmt})
    art.metrics = metrics
    write_json(out / "export.json", {**meta, "format_version": FORMAT_VERSION, "metrics": metrics})
    where_to = "a Hugging Face folder" if main == "." else main  # hf: the folder is the artifact itself
    ctx.reporter.log(summary_line(label, where_to, art.size_bytes, metrics))
    return art
