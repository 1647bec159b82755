"""One generation engine for GPT-2 and T5: a fixed-size KV cache and a ``lax.while_loop``, compiled
once per shape.

``generate(model, params, input_ids, ...)`` runs the whole generation in one jitted call:

- GPT-2: the (left-padded) prompt fills the cache in one forward pass; every loop iteration then
  feeds one token per row. Returns ``[B, T + max_new_tokens]`` (prompt included).
- T5: the encoder runs once (``attention_mask`` is its padding mask); ``init_decode_cache`` projects
  the cross-attention keys/values once; the decoder starts from ``decoder_start_token_id`` and feeds
  one token per iteration. Returns ``[B, max_new_tokens]`` decoder tokens (no start token).

Nothing happens in Python per token: the loop, token choice, EOS bookkeeping and beam bookkeeping
all live inside the compiled ``while_loop``. The prompt length is bucketed (padded to a multiple of
``prompt_bucket``; on the left for GPT-2, on the right of the encoder input for T5) so nearby
lengths share one compilation.

GPT-2 with ``crop=True`` keeps generating past ``n_positions``, as nanoGPT's sampler: the cached
loop runs while the sequence fits; each further token is predicted by a full forward over the last
``n_positions`` tokens (the learned absolute positions shift with the window, so a cache cannot be
reused), one compiled call per token over a fixed ``[B, n_positions]`` window.

Token choice follows transformers: greedy is argmax; sampling applies temperature, then top-k, then
top-p, then draws (``process_logits``); beam search is transformers 5's ``_beam_search`` (see
``_beam_search``) with ``num_beams``, ``length_penalty`` and ``early_stopping``. After a sequence's
EOS every later position holds ``pad_token_id``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxformers import models
from jaxformers.models import layers
from jaxformers.models import t5 as t5_lib
from jaxformers.models.layers import NEG_INF, check_token_ids

# transformers' beam search marks impossible candidates by adding this (float32) to their scores.
_BEAM_NEG = -1.0e9


def process_logits(
    logits: jax.Array, temperature: float, top_k: int | None, top_p: float | None
) -> jax.Array:
    """[B, V] -> [B, V] float32 with filtered entries at NEG_INF (transformers' warper order:
    temperature, top-k, top-p). ``top_k`` None or 0 and ``top_p`` None or 1.0 filter nothing.

    The settings may be traced scalars (``generate`` passes them so, and changing them does not
    recompile); ``top_k=None`` / ``top_p=None`` given as Python values skip the sorts they need.
    """
    logits = logits.astype(jnp.float32)
    V = logits.shape[-1]
    logits = logits / jnp.asarray(temperature, jnp.float32)  # dividing by 1.0 is exact
    sorted_desc = None
    if top_k is not None:
        # The k-th largest logit (transformers: torch.topk(scores, k)[0][..., -1]); k = 0: keep all.
        k = jnp.asarray(top_k, jnp.int32)
        k = jnp.where(k > 0, jnp.minimum(k, V), V)
        sorted_desc = -jnp.sort(-logits, axis=-1)
        kth = jnp.take(sorted_desc, k - 1, axis=-1)[..., None]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    if top_p is not None:
        # Keep the smallest set of most likely tokens whose probability reaches top_p (at least
        # one).
        top_p = jnp.asarray(top_p, jnp.float32)
        sorted_logits = jnp.sort(logits, axis=-1)  # ascending, as transformers
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        remove_sorted = cum <= (1.0 - top_p)
        remove_sorted = remove_sorted.at[..., -1].set(False)
        # Threshold: the smallest kept logit; ties are kept, as a scatter back would also keep them.
        thresh = jnp.min(jnp.where(remove_sorted, jnp.inf, sorted_logits), axis=-1, keepdims=True)
        # transformers applies no top-p warper at all for top_p = 1.0.
        logits = jnp.where((logits < thresh) & (top_p < 1.0), NEG_INF, logits)
    return logits


# ----------------------------------------------------------------------------------------------
# Arguments


def _check_args(
    method, max_new_tokens, temperature, top_k, top_p, num_beams, early_stopping, input_ids
):
    if method not in ("greedy", "sample", "beam"):
        raise ValueError(f"method={method!r}; choose greedy, sample or beam")
    if int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be an integer of at least 1")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        raise ValueError(f"top_p={top_p} must lie in (0, 1]")
    if method == "sample" and not temperature > 0:
        raise ValueError(
            f"temperature={temperature} must be > 0 for sampling; use method='greedy' for argmax"
        )
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k={top_k} must be >= 0")
    if int(num_beams) != num_beams or num_beams < 1:
        raise ValueError(f"num_beams={num_beams} must be an integer of at least 1")
    if early_stopping not in (True, False, "never"):
        raise ValueError(
            f"early_stopping={early_stopping!r}; choose True, False or 'never' (as transformers)"
        )
    if input_ids.ndim != 2 or input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
        raise ValueError(
            f"input_ids must be a non-empty [batch, length] prompt, got shape {input_ids.shape}"
        )


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Everything static about one compiled engine (hashable: the compilation cache key)."""

    kind: str  # the decoding adapter: "causal" | "seq2seq"
    max_new_tokens: int
    method: str  # "greedy" | "sample" | "beam"
    use_top_k: (
        bool  # sampling: whether the top-k / top-p filters run at all (their values are traced)
    )
    use_top_p: bool
    num_beams: int
    start: int  # T5's decoder_start_token_id
    return_logits: bool
    rules: Any  # flax logical axis rules active when tracing (they shape the sharding constraints)


def generate(
    model: Any,
    params: Any,
    input_ids: Any,  # [B, T]
    max_new_tokens: int = 64,
    method: str = "greedy",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    attention_mask: Any = None,  # [B, T]
    rng: jax.Array | None = None,
    early_stopping: bool | str = False,
    prompt_bucket: int = 16,
    return_logits: bool = False,
    crop: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Generates with a KV cache, all steps in one compiled loop.

    Args:
      model, params: a GPT2LMHeadModel or T5ForConditionalGeneration and its params (as
        ``model.apply({"params": params}, ...)``). Params may be sharded: call under
        ``jax.set_mesh(mesh)`` and ``nn.logical_axis_rules(sharding.LOGICAL_RULES)``.
      input_ids: [B, T] GPT-2 prompts (left-padded when ``attention_mask`` marks padding with 0) or
        T5 encoder inputs (padding anywhere, as marked by ``attention_mask``).
      max_new_tokens: tokens to generate (exactly this many when ``eos_token_id`` is None).
      method: "greedy" | "sample" | "beam".
      temperature, top_k, top_p: sampling filters, applied in that order (ignored by greedy and by
        beam search, as transformers with ``do_sample=False``).
      num_beams, length_penalty, early_stopping: beam search as transformers' generate: beam scores
        are sums of log-probabilities; a finished hypothesis scores ``sum_logprobs / (generated
        length ** length_penalty)``; ``early_stopping`` True | False | "never". ``num_beams=1`` is
        greedy, as transformers.
      eos_token_id: None generates exactly ``max_new_tokens``; else a sequence stops at EOS and
        every later position holds ``pad_token_id``.
      pad_token_id: GPT-2 default: ``eos_token_id`` (or 0); T5 default: ``config.pad_token_id``.
      attention_mask: [B, T] 1 = token, 0 = padding.
      rng: PRNG key for sampling (default PRNGKey(0)); step i draws with ``fold_in(rng, i)``.
      prompt_bucket: prompts are padded to a multiple of this so nearby lengths share a compilation.
      return_logits: greedy/sample only: also return the float32 logits each token was chosen from,
        [B, max_new_tokens, V] (zeros after every row has stopped).
      crop: GPT-2 only: generate past ``n_positions`` (nanoGPT's sampling). While prompt and new
        tokens fit, the cached loop runs as without ``crop`` (the same tokens); each later token is
        predicted from the last ``n_positions`` tokens of its row by a full forward pass (positions
        counted from the window's start). A prompt longer than ``n_positions`` is cropped the same
        way. Greedy and sample (rng convention unchanged: token i draws with ``fold_in(rng, i)``),
        left padding and EOS work; beam search past ``n_positions`` raises. Without ``crop``,
        ``T + max_new_tokens > n_positions`` raises. T5 raises: its relative positions have no
        window to crop, and its decoder length is ``max_new_tokens`` itself. Compilations: the
        windowed step once per batch size; the cached part, which generates ``n_positions - T``
        tokens, once per prompt length (no bucketing there: its length decides the cache's).

    Returns:
      GPT-2: [B, T + max_new_tokens] (prompt included); T5: [B, max_new_tokens] (no start token).
    """
    input_ids = np.asarray(input_ids)
    _check_args(
        method, max_new_tokens, temperature, top_k, top_p, num_beams, early_stopping, input_ids
    )
    family = models.of_model(model)
    kind = family.decoder  # the adapter: "causal" (GPT-2) or "seq2seq" (T5)
    if kind is None:
        raise ValueError(
            f"generate needs a model that generates (GPT-2 or T5); a {family.name} "
            f"{type(model).__name__} does not"
        )
    if method == "beam" and num_beams == 1:
        method = "greedy"  # transformers runs greedy search for num_beams=1
    if return_logits and method == "beam":
        raise ValueError("return_logits is available for greedy and sample, not beam search")
    c = model.config
    B, T = input_ids.shape
    mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {mask.shape} differs from input_ids shape {input_ids.shape}"
        )
    mask = prompt_mask = (mask != 0).astype(np.int32)
    if (mask.sum(-1) == 0).any():
        raise ValueError(
            "a prompt is empty (its attention_mask is all zeros); give every row at least one token"
        )
    check_token_ids(input_ids, c.vocab_size)
    if crop and kind != "causal":
        raise ValueError(
            f"crop=True applies to causal LMs (GPT-2); a {family.name} model has relative "
            "positions and no context window to crop: its decoder generates up to "
            f"n_positions={c.n_positions} tokens"
        )
    total = int(max_new_tokens)  # all new tokens; the cached loop generates the first M of them
    M = total
    bucket = max(1, int(prompt_bucket))
    Tb = -(-T // bucket) * bucket
    if kind == "causal":
        if (np.diff(mask, axis=1) < 0).any():
            raise ValueError(
                "GPT-2 prompts must be left-padded: an attention_mask row has a 0 after a 1"
            )
        if T + total > c.n_positions and not crop:
            raise ValueError(
                f"prompt length {T} + max_new_tokens {total} exceeds the model's "
                f"n_positions={c.n_positions}; lower max_new_tokens to {c.n_positions - T}, "
                "shorten the prompt, or pass crop=True to keep generating from the last "
                f"{c.n_positions} tokens"
            )
        if T + total > c.n_positions:
            if method == "beam":
                raise ValueError(
                    f"beam search with crop=True past n_positions={c.n_positions} is not "
                    f"implemented; use greedy or sample, or lower max_new_tokens to "
                    f"{max(c.n_positions - T, 0)}"
                )
            # The cached loop fills the context; _cropped_tail windows the rest (M may be 0: a
            # prompt that fills the context already).
            M = max(c.n_positions - T, 0)
        # The cache holds Tb + M - 1 slots and may not outgrow n_positions (no cache when M = 0).
        Tb = min(Tb, c.n_positions - M + 1) if M else T
        pad = eos_token_id if pad_token_id is None else pad_token_id
        pad = 0 if pad is None else pad
        ids = np.concatenate([np.zeros((B, Tb - T), np.int32), input_ids.astype(np.int32)], axis=1)
        mask = np.concatenate([np.zeros((B, Tb - T), np.int32), mask], axis=1)
    else:
        if max_new_tokens > c.n_positions:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} exceeds the model's n_positions={c.n_positions} "
                f"(the decoder length T5 accepts); lower max_new_tokens to {c.n_positions}"
            )
        if T > c.n_positions:
            raise ValueError(
                f"input_ids has length {T}, longer than the model's n_positions={c.n_positions}; "
                f"truncate the input to {c.n_positions} tokens"
            )
        Tb = min(Tb, c.n_positions)
        pad = c.pad_token_id if pad_token_id is None else pad_token_id
        # Right-pad the encoder input: masked keys change nothing (relative positions, no absolute
        # ones).
        ids = np.concatenate([input_ids.astype(np.int32), np.zeros((B, Tb - T), np.int32)], axis=1)
        mask = np.concatenate([mask, np.zeros((B, Tb - T), np.int32)], axis=1)
    if early_stopping != "never":
        early_stopping = bool(early_stopping)
    if method != "beam":
        num_beams = 1
    rules = nn.get_logical_axis_rules()
    spec = _Spec(
        kind=kind,
        max_new_tokens=M,
        method=method,
        use_top_k=method == "sample" and bool(top_k),
        use_top_p=method == "sample" and top_p is not None and top_p < 1.0,
        num_beams=int(num_beams),
        start=int(getattr(c, "decoder_start_token_id", 0)),
        return_logits=bool(return_logits),
        rules=_freeze(rules),
    )
    # EOS, padding, the sampling and the beam-search settings are traced values: changing them does
    # not recompile.
    eos = np.int32(-1 if eos_token_id is None else eos_token_id)  # -1: no token is EOS
    # transformers divides a finished hypothesis' score by (generated length ** length_penalty),
    # computed in Python floats and rounded to float32: a table indexed by length does the same.
    lengths = np.arange(M + 1)
    denom = np.array(
        [float(n) ** length_penalty if n else 1.0 for n in lengths], np.float64
    ).astype(np.float32)
    # early_stopping="never" with a positive length penalty bounds scores at the maximal length.
    never_len = np.int32(M if (early_stopping == "never" and length_penalty > 0) else 0)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    settings = dict(
        eos=eos,
        pad=np.int32(pad),
        early=np.bool_(early_stopping is True),
        denom=denom,
        never_len=never_len,
        temperature=np.float32(temperature),
        top_k=np.int32(top_k or 0),
        top_p=np.float32(1.0 if top_p is None else top_p),
    )
    settings = jax.tree.map(jnp.asarray, settings)
    if M > 0:
        loop_model, loop_params = unrolled(model, params)  # scanned layers: unstacked, here
        fn = _compiled(loop_model, spec)
        tokens, logits = fn(loop_params, jnp.asarray(ids), jnp.asarray(mask), rng, settings)
        del loop_params
        if kind == "causal":
            tokens = tokens[:, Tb - T :]
    else:  # crop=True with a prompt that fills the context: every token comes from the window
        tokens = jnp.asarray(input_ids, jnp.int32)
        logits = jnp.zeros((B, 0, c.vocab_size), jnp.float32) if return_logits else None
    if M < total:
        tokens, logits = _cropped_tail(
            model, params, spec, tokens, prompt_mask, logits, total, rng, settings
        )
    return (tokens, logits) if return_logits else tokens


def _freeze(x):
    if isinstance(x, (list, tuple)):
        return tuple(_freeze(v) for v in x)
    return x


# ----------------------------------------------------------------------------------------------
# Model adapters: ``start`` -> (state, first tokens to feed [B]); ``step(state, tokens [B])`` ->
# (logits [B, V], state). A state is {"cache": the flax cache collection, "rows": per-row arrays
# with the batch first, equal for the beams of one example}.

_SELF_CACHE = ("cached_key", "cached_value")
_ALL_CACHE = _SELF_CACHE + ("cross_key", "cross_value")


def _map_cache(cache, fn: Callable, names):
    """Applies ``fn`` to the cache entries named in ``names`` (batch first: the decode loop runs
    a scanned model unrolled, ``_unrolled``)."""

    def f(path, x):
        return fn(x) if getattr(path[-1], "key", None) in names else x

    return jax.tree_util.tree_map_with_path(f, cache)


def _causal_start(model, params, ids, mask, M, start_token):
    """Prefills the cache with all prompt tokens but the last; the loop feeds the last one first, so
    that every token is chosen inside the loop (one traced copy of the step and of the choice)."""
    B, T = ids.shape
    S = T + M - 1  # the prompt, then M - 1 chosen tokens (the last chosen token is never fed)
    cache = jax.tree.map(
        jnp.zeros_like,
        jax.eval_shape(
            lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((B, S), jnp.int32), decode=True)
        )["cache"],
    )
    full_mask = jnp.concatenate([mask, jnp.ones((B, M - 1), mask.dtype)], axis=1)
    pos = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    if T > 1:
        _, v = model.apply(
            {"params": params, "cache": cache},
            ids[:, :-1],
            attention_mask=full_mask,
            position_ids=pos[:, :-1],
            decode=True,
            mutable=["cache"],
        )
        cache = v["cache"]
    return {"cache": cache, "rows": {"mask": full_mask, "pos": pos[:, -1]}}, ids[:, -1]


def _causal_step(model, params, state, tok):
    rows = state["rows"]
    logits, v = model.apply(
        {"params": params, "cache": state["cache"]},
        tok[:, None],
        attention_mask=rows["mask"],
        position_ids=rows["pos"][:, None],
        decode=True,
        mutable=["cache"],
    )
    return logits[:, -1], {"cache": v["cache"], "rows": {**rows, "pos": rows["pos"] + 1}}


def _seq2seq_start(model, params, ids, mask, M, start_token):
    enc = model.apply({"params": params}, ids, mask, method=model.encode)  # [B, S, D], once
    # Cross-attention keys/values are projected here, once; the self-attention cache holds M slots
    # (the start token and M - 1 chosen tokens).
    cache = t5_lib.init_decode_cache(model, params, enc, M, mask)
    return {"cache": cache, "rows": {"enc": enc, "mask": mask}}, jnp.full(
        (ids.shape[0],), start_token, jnp.int32
    )


def _seq2seq_step(model, params, state, tok):
    rows = state["rows"]
    # Positions come from the cache index (tokens already in the cache).
    logits, v = model.apply(
        {"params": params, "cache": state["cache"]},
        tok[:, None],
        rows["enc"],
        rows["mask"],
        decode=True,
        method=model.decode,
        mutable=["cache"],
    )
    return logits[:, -1], {"cache": v["cache"], "rows": rows}


# A family's ``decoder`` (jaxformers.models.Family) names its adapter here.
_ADAPTERS = {"causal": (_causal_start, _causal_step), "seq2seq": (_seq2seq_start, _seq2seq_step)}


# ----------------------------------------------------------------------------------------------
# Search loops. Each iteration feeds one token per row and chooses the next from its logits.


def _choose(spec: _Spec, settings, logits, rng, i):
    """The next token [B] int32 from float32 ``logits`` [B, V]: argmax, or a draw with
    ``fold_in(rng, i)`` (i: the index of the new token) from the filtered distribution."""
    if spec.method == "greedy":
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    z = process_logits(
        logits,
        settings["temperature"],
        settings["top_k"] if spec.use_top_k else None,
        settings["top_p"] if spec.use_top_p else None,
    )
    return jax.random.categorical(jax.random.fold_in(rng, i), z, axis=-1).astype(jnp.int32)


def _sample_loop(spec: _Spec, V, tok, state, step, rng, settings):
    """Greedy or sampling: one token per row per iteration; stops early once every row hit EOS."""
    M, eos, pad = spec.max_new_tokens, settings["eos"], settings["pad"]
    B = tok.shape[0]

    def cond(carry):
        i, _, _, _, finished, _ = carry
        return (i < M) & ~jnp.all(finished)

    def body(carry):
        i, tok, state, out, finished, rec = carry
        logits, state = step(state, tok)
        logits = logits.astype(jnp.float32)
        tok = jnp.where(finished, pad, _choose(spec, settings, logits, rng, i))
        finished = finished | (tok == eos)
        out = out.at[:, i].set(tok)
        if rec is not None:
            rec = rec.at[:, i].set(logits)
        return i + 1, tok, state, out, finished, rec

    out = jnp.full((B, M), pad, jnp.int32)
    rec = jnp.zeros((B, M, V), jnp.float32) if spec.return_logits else None
    carry = (jnp.int32(0), tok, state, out, jnp.zeros((B,), bool), rec)
    _, _, _, out, _, rec = jax.lax.while_loop(cond, body, carry)
    return out, rec


def _gather_beams(x, idx):
    """x [B, W, ...], idx [B, W2] -> [B, W2, ...] (transformers' ``_gather_beams``)."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def _beam_search(spec: _Spec, V, tok, state, step, reorder, settings):
    """transformers 5's ``GenerationMixin._beam_search`` (do_sample=False), as fixed-shape arrays.

    Per example: ``num_beams`` running beams (scores: sums of log-probabilities; initially beam 0
    at 0 and the rest at -1e9 so the first step expands one beam) and ``num_beams`` finished
    hypotheses (initially empty at -1e9). Each step:

    1. the top 2W continuations over all beams x vocabulary (W = num_beams);
    2. a continuation "hits a stopping criterion" when its token is EOS or the maximal length is
       reached; the best W continuations that did not become the running beams;
    3. those among the top W that hit one become hypotheses with score sum / length**length_penalty
       (length = generated tokens), unless the example is done (early_stopping=True and W finished,
       or the early-stop heuristic below already holds); the best W hypotheses are kept;
    4. heuristic: the example is done when the best running beam, scored at the current length
       (early_stopping False or True; at the maximal length for "never" with a positive penalty),
       cannot beat the worst of W finished hypotheses. The loop ends when every example is done,
       when every example holds W finished hypotheses (early_stopping=True), or at max length.

    ``tok`` [B*W] are the first tokens to feed, ``state`` the model state with B*W rows. Returns the
    best hypothesis per example [B, M], pad after its end.
    """
    M, W = spec.max_new_tokens, spec.num_beams
    eos, pad, early, denom, never_len = (
        settings[k] for k in ("eos", "pad", "early", "denom", "never_len")
    )
    BW = tok.shape[0]
    B = BW // W
    W2 = 2 * W  # transformers: max(2, 1 + number of EOS ids) * num_beams
    neg = jnp.float32(_BEAM_NEG)
    top_mask = jnp.arange(W2) < W

    def select(i, logits, beams):
        running_seqs, running_scores, seqs, scores, finished, unsat = beams
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(B, W, V)
        log_probs = (log_probs + running_scores[:, :, None]).reshape(B, W * V)
        top_lp, top_idx = jax.lax.top_k(log_probs, W2)  # [B, 2W]
        src = top_idx // V
        tok = (top_idx % V).astype(jnp.int32)
        top_seqs = _gather_beams(running_seqs, src).at[:, :, i].set(tok)  # [B, 2W, M]
        hits = (i + 1 >= M) | (tok == eos)
        # Running beams: the best W continuations that did not stop.
        run_lp = top_lp + hits.astype(jnp.float32) * neg
        nxt = jax.lax.top_k(run_lp, W)[1]
        running_seqs = _gather_beams(top_seqs, nxt)
        running_scores = _gather_beams(run_lp, nxt)
        running_src = _gather_beams(src, nxt)
        # Finished hypotheses: only the top W continuations may finish.
        did = hits & top_mask[None]
        s = top_lp / denom[i + 1]
        s = s + (jnp.all(finished, axis=-1, keepdims=True) & early).astype(jnp.float32) * neg
        s = s + (~unsat).astype(jnp.float32) * neg
        s = s + (~did).astype(jnp.float32) * neg
        m_scores = jnp.concatenate([scores, s], axis=1)
        keep = jax.lax.top_k(m_scores, W)[1]
        seqs = _gather_beams(jnp.concatenate([seqs, top_seqs], axis=1), keep)
        scores = _gather_beams(m_scores, keep)
        finished = _gather_beams(jnp.concatenate([finished, did], axis=1), keep)
        # The early-stop heuristic, at the new length i + 1.
        hyp_len = jnp.where(never_len > 0, never_len, i + 1)
        best = running_scores[:, :1] / denom[hyp_len]
        worst = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), neg)
        unsat = unsat & jnp.any(best > worst, axis=-1, keepdims=True)
        going = jnp.any(unsat) & ~(jnp.all(finished) & early) & ~jnp.all(hits)
        rows = (jnp.arange(B)[:, None] * W + running_src).reshape(BW)
        next_tok = running_seqs[:, :, i].reshape(BW)
        return (running_seqs, running_scores, seqs, scores, finished, unsat), rows, next_tok, going

    def cond(carry):
        i, going = carry[0], carry[-1]
        return (i < M) & going

    def body(carry):
        i, rows, tok, state, beams, _ = carry
        state = reorder(state, rows)  # each running beam continues its source beam's cache
        logits, state = step(state, tok)
        beams, rows, tok, going = select(i, logits, beams)
        return i + 1, rows, tok, state, beams, going

    init_scores = jnp.where(jnp.arange(W)[None] == 0, 0.0, neg) * jnp.ones((B, 1), jnp.float32)
    beams = (
        jnp.full((B, W, M), pad, jnp.int32),
        init_scores,
        jnp.full((B, W, M), pad, jnp.int32),
        jnp.full((B, W), neg, jnp.float32),
        jnp.zeros((B, W), bool),
        jnp.ones((B, 1), bool),
    )
    carry = (jnp.int32(0), jnp.arange(BW), tok, state, beams, jnp.array(True))
    seqs = jax.lax.while_loop(cond, body, carry)[4][2]
    return seqs[:, 0]  # hypotheses are kept sorted: the best first


@functools.lru_cache(maxsize=64)
def _unrolled(model):
    """(the model to decode with, a jitted params -> its params, or None): a scanned model decodes
    unrolled.

    Under ``nn.scan`` every decode step would slice each layer's weights out of the stacked params
    (a dynamic slice: on CPU a copy of every weight per generated token, halving GPT-2 124M's
    tokens/s). Unstacked once per ``generate`` call, before the loop and in a program of its own,
    the loop's matmuls read the weights where they lie, as an unscanned model's do. The decode
    loop's compile time then grows with depth, as an unscanned model's does
    (``benchmarks/compile_depth.py --what decode``); unstacking inside the loop's program cost
    another 4-15 s of compiling it (GPT-2 124M-1.5B on 2 CPU cores).
    """
    c = model.config
    if not c.scan_layers:
        return model, None
    flat = model.clone(config=dataclasses.replace(c, scan_layers=False))
    family = models.of_config(c)
    # Only its keys are read: its leaves stay boxed (unboxing would constrain shardings here).
    like = jax.eval_shape(lambda: flat.init(jax.random.PRNGKey(0), *family.example_inputs(c)))
    like = like["params"]
    return flat, jax.jit(lambda params: layers.unstacked_like(nn.meta.unbox(params), like))


def unrolled(model, params):
    """(model, params) to decode with, for a model with scanned layers: the same model unscanned
    and its params unstacked (``name_0`` ... per layer), done once. ``generate`` unstacks a scanned
    model's params itself, on every call (GPT-2 124M, 128 new tokens at batch 1 on 2 CPU cores:
    7-14% of the call, benchmarks/scanned_decode.py); a program that calls it many times converts
    once with this. An unscanned model comes back as it is."""
    flat, unstack = _unrolled(model)
    return (model, params) if unstack is None else (flat, unstack(params))


@functools.lru_cache(maxsize=64)
def _compiled(model, spec: _Spec):
    """The decode loop of an unscanned ``model`` (``generate`` unrolls a scanned one first)."""
    V = model.config.vocab_size
    M = spec.max_new_tokens

    @jax.jit
    def generate_loop(
        params, ids, mask, rng, settings
    ):  # the name jax.monitoring reports for its traces
        start, step = _ADAPTERS[spec.kind]
        state, tok = start(model, params, ids, mask, M, spec.start)
        step = functools.partial(step, model, params)
        rec = None
        if spec.method == "beam":
            W = spec.num_beams
            # One prefill per example; its beams start from copies of the cache.
            rep = lambda x: jnp.repeat(x, W, axis=0)  # noqa: E731
            state = {
                "cache": _map_cache(state["cache"], rep, _ALL_CACHE),
                "rows": jax.tree.map(rep, state["rows"]),
            }

            def reorder(state, rows):
                take = lambda x: jnp.take(x, rows, axis=0)  # noqa: E731
                # Only self-attention caches differ between the beams of an example.
                return {
                    "cache": _map_cache(state["cache"], take, _SELF_CACHE),
                    "rows": state["rows"],
                }

            gen = _beam_search(spec, V, rep(tok), state, step, reorder, settings)
        else:
            gen, rec = _sample_loop(spec, V, tok, state, step, rng, settings)
        if spec.kind == "causal":
            gen = jnp.concatenate([ids, gen], axis=1)
        return gen, rec

    return generate_loop


# ----------------------------------------------------------------------------------------------
# crop=True past n_positions (GPT-2): a sliding window, one compiled full forward per token.


def _cropped_tail(model, params, spec: _Spec, tokens, prompt_mask, logits, total, rng, settings):
    """Continues ``tokens`` [B, T + M] (the prompt and the M tokens the cached loop generated) to
    [B, T + total], each new token chosen from a forward pass over the row's last ``n_positions``
    tokens. ``prompt_mask`` [B, T] marks left padding; ``logits`` [B, M, V] or None (not
    recorded). Returns (tokens, logits [B, total, V] or None), as ``generate``.

    The loop runs in Python, one call of the compiled ``crop_step`` per token: its window has the
    fixed shape [B, n_positions], so every step, prompt length and ``max_new_tokens`` shares one
    compilation (a compiled loop would have to be traced for each number of steps).
    """
    P = model.config.n_positions
    B, L = tokens.shape
    M = spec.max_new_tokens
    T = L - M
    full_mask = jnp.concatenate(
        [jnp.asarray(prompt_mask, jnp.int32), jnp.ones((B, M), jnp.int32)], axis=1
    )
    window, wmask = tokens[:, -P:], full_mask[:, -P:]
    # Rows that stopped in the cached loop stay stopped (with no EOS, eos = -1 matches nothing).
    finished = jnp.any(tokens[:, T:] == settings["eos"], axis=1)
    stops = int(settings["eos"]) >= 0
    step = _window_step(model, dataclasses.replace(spec, max_new_tokens=0, return_logits=False))
    new, recs = [], []
    for i in range(M, total):
        if stops and bool(jnp.all(finished)):  # every row stopped: the rest is padding
            break
        window, wmask, finished, tok, z = step(
            params, window, wmask, finished, jnp.int32(i), rng, settings
        )
        new.append(tok)
        recs.append(z)
    gen = jnp.full((B, total - M), settings["pad"], jnp.int32)
    if new:
        gen = gen.at[:, : len(new)].set(jnp.stack(new, axis=1))
    tokens = jnp.concatenate([tokens, gen], axis=1)
    if logits is not None:
        rec = jnp.zeros((B, total - M, model.config.vocab_size), jnp.float32)
        if recs:
            rec = rec.at[:, : len(recs)].set(jnp.stack(recs, axis=1))
        logits = jnp.concatenate([logits, rec], axis=1)
    return tokens, logits


@functools.lru_cache(maxsize=64)
def _window_step(model, spec: _Spec):
    """One token per row from a [B, n_positions] window; compiled once per model, batch size and
    (static) method."""

    @jax.jit
    def crop_step(params, window, mask, finished, i, rng, settings):
        # Positions count from each row's first token in the window (GPT-2's learned absolute
        # positions: the window's oldest token sits at position 0, as in nanoGPT's cropped idx).
        pos = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
        logits = model.apply({"params": params}, window, attention_mask=mask, position_ids=pos)
        logits = logits[:, -1].astype(jnp.float32)
        tok = jnp.where(finished, settings["pad"], _choose(spec, settings, logits, rng, i))
        finished = finished | (tok == settings["eos"])
        window = jnp.concatenate([window[:, 1:], tok[:, None]], axis=1)
        mask = jnp.concatenate([mask[:, 1:], jnp.ones_like(mask[:, :1])], axis=1)
        return window, mask, finished, tok, logits

    return crop_step
