"""One generation engine: a KV cache of fixed size, a ``lax.while_loop``, compiled once per shape.

``generate(model, params, input_ids, ...)`` prefills the cache with the (left-padded) prompt in one
forward pass, then produces one token per loop iteration. The prompt length is bucketed (padded on
the left to a multiple of ``prompt_bucket``) so nearby lengths share one compilation.

Token choice follows transformers' order: temperature, then top-k, then top-p, then sampling (or
argmax for greedy). After a sequence emits ``eos_token_id`` every later position holds
``pad_token_id``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxformers.models.layers import NEG_INF


def process_logits(logits: jax.Array, temperature: float, top_k: int | None, top_p: float | None) -> jax.Array:
    """[B, V] float32 -> [B, V] with filtered entries at NEG_INF (transformers' warper order)."""
    logits = logits.astype(jnp.float32)
    if temperature != 1.0:
        logits = logits / temperature
    if top_k is not None and top_k > 0:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    if top_p is not None and top_p < 1.0:
        # Keep the smallest set of most likely tokens whose probability reaches top_p (at least one).
        sorted_logits = jnp.sort(logits, axis=-1)  # ascending, as transformers
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        remove_sorted = cum <= (1.0 - top_p)
        remove_sorted = remove_sorted.at[..., -1].set(False)
        # Threshold: the smallest kept logit; ties are kept, as a scatter back would also keep them.
        thresh = jnp.min(jnp.where(remove_sorted, jnp.inf, sorted_logits), axis=-1, keepdims=True)
        logits = jnp.where(logits < thresh, NEG_INF, logits)
    return logits


def _check_args(method, max_new_tokens, temperature, top_k, top_p, num_beams, input_ids):
    if method not in ("greedy", "sample", "beam"):
        raise ValueError(f"method={method!r}; choose greedy, sample or beam")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        raise ValueError(f"top_p={top_p} must lie in (0, 1]")
    if method == "sample" and temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0 for sampling; use method='greedy' for argmax")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k={top_k} must be >= 0")
    if num_beams < 1:
        raise ValueError(f"num_beams={num_beams} must be >= 1")
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty [batch, length] prompt, got shape {input_ids.shape}")


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
    attention_mask: Any = None,  # [B, T], 0 on left padding
    rng: jax.Array | None = None,
    early_stopping: bool = False,
    prompt_bucket: int = 16,
) -> jax.Array:
    """Generates continuations. GPT-2: returns [B, T + max_new_tokens] (prompt included).

    Args:
      model, params: a GPT2LMHeadModel and its params (as ``model.apply({"params": params}, ...)``).
      input_ids: [B, T] prompts, left-padded when ``attention_mask`` marks padding with 0.
      method: "greedy" | "sample" | "beam".
      temperature, top_k, top_p: sampling filters, applied in that order.
      eos_token_id: None generates exactly ``max_new_tokens``; else a sequence stops at EOS and is
        padded with ``pad_token_id`` (default: eos_token_id) afterwards.
      rng: PRNG key for sampling (default PRNGKey(0)).
    """
    input_ids = np.asarray(input_ids)
    _check_args(method, max_new_tokens, temperature, top_k, top_p, num_beams, input_ids)
    c = model.config
    family = type(model).__name__
    if not family.startswith("GPT2"):
        raise ValueError(f"generate supports GPT-2 models here; got {family}")
    if method == "beam":
        raise ValueError("beam search is not available yet for this model; use greedy or sample")
    B, T = input_ids.shape
    mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} differs from input_ids shape {input_ids.shape}")
    if (mask.sum(-1) == 0).any():
        raise ValueError("a prompt is empty (its attention_mask is all zeros); give every row at least one token")
    from jaxformers.models.layers import check_token_ids
    check_token_ids(input_ids, c.vocab_size)
    Tb = -(-T // prompt_bucket) * prompt_bucket
    if Tb + max_new_tokens > c.n_positions:
        Tb = T  # no room to bucket: use the exact length
    if T + max_new_tokens > c.n_positions:
        raise ValueError(
            f"prompt length {T} + max_new_tokens {max_new_tokens} exceeds the model's n_positions={c.n_positions}; "
            f"lower max_new_tokens to {c.n_positions - T} or shorten the prompt"
        )
    pad = 0 if pad_token_id is None else pad_token_id
    if Tb > T:  # left-pad to the bucket
        input_ids = np.concatenate([np.full((B, Tb - T), pad, input_ids.dtype), input_ids], axis=1)
        mask = np.concatenate([np.zeros((B, Tb - T), mask.dtype), mask], axis=1)
    fn = _compiled_gpt2(model, max_new_tokens, method, float(temperature), top_k, top_p,
                        eos_token_id, pad_token_id if pad_token_id is not None else eos_token_id)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    out = fn(params, jnp.asarray(input_ids, jnp.int32), jnp.asarray(mask, jnp.int32), rng)
    return out[:, Tb - T:]


@functools.lru_cache(maxsize=64)
def _compiled_gpt2(model, max_new_tokens, method, temperature, top_k, top_p, eos, pad):
    @jax.jit
    def run(params, ids, mask, rng):
        B, T = ids.shape
        S = T + max_new_tokens
        cache = jax.tree.map(
            jnp.zeros_like,
            jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((B, S), jnp.int32), decode=True))["cache"],
        )
        full_mask = jnp.concatenate([mask, jnp.ones((B, max_new_tokens), mask.dtype)], axis=1)
        pos = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
        logits, vars_ = model.apply({"params": params, "cache": cache}, ids, attention_mask=full_mask,
                                    position_ids=pos, decode=True, mutable=["cache"])
        next_pos = pos[:, -1] + 1
        out = jnp.zeros((B, max_new_tokens), jnp.int32)
        finished = jnp.zeros((B,), bool)

        def choose(logits, i):
            if method == "greedy":
                return jnp.argmax(logits, axis=-1).astype(jnp.int32)
            l = process_logits(logits, temperature, top_k, top_p)
            return jax.random.categorical(jax.random.fold_in(rng, i), l, axis=-1).astype(jnp.int32)

        def body(carry):
            i, last_logits, cache, out, finished, p = carry
            tok = choose(last_logits, i)
            if eos is not None:
                tok = jnp.where(finished, pad, tok)
                finished = finished | (tok == eos)
            out = out.at[:, i].set(tok)
            logits, v = model.apply({"params": params, "cache": cache}, tok[:, None], attention_mask=full_mask,
                                    position_ids=p[:, None], decode=True, mutable=["cache"])
            return i + 1, logits[:, -1].astype(jnp.float32), v["cache"], out, finished, p + 1

        def cond(carry):
            i, *_, finished, _p = carry
            return (i < max_new_tokens) & ~jnp.all(finished) if eos is not None else i < max_new_tokens

        carry = (0, logits[:, -1].astype(jnp.float32), vars_["cache"], out, finished, next_pos)
        i, _, _, out, finished, _ = jax.lax.while_loop(cond, body, carry)
        if eos is not None:  # stopped early: the rest is padding
            out = jnp.where(jnp.arange(max_new_tokens)[None] >= i, pad, out)
        return jnp.concatenate([ids, out], axis=1)

    return run
