"""How much of next-sentence prediction simple classifiers get on an MLM+NSP experiment's own data.

    python benchmarks/nsp_baselines.py --workdir /tmp/bert_shakespeare \
        [--experiment experiments/bert_shakespeare.py]

Reads the experiment's train and eval batches exactly as training sees them (masked inputs; with the
workdir's tokenizer, so a finished run's workdir gives the very instances it trained on) and prints
JSON with three references for the NSP accuracy that training reports:
  majority  always answer the training set's more common class;
  overlap   "B is the real next segment" iff A and B share at least k word pieces of 3+ letters,
            k chosen on the training batches;
  bow       logistic regression on bags of word pieces: A's, B's, the pieces both share, and A's
            share of the sequence (what a one-chunk A, which always gets a random B, reveals),
            fitted on the training batches with L2 and Adam.
All three are fitted on train and scored on the eval batches. A BERT whose NSP accuracy is near the
majority share while these are well above it has not yet learned to compare its two segments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def segments(batches) -> dict[str, np.ndarray]:
    """Stacks batches ([accum, B, ...] or [B, ...]) into [N, ...] arrays."""
    keys = ("input_ids", "segment_ids", "input_mask", "next_sentence_labels")
    out = {k: [] for k in keys}
    for b in batches:
        for k in keys:
            x = np.asarray(b[k])
            out[k].append(
                x.reshape((-1,) + x.shape[-1:]) if k != "next_sentence_labels" else x.reshape(-1)
            )
    out = {k: np.concatenate(v) for k, v in out.items()}
    real = out["input_mask"][:, 0] > 0  # the all-zero rows that pad the last eval batch
    return {k: v[real] for k, v in out.items()}


def multi_hot(ids, keep, vocab_size) -> np.ndarray:
    """[N, T] ids and a [N, T] bool selection -> [N, V] 0/1."""
    rows = np.repeat(np.arange(ids.shape[0]), ids.shape[1])
    out = np.zeros((ids.shape[0], vocab_size), np.float32)
    out[rows[keep.ravel()], ids.ravel()[keep.ravel()]] = 1.0
    return out


def features(s, vocab_size, word_ids):
    valid = s["input_mask"] == 1
    a = multi_hot(s["input_ids"], valid & (s["segment_ids"] == 0), vocab_size)
    b = multi_hot(s["input_ids"], valid & (s["segment_ids"] == 1), vocab_size)
    shared_words = ((a * b)[:, word_ids]).sum(1)
    a_share = (valid & (s["segment_ids"] == 0)).sum(1) / valid.sum(1)
    return np.concatenate([a, b, a * b, a_share[:, None]], 1), shared_words


def fit_logistic(x, y, l2=1e-3, steps=400, lr=0.05):
    import jax
    import jax.numpy as jnp
    import optax

    x, y = jnp.asarray(x), jnp.asarray(y, jnp.float32)
    params = {"w": jnp.zeros(x.shape[1]), "b": jnp.zeros(())}
    tx = optax.adam(lr)

    def loss(p):
        z = x @ p["w"] + p["b"]
        return jnp.mean(optax.sigmoid_binary_cross_entropy(z, y)) + l2 * jnp.sum(p["w"] ** 2)

    @jax.jit
    def step(p, o):
        g = jax.grad(loss)(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    opt = tx.init(params)
    for _ in range(steps):
        params, opt = step(params, opt)
    return lambda xs: np.asarray(jnp.asarray(xs) @ params["w"] + params["b"]) > 0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--experiment",
        default=os.path.join(os.path.dirname(__file__), "..", "experiments", "bert_shakespeare.py"),
    )
    p.add_argument("--variant", default="default")
    p.add_argument(
        "--workdir",
        required=True,
        help="the run's workdir (its tokenizer is reused or trained there)",
    )
    p.add_argument("--train-batches", type=int, default=300)
    args = p.parse_args(argv)

    from jaxformers.config import load_experiment

    exp = load_experiment(args.experiment, args.variant)
    if exp.objective != "mlm_nsp":
        raise ValueError(f"{args.experiment} trains {exp.objective!r}, not mlm_nsp")
    t0 = time.perf_counter()
    data = exp.task.build_data(exp, args.workdir)
    tr = segments(data.train_batch(i) for i in range(args.train_batches))
    n_eval = data.val.num_batches
    n_eval = min(n_eval, exp.eval_batches) if exp.eval_batches else n_eval  # as the Trainer
    va = segments(data.eval_batch(i) for i in range(n_eval))
    vocab = data.tokenizer.vocab
    word_ids = np.array(
        [i for i, t in enumerate(vocab) if sum(c.isalpha() for c in t) >= 3], np.int64
    )
    V = len(vocab)
    xtr, sh_tr = features(tr, V, word_ids)
    xva, sh_va = features(va, V, word_ids)
    ytr, yva = tr["next_sentence_labels"], va["next_sentence_labels"]  # 1 = random B

    majority = int(ytr.mean() >= 0.5)
    k = max(range(1, 8), key=lambda k: np.mean((sh_tr < k) == (ytr == 1)))
    predict = fit_logistic(xtr, ytr)
    result = {
        "experiment": os.path.basename(args.experiment),
        "variant": args.variant,
        "train_pairs": int(len(ytr)),
        "eval_pairs": int(len(yva)),
        "eval_random_b_share": float(yva.mean()),
        "majority_accuracy": float(np.mean(yva == majority)),
        "overlap_min_shared": int(k),
        "overlap_accuracy": float(np.mean((sh_va < k) == (yva == 1))),
        "overlap_train_accuracy": float(np.mean((sh_tr < k) == (ytr == 1))),
        "bow_accuracy": float(np.mean(predict(xva) == (yva == 1))),
        "bow_train_accuracy": float(np.mean(predict(xtr) == (ytr == 1))),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
