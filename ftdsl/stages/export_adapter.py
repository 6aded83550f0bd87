"""`export` of a model trained with `lora = ...` (an adapter kept apart from its base,
``ftdsl.stages.adapters``): the adapter as a PEFT folder, or a Hugging Face base folder with it.

Files under ``out/<stage>/``::

    adapter              adapter/ (adapter_config.json + adapter_model.safetensors): what
                         ``PeftModel.from_pretrained(base, "adapter")`` loads; tokenizer/ beside it
    hf(merge = false)    the stage's folder is the base's Hugging Face folder, as `hf` writes it
                         (``from_pretrained`` loads it), with adapter/ inside
                         (``PeftModel.from_pretrained(base, "adapter")``)

``hf(merge = true)`` (the default) and every other format export the merged model: the export
stage asks ``TorchModel.merged()`` first (:func:`plain_source`). ``verify`` reloads the folder
through peft and compares its outputs with the model in the cache.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ftdsl.errors import FtdslError, StageError

__all__ = ["wants_adapter", "plain_source", "run", "reload_export"]

ADAPTER_DIR = "adapter"


def wants_adapter(fmt: str, args: dict) -> bool:
    """Whether an export format writes the adapter itself (not the merged weights)."""
    return fmt == "adapter" or (fmt == "hf" and args.get("merge") is False)


def plain_source(src):
    """The model an export of plain weights reads: an adapter merged into its base (FTP530 for
    prefix-tuning, which has no weights to merge into)."""
    return src.merged() if getattr(src, "adapter", None) else src


def run(fmt: str, src, args: dict, attrs: dict, inputs: dict, label: str, ctx):
    """Write the adapter folder (``format = adapter``) or base + adapter (``hf(merge = false)``)."""
    from ftdsl.stages import adapters
    from ftdsl.stages.export_common import base_meta as _base_meta, summary_line as _summary_line
    from ftdsl.stages.export_artifacts import (FORMAT_VERSION, TOKENIZER_DIR, ExportedFile, copy_tokenizer,
                                               guarded_io, raise_if_resource, write_json)
    from ftdsl.stages.export_verify import verification_batches, verify_metrics, verify_reloaded, verify_settings
    if not getattr(src, "adapter", None):
        what = "format = adapter" if fmt == "adapter" else "hf(merge = false)"
        raise StageError("FTP530", f"`{label}` was not trained with an adapter; {what} has nothing to write",
                         hint="train it with `lora = lora(...)`, or export `format = hf` (the whole model)")
    settings = verify_settings(attrs.get("verify"))
    if attrs.get("path"):
        from ftdsl.paths import resolve_output

        resolve_output(Path(ctx.pipeline_dir), attrs["path"])
    out = Path(ctx.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx.reporter.start(None, f"export {label} ({fmt})")
    t0 = time.perf_counter()
    main = ADAPTER_DIR if fmt == "adapter" else "."
    tmp = out / f".{fmt}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if fmt == "adapter":
            module = guarded_io(lambda: adapters.save_adapter_folder(src, tmp), tmp)
            shutil.rmtree(out / ADAPTER_DIR, ignore_errors=True)
            os.replace(tmp, out / ADAPTER_DIR)
            files = [ADAPTER_DIR]
        else:  # the base as a Hugging Face folder (the stage's folder itself, as `hf` writes it) + adapter/
            from ftdsl.stages.export_hf import write_hf

            base = adapters.base_artifact(src)
            base_module = base.build(load_weights=True) if base.trained else adapters.fresh_base(base)
            if not adapters.is_hf(base_module):
                raise StageError("FTP530", f"`{label}`'s base is not a Hugging Face model; hf cannot describe it",
                                 hint="export `format = adapter` or `safetensors`")
            where = str(attrs.get("path") or f"out/{ctx.name}").rstrip("/")
            info = write_hf(base, base_module, tmp, stage=ctx.name, key=getattr(ctx, "key", ""), where=where,
                            label=label)
            module = guarded_io(lambda: adapters.save_adapter_folder(src, tmp / ADAPTER_DIR), tmp)
            files = sorted({*info["files"], ADAPTER_DIR})
            for name in files:  # the folder is the stage's output folder itself (no nested level)
                if (out / name).is_dir():
                    shutil.rmtree(out / name)
                os.replace(tmp / name, out / name)
            tmp.rmdir()
    except (FtdslError, KeyboardInterrupt):
        raise
    except Exception as e:
        raise_if_resource(e, out / main)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:400]
        raise StageError("FTP530", f"cannot export `{label}` as {fmt}: {type(e).__name__}: {first}",
                         hint="try `format = hf` (merged) or `format = safetensors`") from e
    export_s = time.perf_counter() - t0
    if fmt == "adapter" and getattr(module, "modality", None) != "features" and \
            copy_tokenizer(src.tokenizer_dir, out / TOKENIZER_DIR):
        files.append(TOKENIZER_DIR)
    meta = _base_meta(src, module, label, ctx)
    base_spec = adapters.base_artifact(src).spec
    meta.update({"format": fmt, "main": main, "files": files, "merge": False,
                 "adapter": {"method": src.adapter["method"]["$call"], "folder": ADAPTER_DIR,
                             # what rebuilds the base of a `format = adapter` folder (reload_export)
                             "base_spec": base_spec, "base_stored": bool(src.adapter["base"].get("weights"))}})
    art = ExportedFile(out, meta)
    metrics = {"size_mb": art.size_bytes / 1e6, "export_s": export_s}
    if settings is not None:
        t1 = time.perf_counter()
        candidate = reload(src, out / main, fmt)
        if getattr(module, "task_name", None):  # a token task's module: its own inputs (decoder labels, ...)
            batches, where = _seq_batches(module, ctx.seed), "random tokens"
            p = _verify_seq(fmt, label, module, candidate, batches, settings)
        else:
            batches, where = verification_batches(settings, src, module, inputs, ctx)
            p = verify_reloaded(f"`{fmt}` export", label, module, candidate, batches, settings["atol"],
                                settings["rtol"])
        metrics.update(verify_metrics(p, time.perf_counter() - t1))
        write_json(out / "verify.json", {**p.as_dict(), "data": where, "format": fmt})
    art.metrics = metrics
    write_json(out / "export.json", {**meta, "format_version": FORMAT_VERSION, "metrics": metrics})
    ctx.reporter.log(_summary_line(label, "a PEFT adapter folder" if fmt == "adapter" else
                                   "a Hugging Face folder + adapter/", art.size_bytes, metrics))
    if attrs.get("path"):
        from ftdsl.stages.export_common import write_user_copy as _write_user_copy

        _write_user_copy(art, attrs["path"], ctx)
    return art


def reload(src, folder: Path, fmt: str):
    """The exported folder loaded back through peft, as the cache model's FtdslModule kind."""
    import warnings

    import peft

    from ftdsl.stages import adapters
    from ftdsl.stages.pretrained import quiet_transformers

    base = adapters.base_artifact(src)
    if fmt == "adapter":
        module = base.build(load_weights=True) if base.trained else adapters.fresh_base(base)
        adapter = folder
    else:  # the folder as transformers loads it
        from ftdsl.stages.export_hf import reload_hf

        module = reload_hf(folder, src.spec)
        adapter = folder / ADAPTER_DIR
    with quiet_transformers(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module.net = peft.PeftModel.from_pretrained(module.net, str(adapter))
    extras = {k[len("module."):]: v for k, v in (src.state_dict() or {}).items() if k.startswith("module.")}
    if extras:
        module.load_state_dict({**module.state_dict(), **extras}, strict=True)
    return module.eval()


def _seq_batches(module, seed: int) -> list[dict]:
    """Random token batches for a SeqModule (its ``input_names``; the later rows padded)."""
    import torch

    cfg = module.net.config
    vocab = int(getattr(cfg, "vocab_size", 0) or 2)
    g = torch.Generator().manual_seed(int(seed) + 1)
    out = []
    for b, length in ((1, 5), (3, 9)):
        ids = torch.randint(1, vocab, (b, length), generator=g)
        mask = torch.ones_like(ids)
        mask[1:, length - 2:] = 0
        batch = {"input_ids": ids, "attention_mask": mask}
        if "decoder_labels" in module.input_names:
            batch["decoder_labels"] = torch.randint(1, vocab, (b, 4), generator=g)
        out.append(batch)
    return out


def _verify_seq(fmt: str, label: str, module, candidate, batches, settings):
    import torch

    from ftdsl.stages.agreement import compare_outputs
    from ftdsl.stages.export_verify import parity_error as _parity_error

    def call(m):
        def f(b):
            with torch.inference_mode():
                return m(**b).float().numpy()
        return f

    p = compare_outputs(call(module), call(candidate), batches, atol=settings["atol"], rtol=settings["rtol"])
    if not p.ok:
        raise _parity_error(f"`{fmt}` export", label, p, hint="the reloaded adapter does not compute what the "
                                                               "model in the cache computes")
    return p


def reload_export(art):
    """The FtdslModule of an ExportedFile this module wrote (``format = adapter`` or
    ``hf(merge = false)``): the base rebuilt (the Hugging Face folder, or what the model's spec
    names: the pretrained folder, the seeded from-scratch init) with the adapter loaded by peft.
    For `predict` and tests; a base trained by an earlier stage is not in an adapter folder (FTP530)."""
    import warnings

    import peft

    from ftdsl.stages.pretrained import quiet_transformers
    from ftdsl.stages.torch_model import TorchModel

    info = art.meta.get("adapter") or {}
    spec = info.get("base_spec") or {}
    if art.format == "hf":
        from ftdsl.stages.export_hf import reload_hf

        module, adapter = reload_hf(art.path, spec), art.path / ADAPTER_DIR
    else:
        if info.get("base_stored"):
            raise StageError("FTP530", "this adapter's base was trained by an earlier stage and is not in the "
                                       "adapter folder", hint="predict the train stage itself, or export "
                                                              "`hf(merge = false)` (base + adapter)")
        from ftdsl.stages import adapters

        module, adapter = adapters.fresh_base(TorchModel(spec)), art.path
    with quiet_transformers(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module.net = peft.PeftModel.from_pretrained(module.net, str(adapter))
    return module.eval()
