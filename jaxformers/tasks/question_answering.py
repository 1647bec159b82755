"""Extractive question answering (SQuAD v1.1) with a ``BertForQuestionAnswering``.

Data (``data.corpus``):
- a local SQuAD v1.1 JSON file (``{"data": [{"title", "paragraphs": [{"context", "qas": [{"id",
  "question", "answers": [{"text", "answer_start"}]}]}]}]}``); its validation split is
  ``data.val_corpus`` when given, else the last ``data.val_fraction`` of its articles.
- ``tfds:squad``: TFDS ``squad`` (v1.1: 87,599 train, 10,570 dev questions). Preparing it needs
  TensorFlow and the network; otherwise the run stops with an error that says how.

Features, as google-research/bert's ``run_squad.py`` and transformers' ``run_qa.py``: each
question becomes one or more windows ``[CLS] question [SEP] context-window [SEP]`` of
``data.seq_len`` tokens (384): the question cut to ``task.max_query_length`` pieces (64; cuts are
counted), the context's WordPiece pieces cut into windows that start ``task.doc_stride`` (128)
pieces apart. A training window holding the whole answer points at its first and last pieces;
one that does not points at [CLS] (position 0) for both, as the reference does. An answer whose
text is not at ``answer_start`` in its context is skipped in training and counted (the reference
skips such answers with a warning). The loss is the mean of the start and end cross-entropies.

Prediction (``predict``): in every window of a question, the ``task.n_best`` largest start and
end logits are paired; a pair counts when both lie in the context, end >= start, it spans at most
``task.max_answer_length`` pieces and its start piece has its most context in this window (the
reference's ``token_is_max_context``); the question's answer is its best pair over all windows
(start + end logit), cut from the context by the pieces' character offsets. Dev metrics: SQuAD
v1.1's official exact match and F1 (``text_metrics.score("squad", ...)``, each prediction scored
against its best gold answer) over every validation question exactly once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxformers import storage
from jaxformers.data import sources
from jaxformers.data.pipeline import fingerprint
from jaxformers.inference import QA_JSON
from jaxformers.tasks import text_metrics
from jaxformers.tasks.base import (
    TaskData,
    bert_forward,
    check_seq_len,
    class_cross_entropy,
    example_data,
    file_stamp,
    kept_counts,
    random_bert_inputs,
    real_rows,
    tokenizer_for,
)

ARCHITECTURE = "BertForQuestionAnswering"


class Question(NamedTuple):
    """One SQuAD question: its id, text, context and the gold answers (text, character start)."""

    qid: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]


class Window(NamedTuple):
    """One model input of a question (lists of ``seq_len`` or fewer; ``pad`` fills them).

    ``offsets[i]`` is piece i's [start, end) in the context, (-1, -1) outside it; ``max_context``
    marks context pieces that have their most surrounding context in this window."""

    input_ids: list[int]
    segment_ids: list[int]
    offsets: list[tuple[int, int]]
    max_context: list[bool]
    start_position: int
    end_position: int


# ------------------------------------------------------------------------------------ readers


def _field(obj: Any, key: str, where: str, path: str, kind: type):
    if not isinstance(obj, dict) or key not in obj or not isinstance(obj[key], kind):
        raise ValueError(
            f"{path}: {where} has no {key!r} {kind.__name__}; a SQuAD v1.1 file holds "
            '{"data": [{"paragraphs": [{"context": ..., "qas": [{"id", "question", "answers": '
            '[{"text", "answer_start"}]}]}]}]}'
        )
    return obj[key]


def read_squad_json(path: str) -> list[list[Question]]:
    """A SQuAD v1.1 JSON file -> its articles' questions (one list per article, in file order);
    an unreadable or malformed file is an error naming the file and the place."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SQuAD file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    articles = []
    for a, article in enumerate(_field(doc, "data", "the top level", path, list)):
        qs = []
        for p, par in enumerate(_field(article, "paragraphs", f"article {a}", path, list)):
            where = f"article {a} paragraph {p}"
            context = _field(par, "context", where, path, str)
            for q, qa in enumerate(_field(par, "qas", where, path, list)):
                at = f"{where} question {q}"
                answers = []
                for k, ans in enumerate(_field(qa, "answers", at, path, list)):
                    text = _field(ans, "text", f"{at} answer {k}", path, str)
                    start = _field(ans, "answer_start", f"{at} answer {k}", path, int)
                    answers.append((text, start))
                qid = str(qa.get("id", f"{a}-{p}-{q}"))
                question = _field(qa, "question", at, path, str)
                qs.append(Question(qid, question, context, tuple(answers)))
        articles.append(qs)
    if not any(articles):
        raise ValueError(f"{path} holds no questions")
    return articles


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def tfds_question(record) -> Question:
    """A TFDS ``squad`` record -> Question."""
    ans = record["answers"]
    answers = tuple((_text(t), int(s)) for t, s in zip(ans["text"], ans["answer_start"]))
    return Question(
        _text(record["id"]), _text(record["question"]), _text(record["context"]), answers
    )


def read_questions(data_config, data_dir: str) -> dict[str, Callable[[], Iterator[Question]]]:
    """split -> function yielding the split's questions (``data.corpus``, module docstring)."""
    d, corpus = data_config, data_config.corpus
    if corpus.startswith("tfds:"):
        name = corpus[len("tfds:") :]
        srcs = sources.catalog_source(name, data_dir)
        if srcs["validation"] is None:
            raise ValueError(f"TFDS dataset {name!r} has no validation or test split")

        def read(split):
            src = srcs[split]
            return lambda: (tfds_question(src[i]) for i in range(len(src)))

        return {"train": read("train"), "validation": read("validation")}
    if not corpus.endswith(".json"):
        raise ValueError(
            f"question-answering corpus {corpus!r}: give a SQuAD v1.1 .json file or tfds:squad"
        )
    articles = read_squad_json(corpus)
    if d.val_corpus:
        train, val = articles, read_squad_json(d.val_corpus)
    else:
        cut = int(round(len(articles) * (1 - d.val_fraction)))
        train, val = articles[:cut], articles[cut:]
        if not d.val_fraction or not any(train) or not any(val):
            raise ValueError(
                f"{corpus} has {len(articles)} articles, too few to hold out "
                f"data.val_fraction={d.val_fraction} of them; give data.val_corpus=FILE or a share "
                "that leaves questions on both sides"
            )
    flat = lambda arts: [q for qs in arts for q in qs]  # noqa: E731
    train, val = flat(train), flat(val)
    return {"train": lambda: iter(train), "validation": lambda: iter(val)}


# ----------------------------------------------------------------------------------- features


def answer_pieces(
    context: str, offsets: Sequence[tuple[int, int]], text: str, start: int
) -> tuple[int, int] | None:
    """The first and last context pieces of the answer ``text`` at character ``start``, or None
    when the text is not there (whitespace runs compare equal, as the reference compares its
    whitespace-split tokens) or covers no piece."""
    end = start + len(text)
    if start < 0 or " ".join(context[start:end].split()) != " ".join(text.split()):
        return None
    inside = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
    return (inside[0], inside[-1]) if inside else None


def doc_spans(n: int, room: int, stride: int) -> list[tuple[int, int]]:
    """(start, length) of the windows over ``n`` context pieces, ``room`` per window, starts
    ``stride`` apart (the reference's loop: the last window ends at the last piece)."""
    spans, start = [], 0
    while start < n:
        length = min(n - start, room)
        spans.append((start, length))
        if start + length == n:
            break
        start += min(length, stride)
    return spans or [(0, 0)]


def is_max_context(spans: Sequence[tuple[int, int]], k: int, pos: int) -> bool:
    """Whether window ``k`` gives piece ``pos`` its most context: min(left, right) + 0.01 *
    length is largest there (the first such window on a tie; the reference's rule)."""
    best, best_score = None, None
    for j, (start, length) in enumerate(spans):
        end = start + length - 1
        if start <= pos <= end:
            score = min(pos - start, end - pos) + 0.01 * length
            if best_score is None or score > best_score:
                best, best_score = j, score
    return best == k


def question_windows(
    tok: Any,
    q: Question,
    T: int,
    doc_stride: int,
    max_query_length: int,
    answer: tuple[int, int] | None = None,
    context_pieces: tuple[list[int], list[tuple[int, int]]] | None = None,
) -> tuple[list[Window], bool]:
    """The windows of one question, and whether its question was cut to ``max_query_length``.

    ``answer`` is the (first, last) context piece of the training answer (``answer_pieces``);
    None gives every window the [CLS] target. ``context_pieces`` is the context's
    ``tok.encode_with_offsets`` when already known."""
    ids, offs = context_pieces or tok.encode_with_offsets(q.context)
    query = tok.encode(q.question)
    cut = len(query) > max_query_length
    query = query[:max_query_length]
    room = T - len(query) - 3
    spans = doc_spans(len(ids), room, doc_stride)
    head = [tok.cls_id, *query, tok.sep_id]
    out = []
    for k, (start, length) in enumerate(spans):
        n_head = len(head)
        win_ids = head + ids[start : start + length] + [tok.sep_id]
        segs = [0] * n_head + [1] * (length + 1)
        offsets = [(-1, -1)] * n_head + list(offs[start : start + length]) + [(-1, -1)]
        maxc = [False] * n_head
        maxc += [is_max_context(spans, k, start + i) for i in range(length)] + [False]
        s = e = 0
        if answer is not None and start <= answer[0] and answer[1] < start + length:
            s, e = answer[0] - start + n_head, answer[1] - start + n_head
        out.append(Window(win_ids, segs, offsets, maxc, s, e))
    return out, cut


def pad(values: Sequence, T: int, fill) -> list:
    return list(values) + [fill] * (T - len(values))


def window_row(tok: Any, w: Window, T: int) -> dict:
    """A window -> the fixed-size arrays of a training or evaluation row."""
    n = len(w.input_ids)
    return {
        "input_ids": np.asarray(pad(w.input_ids, T, tok.pad_id), np.int32),
        "input_mask": np.asarray([1] * n + [0] * (T - n), np.int32),
        "segment_ids": np.asarray(pad(w.segment_ids, T, 0), np.int32),
        "start_position": np.int32(w.start_position),
        "end_position": np.int32(w.end_position),
    }


class Windows(NamedTuple):
    """A split's windows as arrays, grouped by question in order: rows [W, T], the window's
    question index ``example`` [W], character offsets [W, T, 2] and ``max_context`` [W, T]."""

    rows: dict[str, np.ndarray]
    example: np.ndarray
    offsets: np.ndarray
    max_context: np.ndarray


def encode_split(
    tok: Any,
    questions: Sequence[Question],
    T: int,
    doc_stride: int,
    max_query_length: int,
    counts: dict,
    train: bool,
) -> Iterator[tuple[int, Window]]:
    """(question index, window) of every question in order. Training targets the first answer;
    a training question whose answer is not at its ``answer_start`` is skipped and counted
    (``counts["skipped"]``); a cut question is counted (``counts["questions_cut"]``)."""
    cache: dict[str, tuple] = {}
    for i, q in enumerate(questions):
        if q.context not in cache:
            cache = {q.context: tok.encode_with_offsets(q.context)}  # questions share contexts
        pieces = cache[q.context]
        answer = None
        if q.answers:
            answer = answer_pieces(q.context, pieces[1], *q.answers[0])
        if train and answer is None:
            counts["skipped"] += 1
            continue
        windows, cut = question_windows(
            tok, q, T, doc_stride, max_query_length, answer, context_pieces=pieces
        )
        counts["questions"] += 1
        counts["questions_cut"] += cut
        counts["windows"] += len(windows)
        for w in windows:
            yield i, w


def window_arrays(tok: Any, pairs: Sequence[tuple[int, Window]], T: int) -> Windows:
    """Windows of ``encode_split`` -> ``Windows`` arrays."""
    rows = [window_row(tok, w, T) for _, w in pairs]
    stacked = {k: np.stack([r[k] for r in rows]) if rows else np.zeros((0, T)) for k in ROW_KEYS}
    offsets = np.full((len(pairs), T, 2), -1, np.int32)
    maxc = np.zeros((len(pairs), T), bool)
    for j, (_, w) in enumerate(pairs):
        offsets[j, : len(w.offsets)] = w.offsets
        maxc[j, : len(w.max_context)] = w.max_context
    return Windows(stacked, np.asarray([i for i, _ in pairs], np.int32), offsets, maxc)


ROW_KEYS = ("input_ids", "input_mask", "segment_ids", "start_position", "end_position")


# --------------------------------------------------------------------------------- prediction


class Prediction(NamedTuple):
    """A question's answer: text, its [start, end) characters in the context (-1 when no span
    qualified: then the text is empty), score = start + end logit, and its probability among
    the n-best candidates (softmax of their scores, as the reference's nbest_predictions)."""

    text: str
    start: int
    end: int
    score: float
    probability: float


def window_candidates(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: np.ndarray,
    max_context: np.ndarray,
    n_best: int,
    max_answer_length: int,
) -> list[tuple[float, int, int]]:
    """(score, first piece, last piece) of the window's qualifying start/end pairs among its
    ``n_best`` largest start and end logits (stable order: ties go to the earlier piece)."""
    starts = np.argsort(-start_logits, kind="stable")[:n_best]
    ends = np.argsort(-end_logits, kind="stable")[:n_best]
    in_context = offsets[:, 0] >= 0
    out = []
    for s in starts:
        if not (in_context[s] and max_context[s]):
            continue
        for e in ends:
            if not in_context[e] or e < s or e - s + 1 > max_answer_length:
                continue
            out.append((float(start_logits[s]) + float(end_logits[e]), int(s), int(e)))
    return out


def best_answer(
    context: str,
    windows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    n_best: int = 20,
    max_answer_length: int = 30,
) -> Prediction:
    """A question's best span over all its windows: ``windows`` holds each window's (start
    logits [T], end logits [T], offsets [T, 2], max_context [T])."""
    cands = []
    for s_log, e_log, offs, maxc in windows:
        for score, s, e in window_candidates(s_log, e_log, offs, maxc, n_best, max_answer_length):
            cands.append((score, int(offs[s, 0]), int(offs[e, 1])))
    if not cands:
        return Prediction("", -1, -1, float("nan"), 0.0)
    cands.sort(key=lambda c: -c[0])  # stable: an earlier window wins a tie
    top = cands[:n_best]
    scores = np.asarray([c[0] for c in top])
    probs = np.exp(scores - scores[0])
    score, a, b = top[0]
    return Prediction(context[a:b], a, b, score, float(probs[0] / probs.sum()))


def predict(
    questions: Sequence[Question],
    windows: Windows,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best: int,
    max_answer_length: int,
) -> list[Prediction]:
    """One prediction per question of ``windows`` (whose logits are [W, T] rows in the same
    order); every question present must have all its windows, and every window's question is
    predicted exactly once."""
    ex = windows.example
    out, lo = [], 0
    seen = set()
    while lo < len(ex):
        hi = lo
        while hi < len(ex) and ex[hi] == ex[lo]:
            hi += 1
        i = int(ex[lo])
        if i in seen:
            raise ValueError(f"question {i}'s windows are not consecutive; rebuild the data")
        seen.add(i)
        group = [
            (start_logits[j], end_logits[j], windows.offsets[j], windows.max_context[j])
            for j in range(lo, hi)
        ]
        out.append(best_answer(questions[i].context, group, n_best, max_answer_length))
        lo = hi
    return out


def squad_scores(questions: Sequence[Question], preds: Sequence[Prediction]) -> dict:
    """SQuAD v1.1 exact match and F1 (percent) of one prediction per question."""
    if len(preds) != len(questions):
        raise ValueError(f"{len(preds)} predictions for {len(questions)} questions")
    golds = [[t for t, _ in q.answers] or [""] for q in questions]
    s = text_metrics.score("squad", [p.text for p in preds], golds)
    return {"exact_match": s["squad_em"], "f1": s["squad_f1"], "questions": float(len(preds))}


@functools.partial(jax.jit, static_argnames=("model",))
def _logits(model, params, input_ids, segment_ids, input_mask):
    out = model.apply(
        {"params": params}, input_ids, token_type_ids=segment_ids, attention_mask=input_mask
    )
    return out.start_logits.astype(jnp.float32), out.end_logits.astype(jnp.float32)


def window_logits(model, params, rows: dict, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end logits [W, T] of windows ``rows`` in batches of ``batch_size`` (the last
    padded with copies of row 0, so one program serves all)."""
    n = len(rows["input_ids"])
    starts, ends = [], []
    for lo in range(0, n, batch_size):
        idx = np.arange(lo, lo + batch_size)
        idx[idx >= n] = 0
        s, e = _logits(
            model,
            params,
            rows["input_ids"][idx],
            rows["segment_ids"][idx],
            rows["input_mask"][idx],
        )
        k = min(batch_size, n - lo)
        starts.append(np.asarray(jax.device_get(s))[:k])
        ends.append(np.asarray(jax.device_get(e))[:k])
    T = rows["input_ids"].shape[1]
    if not starts:
        return np.zeros((0, T), np.float32), np.zeros((0, T), np.float32)
    return np.concatenate(starts), np.concatenate(ends)


def check_model(model) -> None:
    if getattr(model.config, "architecture", None) != ARCHITECTURE:
        raise ValueError(
            f"question answering needs a {ARCHITECTURE} model; this one is "
            f"{getattr(model.config, 'architecture', None) or type(model).__name__} (train one "
            "with task=question_answering or load an HF BertForQuestionAnswering directory)"
        )


def answer(
    model,
    params,
    tok,
    question: str,
    context: str,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> tuple[Prediction, bool, int]:
    """The answer to one question about ``context`` (what ``jaxformers answer`` prints):
    (prediction, whether the question was cut to ``max_query_length`` pieces, windows)."""
    check_model(model)
    check_lengths(max_seq_length, doc_stride, max_query_length)
    q = Question("0", question, context, ())
    windows, cut = question_windows(tok, q, max_seq_length, doc_stride, max_query_length)
    arrays = window_arrays(tok, [(0, w) for w in windows], max_seq_length)
    s, e = window_logits(model, params, arrays.rows, len(windows))
    return predict([q], arrays, s, e, n_best, max_answer_length)[0], cut, len(windows)


# ``answer``'s settings that a run saves in ``QA_JSON`` (the window length is data.seq_len, the
# rest the task's fields of the same names).
SETTINGS = ("max_seq_length", "doc_stride", "max_query_length", "max_answer_length", "n_best")


def saved_settings(path: str) -> dict[str, int]:
    """The ``answer`` settings a question-answering workdir was trained with (``QA_JSON``, written
    by the task); empty for an HF directory or a workdir from before the file existed."""
    f = storage.join(path, QA_JSON)
    return json.loads(storage.read_text(f)) if storage.isfile(f) else {}


def check_lengths(T: int, doc_stride: int, max_query_length: int) -> None:
    if max_query_length < 1 or doc_stride < 1:
        raise ValueError(
            f"max_query_length={max_query_length} and doc_stride={doc_stride} must be >= 1"
        )
    if max_query_length + 4 > T:
        raise ValueError(
            f"max_query_length={max_query_length} leaves no context in windows of {T} tokens "
            f"([CLS] question [SEP] context [SEP]); keep it <= {T - 4}"
        )


# ------------------------------------------------------------------------------------ the task


@dataclasses.dataclass(frozen=True)
class QuestionAnswering:
    """SQuAD-style span prediction (module docstring); ``data.seq_len`` is the window length.

    Attributes:
      doc_stride: context pieces between the starts of a question's windows (reference: 128).
      max_query_length: question pieces kept (reference: 64); longer ones are cut and counted.
      max_answer_length: the longest predicted answer in pieces (reference: 30).
      n_best: start and end logits considered per window (reference: 20).
    """

    doc_stride: int = 128
    max_query_length: int = 64
    max_answer_length: int = 30
    n_best: int = 20

    name: ClassVar[str] = "question_answering"
    input_keys: ClassVar[tuple[str, ...]] = ("input_ids",)

    def __post_init__(self):
        for key in ("doc_stride", "max_query_length", "max_answer_length", "n_best"):
            if getattr(self, key) < 1:
                raise ValueError(f"task.{key}={getattr(self, key)} must be >= 1")

    def settings(self, seq_len: int) -> dict[str, int]:
        """The windows and answer limits ``answer`` takes (``SETTINGS``), as this task trains and
        evaluates."""
        return {"max_seq_length": seq_len, **{k: getattr(self, k) for k in SETTINGS[1:]}}

    def build_data(self, exp: Any, workdir: str) -> QAData:
        check_seq_len(exp)
        if exp.model.architecture != ARCHITECTURE:
            raise ValueError(
                f"task question_answering needs model architecture {ARCHITECTURE!r}, not "
                f"{exp.model.architecture!r}"
            )
        d, T = exp.data, exp.data.seq_len
        check_lengths(T, self.doc_stride, self.max_query_length)
        if jax.process_index() == 0:  # what `jaxformers answer` reads (saved_settings)
            storage.makedirs(workdir)
            storage.write_text(storage.join(workdir, QA_JSON), json.dumps(self.settings(T)))
        data_dir = sources.data_dir_for(d, workdir)
        read = read_questions(d, data_dir)

        def texts():
            seen = None
            for q in read["train"]():
                if q.context != seen:
                    seen = q.context
                    yield q.context
                yield q.question

        tok = tokenizer_for(exp, workdir, texts)
        args = (T, self.doc_stride, self.max_query_length)
        val_questions = list(read["validation"]())
        val_counts = new_counts()
        val = window_arrays(
            tok, list(encode_split(tok, val_questions, *args, val_counts, False)), T
        )
        train_counts: dict = {}

        def gen(split):
            def run():
                if split == "validation":
                    for j in range(len(val.example)):
                        yield {k: v[j] for k, v in val.rows.items()}
                    return
                c = train_counts.setdefault("train", new_counts())
                for _, w in encode_split(tok, read["train"](), *args, c, True):
                    yield window_row(tok, w, T)

            return run

        spec = {k: ((T,), np.int32) for k in ROW_KEYS[:3]}
        spec.update({k: ((), np.int32) for k in ROW_KEYS[3:]})
        stamp = file_stamp(d.corpus) + file_stamp(d.val_corpus)
        key = [d.corpus, stamp, d.val_corpus, d.val_fraction, *args, tok.vocab]
        name = "qa_" + fingerprint(key)
        built = sources.prepare_examples(
            name, {s: gen(s) for s in ("train", "validation")}, spec, data_dir
        )
        unknown = {k: -1 for k in new_counts()}
        counts = kept_counts(
            os.path.join(data_dir, "qa_counts", name + ".json"), train_counts, unknown
        )
        counts["validation"] = val_counts
        t, v = counts["train"], val_counts
        print(
            f"question answering: train {t['questions']:,} questions in {t['windows']:,} "
            f"windows, {t['skipped']:,} skipped (answer not at its answer_start), "
            f"{t['questions_cut']:,} questions cut to {self.max_query_length} pieces; validation "
            f"{v['questions']:,} questions in {v['windows']:,} windows, {v['questions_cut']:,} "
            "cut",
            flush=True,
        )
        return QAData(self, exp, tok, built, spec, val_questions, val, counts)

    def normalizers(self, batch):
        return {"examples": jnp.sum(real_rows(batch))}

    def loss(self, params, apply_fn, batch, rng, deterministic, norms):
        out = bert_forward(apply_fn, params, batch, rng, deterministic)
        real = real_rows(batch)
        s_nll, s_hit = class_cross_entropy(out.start_logits, batch["start_position"], real)
        e_nll, e_hit = class_cross_entropy(out.end_logits, batch["end_position"], real)
        nll = (s_nll + e_nll) / 2
        sums = {"loss": nll, "start_correct": s_hit, "end_correct": e_hit}
        sums["examples"] = jnp.sum(real)
        return nll / norms["examples"], sums

    def finalize(self, s):
        n = s["examples"]
        return {
            "loss": s["loss"] / n,
            "start_accuracy": s["start_correct"] / n,
            "end_accuracy": s["end_correct"] / n,
        }

    def random_examples(
        self, rng, model_config, n: int, seq_len: int, num_predictions: int = 0
    ) -> dict:
        T = seq_len
        return {
            **random_bert_inputs(rng, model_config.vocab_size, n, T),
            "start_position": rng.integers(0, T, (n,), dtype=np.int32),
            "end_position": rng.integers(0, T, (n,), dtype=np.int32),
        }


def new_counts() -> dict:
    return dict(questions=0, windows=0, skipped=0, questions_cut=0)


class QAData(TaskData):
    """Batches of a question-answering run and its SQuAD metrics over the validation questions.

    Attributes:
      questions: the validation questions, in order.
      windows: their windows (``Windows``), grouped by question.
      counts: split -> questions, windows, skipped and cut questions.
    """

    def __init__(self, task, exp, tok, built, spec, questions, windows, counts):
        T = exp.data.seq_len
        # The batches and sizes are those of every prepared-examples task (``example_data``).
        self.__dict__.update(example_data(exp, tok, built, spec, (T,), (T, 0)).__dict__)
        self.task, self.questions, self.windows, self.counts = task, questions, windows, counts
        self.eval_batch_size = exp.batch_size // exp.optim.grad_accum

    def decode_metrics(self, model, params, num_batches: int) -> dict:
        """SQuAD exact match and F1 (percent) over the questions with windows in the first
        ``num_batches`` evaluation batches (the last of them with all its windows; every question
        once when that is all of them); ``questions`` says how many were scored."""
        w = self.windows
        n = min(len(w.example), num_batches * self.eval_batch_size)
        if 0 < n < len(w.example):  # the question the batch limit cuts is scored whole
            n = int(np.searchsorted(w.example, w.example[n - 1], side="right"))
        part = Windows({k: v[:n] for k, v in w.rows.items()}, w.example[:n], w.offsets[:n],
                       w.max_context[:n])  # fmt: skip
        s, e = window_logits(model, params, part.rows, self.eval_batch_size)
        preds = predict(self.questions, part, s, e, self.task.n_best, self.task.max_answer_length)
        scored = sorted(set(part.example.tolist()))
        whole = n == len(w.example)
        if scored != list(range(len(scored))) or (whole and len(scored) != len(self.questions)):
            raise ValueError(
                "the validation windows do not hold each question once, in order; delete the "
                "prepared data to rebuild it"
            )
        return squad_scores(self.questions[: len(scored)], preds)
