"""What a sweep writes to its `out/`: the trial table (`trials.json`), `trials.md` and `sweep.png`.

The table has one row per trial: its values (`params`), the full configuration of the stage it
expanded to (`config`), that stage's cache key (`key`), its metrics, where its result came from
(`source`: trained, cached, same, recorded) and, for a resumed training, the step it resumed from.
"""

from __future__ import annotations

from pathlib import Path

from ftdsl.runtime.atomic import json_safe, write_json_atomic
from ftdsl.stages.sweep_paths import fmt

__all__ = ["write_outputs", "fmt_call"]


def fmt_call(call: dict) -> str:
    args = ", ".join(f"{k} = {fmt(v)}" for k, v in call.items() if k != "$call")
    return f"{call['$call']}({args})" if args else call["$call"]


def table(sweep, best: dict | None) -> dict:
    return {
        "target": sweep.target["name"], "kind": sweep.target["kind"], "metric": sweep.metric, "mode": sweep.mode,
        "strategy": sweep.strategy, "over": sweep.space.shown(), "study": sweep.study,
        "best_trial": best["trial"] if best else None,
        "counts": sweep.counts(),
        "trials": [{k: v for k, v in r.items()} for r in sweep.runner.records],
    }


def write_outputs(sweep, best: dict | None) -> None:
    out: Path = sweep.out
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "trials.json", json_safe(table(sweep, best)), durable=False)
    (out / "trials.md").write_text(markdown(sweep, best), encoding="utf-8")
    try:
        (out / "sweep.png").write_bytes(plot(sweep, best))
    except Exception as e:  # noqa: BLE001 - a plot is never worth failing the sweep
        sweep.log(f"could not draw sweep.png: {type(e).__name__}: {e}")


def _status(r: dict, best: dict | None) -> str:
    status = r["status"]
    if status == "failed":
        status = f"failed ({(r.get('error') or {}).get('code', '?')})"
    if r.get("same_as"):
        status += f", same as {r['same_as']}"
    elif r.get("source") == "cached":
        status += ", cached"
    elif r.get("source") == "recorded":
        status += ", recorded"
    if r.get("resumed_from"):
        status += f", resumed from step {r['resumed_from']}"
    if best is not None and r["trial"] == best["trial"]:
        status += ", **best**"
    return status


def markdown(sweep, best: dict | None) -> str:
    paths, metric = sweep.space.paths, sweep.metric
    head = ["trial", *paths, metric, "status", "key"]
    rows = []
    for r in sweep.runner.records:
        value = f"{r['metric']:.6g}" if r["metric"] is not None else "-"
        rows.append([str(r["trial"]), *(fmt(r["params"].get(p)) for p in paths), value, _status(r, best),
                     f"`{r['key'][:12]}`"])
    c = sweep.counts()
    lines = [f"# sweep `{sweep.ctx.name}` over {sweep.target['kind']} `{sweep.target['name']}`", "",
             f"strategy: {fmt_call(sweep.strategy)}; metric: `{metric}` ({sweep.mode}); "
             f"{c['trained']} trained, {c['cached']} cached", ""]
    lines.append("| " + " | ".join(f"`{h}`" if h in paths else h for h in head) + " |")
    lines.append("|" + "|".join("---:" if h in ("trial", metric) else "---" for h in head) + "|")
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    errors = [r for r in sweep.runner.records if r["status"] == "failed" and r.get("error")]
    if errors:
        lines += ["", "Failures:", ""]
        lines += [f"- trial {r['trial']}: {r['error']['code']}: {r['error']['message']}" for r in errors]
    return "\n".join(lines) + "\n"


def plot(sweep, best: dict | None) -> bytes:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    recs, metric, space = sweep.runner.records, sweep.metric, sweep.space
    numeric = space.numeric_paths()
    scatter = 1 <= len(numeric) <= 2 and len(numeric) == len(space.paths)
    ncols = 2 if scatter else 1
    fig = Figure(figsize=(5.5 * ncols, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, ncols, 1)
    ok = [r for r in recs if r["status"] == "ok"]
    ax.plot([r["trial"] for r in ok], [r["metric"] for r in ok], "o-", label=metric)
    bad = [r for r in recs if r["status"] != "ok"]
    if bad:
        lo = min((r["metric"] for r in ok), default=0.0)
        ax.plot([r["trial"] for r in bad], [lo] * len(bad), "x", color="red", label="failed or pruned")
    if best is not None:
        ax.plot([best["trial"]], [best["metric"]], "*", markersize=16, color="gold", markeredgecolor="black",
                label="best")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_xticks([r["trial"] for r in recs])
    ax.grid(alpha=0.3)
    ax.legend()
    if scatter:
        ax2 = fig.add_subplot(1, 2, 2)
        xs = [float(r["params"][numeric[0]]) for r in ok]
        if len(numeric) == 1:
            ax2.scatter(xs, [r["metric"] for r in ok])
            ax2.set_xlabel(numeric[0])
            ax2.set_ylabel(metric)
        else:
            ys = [float(r["params"][numeric[1]]) for r in ok]
            sc = ax2.scatter(xs, ys, c=[r["metric"] for r in ok], cmap="viridis", s=60)
            fig.colorbar(sc, ax=ax2, label=metric)
            if bad:
                ax2.scatter([float(r["params"][numeric[0]]) for r in bad],
                            [float(r["params"][numeric[1]]) for r in bad], marker="x", color="red")
            ax2.set_xlabel(numeric[0])
            ax2.set_ylabel(numeric[1])
            if space.log_scaled(numeric[1]):
                ax2.set_yscale("log")
        if space.log_scaled(numeric[0]):
            ax2.set_xscale("log")
        for r in ok:
            y = r["metric"] if len(numeric) == 1 else float(r["params"][numeric[1]])
            ax2.annotate(str(r["trial"]), (float(r["params"][numeric[0]]), y), textcoords="offset points",
                         xytext=(4, 4), fontsize=8)
        ax2.grid(alpha=0.3)
    fig.suptitle(f"sweep {sweep.ctx.name}: {metric} ({sweep.mode})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
