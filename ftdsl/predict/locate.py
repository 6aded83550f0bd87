"""Find a stage's model in the cache, and the data stage whose preprocessing it was trained with.

The keys are the ones `plan` and `run` compute (``ftdsl.plan.make_plan``), so `predict` finds
exactly the entry `run` published for the same file, overrides and device. Nothing is computed:
a stage that is not cached is FTP560 with the `run` command to produce it. `out/` is never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ftdsl.errors import FtdslError, UsageError

NOT_CACHED = "FTP560"
NOT_A_MODEL = "FTP562"

# Artifact types predict can run (the runners registry has one entry per type); the rest are not
# models (Dataset, Report) or exports predict does not load (see runners.runner_for).
MODEL_ARTIFACTS = ("TorchModel", "QuantizedTorchModel", "OnnxModel", "ExportedFile")


@dataclass
class Located:
    stage: str
    kind: str
    artifact_type: str
    artifact: Any
    dataset: Any  # the data stage's Dataset artifact (column names, tokenizer, label names), or None
    data_stage: str | None
    data_config: dict | None  # the data stage's lowered attributes (text / features / label columns)
    seed: int = 0  # the pipeline seed (generation samples with it, as evaluate does)
    generate: dict | None = None  # `generate` of the first evaluate stage of this model (token tasks)


def _run_hint(file: str, stage: str, flags: str) -> str:
    return f"run it first: `ftdsl run {file} --only {stage}{flags}` (predict never trains)"


def locate(compiled, cache, file: str, stage: str, *, device: str | None = None, flags: str = "") -> Located:
    """``flags``: the `run` flags that give the same keys (` --set K=V --device D --cache DIR`), for hints."""
    from ftdsl.plan import make_plan
    from ftdsl.stages.artifacts import artifact_class

    plan = make_plan(compiled, cache, only={stage}, device=device)
    by_name = plan.by_name()
    st = by_name[stage]
    if st.artifact not in MODEL_ARTIFACTS:
        models = [s.name for s in plan.stages if s.artifact in MODEL_ARTIFACTS and s.kind != "model"]
        raise UsageError(NOT_A_MODEL, f"`{st.kind} {stage}` produces a {st.artifact or 'nothing'}, not a model "
                         "predict can run",
                         hint=("give a train, distill, prune, sweep, export or quantize stage"
                               + (f" (here: {', '.join(models)})" if models else "")))
    entry = cache.lookup(st.key, label=stage)
    if entry is None:
        raise FtdslError(NOT_CACHED, f"the model of `{st.kind} {stage}` is not in the cache "
                         f"({cache.root}, key {st.key[:12]})", hint=_run_hint(file, stage, flags))
    cls = artifact_class(st.artifact)
    try:
        art = cls.load(entry / "artifact")
    except FtdslError:
        raise
    except Exception as e:  # a damaged entry: the same treatment `run` gives it
        raise FtdslError("FTP503", f"the cache entry of `{stage}` does not load ({type(e).__name__}: "
                         f"{str(e)[:200]})", hint=f"recompute it: `ftdsl run {file} --only {stage} --force "
                                                  f"{stage}{flags}`") from None
    if not getattr(art, "trained", True):
        raise UsageError(NOT_A_MODEL, f"`{st.kind} {stage}` is an untrained model",
                         hint="predict with the `train` stage that trains it")
    data_stage = _nearest_data_stage(stage, by_name)
    dataset, data_config = None, None
    if data_stage is not None:
        ds = by_name[data_stage]
        data_config = ds.config
        d_entry = cache.lookup(ds.key, label=data_stage)
        if d_entry is not None:
            dataset = artifact_class("Dataset").load(d_entry / "artifact")
    from ftdsl.predict.seq import generate_settings

    return Located(stage, st.kind, st.artifact, art, dataset, data_stage, data_config, int(plan.seed),
                   generate_settings(compiled.program, stage))


def _nearest_data_stage(stage: str, by_name) -> str | None:
    """The data stage closest upstream of ``stage`` (breadth first; for a train stage, its `data`).
    A model stage alone has none (a pretrained model predicted before training)."""
    seen, frontier = {stage}, [stage]
    while frontier:
        nxt = []
        for name in frontier:
            st = by_name.get(name)
            if st is None:
                continue
            # a stage's own data input first (train.data), then its model lineage
            order = sorted(st.inputs.items(), key=lambda kv: (not kv[0].startswith("data"), kv[0]))
            for _, src in order:
                if src in seen or src not in by_name:
                    continue
                if by_name[src].kind == "data":
                    return src
                seen.add(src)
                nxt.append(src)
        frontier = nxt
    return None
