"""T5 span-corruption denoising objective, numpy in / numpy out.

Reproduces the example construction of T5's ``span_corruption`` task
(``random_spans_noise_mask`` + ``noise_span_to_unique_sentinel`` for inputs and
``nonnoise_span_to_unique_sentinel`` for targets, lengths from
``random_spans_helper``), plus seq2seq packing with the feature names that
t5x/seqio use. Everything is deterministic given ``seed``.

Example (vocab_size=32100, so <extra_id_0> = 32099, <extra_id_1> = 32098)::

    tokens  = [a b c d e f g h]          mask = [0 0 1 1 0 0 0 1]
    inputs  = [a b 32099 e f g 32098 EOS]
    targets = [32099 c d 32098 h EOS]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

# T5 reserves 100 sentinel ids (<extra_id_0..99>) at the top of the vocabulary.
MIN_VOCAB_SIZE = 100

Seed = int | Sequence[int]


def _check_noise_args(noise_density: float, mean_noise_span_length: float) -> None:
    if not 0.0 < noise_density < 1.0:
        raise ValueError(
            f"noise_density must be in the open interval (0, 1), got {noise_density}; T5 uses 0.15."
        )
    if mean_noise_span_length < 1.0:
        raise ValueError(
            f"mean_noise_span_length must be >= 1, got {mean_noise_span_length}; T5 uses 3.0."
        )


def _span_counts(
    length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """(num_noise_tokens, num_noise_spans) for a sequence of ``length >= 2``.

    T5 computes these in TF float32 with round-half-to-even, which differs from
    float64 for some lengths (e.g. 190 * 0.15 -> 29 here, 28 in float64), so we
    do the same to get identical masks.
    """
    num_noise = int(np.round(np.float32(length) * np.float32(noise_density)))
    # Keep at least one noise and one non-noise token.
    num_noise = min(max(num_noise, 1), length - 1)
    num_spans = int(np.round(np.float32(num_noise) / np.float32(mean_noise_span_length)))
    num_spans = max(num_spans, 1)
    # Deviation: T5 crashes when there are more spans than non-noise tokens
    # (only possible at high densities); we cap so every span stays non-empty.
    num_spans = min(num_spans, length - num_noise)
    return num_noise, num_spans


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Uniformly random split of ``num_items`` into ``num_segments`` positive parts.

    A shuffled 0/1 vector of length ``num_items - 1`` holding ``num_segments - 1``
    ones marks which items start a new segment; the first item always starts one.

    Returns:
        int64 [num_segments], all >= 1, summing to ``num_items``.
    """
    starts = rng.permutation(np.arange(num_items - 1) < num_segments - 1)
    segment_id = np.cumsum(np.concatenate([[0], starts.astype(np.int64)]))
    return np.bincount(segment_id, minlength=num_segments)


def noise_mask(
    length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0, seed: Seed = 0
) -> np.ndarray:
    """T5 ``random_spans_noise_mask``: spans alternate non-noise, noise, ...

    Exactly ``num_noise_tokens`` positions are noise, grouped into
    ``num_noise_spans`` spans; the mask starts with non-noise and (for
    ``length >= 2``) ends with noise. All such masks are equally likely; note
    that with a single span (short sequences) this means the noise is always
    the tail, as in T5 without ``random_roll``.

    Args:
        length: sequence length. Like T5, lengths below 2 are computed as length
            2 and truncated, so ``length`` 0/1 give an all-False mask.
        noise_density: fraction of tokens to corrupt, in (0, 1).
        mean_noise_span_length: average noise span length, >= 1.
        seed: anything ``np.random.default_rng`` accepts (int or ints).

    Returns:
        bool [length], True at noise positions.
    """
    _check_noise_args(noise_density, mean_noise_span_length)
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}.")
    orig_length, length = length, max(length, 2)
    num_noise, num_spans = _span_counts(length, noise_density, mean_noise_span_length)
    # Two independent streams, like T5's two seeds, so the noise and non-noise
    # segmentations don't depend on each other's draws.
    noise_rng, nonnoise_rng = np.random.default_rng(seed).spawn(2)
    noise_lengths = _random_segmentation(num_noise, num_spans, noise_rng)
    nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, nonnoise_rng)
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
    span_index = np.repeat(np.arange(2 * num_spans), interleaved)
    return (span_index % 2 == 1)[:orig_length]


def _spans_to_unique_sentinels(tokens: np.ndarray, mask: np.ndarray, vocab_size: int) -> np.ndarray:
    """Replace each run of masked tokens by one sentinel (vocab_size-1, -2, ...)."""
    prev = np.concatenate([[False], mask[:-1]])
    first = mask & ~prev
    sentinels = vocab_size - np.cumsum(first)
    return np.where(first, sentinels, tokens)[~(mask & prev)]


def span_corrupt(
    tokens: Sequence[int] | np.ndarray,
    vocab_size: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    seed: Seed = 0,
    eos_id: int = 1,
) -> dict[str, np.ndarray]:
    """Build one T5 span-corruption example from raw tokens.

    Each noise span in ``inputs`` becomes one sentinel; ``targets`` lists, per
    span, the same sentinel followed by the dropped tokens. Sentinels count down
    from ``vocab_size - 1`` (<extra_id_0>) in order of appearance.

    Args:
        tokens: int [T], T >= 2, raw token ids WITHOUT a trailing EOS.
        vocab_size: full vocabulary size including the sentinel ids at the top.
        noise_density, mean_noise_span_length, seed: see ``noise_mask``.
        eos_id: appended to both outputs.

    Returns:
        {"inputs": int32 [T - noise + spans + 1],
         "targets": int32 [noise + spans + 1]}.
    """
    _check_noise_args(noise_density, mean_noise_span_length)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or tokens.size < 2:
        raise ValueError(
            f"tokens must be a 1-D sequence of at least 2 ids, got shape {tokens.shape}; "
            "skip or merge shorter sequences before corrupting them."
        )
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}.")
    if vocab_size <= MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: T5 reserves {MIN_VOCAB_SIZE} sentinel "
            f"ids at the top of the vocabulary, so vocab_size must be > {MIN_VOCAB_SIZE} "
            "(sentinels + content tokens)."
        )
    if tokens[-1] == eos_id:
        raise ValueError(
            f"tokens end with eos_id={eos_id}; pass raw tokens without EOS, "
            "span_corrupt appends it to inputs and targets."
        )
    _, num_spans = _span_counts(tokens.size, noise_density, mean_noise_span_length)
    lowest_sentinel = vocab_size - num_spans
    if tokens.min() < 0 or tokens.max() >= lowest_sentinel:
        raise ValueError(
            f"token ids must be in [0, {lowest_sentinel}) but range over "
            f"[{tokens.min()}, {tokens.max()}]: ids >= {lowest_sentinel} would collide with "
            f"the {num_spans} sentinel(s) counting down from {vocab_size - 1}. Use the full "
            "vocab size including extra_ids (e.g. SentencePieceVocab.vocab_size)."
        )
    mask = noise_mask(tokens.size, noise_density, mean_noise_span_length, seed)
    inputs = _spans_to_unique_sentinels(tokens, mask, vocab_size)
    # Targets use the inverse mask; as the mask starts with non-noise, the k-th
    # non-noise span gets the same sentinel as the k-th noise span in inputs.
    targets = _spans_to_unique_sentinels(tokens, ~mask, vocab_size)
    return {
        "inputs": np.append(inputs, eos_id).astype(np.int32),
        "targets": np.append(targets, eos_id).astype(np.int32),
    }


def random_spans_helper(
    inputs_length: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    extra_tokens_per_span_inputs: int = 1,
    extra_tokens_per_span_targets: int = 1,
) -> tuple[int, int]:
    """Raw chunk length whose corrupted inputs (with EOS) fill ``inputs_length``.

    Same as T5's ``random_spans_helper`` (float64 Python rounding, no clipping,
    and the noise_density == 0.5 tweak that makes targets not exceed inputs).
    E.g. 512 -> (568, 114) and 128 -> (141, 29) at the defaults.

    Returns:
        (tokens_length, targets_length): raw tokens per example and the length
        of the encoded targets including EOS.
    """
    _check_noise_args(noise_density, mean_noise_span_length)

    def lengths(tokens_length: int) -> tuple[int, int]:
        num_noise = int(round(tokens_length * noise_density))
        num_spans = int(round(num_noise / mean_noise_span_length))
        return (
            tokens_length - num_noise + num_spans * extra_tokens_per_span_inputs + 1,
            num_noise + num_spans * extra_tokens_per_span_targets + 1,
        )

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    corrupted_inputs, targets_length = lengths(tokens_length)
    if noise_density == 0.5 and targets_length > corrupted_inputs:
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


def pack_examples(
    examples: Iterable[Mapping[str, Sequence[int]]],
    inputs_length: int,
    targets_length: int,
    pad_id: int = 0,
) -> dict[str, np.ndarray]:
    """Greedily pack {"inputs", "targets"} examples into fixed-length rows.

    Examples are placed in order; a row is closed when the next example does not
    fit in both its encoder and decoder halves. Segment ids number the examples
    of a row from 1 (0 = padding); positions restart at 0 in every segment; the
    decoder inputs are the targets shifted right *within* each segment, starting
    with the decoder start id 0, so no example sees another's tokens.

    Returns:
        int32 [num_rows, inputs_length]: encoder_input_tokens,
            encoder_segment_ids, encoder_positions;
        int32 [num_rows, targets_length]: decoder_target_tokens,
            decoder_input_tokens, decoder_segment_ids, decoder_positions;
        float32 [num_rows, targets_length]: decoder_loss_weights (1 on real
            target tokens, 0 on padding).
    """
    rows: list[list[tuple[np.ndarray, np.ndarray]]] = []
    used_in = used_tgt = 0
    for k, example in enumerate(examples):
        inp = np.asarray(example["inputs"]).reshape(-1)
        tgt = np.asarray(example["targets"]).reshape(-1)
        if inp.size == 0 or tgt.size == 0:
            raise ValueError(f"example {k} has empty inputs or targets; drop it before packing.")
        if inp.size > inputs_length or tgt.size > targets_length:
            raise ValueError(
                f"example {k} has {inp.size} inputs / {tgt.size} targets tokens, which does "
                f"not fit a row of {inputs_length} / {targets_length}; increase the lengths "
                "or split the example (random_spans_helper gives matching sizes)."
            )
        if not rows or used_in + inp.size > inputs_length or used_tgt + tgt.size > targets_length:
            rows.append([])
            used_in = used_tgt = 0
        rows[-1].append((inp, tgt))
        used_in += inp.size
        used_tgt += tgt.size

    def zeros(length: int, fill: int = 0) -> np.ndarray:
        return np.full((len(rows), length), fill, np.int32)

    out = {
        "encoder_input_tokens": zeros(inputs_length, pad_id),
        "encoder_segment_ids": zeros(inputs_length),
        "encoder_positions": zeros(inputs_length),
        "decoder_target_tokens": zeros(targets_length, pad_id),
        "decoder_input_tokens": zeros(targets_length, pad_id),
        "decoder_segment_ids": zeros(targets_length),
        "decoder_positions": zeros(targets_length),
        "decoder_loss_weights": np.zeros((len(rows), targets_length), np.float32),
    }
    for r, row in enumerate(rows):
        i = t = 0
        for segment, (inp, tgt) in enumerate(row, start=1):
            out["encoder_input_tokens"][r, i : i + inp.size] = inp
            out["encoder_segment_ids"][r, i : i + inp.size] = segment
            out["encoder_positions"][r, i : i + inp.size] = np.arange(inp.size)
            out["decoder_target_tokens"][r, t : t + tgt.size] = tgt
            out["decoder_input_tokens"][r, t : t + tgt.size] = np.concatenate([[0], tgt[:-1]])
            out["decoder_segment_ids"][r, t : t + tgt.size] = segment
            out["decoder_positions"][r, t : t + tgt.size] = np.arange(tgt.size)
            out["decoder_loss_weights"][r, t : t + tgt.size] = 1.0
            i += inp.size
            t += tgt.size
    return out


def _corrupted_lengths(
    length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """Exact (inputs, targets) lengths, incl. EOS, that span_corrupt produces."""
    num_noise, num_spans = _span_counts(length, noise_density, mean_noise_span_length)
    return length - num_noise + num_spans + 1, num_noise + num_spans + 1


def corrupt_and_pack(
    token_lists: Iterable[Sequence[int]],
    vocab_size: int,
    inputs_length: int = 512,
    targets_length: int | None = None,
    seed: int = 0,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    eos_id: int = 1,
    pad_id: int = 0,
) -> dict[str, np.ndarray]:
    """Chunk documents, span-corrupt every chunk and pack the results.

    Each document is cut into chunks of the raw length from
    ``random_spans_helper(inputs_length)`` (568 for 512); chunk ``c`` (counted
    over all documents) is corrupted with seed ``(seed, c)``. Chunks shorter
    than 2 tokens are dropped: they cannot hold a noise and a non-noise token.

    Args:
        token_lists: documents as sequences of raw token ids (no EOS).
        vocab_size, noise_density, mean_noise_span_length, eos_id: as in
            ``span_corrupt``; pad_id: as in ``pack_examples``.
        inputs_length: encoder row length.
        targets_length: decoder row length; by default the helper's value, or
            more when T5's float32 counts need it (e.g. 40, not 38, for 172).
        seed: base seed (non-negative int).

    Returns:
        The ``pack_examples`` dict.
    """
    raw_length, needed_targets = chunk_lengths(inputs_length, noise_density, mean_noise_span_length)
    if targets_length is None:
        targets_length = needed_targets
    examples = []
    chunk_index = 0
    for doc in token_lists:
        doc = np.asarray(doc).reshape(-1)
        for start in range(0, doc.size, raw_length):
            chunk = doc[start : start + raw_length]
            if chunk.size >= 2:
                examples.append(
                    span_corrupt(
                        chunk,
                        vocab_size,
                        noise_density,
                        mean_noise_span_length,
                        seed=(seed, chunk_index),
                        eos_id=eos_id,
                    )
                )
            chunk_index += 1
    return pack_examples(examples, inputs_length, targets_length, pad_id)


def chunk_lengths(
    inputs_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[int, int]:
    """(raw tokens per chunk, targets length) for rows of ``inputs_length`` encoder tokens.

    ``random_spans_helper``'s chunk length, shortened while T5's float32 counts would overflow
    the row (the helper rounds in float64), and the targets length that every such chunk fits
    (the helper's, or more: e.g. 40, not 38, for 172).
    """
    raw_length, helper_targets = random_spans_helper(
        inputs_length, noise_density, mean_noise_span_length
    )
    while (
        raw_length >= 2
        and _corrupted_lengths(raw_length, noise_density, mean_noise_span_length)[0] > inputs_length
    ):
        raw_length -= 1
    if raw_length < 2:
        raise ValueError(f"inputs_length={inputs_length} is too small to hold a corrupted chunk.")
    targets = _corrupted_lengths(raw_length, noise_density, mean_noise_span_length)[1]
    return raw_length, max(helper_targets, targets)


def document_examples(
    tokens: Sequence[int] | np.ndarray,
    vocab_size: int,
    raw_length: int,
    seed: Seed,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    eos_id: int = 1,
) -> list[dict[str, np.ndarray]]:
    """One document's span-corruption examples: cut into chunks of ``raw_length`` tokens (the
    first value of ``chunk_lengths``), chunk ``c`` corrupted by ``span_corrupt`` with seed
    ``(*seed, c)``; chunks shorter than 2 tokens are dropped (as ``corrupt_and_pack``).

    The streaming form of ``corrupt_and_pack``'s first half: each document is built alone (the
    seed names the document, e.g. ``(seed, epoch, document)``), and the examples are packed
    afterwards.
    """
    key = (seed,) if isinstance(seed, (int, np.integer)) else tuple(seed)
    doc = np.asarray(tokens).reshape(-1)
    out = []
    for c, start in enumerate(range(0, doc.size, raw_length)):
        chunk = doc[start : start + raw_length]
        if chunk.size >= 2:
            out.append(
                span_corrupt(
                    chunk,
                    vocab_size,
                    noise_density,
                    mean_noise_span_length,
                    seed=(*key, c),
                    eos_id=eos_id,
                )
            )
    return out
