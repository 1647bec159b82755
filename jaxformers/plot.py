"""Loss (and accuracy) curves of a workdir (``metrics.jsonl``) as a PNG."""

from __future__ import annotations

import io
import json

from jaxformers import storage


def read_metrics(workdir: str) -> list[dict]:
    path = storage.join(workdir, "metrics.jsonl")
    if not storage.isfile(path):
        raise FileNotFoundError(f"{path} is missing: nothing has been trained in {workdir}")
    return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]


def accuracy_keys(recs: list[dict]) -> list[str]:
    """The accuracy metrics a run logged (accuracy, mlm_accuracy, nsp_accuracy ...), in first-seen
    order."""
    keys = []
    for r in recs:
        keys += [k for k in r if k.endswith("accuracy") and k not in keys]
    return keys


def plot_workdir(workdir: str, out: str | None = None) -> str:
    """Plots train and eval loss against step, and beside it every logged accuracy; returns the
    PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(workdir)
    acc = accuracy_keys(recs)
    fig, axes = plt.subplots(
        1, 2 if acc else 1, figsize=(12 if acc else 7, 4.2), dpi=120, squeeze=False
    )
    panels = [(axes[0, 0], ["loss"], "loss (nats/token)")] + (
        [(axes[0, 1], acc, "accuracy")] if acc else []
    )
    for ax, keys, ylabel in panels:
        for key in keys:
            for split, style in (("train", "-"), ("eval", "o-")):
                pts = sorted(
                    {r["step"]: r[key] for r in recs if r["split"] == split and key in r}.items()
                )
                if pts:
                    label = split if keys == ["loss"] else f"{split} {key}"
                    ax.plot(
                        [p[0] for p in pts],
                        [p[1] for p in pts],
                        style,
                        label=label,
                        lw=1.2,
                        ms=4,
                        alpha=0.5 if split == "train" and len(keys) > 1 else 1.0,
                    )
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(workdir.rstrip("/").rsplit("/", 1)[-1])
    out = out or storage.join(workdir, "loss.png")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    storage.write_bytes(out, buf.getvalue())
    plt.close(fig)
    return out
