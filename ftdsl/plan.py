"""IR -> the stages to run, with cache keys and the reason each one must (or need not) run.

No torch here. A stage's key is sha256 of canonical JSON of: its lowered attributes, the keys of
its inputs, the content hashes of the files it reads, the version of its kind's engine
(`ftdsl.stages.ENGINE_VERSION`), the library versions that change results, the seed and the device class (docs/internals.md §3). `plan` and `run` call the same
`make_plan`, so what `plan` prints is what `run` does.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import ftdsl
from ftdsl.frontend import Compiled
from ftdsl.runtime.versions import version as dist_version
from ftdsl.ir.lower import flatten, stage_config
from ftdsl.runtime.tracking import track_setting
from ftdsl.stages import ENGINE_VERSION

LIBS = ("torch", "transformers", "onnxruntime", "tokenizers", "peft")
SOURCE_CALLS = ("csv", "jsonl", "parquet")


@dataclass
class PlannedStage:
    name: str
    kind: str
    key: str
    config: dict
    inputs: dict[str, str]  # attribute path -> upstream stage name
    deps: list[str]
    payload: dict  # what the key hashes
    status: str = "new"  # cached | new | changed | upstream | forced | missing
    reasons: list[str] = field(default_factory=list)
    changes: list[tuple[str, object, object]] = field(default_factory=list)
    estimate: dict = field(default_factory=dict)
    written: tuple[str, ...] = ()  # attributes written in the file (the rest are defaults)
    artifact: str = ""  # what it produces: Dataset, TorchModel, QuantizedTorchModel, OnnxModel, ...
    resume: dict | None = None  # a waiting checkpoint: {"step": N, "of": M} (plan_trials.py)
    trials: dict | None = None  # a sweep's trials: cached / to run (plan_trials.py)

    @property
    def address(self) -> str:
        return f"{self.kind}.{self.name}"

    @property
    def will_run(self) -> bool:
        return self.status != "cached"


@dataclass
class Plan:
    pipeline: str
    root_dir: Path
    stages: list[PlannedStage]
    seed: int
    device: str
    cache_dir: Path
    out_dir: Path
    pipeline_abs: str = ""
    allow_outside_out: bool = False  # the pipeline's `allow_outside_out`: `out` may leave its folder
    track: tuple[str, ...] = ("tensorboard",)  # the pipeline's `track` (runtime/tracking.py; in no key)

    def by_name(self) -> dict[str, PlannedStage]:
        return {s.name: s for s in self.stages}


@functools.lru_cache(maxsize=None)
def lib_versions() -> dict[str, str]:
    out = {"ftdsl": ftdsl.__version__}
    for lib in LIBS:  # read from dist-info, without importlib.metadata (runtime/versions.py)
        out[lib] = dist_version(lib) or "absent"
    return out


def device_class(setting: str, flag: str | None = None) -> str:
    """`cpu`, `cuda` (or `mps`, from the flag), decided without importing torch (the key must not need torch).
    Precedence: the `--device` flag, then $FTDSL_DEVICE, then the pipeline's `device`."""
    if flag in ("cpu", "cuda", "mps"):
        return flag
    if flag and flag.startswith("cuda:"):  # one GPU of several: the same class of device
        return "cuda"
    env = os.environ.get("FTDSL_DEVICE")
    if env in ("cpu", "cuda") and flag in (None, "auto"):
        return env
    if setting in ("cpu", "cuda"):
        return setting
    return "cuda" if os.path.exists("/dev/nvidiactl") and os.environ.get("CUDA_VISIBLE_DEVICES") != "" else "cpu"


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether `precision = auto` picks bf16 on this CPU (from /proc/cpuinfo; no torch import)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        pass
    return False


def cache_root(compiled: Compiled, override: str | None = None) -> Path:
    if override:
        return Path(override)
    prog = compiled.program
    setting = prog.setting("cache") if prog else None
    if setting:
        return Path(prog.root_dir) / setting
    env = os.environ.get("FTDSL_CACHE")
    if env:
        return Path(env)
    return Path(".ftdsl") / "cache"


def out_root(compiled: Compiled) -> Path:
    prog = compiled.program
    return Path(prog.root_dir) / (prog.setting("out") or "out")


def _files_read(kind: str, cfg: dict, root: Path, cache, verify: bool) -> dict[str, str]:
    """Content hashes of the files a stage reads (data sources, local pretrained folders)."""
    files: dict[str, str] = {}

    def visit(v):
        if isinstance(v, dict):
            if v.get("$call") in SOURCE_CALLS and isinstance(v.get("path"), str):
                p = root / v["path"]
                files[v["path"]] = _hash(p, cache, verify)
            for x in v.values():
                visit(x)
        elif isinstance(v, list):
            for x in v:
                visit(x)

    visit(cfg)
    if kind == "model" and isinstance(cfg.get("pretrained"), str):
        files["pretrained:" + cfg["pretrained"]] = pretrained_fingerprint(cfg["pretrained"], root, cache, verify)
    return files


def _hash(p: Path, cache, verify: bool) -> str:
    try:
        if cache is not None:
            return cache.hash_file(p, memo=not verify)
        from ftdsl.paths import require_regular_file
        from ftdsl.runtime.hashing import sha256_file

        require_regular_file(p, what="data file", allow_dir=True)  # FTP004: a FIFO/device never ends
        return sha256_file(p)
    except OSError:
        return "missing"


def pretrained_fingerprint(ident: str, root: Path, cache, verify: bool) -> str:
    local = root / ident
    if local.is_dir():
        return "dir:" + (cache.hash_tree(local, memo=not verify) if cache is not None else "unhashed")
    from ftdsl.stages import OFFLINE_MODELS

    if ident in OFFLINE_MODELS:
        dist = OFFLINE_MODELS[ident][0]
        found = dist_version(dist)
        if found is not None:
            return f"package:{dist}=={found}"
    hub = Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME", str(Path.home() / ".cache/huggingface")))
    ref = (hub if hub.name == "hub" else hub / "hub") / f"models--{ident.replace('/', '--')}" / "refs" / "main"
    try:
        return "hf-cache:" + ref.read_text().strip()
    except OSError:
        return "hub:" + ident


def stage_key(payload: dict) -> str:
    """A stage's cache key from its payload: the one computation behind every key `plan` shows."""
    from ftdsl.runtime.hashing import hash_key

    return hash_key(payload)


def trial_key(target_payload: dict, attrs: dict) -> str:
    """The key of a sweep trial: the key a plain block like the target with `attrs` gets (same
    kind, inputs, versions and environment; a train/distill block reads no files itself)."""
    return stage_key({**target_payload, "attrs": attrs})


def make_plan(compiled: Compiled, cache=None, *, force: set[str] = frozenset(), only: set[str] | None = None,
              device: str | None = None, verify: bool = False) -> Plan:
    """Build the plan. `cache` (a runtime.cache.Cache or None) decides cached / changed statuses."""
    prog = compiled.program
    ctx = compiled.graph
    assert prog is not None and ctx is not None
    root = Path(prog.root_dir)
    seed = prog.setting("seed", 0) or 0
    dev = device_class(prog.setting("device", "auto") or "auto", device)
    versions = lib_versions()
    deps: dict[str, list[str]] = {n: [] for n in prog.blocks}
    inputs: dict[str, dict[str, str]] = {n: {} for n in prog.blocks}
    for e in ctx.edges:
        if e.src not in deps[e.dst]:
            deps[e.dst].append(e.src)
        inputs[e.dst][e.attr] = e.src
    wanted = _closure(only, deps) if only else None
    pipeline_abs = str(Path(prog.path).resolve())
    stages: list[PlannedStage] = []
    keys: dict[str, str] = {}
    by_name: dict[str, PlannedStage] = {}
    for name in ctx.order:
        if wanted is not None and name not in wanted:
            continue
        b = prog.blocks[name]
        cfg = stage_config(b, prog)
        files = _files_read(b.kind, cfg, root, cache, verify)
        env = {"seed": seed, "device": dev}
        if b.kind in ("train", "distill", "prune", "sweep") and dev == "cpu":
            env["cpu_bf16"] = cpu_has_bf16()
        payload = {"kind": b.kind, "engine": ENGINE_VERSION[b.kind], "attrs": cfg, "inputs": {a: keys[s] for a, s in sorted(inputs[name].items())},
                   "files": files, "versions": {k: versions[k] for k in sorted(versions)}, "env": env}
        key = stage_key(payload)
        keys[name] = key
        st = PlannedStage(name, b.kind, key, cfg, dict(inputs[name]), list(deps[name]), payload,
                          written=tuple(a for a, v in b.attrs.items() if v.written), artifact=ctx.types[name])
        _decide(st, pipeline_abs, cache, force, by_name, verify)
        st.estimate = _estimate(b.kind, cfg)
        stages.append(st)
        by_name[name] = st
    if cache is not None:
        from ftdsl.plan_trials import annotate

        annotate(stages, cache, pipeline_abs)
        cache.save_memo()
    return Plan(prog.path, root, stages, seed, dev, cache.root if cache is not None else Path(), out_root(compiled),
                pipeline_abs, allow_outside_out=prog.setting("allow_outside_out") is True, track=track_setting(prog))


def _closure(only: set[str], deps) -> set[str]:
    out, stack = set(), list(only)
    while stack:
        n = stack.pop()
        if n in out or n not in deps:
            continue
        out.add(n)
        stack.extend(deps[n])
    return out


def _decide(st: PlannedStage, pipeline: str, cache, force, by_name, verify: bool) -> None:
    upstream = [d for d in st.deps if d in by_name and by_name[d].will_run]
    if st.name in force:
        st.status, st.reasons = "forced", ["forced (--force)"]
        return
    if cache is not None and cache.has(st.key):
        # Keys are content hashes: an upstream stage that re-runs with an unchanged key (evicted,
        # forced) leaves this key unchanged too, so this stage stays cached.
        st.status = "cached"
        return
    prev = cache.last_run(pipeline, st.name) if cache is not None else None
    if prev is None:
        st.status, st.reasons = "new", ["new"]
        return
    if upstream:
        st.status = "upstream"
        st.reasons = [f"upstream {by_name[d].name} changed" for d in upstream]
    old_attrs = flatten(prev.get("attrs", {}).get("attrs", prev.get("attrs", {})))
    new_attrs = flatten(st.payload["attrs"])
    st.changes = [(k, old_attrs.get(k, "(unset)"), new_attrs.get(k, "(unset)"))
                  for k in sorted(set(old_attrs) | set(new_attrs)) if old_attrs.get(k) != new_attrs.get(k)]
    reasons = [f"changed: {k} {_fmt(o)} -> {_fmt(n)}" for k, o, n in st.changes]
    prev_payload = prev.get("attrs", {}) if isinstance(prev.get("attrs"), dict) else {}
    old_files = prev_payload.get("files", {}) if "files" in prev_payload else {}
    for f, h in st.payload["files"].items():
        if f in old_files and old_files[f] != h:
            reasons.append(f"changed: file {f}")
    if prev_payload and prev_payload.get("engine") != st.payload["engine"]:
        reasons.append(f"engine changed: {st.kind} engine {prev_payload.get('engine') or 0} -> {st.payload['engine']}")
    old_versions = prev_payload.get("versions", {})
    for lib, v in st.payload["versions"].items():
        if lib in old_versions and old_versions[lib] != v:
            reasons.append(f"changed: {lib} {old_versions[lib]} -> {v}")
    old_env = prev_payload.get("env", {})
    for k, v in st.payload["env"].items():
        if k in old_env and old_env[k] != v:
            reasons.append(f"changed: {k} {old_env[k]} -> {v}")
    if reasons:
        st.status = "changed"
        st.reasons = reasons + st.reasons
    elif not upstream:
        if prev.get("key") == st.key:
            st.status, st.reasons = "missing", ["cache entry missing (evicted or corrupt)"]
        else:
            st.status, st.reasons = "changed", ["changed: cache key inputs"]


def _fmt(v) -> str:
    if isinstance(v, str):
        return v if v.endswith("(...)") or v == "(unset)" else f'"{v}"'
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


def _estimate(kind: str, cfg: dict) -> dict:
    est = {}
    if kind in ("train", "distill"):
        if cfg.get("max_steps"):
            est["steps"] = cfg["max_steps"]
        elif cfg.get("epochs"):
            est["epochs"] = cfg["epochs"]
        est["batch"] = cfg["batch"] * cfg["accumulate"]  # the lowering filled both from the schema
    if kind == "model":
        arch = cfg.get("arch")
        if isinstance(arch, dict) and arch.get("$call") == "mlp":
            est["hidden"] = arch.get("hidden")
    return est
