"""Run a plan: stages in topological order, cached ones loaded (lazily) instead of run.

A stage that fails skips everything downstream of it; independent stages still run. The
summary table says what ran, what was cached, what failed and why. torch is imported only by
the stage modules, and only when a stage actually runs or an artifact must be loaded, so a fully
cached run never imports it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from ftdsl.errors import FtdslError, ResourceError, StageError
from ftdsl.ir.schema.metrics import DEFAULT_EVALUATE, summary_metrics
from ftdsl.plan import Plan, PlannedStage
from ftdsl.runtime.atomic import json_safe
from ftdsl.runtime.progress import Console, StageReporter
from ftdsl.stages import ARTIFACTS, STAGES, load_object
from ftdsl.stages.base import StageContext


@dataclass
class StageResult:
    name: str
    kind: str
    status: str  # cached | ran | failed | skipped
    seconds: float = 0.0
    metrics: dict = field(default_factory=dict)
    note: str = ""


class _Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def execute(plan: Plan, cache, *, verify: bool = False, force_resume: bool = False, quiet: bool = False,
            nproc: int = 1, console: Console | None = None, summary_json: str | None = None,
            launch=None) -> int:
    """Run `plan` with `cache`; returns the exit code (0, 3 stage failed, 4 resource, 70 bug, 130/143).
    `launch` (runtime.distributed.LaunchOptions; `nproc` is its short form) sends the stages with
    `distributed = ddp | fsdp` to torchrun."""
    console = console or Console(quiet=quiet)
    from ftdsl.runtime import outdir

    # Before anything runs: `out` must be inside the pipeline's folder (or opted out of it), and no
    # `out/NAME` in the way may be a folder, file or symlink that ftdsl did not create (FTP303/FTP516).
    try:
        out_root = outdir.resolve_out_root(plan.root_dir, plan.out_dir, allow_outside=plan.allow_outside_out)
        outdir.preflight(out_root, [st.name for st in plan.stages])
    except FtdslError as e:  # nothing ran; a CI reading --summary-json still gets one, saying why
        if summary_json:
            from ftdsl.runtime.atomic import write_json_atomic

            write_json_atomic(Path(summary_json), {
                "format_version": "1.0", "pipeline": plan.pipeline, "exit_code": 4, "stages": [],
                "error": {"code": e.code, "message": e.message}})
        raise
    cache.check_writable()
    cache.clean_stale_temps(0)
    cache.on_warning = lambda code, message: console.error(f"warning[{code}]: {message}")
    if launch is None and nproc != 1:
        from ftdsl.runtime.distributed import LaunchOptions

        launch = LaunchOptions(nproc=nproc, quiet=quiet)
    ex = _Executor(plan, cache, console, verify, force_resume, out_root)
    ex.launch = launch
    code = ex.run()
    ex.record_history()
    ex.summary()
    if summary_json:
        from ftdsl.runtime.atomic import write_json_atomic

        write_json_atomic(Path(summary_json), {
            "format_version": "1.0", "pipeline": plan.pipeline, "exit_code": code, "run_id": ex.run_id,
            "stages": [{"name": r.name, "kind": r.kind, "status": r.status, "seconds": round(r.seconds, 3),
                        "metrics": r.metrics, "note": r.note} for r in ex.results.values()]})
    return code


class _Executor:
    launch = None  # runtime.distributed.LaunchOptions: distributed stages go to torchrun

    def __init__(self, plan: Plan, cache, console: Console, verify: bool, force_resume: bool, out_root: Path):
        self.plan, self.cache, self.console = plan, cache, console
        self.out_root = out_root
        self.sync_failed: set[str] = set()  # stages whose outputs could not be copied to out/
        self.verify, self.force_resume = verify, force_resume
        self.results: dict[str, StageResult] = {}
        self.loaded: dict[str, object] = {}
        self.entries: dict[str, Path] = {}
        self.internal_error = False
        self._recomputed: set[str] = set()  # stages recomputed because their artifact did not load

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> int:
        by_name = self.plan.by_name()
        for st in self.plan.stages:
            bad = [d for d in st.deps if d in self.results and self.results[d].status in ("failed", "skipped")]
            if bad:
                self.results[st.name] = StageResult(st.name, st.kind, "skipped", note=f"upstream `{bad[0]}` "
                                                    f"{self.results[bad[0]].status}")
                self._withdraw(st)
                continue
            try:
                if st.status == "cached":
                    entry = self.cache.lookup(st.key, verify=self.verify, label=st.name)
                    if entry is not None:
                        self.entries[st.name] = entry
                        meta = _meta(entry)
                        self._sync_outputs(st, entry)
                        self.results[st.name] = StageResult(st.name, st.kind, "cached", 0.0,
                                                            meta.get("metrics", {}))
                        continue
                    # corrupt or evicted since planning: compute it again below
                self._run_stage(st, by_name)
            except ResourceError as e:
                self._fail(st, e)
                return 4
            except _Interrupted as e:
                self.results[st.name] = StageResult(st.name, st.kind, "failed", note="interrupted; checkpoint kept")
                self._withdraw(st)
                self.console.error(f"{st.name}: interrupted; the last checkpoint is kept and the next `ftdsl run` "
                                   "resumes from it")
                return 128 + e.signum
            except KeyboardInterrupt as e:  # Ctrl-C, or the train stage's StageInterrupted (SIGTERM/SIGINT)
                self.results[st.name] = StageResult(st.name, st.kind, "failed", note="interrupted; checkpoint kept")
                self._withdraw(st)
                self.console.error(f"{st.name}: interrupted; the next `ftdsl run` resumes from the last checkpoint")
                return 128 + int(getattr(e, "signum", signal.SIGINT))
            except FtdslError as e:
                self._fail(st, e)
            except Exception as e:  # noqa: BLE001 - a bug in a stage: report it, keep going
                self._internal(st, e)
        failed = [r for r in self.results.values() if r.status == "failed"]
        if self.internal_error:
            return 70
        return 3 if failed else 0

    def _run_stage(self, st: PlannedStage, by_name) -> None:
        if st.kind not in STAGES:
            raise StageError("FTP530", f"stage `{st.name}`: `{st.kind}` stages cannot run in this version of ftdsl "
                                       "(the checker knows the kind; its engine is not written yet)",
                             hint="remove the stage or run the others with `--only`")
        config = st.config
        from ftdsl.runtime import distributed

        if distributed.is_distributed(st.kind, config) and distributed.external_world() is not None:
            return distributed.run_external(self, st, by_name, distributed.external_world())
        launched = distributed.launches(self.launch, st.kind, config)
        if st.kind == "sweep":
            # A sweep re-runs its target with other settings: it needs the target's own inputs and
            # configuration, not the target's trained artifact.
            target = by_name[st.config["target"]["$ref"]]
            inputs = {attr: self._artifact(src, by_name) for attr, src in target.inputs.items()}
            config = {**st.config, "$target": {"name": target.name, "kind": target.kind, "config": target.config,
                                               "payload": target.payload, "forced": st.status == "forced"}}
        elif launched:  # the workers load the inputs from their entries
            inputs = {attr: {"class": ARTIFACTS[by_name[src].artifact],
                             "entry": str(self.entries.get(src) or self.cache.lookup(by_name[src].key, label=src))}
                      for attr, src in st.inputs.items()}
        else:
            inputs = {attr: self._artifact(src, by_name) for attr, src in st.inputs.items()}
        try:
            fn = load_object(STAGES[st.kind])
        except ModuleNotFoundError as e:
            if not (e.name or "").startswith("ftdsl.stages"):
                raise
            raise StageError("FTP530", f"stage `{st.name}`: `{st.kind}` stages cannot run in this version of ftdsl",
                             hint="remove the stage or run the others with `--only`") from None
        reporter = StageReporter(self.console, st.name)
        meta = {"stage": st.name, "kind": st.kind, "pipeline": self.plan.pipeline, "metrics": {}}

        def compute(tmp: Path) -> None:
            ctx = StageContext(name=st.name, kind=st.kind, pipeline_dir=self.plan.root_dir, out_dir=tmp / "out",
                               work_dir=self.cache.work_dir(st.key), seed=self.plan.seed, device=self.plan.device,
                               reporter=reporter, verify=self.verify, key=st.key, force_resume=self.force_resume,
                               cache=self.cache, tracking=self.tracking(st.name))
            ctx.out_dir.mkdir(parents=True, exist_ok=True)
            if launched:
                meta["metrics"] = json_safe(distributed.compute_launched(ctx, st.kind, config, inputs, tmp,
                                                                         self.launch))
                return
            with _signals_as_exceptions():
                artifact = fn(inputs, config, ctx)
            (tmp / "artifact").mkdir()
            artifact.save(tmp / "artifact")
            metrics = getattr(artifact, "metrics", None) or {}
            meta["metrics"] = json_safe(metrics)

        if st.status == "forced":
            self.cache.remove(st.key)  # --force: drop the entry so it is computed again
        t0 = time.perf_counter()
        try:
            if launched and not self.launch.one_machine:
                # every machine's ftdsl reaches this stage and must join the rendezvous: the cache
                # lock would keep the second one waiting for the first (a deadlock on a shared
                # cache); the entry is published without it (rank 0's machine writes it)
                entry, computed = self.cache.publish(st.key, compute, meta), True
            else:
                entry, computed = self.cache.get_or_compute(st.key, compute, meta, label=st.name,
                                                            verify=self.verify)
        finally:
            reporter.finish()
        secs = time.perf_counter() - t0
        self.entries[st.name] = entry
        # Downstream stages load the artifact from the entry, as they would on a cache hit, so a
        # computed and a cached upstream are indistinguishable (and resume hashes agree).
        self.cache.record_run(self.plan.pipeline_abs, st.name, st.key, st.payload, st.inputs)
        self._sync_outputs(st, entry)
        note = "" if computed else "computed by another run"
        self.results[st.name] = StageResult(st.name, st.kind, "ran" if computed else "cached", secs,
                                            _meta(entry).get("metrics", {}), note)

    def _artifact(self, name: str, by_name):
        if name in self.loaded:
            return self.loaded[name]
        st = by_name[name]
        entry = self.entries.get(name) or self.cache.lookup(st.key, verify=self.verify, label=name)
        if entry is None:  # pragma: no cover - upstream results always precede their users
            raise StageError("FTP503", f"the cache entry of `{name}` disappeared while running")
        cls = load_object(ARTIFACTS[st.artifact])
        try:
            obj = cls.load(entry / "artifact")
        except Exception as e:  # noqa: BLE001 - classified in _recompute_corrupt
            obj = self._recompute_corrupt(st, by_name, cls, e)
        self.loaded[name] = obj
        return obj

    def _recompute_corrupt(self, st: PlannedStage, by_name, cls, exc: Exception):
        """An entry whose checksums pass but whose artifact fails its load's checks (a tampered
        file with a fixed-up manifest, NaN rows or weights) is corrupt too: quarantine it (FTP503) and compute
        the stage again, once. A fresh artifact that does not load is a bug (raised as is)."""
        if (isinstance(exc, FtdslError) and exc.code not in ("FTP503", "FTP507")) or st.name in self._recomputed:
            raise exc
        self._recomputed.add(st.name)
        why = exc.message if isinstance(exc, FtdslError) else f"{type(exc).__name__}: {str(exc)[:200]}"
        self.cache.quarantine(st.key, f"the artifact does not load ({why})", label=st.name)
        self.entries.pop(st.name, None)
        self._run_stage(st, by_name)
        return cls.load(self.entries[st.name] / "artifact")

    run_id: str | None = None

    def record_history(self) -> None:
        """This run in the pipeline's history (`ftdsl runs`, `ftdsl diff`): every stage it reached, its
        status, attributes and metrics. One process records it (rank 0 under an outside launcher); a
        failure to record is a warning, never the run's failure."""
        from ftdsl.runtime import distributed

        world = distributed.external_world()
        if not self.results or (world is not None and world.rank != 0):
            return
        by_name = self.plan.by_name()
        rows = [{"name": n, "kind": r.kind, "key": by_name[n].key, "status": r.status,
                 "attrs": by_name[n].payload.get("attrs", {}), "files": by_name[n].payload.get("files", {}),
                 "metrics": r.metrics, "seconds": r.seconds}
                for n, r in self.results.items() if n in by_name]
        try:
            self.run_id = self.cache.record_history(self.plan.pipeline_abs, rows)
        except (FtdslError, OSError, ValueError) as e:
            self.console.error(f"warning: this run was not added to the run history ({getattr(e, 'message', e)})")

    def tracking(self, name: str) -> dict:
        """What a stage's trackers are told (StageContext.tracking; runtime/tracking.py)."""
        return {"track": list(self.plan.track), "pipeline": self.plan.pipeline_abs, "out": str(self.out_root / name)}

    # -- outputs ------------------------------------------------------------------------------
    def _sync_outputs(self, st: PlannedStage, entry: Path) -> None:
        """Copy the entry's user-facing files (metrics, plots, exports) to `out/<stage>/`, atomically,
        replacing only a folder ftdsl owns (runtime/outdir.py). Disk full is FTP505 and keeps the
        previous `out/<stage>/` intact; a folder in the way that is not ftdsl's is FTP516."""
        from ftdsl.runtime import outdir

        src = entry / "out"
        if not src.is_dir():
            return
        try:
            outdir.publish(self.out_root, st.name, src, st.key)
        except BaseException:
            self.sync_failed.add(st.name)
            raise

    def _withdraw(self, st: PlannedStage) -> None:
        """A stage that failed (or was skipped because an input failed) leaves nothing of its own in
        `out/`: its folder from an earlier run would look like this run's result. Only a folder
        ftdsl owns is removed; the earlier result stays in the cache."""
        from ftdsl.runtime import outdir

        if st.name in self.sync_failed:
            return  # the stage itself succeeded; its previous outputs stay intact (FTP505 said why)
        try:
            done = outdir.withdraw(self.out_root, st.name)
        except FtdslError as e:
            self.console.error(f"warning[{e.code}]: {e.message}")
            return
        if done == "removed":
            self.console.error(f"note: removed {self.out_root / st.name}: it held the outputs of an earlier run "
                               f"of `{st.name}`")
        elif done:
            self.console.error(f"note: {done}")

    # -- failures -----------------------------------------------------------------------------
    def _fail(self, st: PlannedStage, e: FtdslError) -> None:
        kept = ""
        work = self.cache.work_root / st.key
        if work.is_dir() and any(p.name.startswith("step-") for p in work.rglob("step-*")):
            kept = f"; checkpoints kept in {work}"
        self.results[st.name] = StageResult(st.name, st.kind, "failed", note=f"{e.code}{kept}")
        self.console.error(f"error[{e.code}]: stage `{st.name}` failed: {e.message}"
                           + (f"\n  = help: {e.hint}" if e.hint else "")
                           + (f"\n  = note: {kept[2:]}" if kept else ""))
        self._withdraw(st)

    def _internal(self, st: PlannedStage, e: Exception) -> None:
        from ftdsl.runtime.crash import write_crash_report

        self.internal_error = True
        # O_EXCL|O_NOFOLLOW, mode 0600: never follows a symlink planted at the predictable name.
        report = write_crash_report(f"stage {st.name} ({st.kind})\n\n{traceback.format_exc()}") \
            or "(could not write a crash report)"
        if os.environ.get("FTDSL_DEBUG") == "1":
            traceback.print_exc()
        self.results[st.name] = StageResult(st.name, st.kind, "failed", note="internal error")
        self._withdraw(st)
        self.console.error(f"error: internal error in stage `{st.name}`: unexpected exception. this is a bug.\n"
                           f"  = note: {type(e).__name__}: {str(e)[:300]}\n"
                           f"  = note: crash report: {report}\n"
                           "  = note: run with --debug (or FTDSL_DEBUG=1) for the traceback")

    # -- summary ------------------------------------------------------------------------------
    def summary(self) -> None:
        if self.console.quiet:
            return
        from rich.table import Table

        t = Table(title=f"ftdsl run {self.plan.pipeline}", title_justify="left", show_edge=False)
        for col in ("stage", "kind", "status", "time", "metrics"):
            t.add_column(col, justify="right" if col == "time" else "left")
        style = {"ran": "green", "cached": "cyan", "failed": "bold red", "skipped": "yellow"}
        for st in self.plan.stages:
            r = self.results.get(st.name)
            if r is None:
                continue
            metrics = "  ".join(f"{k} {_short(v)}" for k, v in _headline(r.metrics))
            status = r.status + (f" ({r.note})" if r.note else "")
            t.add_row(st.name, st.kind, f"[{style[r.status]}]{status}[/]", f"{r.seconds:.1f}s" if r.status == "ran"
                      else "-", metrics)
        self.console.rich.print(t)


# the metric registry's headline scores first (test, then valid), then what other stages report
_HEADLINE = (*summary_metrics(("test", "valid"), loss=True), "train.loss", "sparsity", "test.agreement",
             "sweep.best_trial", "verify.max_abs_diff", "size_mb", *(m for names in DEFAULT_EVALUATE.values() for m in names),
             "samples_per_s")


def _headline(metrics: dict) -> list:
    """The few metrics worth a column in the summary table."""
    out = [(k, metrics[k]) for k in _HEADLINE if k in metrics]
    return out[:3]


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _meta(entry: Path) -> dict:
    import json

    try:
        return json.loads((entry / "manifest.json").read_text()).get("meta", {})
    except (OSError, ValueError):
        return {}


class _signals_as_exceptions:
    """SIGTERM becomes an exception inside a stage, so training can checkpoint and stop cleanly."""

    def __enter__(self):
        self._old = None
        if sys.platform != "win32":
            try:
                self._old = signal.signal(signal.SIGTERM, self._handler)
            except ValueError:  # not the main thread
                self._old = None
        return self

    @staticmethod
    def _handler(signum, frame):
        raise _Interrupted(signum)

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
        return False
