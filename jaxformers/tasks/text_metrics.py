"""Metrics of generated text against reference strings, as the T5 paper reports them.

- ``exact_match``: the share of examples whose generated string equals the target (whitespace at
  the ends ignored): accuracy for classification written as text (SST-2's "positive"/"negative").
- ``squad``: SQuAD v1.1's official exact match and token F1 (``evaluate-v1.1.py``): answers are
  normalised (lower case, punctuation and the articles a/an/the removed, whitespace collapsed);
  each prediction scores its best reference.
- ``rouge``: ROUGE-1, ROUGE-2 and ROUGE-Lsum F-measures from Google's ``rouge-score`` package
  (Porter stemming on; ROUGE-Lsum splits summaries into sentences at newlines), averaged over the
  examples.

Every figure is a percentage (0-100), as the T5 paper and the SQuAD script print them.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

METRICS = ("exact_match", "squad", "rouge")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def squad_f1(prediction: str, reference: str) -> float:
    """Token-overlap F1 of the normalised strings (0 when they share no token)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_exact(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def _check(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions for {len(references)} references: every example "
            "needs one prediction"
        )
    if not predictions:
        raise ValueError("no examples to score: the evaluation split is empty")
    for i, refs in enumerate(references):
        if not refs:
            raise ValueError(f"example {i} has no reference string to score against")


def score(kind: str, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """The metrics of ``kind`` (``METRICS``) in percent, over every example once.

    Args:
      predictions: one generated string per example.
      references: the acceptable strings of each example (SQuAD has several; the best one
        counts); exact match and ROUGE score the first.
    """
    _check(predictions, references)
    n = len(predictions)
    if kind == "exact_match":
        hits = sum(p.strip() == refs[0].strip() for p, refs in zip(predictions, references))
        return {"exact_match": 100.0 * hits / n}
    if kind == "squad":
        em = sum(max(squad_exact(p, r) for r in refs) for p, refs in zip(predictions, references))
        f1 = sum(max(squad_f1(p, r) for r in refs) for p, refs in zip(predictions, references))
        return {"squad_em": 100.0 * em / n, "squad_f1": 100.0 * f1 / n}
    if kind == "rouge":
        return rouge(predictions, [refs[0] for refs in references])
    raise ValueError(f"unknown text metric {kind!r}; choose one of {', '.join(METRICS)}")


ROUGE_TYPES = ("rouge1", "rouge2", "rougeLsum")


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """Mean ROUGE F-measures (percent) from the ``rouge-score`` package, stemming on."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:
        raise ImportError(
            "ROUGE needs the rouge-score package: pip install rouge-score (a jaxformers dependency)"
        ) from e
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    sums = dict.fromkeys(ROUGE_TYPES, 0.0)
    for p, r in zip(predictions, references):
        # ROUGE-Lsum reads one sentence per line (the CNN/DailyMail highlights already are).
        s = scorer.score(r, p)
        for k in ROUGE_TYPES:
            sums[k] += s[k].fmeasure
    return {k: 100.0 * v / len(predictions) for k, v in sums.items()}
