"""What every export writer shares (`export` and its adapter formats, ``export_adapter``): the
metadata an export records, its summary line, and the copy at the user's `path` under the rules
of `out/` (``runtime/outdir.py``: ownership marker or record, no symlink followed, FTP516 for
anything ftdsl did not write; disk full FTP505)."""

from __future__ import annotations

from pathlib import Path

from ftdsl.stages.export_artifacts import (TOKENIZER_DIR, ExportedFile, OnnxModel, copy_tree, guarded_io,
                                           link_or_copy)

__all__ = ["transformer_shape", "base_meta", "summary_line", "write_user_copy", "replace_dir"]


def transformer_shape(module) -> dict | None:
    """A Hugging Face transformer's heads and width (read by `quantize`'s graph fusion), or None."""
    cfg = getattr(getattr(module, "net", None), "config", None)
    heads, hidden = getattr(cfg, "num_attention_heads", None), getattr(cfg, "hidden_size", None)
    if not isinstance(heads, int) or not isinstance(hidden, int):
        return None
    return {"model_type": str(getattr(cfg, "model_type", "") or ""), "num_heads": heads, "hidden_size": hidden}


def base_meta(src, module, label: str, ctx) -> dict:
    spec = src.spec
    meta = {
        "inputs": list(module.input_names),
        "output": "logits",
        "modality": module.modality,
        "task": spec.get("task"),
        "input_shape": spec.get("input_shape"),
        "max_length": spec.get("max_length"),
        "label_names": spec.get("label_names"),
        "vocab_size": spec.get("vocab_size"),
        "pad_id": spec.get("pad_id"),
        "source": {"stage": label, "trained_by": spec.get("trained_by"), "kind": spec.get("source"),
                   "arch": (spec.get("arch") or {}).get("$call") if spec.get("source") == "arch" else None,
                   "pretrained": spec.get("pretrained")},
        "source_kind": spec.get("source"),
        "transformer": transformer_shape(module),
        "stage": ctx.name,
        "key": getattr(ctx, "key", ""),
    }
    import torch

    meta["torch"] = torch.__version__
    return meta


def summary_line(label: str, what: str, size: int, metrics: dict) -> str:
    from ftdsl.runtime.atomic import format_bytes

    line = f"exported `{label}` to {what}, {format_bytes(size)} in {metrics.get('export_s', 0):.1f}s"
    if "verify.rows" in metrics:
        line += (f"; verified on {metrics['verify.rows']} rows: max abs diff {metrics['verify.max_abs_diff']:.3g}, "
                 f"max rel diff {metrics['verify.max_rel_diff']:.3g}")
    return line


def write_user_copy(art, path: str, ctx) -> None:
    """Write the main file (or folder) at ``path`` (relative to the pipeline's folder), atomically;
    a text model's tokenizer goes beside it as ``<stem>.tokenizer/``. FTP303 if it escapes."""
    from ftdsl.paths import resolve_output

    root = Path(ctx.pipeline_dir)
    src_main = art.onnx_path if isinstance(art, OnnxModel) else art.path
    if (str(path).endswith("/") or resolve_output(root, path).is_dir()) and not src_main.is_dir():
        path = str(path).rstrip("/") + "/" + src_main.name  # a folder: the file goes inside it
    dest = resolve_output(root, path)
    guarded_io(lambda: dest.parent.mkdir(parents=True, exist_ok=True), dest.parent)
    dest = resolve_output(root, path)  # again, right before writing: the folder may have changed
    if isinstance(art, ExportedFile) and art.format == "hf":  # the HF folder: its files, not export.json
        import tempfile

        with tempfile.TemporaryDirectory(prefix=".hf-copy-", dir=Path(ctx.out_dir).parent) as d:
            for rel in art.meta["files"]:
                (link_or_copy if (art.root / rel).is_file() else copy_tree)(art.root / rel, Path(d) / rel)
            replace_dir(Path(d), dest)
    elif src_main.is_dir():
        replace_dir(src_main, dest)
    else:
        from ftdsl.runtime import outdir

        outdir.publish_file(src_main, dest, f"export `{ctx.name}`")
        data = src_main.with_name(src_main.name + ".data")
        if data.is_file():  # pragma: no cover - > 2 GB models only
            outdir.publish_file(data, dest.with_name(dest.name + ".data"), f"export `{ctx.name}`")
    tok = art.tokenizer_dir if isinstance(art, OnnxModel) else (
        art.root / TOKENIZER_DIR if (art.root / TOKENIZER_DIR).is_dir() else None)
    if tok is not None and not src_main.is_dir():
        replace_dir(tok, dest.with_name(dest.stem + ".tokenizer"))
    ctx.reporter.log(f"wrote {dest}")


def replace_dir(src: Path, dest: Path) -> None:
    """Copy folder ``src`` to ``dest`` (a user's `path`) under the rules of `out/` (runtime/outdir.py):
    built beside it and swapped in whole; a folder in the way that ftdsl did not create (no ownership
    marker, a symlink, files added by hand) is FTP516 and left untouched; disk full is FTP505."""
    from ftdsl.runtime import outdir

    outdir.publish(dest.parent, dest.name, src, None)  # no key: always copied (the stage just ran)
