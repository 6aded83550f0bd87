"""Render a Plan as text (Terraform style), JSON, Mermaid, or Markdown for $GITHUB_STEP_SUMMARY."""

from __future__ import annotations

import json
from typing import TextIO

from ftdsl.plan import Plan, PlannedStage
from ftdsl.plan_trials import resume_text, trials_text

SYMBOL = {"cached": "=", "new": "+", "forced": "~", "changed": "~", "upstream": "~", "missing": "+"}
ACTION = {"cached": "noop", "new": "create", "forced": "rerun", "changed": "rerun", "upstream": "rerun",
          "missing": "create"}


def status_text(s: PlannedStage) -> str:
    if s.status == "cached":
        return "cached"
    if s.resume:
        return f"{resume_text(s.resume)} ({'; '.join(s.reasons) or s.status})"
    return f"run ({'; '.join(s.reasons) or s.status})"


def compact(v) -> str:
    """A lowered value written back compactly: `adamw(lr=3e-05, weight_decay=0.01)`."""
    if isinstance(v, dict) and "$ref" in v:
        return v["$ref"] + (f".{v['split']}" if v.get("split") else "")
    if isinstance(v, dict) and "$call" in v:
        args = ", ".join(f"{k}={compact(x)}" for k, x in v.items() if k != "$call")
        return f"{v['$call']}({args})"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}={compact(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(compact(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


def key_settings(s: PlannedStage) -> dict[str, str]:
    """The attributes worth showing: those written in the file, except stage inputs."""
    out = {}
    for k, v in s.config.items():
        if k not in s.written or v is None or v == [] or k in s.inputs or any(i.startswith(k + "[")
                                                                              for i in s.inputs):
            continue
        out[k] = compact(v)
    return out


def _counts(plan: Plan) -> dict[str, int]:
    c = {"run": 0, "rerun": 0, "cached": 0}
    for s in plan.stages:
        a = ACTION[s.status]
        c["cached" if a == "noop" else ("run" if a == "create" else "rerun")] += 1
    return c


def render_plan(plan: Plan, fmt: str, out: TextIO) -> None:
    if fmt == "json":
        json.dump(plan_json(plan), out, indent=2)
        out.write("\n")
    elif fmt == "mermaid":
        out.write(plan_mermaid(plan))
    else:
        out.write(plan_text(plan))


def plan_text(plan: Plan) -> str:
    lines = [f"ftdsl plan for {plan.pipeline} (seed {plan.seed}, device {plan.device})",
             "symbols: + run, ~ re-run, = cached", ""]
    for s in plan.stages:
        sym = SYMBOL[s.status]
        if s.status == "cached":
            lines.append(f"  # {s.address} is cached (sha256:{s.key[:12]})")
        elif s.resume:
            lines.append(f"  # {s.address} will {resume_text(s.resume)} (a checkpoint of an interrupted run): "
                         f"{'; '.join(s.reasons)}")
        elif s.status in ("new", "missing"):
            lines.append(f"  # {s.address} will run: {'; '.join(s.reasons)}")
        else:
            lines.append(f"  # {s.address} will re-run: {'; '.join(s.reasons)}")
        lines.append(f"  {sym} {s.kind} \"{s.name}\"")
        if s.inputs:
            lines.append("      inputs: " + ", ".join(f"{a} = {n}" for a, n in s.inputs.items()))
        settings = key_settings(s)
        changed = {k for k, _, _ in s.changes}
        for k, v in settings.items():
            if any(c == k or c.startswith(k + ".") for c in changed):
                continue
            lines.append(f"      {k} = {v}")
        for k, old, new in s.changes:
            lines.append(f"    ~ {k} = {compact(old) if not isinstance(old, str) or old == '(unset)' else old}"
                         f" -> {compact(new) if not isinstance(new, str) or new == '(unset)' else new}   # forces re-run")
        if s.estimate:
            lines.append("      estimate: " + ", ".join(f"{k} {v}" for k, v in s.estimate.items()))
        if s.trials:
            lines.append("      trials: " + trials_text(s.trials))
        lines.append("")
    c = _counts(plan)
    resuming = sum(1 for s in plan.stages if s.will_run and s.resume)
    lines.append(f"Plan: {c['run']} to run, {c['rerun']} to re-run, {c['cached']} cached"
                 + (f" ({resuming} resuming from a checkpoint)." if resuming else "."))
    return "\n".join(lines) + "\n"


def plan_json(plan: Plan) -> dict:
    return {
        "format_version": "1.0",
        "pipeline": plan.pipeline,
        "seed": plan.seed,
        "device": plan.device,
        "stages": [{
            "name": s.name, "kind": s.kind, "address": s.address, "status": status_text(s),
            "actions": [ACTION[s.status]], "reasons": list(s.reasons),
            "changes": [{"path": k, "old": o, "new": n} for k, o, n in s.changes],
            "inputs": dict(s.inputs), "depends_on": list(s.deps), "cache_key": f"sha256:{s.key}",
            "settings": s.config, "estimate": s.estimate,
            **({"resume": s.resume} if s.will_run and s.resume else {}),
            **({"trials": s.trials} if s.will_run and s.trials else {}),
        } for s in plan.stages],
        "summary": _counts(plan),
    }


def plan_mermaid(plan: Plan) -> str:
    lines = ["flowchart LR"]
    cls = {"cached": "cached", "new": "run", "missing": "run"}
    for s in plan.stages:
        lines.append(f'  {s.name}["{s.kind} {s.name}<br/>{status_text(s).replace(chr(34), "")[:60]}"]:::'
                     f'{cls.get(s.status, "rerun")}')
    for s in plan.stages:
        for attr, src in s.inputs.items():
            lines.append(f"  {src} -->|{attr}| {s.name}")
    lines += ["  classDef cached fill:#e8f5e9,stroke:#2e7d32", "  classDef run fill:#e3f2fd,stroke:#1565c0",
              "  classDef rerun fill:#fff8e1,stroke:#f9a825"]
    return "\n".join(lines) + "\n"


def plan_markdown(plan: Plan) -> str:
    rows = ["", f"### ftdsl plan: `{plan.pipeline}`", "", "| stage | kind | status |", "|---|---|---|"]
    for s in plan.stages:
        rows.append(f"| `{s.name}` | {s.kind} | {status_text(s).replace('|', '/')} |")
    c = _counts(plan)
    rows += ["", f"Plan: {c['run']} to run, {c['rerun']} to re-run, {c['cached']} cached.", ""]
    return "\n".join(rows)
