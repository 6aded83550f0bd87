"""Multi-process training through PyTorch's own launcher, torchrun (``torch.distributed.run``).

``ftdsl run --nproc N`` runs every stage that is not distributed once, in the launching process;
a stage with ``distributed = ddp | fsdp`` is handed to torchrun's elastic agent, which starts N
worker processes per machine (``python -m ftdsl.runtime.distributed JOB``). Each worker loads
the stage's inputs from their cache entries, joins the process group (gloo on CPU, NCCL on CUDA,
one GPU per local rank) and runs the stage; rank 0 alone writes checkpoints, ``out/`` files and
the artifact, into the folder the launching process then publishes as the cache entry. A worker
killed mid-training makes torchrun restart all of them (``--max-restarts``), and they resume from
the last checkpoint.

Under an external launcher (``torchrun ... -m ftdsl run``, Slurm or Kubernetes setting RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT) every rank runs ``ftdsl run``; the
executor joins the process group at the first distributed stage (:func:`external_world`).

No torch at import time. Whether this install supports a mode (for `lint`):
``ftdsl.capabilities.distributed_supported``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LaunchOptions", "World", "is_distributed", "external_world", "launch",
           "run_in_rank", "init_process_group", "shutdown", "launches", "compute_launched", "run_external", "leave", "annotate_plan", "world_size_of"]

WORKER_ENV = "FTDSL_TORCHRUN_WORKER"  # set in workers ftdsl launched itself
MODES = ("ddp", "fsdp")


@dataclass
class LaunchOptions:
    nproc: int = 1  # processes per machine
    nnodes: str = "1"  # machines: "2", or "1:4" for an elastic range
    node_rank: int | None = None  # static rendezvous
    rdzv_endpoint: str | None = None  # host:port of the rendezvous (c10d) or of rank 0 (static)
    rdzv_id: str | None = None
    rdzv_backend: str | None = None  # default: static with --node-rank, else c10d
    max_restarts: int = 0
    quiet: bool = False
    extra_env: dict = field(default_factory=dict)

    @property
    def one_machine(self) -> bool:
        return self.nnodes in ("1", "1:1")

    @property
    def launches(self) -> bool:
        """Whether distributed stages go through torchrun (more than one process in the job)."""
        return self.nproc > 1 or self.nnodes not in ("1", "1:1")

    def describe(self) -> str:
        nodes = "" if self.nnodes in ("1", "1:1") else f" x {self.nnodes} machines"
        return f"{self.nproc} process{'es' if self.nproc != 1 else ''}{nodes}"


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int


def is_distributed(kind: str, config: dict) -> bool:
    return kind == "train" and (config.get("distributed") or "none") in MODES


def external_world() -> World | None:
    """The torchrun environment of a process ftdsl did not launch itself (an outside torchrun,
    Slurm, Kubernetes), when it describes more than one process."""
    if os.environ.get(WORKER_ENV):
        return None
    try:
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
    except (KeyError, ValueError):
        return None
    return World(rank, world) if world > 1 else None


def world_size_of(opts: LaunchOptions | None) -> int | None:
    """The job's number of processes, when it is known before the launch (None for an elastic
    range of machines)."""
    world = external_world()
    if world is not None:
        return world.world_size
    if opts is None:
        return 1
    try:
        return opts.nproc * int(opts.nnodes)
    except ValueError:  # "1:4": decided at the rendezvous
        return None


def annotate_plan(plan, opts: LaunchOptions | None) -> int:
    """Show each distributed stage's world size and per-process batch in the plan, and refuse a
    global batch the processes cannot share (FTP541) before anything runs. Returns how many
    stages are distributed."""
    from ftdsl.errors import FtdslError

    world = world_size_of(opts)
    count = 0
    for st in plan.stages:
        if not is_distributed(st.kind, st.config):
            continue
        count += 1
        if world is None:
            st.estimate["world_size"] = f"{opts.nnodes} x {opts.nproc}" if opts else "?"
            continue
        batch = int(st.config.get("batch") or 32)
        st.estimate["world_size"] = world
        if batch % world:
            lo = batch - batch % world
            raise FtdslError("FTP541", f"stage `{st.name}`: batch = {batch} is the global batch and does not divide "
                             f"among {world} processes",
                             hint=f"use batch = {lo or world} or {lo + world}, or a process count that divides {batch}")
        st.estimate["per_process_batch"] = batch // world
    return count


# --------------------------------------------------------------------------------------------
# The process group (inside a rank)


def init_process_group(device: str) -> str:
    """Join the job's process group (from the torchrun environment) once; returns the device of
    this rank (``cuda`` with the local rank's GPU made current, or ``cpu``)."""
    import datetime

    import torch
    import torch.distributed as dist

    from ftdsl.errors import StageError

    if dist.is_initialized():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        n = torch.cuda.device_count()
        if local >= n:
            raise StageError("FTP540", f"local rank {local} has no GPU: {n} visible (CUDA_VISIBLE_DEVICES="
                             f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})",
                             hint="use --nproc no larger than the number of GPUs on each machine")
        torch.cuda.set_device(local)  # one GPU per rank: "cuda" now means this rank's GPU
        backend = "nccl"
    else:
        backend = "gloo"
    timeout = datetime.timedelta(seconds=float(os.environ.get("FTDSL_DIST_TIMEOUT", "1800")))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None:  # an outside launcher without torchrun's agent: the env:// rendezvous
        dist.init_process_group(backend, timeout=timeout)
        return device
    # Under torchrun the store outlives a restart: the ranks of attempt 2 found the addresses that
    # attempt 1 published there and gloo's connect to the dead rank failed (measured, torch 2.13).
    # A prefix per attempt keeps each attempt's keys apart.
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=rank == 0 and not agent, timeout=timeout)
    dist.init_process_group(backend, store=dist.PrefixStore(f"ftdsl/attempt-{attempt}", store), rank=rank,
                            world_size=world, timeout=timeout)
    return device


def shutdown() -> None:
    """Leave the process group. The garbage collection first: gloo's threads alive at exit
    aborted 5 of 12 runs with "terminate called without an active exception" (stack.md §8)."""
    import gc

    import torch.distributed as dist

    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()


def run_in_rank(kind: str, inputs: dict, config: dict, ctx) -> Any:
    """Run a distributed stage in this rank (the process group is already joined)."""
    from ftdsl.stages import STAGES, load_object

    return load_object(STAGES[kind])(inputs, config, ctx)


# --------------------------------------------------------------------------------------------
# The launching process


def _threads_per_rank(nproc: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, nproc))


def torchrun_args(opts: LaunchOptions, job: Path) -> list[str]:
    args = [f"--nproc-per-node={opts.nproc}", f"--nnodes={opts.nnodes}", f"--max-restarts={opts.max_restarts}"]
    single = opts.nnodes in ("1", "1:1") and not opts.rdzv_endpoint
    if single:
        args.append("--standalone")  # a free port on localhost
    else:
        backend = opts.rdzv_backend or ("static" if opts.node_rank is not None else "c10d")
        args += [f"--rdzv-backend={backend}", f"--rdzv-endpoint={opts.rdzv_endpoint or 'localhost:29400'}",
                 f"--rdzv-id={opts.rdzv_id or 'ftdsl'}"]
        if opts.node_rank is not None:
            args.append(f"--node-rank={opts.node_rank}")
    return args + ["-m", "ftdsl.runtime.distributed", str(job)]


def launch(job: dict, job_dir: Path, opts: LaunchOptions) -> dict:
    """Run one distributed stage under torchrun. ``job``: the stage (kind, name, config), its
    inputs (``{attr: {"class": "module:Class", "entry": dir}}``) and context; rank 0 writes the
    artifact to ``job["artifact_dir"]``. Returns rank 0's result (``{"metrics": ...}``); a
    failed job raises the StageError a rank reported (or FTP540)."""
    from ftdsl.errors import StageError

    job_dir.mkdir(parents=True, exist_ok=True)
    path = job_dir / "job.json"
    path.write_text(json.dumps(job, default=str), encoding="utf-8")
    for old in job_dir.glob("error-*.json"):
        old.unlink()
    import torch.distributed.run as trun

    saved = {k: os.environ.get(k) for k in (WORKER_ENV, "OMP_NUM_THREADS", "LOGLEVEL", *opts.extra_env)}
    os.environ[WORKER_ENV] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads_per_rank(opts.nproc)))
    os.environ.setdefault("LOGLEVEL", "ERROR")  # torchrun's agent logs every start at WARNING
    os.environ.update({k: str(v) for k, v in opts.extra_env.items()})
    try:
        trun.main(torchrun_args(opts, path))
    except SystemExit as e:  # argument errors in torchrun itself
        raise StageError("FTP540", f"torchrun refused the launch (exit {e.code})",
                         hint="check --nnodes, --node-rank and --rdzv-endpoint") from None
    except Exception as e:  # ChildFailedError, rendezvous errors
        err = _reported_error(job_dir)
        if err is not None:
            raise StageError(err["code"], err["message"], hint=err.get("hint")) from None
        first = str(e).strip().splitlines()
        raise StageError("FTP540", f"distributed training failed: {type(e).__name__}"
                         + (f": {first[0][:200]}" if first else ""),
                         hint="a worker process died (see its output above); --max-restarts N lets torchrun "
                         "restart the job from the last checkpoint") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        return json.loads((job_dir / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        if job.get("publishes", True):
            raise StageError("FTP540", "the distributed job ended without rank 0's result") from None
        return {}


def _reported_error(job_dir: Path) -> dict | None:
    found = sorted(job_dir.glob("error-*.json"))
    for p in found:
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return None


# --------------------------------------------------------------------------------------------
# A worker (python -m ftdsl.runtime.distributed JOB)


def _worker(job_path: str) -> int:
    from ftdsl.errors import FtdslError
    from ftdsl.runtime.atomic import write_json_atomic

    job_file = Path(job_path)
    job = json.loads(job_file.read_text(encoding="utf-8"))
    job_dir = job_file.parent
    rank = int(os.environ.get("RANK", "0"))
    code = 0
    try:
        _run_job(job, rank)
    except FtdslError as e:
        write_json_atomic(job_dir / f"error-{rank}.json", {"code": e.code, "message": e.message, "hint": e.hint})
        print(f"error[{e.code}]: stage `{job['name']}` (rank {rank}): {e.message}", file=sys.stderr)
        code = 3
    finally:
        try:
            shutdown()
        except Exception:  # noqa: BLE001 - leaving a broken group must not hide the stage's result
            pass
    return code


def _run_job(job: dict, rank: int) -> None:
    from ftdsl.runtime.atomic import json_safe, write_json_atomic
    from ftdsl.runtime.progress import Console, StageReporter
    from ftdsl.stages import load_object
    from ftdsl.stages.base import Reporter, StageContext

    c = job["ctx"]
    device = init_process_group(c["device"])
    inputs = {attr: load_object(src["class"]).load(Path(src["entry"]) / "artifact")
              for attr, src in job["inputs"].items()}
    main = rank == 0
    out_dir = Path(c["out_dir"]) if main else Path(job["scratch"]) / f"rank-{rank}" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    reporter = StageReporter(Console(quiet=job.get("quiet", False)), job["name"]) if main else Reporter()
    ctx = StageContext(name=job["name"], kind=job["kind"], pipeline_dir=Path(c["pipeline_dir"]), out_dir=out_dir,
                       work_dir=Path(c["work_dir"]), seed=int(c["seed"]), device=device, reporter=reporter,
                       verify=bool(c.get("verify")), key=c.get("key", ""),
                       force_resume=bool(c.get("force_resume")), tracking=c.get("tracking"))
    try:
        artifact = run_in_rank(job["kind"], inputs, job["config"], ctx)
    finally:
        reporter.finish()
    if main and job.get("publishes", True):
        art_dir = Path(job["artifact_dir"])
        art_dir.mkdir(parents=True, exist_ok=True)
        artifact.save(art_dir)
        write_json_atomic(Path(job["scratch"]) / "result.json",
                          {"metrics": json_safe(getattr(artifact, "metrics", None) or {})})
    import torch.distributed as dist

    dist.barrier()  # the others wait until rank 0 has written everything
    del artifact, inputs


# --------------------------------------------------------------------------------------------
# The executor's side (kept here so the executor only asks "is this stage launched?")


def launches(opts: LaunchOptions | None, kind: str, config: dict) -> bool:
    """Whether this stage goes to torchrun from this process."""
    return opts is not None and opts.launches and is_distributed(kind, config) and external_world() is None


def compute_launched(ctx, kind: str, config: dict, inputs: dict, tmp: Path, opts: LaunchOptions) -> dict:
    """The executor's ``compute(tmp)`` for a launched stage: the workers write ``tmp/out`` and
    ``tmp/artifact`` (rank 0); returns the stage's metrics. The job's own files live in the
    stage's work folder (removed with it once the entry is published)."""
    from ftdsl.errors import StageError

    job_dir = Path(ctx.work_dir) / "torchrun"
    job = {
        "name": ctx.name, "kind": kind, "config": config, "inputs": inputs, "quiet": opts.quiet,
        "artifact_dir": str(tmp / "artifact"), "scratch": str(job_dir),
        "ctx": {"pipeline_dir": str(ctx.pipeline_dir), "out_dir": str(ctx.out_dir), "work_dir": str(ctx.work_dir),
                "seed": ctx.seed, "device": ctx.device, "verify": ctx.verify, "key": ctx.key,
                "force_resume": ctx.force_resume, "tracking": ctx.tracking},
    }
    ctx.reporter.log(f"launching {opts.describe()} with torchrun")
    result = launch(job, job_dir, opts)
    if not (tmp / "artifact").is_dir():
        raise StageError("FTP540", "the distributed job's rank 0 ran on another machine; this machine has no result",
                         hint="run the stages downstream of it on the machine of node rank 0")
    return result.get("metrics", {})


def run_external(ex, st, by_name, world: World) -> None:
    """A distributed stage under an outside launcher: every rank of the job runs ``ftdsl run``
    and reaches this stage; they train together, rank 0 inside the cache's lock publishes the
    entry, the others keep the artifact in memory for their downstream stages."""
    import tempfile

    import torch.distributed as dist

    from ftdsl.runtime.atomic import json_safe
    from ftdsl.runtime.executor import StageResult
    from ftdsl.runtime.progress import StageReporter
    from ftdsl.stages.base import Reporter, StageContext

    device = init_process_group(ex.plan.device)
    inputs = {attr: ex._artifact(src, by_name) for attr, src in st.inputs.items()}
    meta = {"stage": st.name, "kind": st.kind, "pipeline": ex.plan.pipeline, "metrics": {}}

    def context(out_dir: Path, reporter) -> StageContext:
        out_dir.mkdir(parents=True, exist_ok=True)
        return StageContext(name=st.name, kind=st.kind, pipeline_dir=ex.plan.root_dir, out_dir=out_dir,
                            work_dir=ex.cache.work_dir(st.key), seed=ex.plan.seed, device=device, reporter=reporter,
                            verify=ex.verify, key=st.key, force_resume=ex.force_resume, tracking=ex.tracking(st.name))

    import time

    t0 = time.perf_counter()
    if world.rank == 0:
        reporter = StageReporter(ex.console, st.name)

        def compute(tmp: Path) -> None:
            try:
                artifact = run_in_rank(st.kind, inputs, st.config, context(tmp / "out", reporter))
            finally:
                reporter.finish()
            (tmp / "artifact").mkdir()
            artifact.save(tmp / "artifact")
            meta["metrics"] = json_safe(getattr(artifact, "metrics", None) or {})

        if st.status == "forced":
            ex.cache.remove(st.key)
        entry, _ = ex.cache.get_or_compute(st.key, compute, meta, label=st.name, verify=ex.verify)
        dist.barrier()  # the entry is published: the other ranks may go on
        ex.entries[st.name] = entry
        ex.cache.record_run(ex.plan.pipeline_abs, st.name, st.key, st.payload, st.inputs)
        ex._sync_outputs(st, entry)
        metrics = meta["metrics"]
    else:
        import shutil

        scratch = Path(tempfile.mkdtemp(prefix=f"ftdsl-rank{world.rank}-"))
        try:
            artifact = run_in_rank(st.kind, inputs, st.config, context(scratch / "out", Reporter()))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)  # rank 0 writes the outputs
        ex.loaded[st.name] = artifact  # the same weights as rank 0's (DDP keeps them equal)
        dist.barrier()
        metrics = json_safe(getattr(artifact, "metrics", None) or {})
    ex.results[st.name] = StageResult(st.name, st.kind, "ran", time.perf_counter() - t0, metrics,
                                      f"rank {world.rank} of {world.world_size}" if world.rank else "")


def leave() -> None:
    """End of `ftdsl run`: leave a process group joined under an outside launcher."""
    if "torch.distributed" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            shutdown()


if __name__ == "__main__":  # a torchrun worker
    code = _worker(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no interpreter teardown with gloo threads around (stack.md §8)
