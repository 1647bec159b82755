"""Loss curves of a workdir (``metrics.jsonl``) as a PNG."""

from __future__ import annotations

import json
import os


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: nothing has been trained in {workdir}")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_workdir(workdir: str, out: str | None = None) -> str:
    """Plots train and eval loss against step; returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(workdir)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for split, style in (("train", "-"), ("eval", "o-")):
        pts = sorted({r["step"]: r["loss"] for r in recs if r["split"] == split and "loss" in r}.items())
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=split, lw=1.2, ms=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(os.path.basename(os.path.normpath(workdir)))
    ax.grid(alpha=0.3)
    ax.legend()
    out = out or os.path.join(workdir, "loss.png")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
