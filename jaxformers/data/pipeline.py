"""Index-based, deterministic, host-sharded batches of packed token windows.

Documents are tokenized once into a flat token file (``uint16``/``uint32`` on disk, read by
position, EOS between documents), as nanoGPT's ``train.bin``. The stream is cut into windows of
``seq_len + 1`` tokens (inputs and shifted targets); a grain ``MapDataset`` shuffles the window
indices with a per-epoch permutation. Batch ``step`` is a pure function of ``step``: the data
position is the training step, so resuming from a checkpoint continues the exact same order.

Rows of a global batch are laid out microbatch-major: row ``a * mb + p * mb_local + j`` belongs to
microbatch ``a`` and host ``p``. Each host reads only its own rows; any host count sees the same
global batch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable

import grain
import numpy as np

from jaxformers.data.sources import record_text

# Text tokenized per call when a corpus is written as tokens (a document longer is one call).
ENCODE_CHARS = 1 << 20


def token_file(
    texts: Iterable[str], encode_batch: Callable, eos_id: int, path: str, vocab_size: int
) -> np.ndarray:
    """Tokenizes ``texts`` into ``path`` (written once, atomically); returns it as a
    ``TokenFile``."""
    dtype = np.uint16 if vocab_size <= 65536 else np.uint32
    if not os.path.exists(path):
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            batch: list[str] = []
            chars = 0
            for text in texts:
                batch.append(text)
                chars += len(text)
                # Bounded by text, not documents: the tokenizer's encodings take ~100 bytes a
                # token, so 64 documents of a play each (10 MB of text) held ~1 GB at once.
                if len(batch) == 64 or chars >= ENCODE_CHARS:
                    _write(f, encode_batch(batch), eos_id, dtype)
                    batch, chars = [], 0
            _write(f, encode_batch(batch), eos_id, dtype)
        os.replace(tmp, path)
    return TokenFile(path, dtype)


class TokenFile:
    """A token file (``dtype`` ids) read by position (``os.pread``): ``len`` and ``[a:b]``.

    Not memory-mapped: a mapped file's pages count in the process's resident memory once read
    (with the kernel's fault-around, 64 KB per random window), so a run's RSS grew with its
    corpus (GPT-2 pipeline: 354 MB at 1x, 533 MB at 100x, 200 random batches). Reads still go
    through the page cache; the process holds only the windows it asked for.
    """

    def __init__(self, path: str, dtype):
        self.path, self.dtype = path, np.dtype(dtype)
        self._len = os.path.getsize(path) // self.dtype.itemsize
        self._fd: int | None = None

    def __getstate__(self):  # grain workers open their own descriptor
        return {**self.__dict__, "_fd": None}

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(self._len)
            if step != 1:
                raise ValueError("a TokenFile reads contiguous slices only")
        else:
            start = int(key) + (self._len if int(key) < 0 else 0)
            if not 0 <= start < self._len:
                raise IndexError(f"token {key} of {self._len}")
            stop = start + 1
        count = max(0, stop - start)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        size = self.dtype.itemsize
        out = np.frombuffer(os.pread(self._fd, count * size, start * size), self.dtype)
        return out if isinstance(key, slice) else out[0]

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[:], dtype)

    def tolist(self) -> list[int]:
        return self[:].tolist()


def _write(f, docs, eos_id, dtype):
    for ids in docs:
        np.asarray(list(ids) + [eos_id], dtype=dtype).tofile(f)


def tokenize_source(
    source, tokenizer, cache_dir: str, split: str, fingerprint: str
) -> tuple[np.ndarray, int]:
    """All documents of a TFDS data source -> (``TokenFile``, UTF-8 bytes of the text),
    cached under ``cache_dir`` (the byte count in a JSON file beside the tokens)."""
    os.makedirs(cache_dir, exist_ok=True)
    key = hashlib.sha256(f"{fingerprint}:{split}:{len(source)}".encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"{split}-{key}.bin")
    meta_path = path[: -len(".bin")] + ".json"
    if not os.path.exists(meta_path):
        # Tokens and their byte count are written together (tokens cached without one, by an
        # older version, are written again).
        if os.path.exists(path):
            os.remove(path)
        num_bytes = 0

        def texts():
            nonlocal num_bytes
            for i in range(len(source)):
                text = record_text(source[i])
                num_bytes += len(text.encode("utf-8"))
                yield text

        tokens = token_file(
            texts(), tokenizer.encode_batch, tokenizer.eos_id, path, tokenizer.vocab_size
        )
        tmp = meta_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"bytes": num_bytes, "documents": len(source)}, f)
        os.replace(tmp, meta_path)
        return tokens, num_bytes
    with open(meta_path) as f:
        num_bytes = json.load(f)["bytes"]
    tokens = token_file((), tokenizer.encode_batch, tokenizer.eos_id, path, tokenizer.vocab_size)
    return tokens, num_bytes


class Windows:
    """Random-access source of ``seq_len + 1``-token windows over a token stream."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens, self.seq_len = tokens, seq_len
        self.n = (len(tokens) - 1) // seq_len
        if self.n < 1:
            raise ValueError(
                f"the corpus has {len(tokens)} tokens, fewer than one sequence of {seq_len + 1}; "
                "use a larger corpus or a shorter data.seq_len"
            )

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        s = int(i) * self.seq_len
        return np.asarray(self.tokens[s : s + self.seq_len + 1], dtype=np.int32)


def step_rows(
    step: int, global_batch: int, accum: int, process_index: int, process_count: int
) -> np.ndarray:
    """Global example indices one host reads at ``step``, shaped [A, b_local] (module docstring)."""
    mb = global_batch // accum
    mb_local = mb // process_count
    a = np.arange(accum)[:, None]
    j = np.arange(mb_local)[None, :]
    return step * global_batch + a * mb + process_index * mb_local + j


def check_divisible(global_batch: int, accum: int, process_count: int) -> None:
    if global_batch % (accum * process_count):
        raise ValueError(
            f"batch_size={global_batch} must divide into {accum} accumulation steps x "
            f"{process_count} hosts; choose a multiple of {accum * process_count}"
        )


def num_batches(n: int, global_batch: int) -> int:
    """Batches that hold ``n`` examples once, the last one padded."""
    return -(-n // global_batch)


class ExampleBatches:
    """Batches of fixed-shape examples from a random-access source (a TFDS data source).

    ``transform(example, index)`` may rewrite an example deterministically from its global index
    (e.g. dynamic masking draws fresh masks each epoch from a seed derived from the index).

    ``pad=True`` (evaluation) reads every example exactly once, in order: ``num_batches`` batches,
    rows past the end all zeros. Tasks recognise such rows by their all-zero masks and weights
    (``input_mask``, ``decoder_loss_weights``), so they count nowhere.
    """

    def __init__(
        self,
        source,
        global_batch: int,
        seed: int | None = 0,
        accum: int = 1,
        process_index: int = 0,
        process_count: int = 1,
        transform=None,
        pad: bool = False,
    ):
        check_divisible(global_batch, accum, process_count)
        if len(source) == 0:
            raise ValueError("the dataset split is empty; use a larger corpus")
        self.source, self.transform, self.pad = source, transform, pad
        ds = grain.MapDataset.range(len(source))
        if seed is not None:
            ds = ds.shuffle(seed=seed)
        self.order = ds if pad else ds.repeat()
        self.global_batch, self.accum = global_batch, accum
        self.process_index, self.process_count = process_index, process_count

    def __len__(self) -> int:
        return len(self.source)

    @property
    def num_batches(self) -> int:
        return num_batches(len(self.source), self.global_batch)

    def example(self, i: int) -> dict:
        ex = self.source[int(self.order[int(i)])]
        return self.transform(ex, int(i)) if self.transform else ex

    def batch(self, step: int) -> dict[str, np.ndarray]:
        rows = step_rows(
            step, self.global_batch, self.accum, self.process_index, self.process_count
        )
        real = [i for i in rows.reshape(-1) if not self.pad or i < len(self.source)]
        exs = [self.example(i) for i in real]
        if len(exs) < rows.size:  # past the end of an evaluation split
            blank = {k: np.zeros_like(np.asarray(v)) for k, v in self.example(0).items()}
            exs += [blank] * (rows.size - len(exs))
        return {
            k: np.stack([np.asarray(e[k]) for e in exs]).reshape(rows.shape + np.shape(exs[0][k]))
            for k in exs[0]
        }


class EvalWindows(Windows):
    """Windows that score every token of the stream after the first exactly once: the last
    window is cut short and padded (inputs 0, targets -1, which the loss weighs 0)."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens, self.seq_len = tokens, seq_len
        self.n = -(-(len(tokens) - 1) // seq_len)
        if self.n < 1:
            raise ValueError(
                f"the validation text has {len(tokens)} token(s); it needs at least 2 (one to "
                "predict from, one to score)"
            )

    def __getitem__(self, i: int) -> np.ndarray:
        w = super().__getitem__(i)
        out = np.full(self.seq_len + 1, -1, np.int32)
        out[: len(w)] = w
        return out


class LMBatches:
    """Batches for causal LM training: ``{"inputs", "targets"}`` int32 ``[A, b, T]``.

    Args:
      tokens: the token stream.
      seq_len: T.
      global_batch: rows per step over all hosts (A microbatches of global_batch / A).
      seed: shuffling seed; None keeps file order (evaluation).
      accum: A, gradient-accumulation microbatches per step.
      process_index, process_count: this host and the host count.
      pad: evaluation: every token after the first is a target exactly once over ``num_batches``
        batches; padding rows and the end of the last window have targets -1 (weight 0).
    """

    def __init__(
        self,
        tokens,
        seq_len: int,
        global_batch: int,
        seed: int | None = 0,
        accum: int = 1,
        process_index: int = 0,
        process_count: int = 1,
        pad: bool = False,
    ):
        check_divisible(global_batch, accum, process_count)
        self.windows = (EvalWindows if pad else Windows)(tokens, seq_len)
        self.pad = pad
        ds = grain.MapDataset.source(self.windows)
        if seed is not None:
            ds = ds.shuffle(seed=seed)
        # grain reshuffles every epoch (the seed is combined with the epoch)
        self.ds = ds if pad else ds.repeat()
        self.global_batch, self.accum = global_batch, accum
        self.process_index, self.process_count = process_index, process_count

    @property
    def num_windows(self) -> int:
        return len(self.windows)

    def __len__(self) -> int:
        return len(self.windows)

    @property
    def num_batches(self) -> int:
        return num_batches(len(self.windows), self.global_batch)

    def rows(self, step: int) -> np.ndarray:
        """Global example indices this host reads at ``step``, shaped [A, b_local]."""
        return step_rows(
            step, self.global_batch, self.accum, self.process_index, self.process_count
        )

    def batch(self, step: int) -> dict[str, np.ndarray]:
        rows = self.rows(step)
        blank = np.full(self.windows.seq_len + 1, -1, np.int32)
        seqs = np.stack(
            [self.ds[int(i)] if i < len(self.ds) or not self.pad else blank for i in rows.flat]
        ).reshape(rows.shape + (-1,))
        # Padding is -1 in targets only: inputs must stay valid token ids.
        return {"inputs": np.maximum(seqs[..., :-1], 0), "targets": seqs[..., 1:]}


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
