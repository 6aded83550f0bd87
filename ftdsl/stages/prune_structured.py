"""The `prune` stage's ``structured(amount, what, criterion)``: remove units, store a smaller model.

:mod:`ftdsl.stages.prune_shrink` chooses and removes the units (attention heads, FFN rows, MLP
units, CNN channels); this module is the stage around it: it checks that the model has what
``what`` asks for (FTP510 otherwise), records the new shapes in the artifact's spec
(``spec["shrunk"]``, rebuilt by ``TorchModel`` on load), fine-tunes the smaller model when
``recover`` is given (no masks: the removed units no longer exist), and writes
``out/<stage>/prune.json`` with the parameters, the bytes of the weights before and after and
what was removed per layer. ``vocab`` (never part of ``all``) trims the word-embedding table and the
tokenizer to what the train split of ``recover.data`` uses (:mod:`ftdsl.stages.prune_vocab`).
"""

from __future__ import annotations

import json
from typing import Any

from ftdsl.errors import StageError
from ftdsl.stages import prune_shrink as ps
from ftdsl.stages.torch_model import TorchModel

__all__ = ["run_structured", "parts_of"]


def parts_of(method: dict) -> tuple[str, ...] | None:
    """The unit kinds ``what`` names; None for ``all`` (which never includes ``vocab``)."""
    what = method.get("what", "all")
    if what in (None, "all"):
        return None
    return tuple([what] if isinstance(what, str) else what)


def _params(state: dict) -> int:
    return sum(t.numel() for k, t in state.items() if t.is_floating_point()
               and k not in ("norm_mean", "norm_std") and not k.endswith(("running_mean", "running_var")))


def _bytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def run_structured(src: TorchModel, method: dict, rec: dict | None, data, ctx, recover) -> TorchModel:
    """Shrink ``src`` by ``method``; ``recover(pruned, masks, data, rec, ctx)`` fine-tunes."""
    module = src.build()
    fam = ps.family_of(module)
    vocab = "vocab" in (parts_of(method) or ())
    units_asked = tuple(p for p in (parts_of(method) or ()) if p != "vocab")
    vplan = None
    if vocab:  # checked before anything changes: the data, the model's embedding, its tokenizer
        if data is None:
            raise StageError("FTP510", "structured(what = vocab) keeps the tokens the training data uses, but this "
                             "stage has no data", hint="add `recover = { epochs = 1 }`: the train split of its data "
                             "(by default the data the model was trained on) decides the vocabulary")
        from ftdsl.stages import prune_vocab

        vplan = prune_vocab.prepare(module, src.tokenizer_dir, data)
    if vocab and not units_asked:
        fam = fam or ps.Family("vocab", (), lambda net: True, lambda net: [])
    if fam is None:
        what = src.spec.get("arch", {}).get("$call") if src.spec.get("source") == "arch" else src.spec.get("pretrained")
        raise StageError("FTP510", f"structured pruning: `{what}` has no structure ftdsl can remove (attention heads "
                         "and FFN rows of a BERT-like encoder, units of an mlp, channels of a cnn)",
                         hint="use `method = magnitude(amount = ...)` (zeros weights; the model keeps its size)")
    wanted = units_asked if vocab else (parts_of(method) or fam.parts)
    missing = [p for p in wanted if p not in fam.parts]
    if missing:
        raise StageError("FTP510", f"structured(what = {', '.join(missing)}): this model ({fam.name} family) has "
                         f"{' and '.join(fam.parts)}, not {', '.join(missing)}",
                         hint=f"what = [{', '.join(fam.parts)}], or leave `what` out for all of them")
    before_state = {k: v.detach() for k, v in module.state_dict().items()}
    amount, criterion = float(method["amount"]), str(method.get("criterion") or "l2")
    groups = ps.plan(module, amount, tuple(wanted), criterion) if wanted else []
    if wanted and not any(g.drop for g in groups):
        raise StageError("FTP510", f"structured(amount = {amount}): no layer has enough units to remove that "
                         "fraction (at least one unit of each layer stays)", hint="raise `amount`")
    if parts_of(method) is None:  # `all`: the kinds this model has
        wanted = tuple(p for p in fam.parts if any(g.part == p for g in groups))
    record = ps.shrink(module, groups) if groups else {"family": fam.name, "tensors": {}, "heads": {}}
    tokenizer_dir, vocab_report = src.tokenizer_dir, None
    if vplan is not None:
        vrecord, vocab_report, tokenizer_dir = prune_vocab.trim(module, vplan, data, ctx.work_dir / "vocab_tokenizer")
        record["tensors"].update(vrecord["tensors"])
    after_state = {k: v.detach() for k, v in module.state_dict().items()}
    layers = {g.name: {"part": g.part, "units": g.units, "removed": len(g.drop), "kept": g.units - len(g.drop),
                       "removed_units": g.drop} for g in groups}
    removed = {p: sum(len(g.drop) for g in groups if g.part == p) for p in wanted}
    total = {p: sum(g.units for g in groups if g.part == p) for p in wanted}
    p0, p1 = _params(before_state), _params(after_state)
    b0, b1 = _bytes(before_state), _bytes(after_state)
    if vocab_report is not None:
        removed["vocab"] = vocab_report["before"] - vocab_report["after"]
        total["vocab"] = vocab_report["before"]
    ctx.reporter.log("structured(" + ", ".join(f"{k} = {v}" for k, v in method.items() if k != "$call") + "): removed "
                     + ", ".join(f"{removed[p]:,} of {total[p]:,} {p}" for p in removed)
                     + f"; {p0:,} -> {p1:,} parameters ({1 - p1 / p0:.1%} fewer)")
    spec_updates = {"pruned_by": ctx.name, "pruning": method,
                    "shrunk": _merge(src.spec.get("shrunk"), record)}
    pruned = src.with_module(module, metrics={}, **spec_updates)
    pruned.tokenizer_dir = tokenizer_dir
    recovered = recover(pruned, {}, data, rec, ctx) if rec else None

    metrics: dict[str, Any] = {"params_before": p0, "params_after": p1, "params_ratio": round(p1 / p0, 6),
                               "size_bytes_before": b0, "size_bytes_after": b1}
    metrics.update({f"removed.{p}": removed[p] for p in removed})
    if recovered is not None:
        metrics.update({k: v for k, v in recovered.metrics.items() if isinstance(v, (int, float))})
        metrics["recover_steps"] = metrics.pop("steps", 0)
        metrics.pop("epochs", None)
    for k in ("valid.accuracy", "valid.loss", "test.accuracy", "test.f1", "valid.mse", "test.mse"):
        if isinstance(src.metrics.get(k), (int, float)):
            metrics[f"before.{k}"] = src.metrics[k]
    report = {"method": method, "family": fam.name, "storage": "shrunk: the removed units are gone from the "
              "weights; the artifact's spec records the new shapes", "removed": removed, "units": total,
              "recovered": bool(recovered), "layers": layers, "metrics": metrics}
    if vocab_report is not None:
        report["vocab"] = vocab_report
    from ftdsl.runtime.atomic import write_text_atomic
    from ftdsl.stages.outputs import json_safe

    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(ctx.out_dir / "prune.json", json.dumps(json_safe(report), indent=1))
    mpath = ctx.out_dir / "metrics.json"
    existing = json.loads(mpath.read_text(encoding="utf-8")) if recovered is not None and mpath.is_file() else {}
    write_text_atomic(mpath, json.dumps(json_safe({**existing, **metrics}), indent=1, sort_keys=True))
    final = recovered if recovered is not None else pruned
    return TorchModel({**final.spec, **spec_updates}, final.state_dict(), tokenizer_dir=final.tokenizer_dir,
                      hf_config=final.hf_config, metrics=metrics)


def _merge(old: dict | None, new: dict) -> dict:
    """A model pruned twice: the second record's shapes win, heads of both are kept."""
    if not old:
        return new
    return {"family": new.get("family") or old.get("family"),
            "tensors": {**(old.get("tensors") or {}), **(new.get("tensors") or {})},
            "heads": {**(old.get("heads") or {}), **(new.get("heads") or {})}}
