"""Dry runs: `ftdsl plan` and a fully cached `ftdsl run` against `dvc status`, side by side.

In a temporary folder the script builds

* a 7-stage ftdsl pipeline (data -> model -> train -> prune -> export -> quantize -> evaluate,
  tiny: a synthetic table and a 16-unit MLP) and runs it once, so every stage is cached;
* an equivalent DVC project (``git init``, ``dvc init``, a ``dvc.yaml`` of 7 stages with the
  same dependency chain whose commands are trivial Python scripts writing their outputs) and
  runs ``dvc repro`` once, so ``dvc status`` reports everything up to date;

then times, interleaved in one loop (the order rotating each round), each command as a fresh
subprocess from a shell's point of view: ``ftdsl plan``, ``ftdsl run`` (fully cached) and
``dvc status``, all with byte code cached (DVC's from its pip install; ftdsl's, which an editable
checkout under ``PYTHONDONTWRITEBYTECODE=1`` lacks, in a ``PYTHONPYCACHEPREFIX`` in the temporary
folder, as an installed package has it). Reported: medians (and ranges) of ``--rounds`` rounds, wall and CPU
seconds (user + sys of the child, from ``RUSAGE_CHILDREN``; CPU time is what a busy machine
distorts least).

``--ftdsl-src DIR`` times another ftdsl source tree too (e.g. ``git archive`` of an older
commit), as ``ftdsl@DIR``, in the same rounds: before/after in one run.

DVC is a dependency of this benchmark only (``pip install dvc``), not of ftdsl.

    python bench/plan_vs_dvc.py                       # writes bench/results/plan_vs_dvc.json
    python bench/plan_vs_dvc.py --ftdsl-src /tmp/before --rounds 9

Targets (issue 10 item 5): plan <= 0.5x dvc status, cached run <= 0.7x dvc status (wall medians).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PIPELINE = """\
ftp 1
pipeline seven { seed = 1 }

data d {
  source = synthetic(task = classify, n = 300, features = 8, classes = 3, seed = 1)
  split = { train = 0.8, valid = 0.1, test = 0.1 }
}
model m { arch = mlp(hidden = [16]), task = classify(labels = 3) }
train t { model = m, data = d, max_steps = 5, batch = 32, precision = fp32 }
prune p { from = t, method = magnitude(amount = 0.3) }
export e { from = p, format = onnx(), verify = true }
quantize q { from = e, method = dynamic() }
evaluate ev { models = [p, q], data = d.test, metrics = [accuracy] }
"""

STEP = """\
import hashlib, sys
from pathlib import Path
name, deps = sys.argv[1], sys.argv[2:]
h = hashlib.sha256(name.encode())
for d in deps:
    h.update(Path(d).read_bytes())
Path("out").mkdir(exist_ok=True)
Path("out", name + ".txt").write_text(h.hexdigest() + "\\n")
"""

# name -> what it reads (the same chain as the ftdsl pipeline)
DVC_STAGES = {"data": ["params.txt"], "model": ["params.txt"], "train": ["out/data.txt", "out/model.txt"],
              "prune": ["out/train.txt"], "export": ["out/prune.txt"], "quantize": ["out/export.txt"],
              "evaluate": ["out/prune.txt", "out/quantize.txt", "out/data.txt"]}


def sh(cmd: list[str], cwd: Path, env: dict) -> None:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode:
        sys.stderr.write(p.stdout[-2000:] + p.stderr[-2000:])
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode})")


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    """Wall seconds of one subprocess; a failure stops the benchmark."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate()
    wall = time.perf_counter() - t
    if p.returncode:
        sys.stderr.write(out.decode()[-2000:] + err.decode()[-2000:])
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode})")
    return wall


def timed_cpu(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    """(wall s, CPU s: user + sys of the reaped child, from RUSAGE_CHILDREN around it)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = timed(cmd, cwd, env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def build_ftdsl(folder: Path, env: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "seven.ftp").write_text(PIPELINE)
    sh([sys.executable, "-m", "ftdsl", "run", "seven.ftp", "--cache", "cache", "--quiet"], folder, env)


def build_dvc(folder: Path, dvc: str, env: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "step.py").write_text(STEP)
    (folder / "params.txt").write_text("seed 1\n")
    lines = ["stages:"]
    for name, deps in DVC_STAGES.items():
        lines += [f"  {name}:", f"    cmd: {sys.executable} step.py {name} {' '.join(deps)}",
                  "    deps:", "      - step.py"] + [f"      - {d}" for d in deps] + \
                 ["    outs:", f"      - out/{name}.txt"]
    (folder / "dvc.yaml").write_text("\n".join(lines) + "\n")
    sh(["git", "init", "-q"], folder, env)
    sh([dvc, "init", "-q"], folder, env)
    sh([dvc, "config", "core.analytics", "false"], folder, env)
    sh([dvc, "repro", "-q"], folder, env)
    p = subprocess.run([dvc, "status"], cwd=folder, env=env, capture_output=True, text=True)
    if "up to date" not in (p.stdout + p.stderr):
        raise SystemExit(f"dvc status after repro is not clean:\n{p.stdout}{p.stderr}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--ftdsl-src", help="another ftdsl source tree to time as well (before/after)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "plan_vs_dvc.json"))
    a = ap.parse_args(argv)
    dvc = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
    if not Path(dvc).exists():
        raise SystemExit("dvc is not installed: `pip install dvc` (a dependency of this benchmark only)")
    env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1",
           "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@example.com", "GIT_COMMITTER_NAME": "bench",
           "GIT_COMMITTER_EMAIL": "b@example.com"}
    env.pop("PYTHONPATH", None)
    work = Path(tempfile.mkdtemp(prefix="plan-vs-dvc-"))
    # byte code as an installed package has it (pip compiles .pyc at install; an editable checkout
    # under PYTHONDONTWRITEBYTECODE=1 recompiles ftdsl's ~100 modules on every command), kept in
    # the temporary folder so that the checkout is not touched; the warm-up round writes it
    fenv = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    fenv["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    # a snapshot of this checkout's ftdsl: an edit elsewhere in a shared checkout during the rounds
    # (a new engine version, a new default) would change keys and make a "cached" run run stages
    shutil.copytree(ROOT / "ftdsl", work / "src" / "ftdsl", ignore=shutil.ignore_patterns("__pycache__"))
    fenv["PYTHONPATH"] = str(work / "src")
    try:
        t0 = time.time()
        build_ftdsl(work / "ftdsl", fenv)
        build_dvc(work / "dvc", dvc, env)
        print(f"built both projects in {time.time() - t0:.0f}s", flush=True)
        ftdsl = [sys.executable, "-m", "ftdsl"]
        script = Path(sys.executable).parent / "ftdsl"
        if script.exists():
            ftdsl = [str(script)]  # what a user types
        cmds = {"ftdsl plan": (ftdsl + ["plan", "seven.ftp", "--cache", "cache"], work / "ftdsl", fenv),
                "ftdsl run (cached)": (ftdsl + ["run", "seven.ftp", "--cache", "cache", "--quiet"], work / "ftdsl",
                                       fenv),
                "dvc status": ([dvc, "status"], work / "dvc", env)}
        if a.ftdsl_src:
            other = {**fenv, "PYTHONPATH": str(Path(a.ftdsl_src).resolve())}
            py = [sys.executable, "-m", "ftdsl"]
            cmds["ftdsl@src plan"] = (py + ["plan", "seven.ftp", "--cache", "cache"], work / "ftdsl", other)
            cmds["ftdsl@src run (cached)"] = (py + ["run", "seven.ftp", "--cache", "cache", "--quiet"], work / "ftdsl",
                                              other)
        for c in cmds.values():  # warm the file cache once
            timed(*c)
        entries = lambda: sorted(p.name for p in (work / "ftdsl" / "cache" / "entries").glob("*/*"))  # noqa: E731
        before = entries()
        times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in cmds}
        names = list(cmds)
        for r in range(a.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for k in order:
                wall, cpu = timed_cpu(*cmds[k])
                times[k]["wall"].append(wall)
                times[k]["cpu"].append(cpu)
        if entries() != before:  # a "cached" run ran a stage: its times are not a cached run's
            raise SystemExit("the cache changed during the rounds (a stage ran): the ftdsl trees differ in their keys")
        med = {k: {m: statistics.median(v[m]) for m in v} for k, v in times.items()}
        dvc_wall, dvc_cpu = med["dvc status"]["wall"], med["dvc status"]["cpu"]
        result = {"rounds": a.rounds, "load_avg": os.getloadavg(), "python": sys.version.split()[0],
                  "cpu_model": next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                                     if ln.startswith("model name")), ""),
                  "dvc": subprocess.run([dvc, "--version"], capture_output=True, text=True).stdout.strip(),
                  "ftdsl_src": a.ftdsl_src, "commands": {}}
        print(f"{'command':26} {'wall ms':>8} {'range':>15} {'cpu ms':>7} {'x dvc wall':>10} {'x dvc cpu':>9}")
        for k, v in times.items():
            row = {"wall_ms": round(med[k]["wall"] * 1000, 1), "cpu_ms": round(med[k]["cpu"] * 1000, 1),
                   "wall_range_ms": [round(min(v["wall"]) * 1000, 1), round(max(v["wall"]) * 1000, 1)],
                   "x_dvc_wall": round(med[k]["wall"] / dvc_wall, 3), "x_dvc_cpu": round(med[k]["cpu"] / dvc_cpu, 3),
                   "wall_ms_all": [round(x * 1000, 1) for x in v["wall"]]}
            result["commands"][k] = row
            print(f"{k:26} {row['wall_ms']:8.0f} {str(row['wall_range_ms']):>15} {row['cpu_ms']:7.0f} "
                  f"{row['x_dvc_wall']:10.2f} {row['x_dvc_cpu']:9.2f}")
        c = result["commands"]
        result["targets"] = {"plan <= 0.5x dvc status": c["ftdsl plan"]["x_dvc_wall"] <= 0.5,
                             "cached run <= 0.7x dvc status": c["ftdsl run (cached)"]["x_dvc_wall"] <= 0.7}
        print("targets:", result["targets"])
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1))
        return 0 if all(result["targets"].values()) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
