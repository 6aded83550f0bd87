"""The predict loop: read rows in batches, preprocess them as the pipeline did, run the model,
write one record per row; bad rows are skipped or stop the run, per ``on_error``.

Preprocessing is the training path's own: a batch becomes a ``Split`` and goes through
``ftdsl.stages.batching.iter_batches`` with the model's tokenizer and ``max_length`` (text) or
the raw feature columns (features: the model normalizes with the train split's statistics it
carries). So a row gives what `evaluate` computes for it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from ftdsl.errors import FtdslError
from ftdsl.predict import rows as R
from ftdsl.predict import writers as W

MAX_SHOWN = 20  # skipped rows reported one by one; the rest are counted


@dataclass
class Options:
    input: str
    output: str | None = None  # None or "-": stdout
    format: str | None = None  # jsonl | csv (default: from --output's extension, else jsonl)
    input_format: str | None = None  # csv | tsv | jsonl (default: from --input's extension)
    on_error: str = "fail"  # fail | skip
    batch: int = 64
    device: str | None = None
    quiet: bool = False
    digits: int | None = None
    run_flags: str = ""  # ` --set K=V --device D --cache DIR`: the `run` that makes the entry (for hints)


def _task_name(info: dict) -> str:
    task = info.get("task")
    return task.get("$call", "classify") if isinstance(task, dict) else "classify"


def _schema(loc, info: dict) -> R.InputSchema:
    ds, cfg = loc.dataset, loc.data_config or {}
    modality = info.get("modality") or (ds.modality if ds is not None else "features")
    feature_names = (ds.feature_names if ds is not None else None) or cfg.get("features")
    text_column = (ds.text_column if ds is not None else None) or cfg.get("text") or "text"
    shape = info.get("input_shape") or (list(ds.input_shape) if ds is not None and ds.input_shape else None)
    return R.InputSchema(modality, list(feature_names) if feature_names else None, shape, text_column)


def _tokenizer(runner, loc):
    if runner.tokenizer is not None:
        return runner.tokenizer
    ds = loc.dataset
    if ds is not None and getattr(ds, "tokenizer_dir", None) is not None:
        from ftdsl.stages.tokenizer import load_tokenizer

        return load_tokenizer(ds.tokenizer_dir)
    return None


def predict(compiled, cache, file: str, stage: str, opts: Options) -> int:
    fmt = W.output_format(opts.output, opts.format)
    in_fmt = R.input_format(opts.input, opts.input_format)
    if opts.batch < 1:
        from ftdsl.errors import UsageError

        raise UsageError("FTP001", "--batch must be at least 1")
    source = R.Source(opts.input, in_fmt)  # a missing input fails before the model loads
    try:
        return _predict(compiled, cache, file, stage, opts, source, fmt)
    finally:
        source.close()


def _predict(compiled, cache, file: str, stage: str, opts: Options, source: R.Source, fmt: str) -> int:
    from ftdsl.predict.locate import locate
    from ftdsl.predict.runners import runner_for
    from ftdsl.runtime.device import resolve_device

    loc = locate(compiled, cache, file, stage, device=opts.device, flags=opts.run_flags)
    # where PyTorch runs: --device, else the pipeline's `device` (auto: a GPU when there is one),
    # the same choice `run` makes; a device that is not there is FTP530
    run_device = resolve_device(opts.device or compiled.program.setting("device", "auto") or "auto")
    runner = runner_for(loc.artifact_type, loc.artifact, run_device)
    info = runner.info
    from ftdsl.stages.tasks import is_seq_task

    if is_seq_task(_task_name(info)):
        return _run(source, opts, stage, loc, runner, fmt, _seq_batches(loc, runner, run_device, opts, file))
    out_kind = W.task_output(_task_name(info))
    schema = _schema(loc, info)
    if loc.dataset is None and schema.modality == "features" and not schema.feature_names and loc.data_stage:
        raise FtdslError("FTP560", f"the data stage `{loc.data_stage}` is not in the cache, and predict needs the "
                         f"feature columns it chose for `{stage}`",
                         hint=f"run it first: `ftdsl run {file} --only {loc.data_stage}{opts.run_flags}`")
    if schema.modality not in R.INPUT_KINDS:
        raise FtdslError("FTP562", f"predict cannot read inputs of `{schema.modality}` models yet")
    convert = schema.converter()
    tokenizer = _tokenizer(runner, loc) if schema.modality == "text" else None
    if schema.modality == "text" and tokenizer is None:
        raise FtdslError("FTP503", f"the text model of `{stage}` has no tokenizer in the cache",
                         hint=f"recompute it: `ftdsl run {file} --only {stage} --force {stage}{opts.run_flags}`")
    ds = loc.dataset
    max_length = info.get("max_length") or (ds.max_length if ds is not None else None)
    targets = None
    if ds is not None and ds.label_column:
        targets = [c.strip() for c in ds.label_column.split(",")]
    octx = W.OutputContext(label_names=info.get("label_names") or (ds.label_names if ds is not None else None),
                           target_names=targets, digits=opts.digits)

    def flush(pending, writer):
        _flush(pending, schema, runner, tokenizer, max_length, out_kind, octx, writer)

    return _run(source, opts, stage, loc, runner, fmt,
                Batches(convert, lambda src: R.check_header(src, schema), flush, out_kind.flat))


@dataclass
class Batches:
    """How one model family reads and predicts rows: row -> input, the header check, a batch of
    (row, input) pairs -> records written, and a record -> CSV cells."""

    convert: Any  # Row -> input (raises BadRow)
    check_header: Any  # Source -> None (raises the fatal FTP561 of a header without the columns)
    flush: Any  # (list of (Row, input), Writer) -> None
    flat: Any  # record -> CSV cells


def _seq_batches(loc, runner, device: str, opts: Options, file: str) -> Batches:
    """causal_lm / seq2seq (generated text) and token_classify (tags): ftdsl.predict.seq."""
    from ftdsl.ir.lower import complete_call
    from ftdsl.predict import seq as SQ
    from ftdsl.stages.evaluate_seq import seq_tokenizer

    call = complete_call(runner.info["task"], "task")
    module = runner.extra.get("module")
    onnx = None
    if module is None and call["$call"] == "causal_lm" and loc.artifact_type == "OnnxModel":
        from ftdsl.predict import onnx_generate
        from ftdsl.stages.tasks.generation import settings

        onnx_generate.check_settings(settings(loc.generate), (loc.artifact.meta.get("source") or {}).get("stage"))
        onnx = loc.artifact
    elif module is None and call["$call"] == "token_classify" and loc.artifact_type == "OnnxModel":
        module = SQ.OrtTagger(loc.artifact)
    elif module is None:
        raise FtdslError("FTP562", f"predict runs {call['$call']} models in PyTorch, and `{loc.stage}` is a "
                         f"{loc.artifact_type} ({runner.what})",
                         hint="predict the train stage it comes from, or export with format = hf")
    tokenizer = runner.tokenizer if loc.artifact_type == "ExportedFile" else None
    tokenizer = tokenizer or seq_tokenizer(loc.artifact, loc.dataset)
    ds = loc.dataset
    max_length = runner.info.get("max_length") or (ds.max_length if ds is not None else None)
    spec_in = SQ.seq_input(call["$call"], loc.data_config)
    predictor = SQ.SeqPredictor(module, tokenizer, call, generate=loc.generate, seed=loc.seed, max_length=max_length,
                                device=device, onnx=onnx)
    def flush(pending, writer):
        recs = predictor.records([v for _, v in pending], opts.batch)
        writer.write([{"row": r.number, "line": r.line, **rec} for (r, _), rec in zip(pending, recs)])

    return Batches(SQ.converter(spec_in), lambda src: SQ.check_header(src, spec_in), flush, SQ.flat)


def _run(source: R.Source, opts: Options, stage: str, loc, runner, fmt: str, how: Batches) -> int:
    sink = W.AtomicOutput(opts.output) if opts.output and opts.output != "-" else None
    writer = W.Writer(sink.stream if sink else sys.stdout, fmt, how.flat)
    state = _State(source, opts.on_error)
    progress = _Progress(source, opts.quiet, f"predict {stage} ({runner.what})")
    ok = False
    try:
        pending: list[tuple[R.Row, Any]] = []
        checked = False
        for item in source.rows():
            if not checked:
                how.check_header(source)
                checked = True
            if isinstance(item, R.BadRow):
                state.bad(item)
                continue
            try:
                pending.append((item, how.convert(item)))
            except R.BadRow as b:
                state.bad(b)
                continue
            if len(pending) >= opts.batch:
                how.flush(pending, writer)
                pending = []
                progress.update()
        if pending:
            how.flush(pending, writer)
        progress.update()
        if writer.count == 0:
            raise FtdslError(R.BAD_INPUT, f"{source.shown}: no row could be read ({state.skipped} skipped)",
                             hint="fix the rows reported above")
        if sink is not None:
            sink.commit()
        ok = True
    except OSError as e:
        from ftdsl.runtime.atomic import as_resource_error

        mapped = as_resource_error(e, opts.output or "<stdout>")
        if mapped is None:
            raise
        raise mapped from None
    finally:
        progress.close()
        if sink is not None and not ok:
            sink.discard()
    if not opts.quiet:
        where = opts.output if sink is not None else "stdout"
        skipped = f", skipped {state.skipped} bad row{'s' if state.skipped != 1 else ''}" if state.skipped else ""
        print(f"predicted {writer.count} row{'s' if writer.count != 1 else ''} with `{stage}` "
              f"({loc.artifact_type}, {runner.what}) -> {where}{skipped}", file=sys.stderr)
    return 0


class _State:
    def __init__(self, source: R.Source, on_error: str):
        self.source, self.on_error = source, on_error
        self.skipped = 0

    def bad(self, b: R.BadRow) -> None:
        if self.on_error != "skip":
            raise FtdslError(R.BAD_INPUT, f"{self.source.where(b.line)}: {b.message}",
                             hint="fix the row, or pass --on-error skip to leave bad rows out")
        self.skipped += 1
        if self.skipped <= MAX_SHOWN:
            print(f"warning[{R.BAD_INPUT}]: {self.source.where(b.line)}: {b.message} (row skipped)", file=sys.stderr)
        elif self.skipped == MAX_SHOWN + 1:
            print(f"warning[{R.BAD_INPUT}]: more bad rows skipped (only the first {MAX_SHOWN} are shown)",
                  file=sys.stderr)


def _flush(pending, schema, runner, tokenizer, max_length, out_kind, octx, writer) -> None:
    from ftdsl.stages.batching import iter_batches
    from ftdsl.stages.dataset import Split

    n = len(pending)
    values = [v for _, v in pending]
    numbers = np.arange(1, n + 1, dtype=np.int64)
    if schema.modality == "text":
        split = Split(None, list(values), np.zeros(n, dtype=np.int64), numbers)
    else:
        split = Split(np.stack(values).astype(np.float32), None, np.zeros(n, dtype=np.int64), numbers)
    outs = []
    for b in iter_batches(split, batch_size=n, shuffle=False, tokenizer=tokenizer, max_length=max_length):
        outs.append(runner.run({k: v for k, v in b.items() if k in ("x", "input_ids", "attention_mask")}))
    out = np.concatenate(outs)
    recs = out_kind.records(out, octx)
    writer.write([{"row": r.number, "line": r.line, **rec} for (r, _), rec in zip(pending, recs)])


class _Progress:
    """A rich progress bar over the input's bytes, on stderr, only when stderr is a terminal."""

    def __init__(self, source: R.Source, quiet: bool, desc: str):
        self.source = source
        self.bar = None
        if quiet or not sys.stderr.isatty():
            return
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=True)
        self.bar.start()
        self.task = self.bar.add_task(desc, total=max(1, source.total_bytes))

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=self.source.done_bytes)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
