"""Building blocks shared by BERT, GPT-2 and T5.

Dimension alphabet (used in every einsum, shape comment and docstring of jaxformers):

    B batch          T query length      S key/value length
    D model width    F MLP width         V vocabulary
    N query heads    K key/value heads   H head dimension
    L layers

and outside the models (data, tasks, decoding):

    T sequence (encoder input) length    S target (decoder) length
    A gradient-accumulation microbatches b rows of one microbatch on one host
    P masked-LM predictions per sequence C classes
    M new tokens to generate             W beams per example (2W candidates per step)

Every parameter is created with logical axis names (``("embed", "mlp")`` ...). They mean nothing
until ``jaxformers.sharding.LOGICAL_RULES`` maps them onto the mesh axes, so the model code never
names a device axis.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
DType = Any

# Big negative instead of -inf: a fully masked row (left padding) must still give finite
# probabilities, as transformers does with finfo.min.
NEG_INF = -1e30


def dtype_of(name: str | DType) -> DType:
    """'float32' / 'bfloat16' / a jnp dtype -> a jnp dtype."""
    return jnp.dtype(name) if isinstance(name, str) else name


def partitioned(init: Callable, axes: Sequence[str | None]) -> Callable:
    """An initializer whose parameter carries logical axis names."""
    return nn.with_logical_partitioning(init, tuple(axes))


def constrain(x: Array, axes: Sequence[str | None]) -> Array:
    """Logical sharding constraint on an activation (a no-op outside a rules context)."""
    return nn.with_logical_constraint(x, tuple(axes))


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    # Names as transformers' ACT2FN spells them, so config.json values map one to one.
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # exact erf GELU (BERT)
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),  # tanh approximation (GPT-2)
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def activation(name: str) -> Callable[[Array], Array]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None


def concrete_values(x: Any) -> np.ndarray | None:
    """``x`` as numpy when its values are known here; None under ``jit`` (a tracer) or when the
    array spans devices of other hosts."""
    if x is None or isinstance(x, jax.core.Tracer if hasattr(jax.core, "Tracer") else ()):
        return None
    try:
        return np.asarray(x)
    except Exception:  # TracerArrayConversionError, non-addressable shards
        return None


def check_token_ids(ids: Any, vocab_size: int, name: str = "input_ids") -> None:
    """Raises a clear error for token ids outside [0, vocab_size) when the values are known.

    Inside ``jit`` the values are abstract and only shapes can be checked; the data pipeline
    checks its tokenizer's vocabulary against the model's once, before training.
    """
    arr = concrete_values(ids)
    if arr is None:
        return
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        raise ValueError(
            f"{name} holds token id {int(arr.max()) if arr.max() >= vocab_size else int(arr.min())}"
            f" outside [0, {vocab_size}): the tokenizer does not match the model's vocab_size; "
            "tokenize with the model's own tokenizer or raise vocab_size in the model config"
        )


def padded_vocab(vocab_size: int, multiple: int) -> int:
    """``vocab_size`` rounded up to a multiple of ``multiple`` (the embedding's row count)."""
    return -(-vocab_size // multiple) * multiple


def vocab_logits(logits: Array, vocab_size: int) -> Array:  # [..., V_padded] -> [..., V]
    """The LM head's logits over the real vocabulary: the padding columns sliced off.

    Padding (``ModelConfig.vocab_pad_multiple``) only gives the head's matmul, and its shards under
    tensor parallelism, a friendly size. The padded columns are cut here, once, rather than masked
    to a large negative in every consumer: then no loss, sampler, beam search, metric or user can
    count them by forgetting a mask, and every public output keeps the real vocabulary's shape
    (transformers' [B, T, V]). The padded logits are constrained first, while their vocabulary dim
    still divides the tensor axis. A slice is an index map that XLA can fuse into its consumers
    (softmax, loss), and its transpose (zero padding) into the gradient's producer.
    """
    logits = constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))
    return logits if logits.shape[-1] == vocab_size else logits[..., :vocab_size]


def check_length(length: int, limit: int, name: str, field: str) -> None:
    if length > limit:
        raise ValueError(
            f"{name} has length {length}, longer than the model's {field}={limit}; "
            f"truncate the input to {limit} tokens or use a model with a larger {field}"
        )


class Dense(nn.Module):
    """A linear map contracting the last ``len(in_axes)`` dims: ``[..., in] -> [..., *features]``.

    Attributes:
      features: output dims, e.g. ``(3, N, H)`` for a fused QKV projection.
      axes: logical names of the kernel, input dims first then output dims.
      contract: how many trailing input dims are contracted (2 for ``[B, T, N, H] -> [B, T, D]``).
    """

    features: int | tuple[int, ...]
    axes: tuple[str | None, ...]
    contract: int = 1
    use_bias: bool = True
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    kernel_init: Callable = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        in_shape = x.shape[-self.contract :]
        kernel = self.param(
            "kernel",
            partitioned(self.kernel_init, self.axes),
            in_shape + features,
            self.param_dtype,
        )
        dims = (tuple(range(x.ndim - self.contract, x.ndim)), tuple(range(self.contract)))
        y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), (dims, ((), ())))
        if self.use_bias:
            bias = self.param(
                "bias",
                partitioned(nn.initializers.zeros, self.axes[self.contract :]),
                features,
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        return y


class Embed(nn.Module):
    """Token embedding ``[V, D]``; ``attend`` gives tied output logits ``[..., D] -> [..., V]``."""

    num_embeddings: int
    features: int
    axes: tuple[str | None, str | None] = ("vocab", "embed")
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    embedding_init: Callable = nn.initializers.normal(0.02)

    def setup(self):
        self.embedding = self.param(
            "embedding",
            partitioned(self.embedding_init, self.axes),
            (self.num_embeddings, self.features),
            self.param_dtype,
        )

    def __call__(self, ids: Array) -> Array:  # [B, T] -> [B, T, D]
        # The table is gathered whole over its "embed" dim (fsdp) before the lookup, as ZeRO-3
        # gathers every parameter before use. Looked up in its stored layout, the rows come out
        # split over fsdp on D, and the partitioner cannot move fsdp from D onto the batch dim
        # of the activation rules ("activation_batch" -> (data, fsdp)): it warned "Involuntary
        # full rematerialization" on the (2, 2, 2) mesh and replicated the activations forward
        # and backward (tests/test_sharding.py checks that it no longer does). The row dim stays
        # as stored (unconstrained): split over tensor, or whole where the tensor axis does not
        # divide it (sharding.fit_to_shapes); naming "vocab" there would ask for a reshard.
        table = constrain(self.embedding, (jax.sharding.PartitionSpec.UNCONSTRAINED, None))
        return jnp.take(table, ids, axis=0).astype(self.dtype)

    def attend(self, x: Array) -> Array:  # [B, T, D] -> [B, T, V]
        return jnp.einsum("BTD,VD->BTV", x.astype(self.dtype), self.embedding.astype(self.dtype))


def layer_norm(eps: float, dtype: DType, param_dtype: DType, name: str, rms: bool = False):
    """LayerNorm (BERT, GPT-2) or T5's RMS norm (no mean, no bias); statistics in float32."""
    kwargs = dict(
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=partitioned(nn.initializers.ones, ("norm",)),
        name=name,
    )
    if rms:
        return nn.RMSNorm(**kwargs)
    return nn.LayerNorm(bias_init=partitioned(nn.initializers.zeros, ("norm",)), **kwargs)


class MLP(nn.Module):
    """Position-wise feed-forward: ``[B, T, D] -> [B, T, F] -> [B, T, D]``.

    ``gated`` gives T5 v1.1's gated GELU: ``act(x W0) * (x W1)``.
    """

    d_ff: int
    act: str = "gelu_new"
    gated: bool = False
    use_bias: bool = True
    inner_dropout: float = 0.0  # T5 drops out the hidden activations; GPT-2 and BERT do not
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    kernel_init: Callable = nn.initializers.normal(0.02)
    out_init: Callable = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        d_model = x.shape[-1]
        dense = functools.partial(
            Dense, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype
        )
        h = activation(self.act)(
            dense(
                self.d_ff,
                ("embed", "mlp"),
                kernel_init=self.kernel_init,
                name="wi_0" if self.gated else "wi",
            )(x)
        )
        if self.gated:
            h = h * dense(self.d_ff, ("embed", "mlp"), kernel_init=self.kernel_init, name="wi_1")(x)
        h = constrain(h, ("activation_batch", "activation_length", "activation_mlp"))
        h = nn.Dropout(self.inner_dropout)(h, deterministic=deterministic)
        return dense(d_model, ("mlp", "embed"), kernel_init=self.out_init, name="wo")(h)


def causal_mask(q_len: int, kv_len: int) -> Array:
    """bool [1, 1, T, S]: query t may see keys s <= t (queries are the last T of S positions)."""
    q = jnp.arange(q_len)[:, None] + (kv_len - q_len)
    k = jnp.arange(kv_len)[None, :]
    return (k <= q)[None, None]


def padding_mask(attention_mask: Array) -> Array:
    """[B, S] of 1/0 -> bool [B, 1, 1, S] (True = may attend)."""
    return attention_mask.astype(bool)[:, None, None, :]


def segment_mask(q_segment_ids: Array, kv_segment_ids: Array) -> Array:
    """Packed examples: [B, T], [B, S] segment ids (0 = padding) -> bool [B, 1, T, S].

    A query sees only keys of its own example, so attention never crosses packed examples.
    """
    q, k = q_segment_ids[:, None, :, None], kv_segment_ids[:, None, None, :]
    return (q == k) & (k > 0)


def combine_masks(*masks: Array | None) -> Array | None:
    masks = [m for m in masks if m is not None]
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        out = jnp.logical_and(out, m)
    return out


def dot_product_attention(
    q: Array,  # [B, T, N, H]
    k: Array,  # [B, S, N, H] ([B, N, H, S] with cache_layout)
    v: Array,  # [B, S, N, H] ([B, N, S, H] with cache_layout)
    mask: Array | None,  # bool [B|1, N|1, T, S]
    bias: Array | None,  # [B|1, N, T, S] additive (T5 relative positions)
    scale: float,
    dropout_rate: float,
    dropout_rng: Array | None,
    dtype: DType,
    impl: str = "xla",
    is_causal: bool = False,
    cache_layout: bool = False,
    return_probs: bool = False,
) -> Array | tuple[Array, Array]:  # [B, T, N, H] (and probabilities [B, N, T, S])
    """Softmax attention, softmax in float32.

    ``impl="xla"`` is written out in einsums (exact parity with transformers, attention dropout);
    ``impl="cudnn"``/``"auto"`` route to ``jax.nn.dot_product_attention`` (cuDNN flash attention on
    GPU) when there is no attention dropout. ``cache_layout``: ``k`` is [B, N, H, S] and ``v``
    [B, N, S, H], the KV caches' layouts (see ``Attention``); it always takes the einsum path.
    ``return_probs`` also returns the attention probabilities (before dropout, float32); it takes
    the einsum path too (a fused kernel never forms them, as transformers' sdpa refuses
    ``output_attentions``).
    """
    fused_ok = not cache_layout and not return_probs
    if impl != "xla" and fused_ok and (dropout_rate == 0.0 or dropout_rng is None):
        if mask is not None:  # cuDNN wants the sequence dims of a mask spelled out
            mask = jnp.broadcast_to(mask, mask.shape[:2] + (q.shape[1], k.shape[1]))
        return jax.nn.dot_product_attention(
            q,
            k,
            v,
            bias=bias,
            mask=mask,
            scale=scale,
            is_causal=is_causal,
            implementation=None if impl == "auto" else impl,
        ).astype(dtype)
    k_dims, v_dims = ("BNHS", "BNSH") if cache_layout else ("BSNH", "BSNH")
    if is_causal:
        mask = combine_masks(causal_mask(q.shape[1], k.shape[k_dims.index("S")]), mask)
    logits = _logits(q, k, k_dims, bias, mask, scale)
    probs = weights = jax.nn.softmax(logits, axis=-1)
    if dropout_rate > 0.0 and dropout_rng is not None:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        weights = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    out = jnp.einsum(f"BNTS,{v_dims}->BTNH", weights.astype(dtype), v)
    return (out, probs) if return_probs else out


def _logits(q, k, k_dims, bias, mask, scale) -> Array:
    """float32 [B, N, T, S] attention logits of q [B, T, N, H] against k (laid out as ``k_dims``),
    scaled, biased, and NEG_INF where ``mask`` is False."""
    logits = jnp.einsum(f"BTNH,{k_dims}->BNTS", q, k).astype(jnp.float32) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, NEG_INF)
    return logits


def cached_attention(
    q: Array,  # [B, T, N, H]: the queries of the T new tokens
    k: Array,  # [B, T, N, H]: their keys
    v: Array,  # [B, T, N, H]: their values
    k_cache: Array,  # [B, N, H, S]: keys of the earlier tokens at positions < index
    v_cache: Array,  # [B, N, S, H]
    index: Array,  # int32 []: tokens already in the cache (the new ones go at index..index+T-1)
    mask: Array | None,  # bool [B|1, N|1, T|1, S]: over the cache's positions
    bias: Array | None,  # [B|1, N, T, S]: over the cache's positions
    scale: float,
    dtype: DType,
    return_probs: bool = False,
) -> Array | tuple[Array, Array]:  # [B, T, N, H] (and probabilities [B, N, T, S])
    """Causal attention of T new tokens over the cache before they are written into it, and over
    themselves: the same softmax as over the cache with them written in (positions after them
    masked), in two segments joined along the keys.

    Why two segments: when the attention reads the cache that this step updates, XLA on CPU copies
    every layer's whole cache inside the decode loop at every step; reading the cache as it came
    in, and the new keys/values as they are, leaves the update feeding only the loop's next state,
    which XLA does in place (with the region analysis of ``perf.CPU_XLA_FLAGS``).
    """
    S, T = v_cache.shape[2], k.shape[1]
    old_mask = (jnp.arange(S) < index)[None, None, None, :]  # written by earlier steps
    new_mask = causal_mask(T, T)
    old_bias = new_bias = None
    if mask is not None:
        old_mask = jnp.logical_and(old_mask, mask)
        new_mask = jnp.logical_and(new_mask, jax.lax.dynamic_slice_in_dim(mask, index, T, axis=-1))
    if bias is not None:
        old_bias, new_bias = bias, jax.lax.dynamic_slice_in_dim(bias, index, T, axis=-1)
    logits = jnp.concatenate(
        [
            _logits(q, k_cache, "BNHS", old_bias, old_mask, scale),
            _logits(q, k, "BSNH", new_bias, new_mask, scale),
        ],
        axis=-1,
    )
    probs = jax.nn.softmax(logits, axis=-1)
    p_old, p_new = probs[..., :S], probs[..., S:]
    out = jnp.einsum("BNTS,BNSH->BTNH", p_old.astype(dtype), v_cache) + jnp.einsum(
        "BNTS,BSNH->BTNH", p_new.astype(dtype), v
    )
    if not return_probs:
        return out
    # Over the cache's positions: the new tokens' share goes where they are written (their
    # positions' share of the old segment is exactly 0, being masked).
    return out, jax.lax.dynamic_update_slice(p_old, p_new, (0, 0, 0, index))


def _value_layout(x: Array) -> Array:
    """[B, T, N, H] -> [B, N, T, H] (the value caches' layout)."""
    return jnp.swapaxes(x, 1, 2)


def _key_layout(x: Array) -> Array:
    """[B, T, N, H] -> [B, N, H, T] (the key caches' layout)."""
    return jnp.transpose(x, (0, 2, 3, 1))


class Attention(nn.Module):
    """Multi-head attention for self- and cross-attention, with an optional KV cache.

    Attributes:
      num_heads: N.
      head_dim: H.
      fused_qkv: one ``[D, 3, N, H]`` kernel (GPT-2's c_attn) instead of three.
      scale: logits scale; None means 1/sqrt(H). T5 folds it into the init and uses 1.0.
      impl: "xla" | "cudnn" | "auto" (see ``dot_product_attention``).

    In decode mode (``decode=True``) keys and values are written into the ``cache`` collection
    (``cached_key`` [B, N, H, S_max], ``cached_value`` [B, N, S_max, H], ``cache_index``), sized by
    the input seen at init. A query at cache position p sees keys at positions <= p
    (``cached_attention``). For cross-attention the projected encoder keys/values are cached on the
    first call (``cross_key`` [B, N, H, S], ``cross_value`` [B, N, S, H]) and reused. The caches
    are laid out as the per-token attention dots read them (q·K as [H, S] per head, p·V as
    [S, H]): in the [B, S, N, H] order XLA on CPU copies (transposes) every layer's whole cache at
    every step (measured: 1.74 ms against 0.14 ms per layer and step at batch 8, GPT-2 124M, 160
    positions).
    """

    num_heads: int
    head_dim: int
    use_bias: bool = True
    fused_qkv: bool = False
    scale: float | None = None
    dropout_rate: float = 0.0
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    kernel_init: Callable = nn.initializers.normal(0.02)
    q_init: Callable | None = None
    out_init: Callable = nn.initializers.normal(0.02)
    impl: str = "xla"

    @nn.compact
    def __call__(
        self,
        x: Array,  # [B, T, D]
        kv: Array | None = None,  # [B, S, D]; None = self-attention
        mask: Array | None = None,  # bool [B|1, 1|N, T, S]
        bias: Array | None = None,  # [B|1, N, T, S]
        deterministic: bool = True,
        decode: bool = False,
        causal: bool = False,
        return_weights: bool = False,
    ) -> Array | tuple[Array, Array]:  # [B, T, D] (and probabilities [B, N, T, S])
        """``return_weights``: also return the attention probabilities (``dot_product_attention``'s
        ``return_probs``)."""
        N, H = self.num_heads, self.head_dim
        dense = functools.partial(
            Dense,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
        )
        cross = kv is not None
        if self.fused_qkv and not cross:
            qkv = dense((3, N, H), ("embed", "qkv", "heads", "kv"), name="qkv")(
                x
            )  # [B, T, 3, N, H]
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            q = dense(
                (N, H),
                ("embed", "heads", "kv"),
                kernel_init=self.q_init or self.kernel_init,
                name="query",
            )(x)
            if cross and decode and self.has_variable("cache", "cross_key"):
                # Encoder keys/values do not change while decoding: project them once.
                k = self.get_variable("cache", "cross_key")
                v = self.get_variable("cache", "cross_value")
            else:
                src = kv if cross else x
                k = dense((N, H), ("embed", "heads", "kv"), name="key")(src)
                v = dense((N, H), ("embed", "heads", "kv"), name="value")(src)
                if cross and decode:
                    k, v = _key_layout(k), _value_layout(v)
                    self.variable("cache", "cross_key", lambda: k)
                    self.variable("cache", "cross_value", lambda: v)
        q = constrain(
            q, ("activation_batch", "activation_length", "activation_heads", "activation_kv")
        )

        scale = (1.0 / np.sqrt(H)) if self.scale is None else self.scale
        if decode and not cross:
            k_cache, v_cache, index = self._update_cache(k, v)
            if mask is not None and mask.shape[-1] != v_cache.shape[2]:
                raise ValueError(
                    f"decode mask must cover the whole cache ({v_cache.shape[2]} keys), "
                    f"got {mask.shape}"
                )
            out = cached_attention(
                q, k, v, k_cache, v_cache, index, mask, bias, scale, self.dtype, return_weights
            )
        else:
            dropout_rng = None
            if not deterministic and self.dropout_rate > 0.0:
                dropout_rng = self.make_rng("dropout")
            out = dot_product_attention(
                q,
                k,
                v,
                mask,
                bias,
                scale,
                self.dropout_rate,
                dropout_rng,
                self.dtype,
                self.impl,
                is_causal=causal,
                cache_layout=decode,
                return_probs=return_weights,
            )
        if return_weights:
            out, probs = out
        out = constrain(
            out, ("activation_batch", "activation_length", "activation_heads", "activation_kv")
        )
        out = Dense(
            x.shape[-1],
            ("heads", "kv", "embed"),
            contract=2,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.out_init,
            name="out",
        )(out)
        return (out, probs) if return_weights else out

    def _update_cache(self, k: Array, v: Array) -> tuple[Array, Array, Array]:
        """Writes this step's keys/values ([B, T, N, H]) at ``cache_index``; returns the caches
        and the index as they were before (what ``cached_attention`` reads)."""
        is_init = not self.has_variable("cache", "cached_key")
        k, v = _key_layout(k), _value_layout(v)
        cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
        cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
        index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        old = cached_k.value, cached_v.value, index.value
        if not is_init:  # initialising, the input only sizes the (empty) cache
            i = index.value
            cached_k.value = jax.lax.dynamic_update_slice(
                cached_k.value, k.astype(cached_k.value.dtype), (0, 0, 0, i)
            )
            cached_v.value = jax.lax.dynamic_update_slice(
                cached_v.value, v.astype(cached_v.value.dtype), (0, 0, i, 0)
            )
            index.value = i + k.shape[3]
        return old


# ---------------------------------------------------------------------------------------------
# What every model config shares: how to run it (not what it computes), and named presets.

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.checkpoint_dots,
    "save_dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}
ATTENTION_IMPLS = ("xla", "cudnn", "auto")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Run fields of a model config, shared by GPT2Config, BertConfig and T5Config.

    ``dtype`` is the compute dtype, ``param_dtype`` the storage dtype; ``scan_layers`` runs the
    blocks under ``nn.scan`` (compile time flat in depth, params stacked on a "layers" axis);
    ``remat`` is one of ``REMAT_POLICIES``; ``attention_impl`` one of ``ATTENTION_IMPLS``.
    ``vocab_pad_multiple``: the embedding and LM head get ``padded_vocab_size`` rows (``vocab_size``
    rounded up to this multiple; 128 suits GPU/TPU matmul tiles and tensor-parallel shards, see
    ``jaxformers.perf.default_vocab_pad_multiple``). The padding is invisible outside the params:
    outputs have ``vocab_size`` logits (``vocab_logits``), token ids must be below ``vocab_size``,
    and the Hugging Face export writes only the real rows.
    """

    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat: str = "none"
    attention_impl: str = "xla"
    vocab_pad_multiple: int = 1

    PRESETS: ClassVar[dict] = {}
    FAMILY: ClassVar[str] = "model"  # for messages: "GPT-2", "BERT", "T5"
    family: ClassVar[str] = (
        ""  # the registry's key (jaxformers.models.FAMILIES): "gpt2", "bert", "t5"
    )

    @classmethod
    def preset(cls, name: str, **overrides: Any):
        """A named size (``cls.PRESETS``) with field overrides."""
        if name not in cls.PRESETS:
            raise ValueError(
                f"unknown {cls.FAMILY} preset {name!r}; choose one of {sorted(cls.PRESETS)}"
            )
        return cls(**{**cls.PRESETS[name], **overrides})

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and the LM head: ``vocab_size`` rounded up to
        ``vocab_pad_multiple``."""
        return padded_vocab(self.vocab_size, self.vocab_pad_multiple)

    def check_run_fields(self) -> None:
        check_positive(self, "vocab_pad_multiple")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}; choose one of {sorted(REMAT_POLICIES)}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"attention_impl={self.attention_impl!r}; choose one of {ATTENTION_IMPLS}"
            )
        for f in ("dtype", "param_dtype"):
            if getattr(self, f) not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"{f}={getattr(self, f)!r}; choose float32, bfloat16 or float16")


def check_positive(config: Any, *fields: str) -> None:
    """ValueError naming the first of ``fields`` of ``config`` that is not a whole number >= 1."""
    for f in fields:
        v = getattr(config, f)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{f}={v!r} must be a whole number of at least 1")


def block_stack(block_cls, n_layer: int, scan: bool, remat: str, name: str):
    """Wraps a block class with remat and scan; returns a function
    ``(parent_kwargs, x, *args) -> (x, per_layer)``.

    The block's ``__call__(x, *args)`` must return ``(x, extras)``, ``extras`` a dict of arrays the
    caller asked the block for (every layer's output, its attention probabilities), empty when
    nothing was asked: so that it can be scanned, and scanned stacks collect the extras as scan
    outputs. ``per_layer`` maps each key of ``extras`` to a tuple of the ``n_layer`` layers'
    arrays (empty when the blocks return none: then nothing is collected or paid for).
    Scanned params carry the logical axis "layers" on their new leading dimension.
    """
    cls = block_cls
    if remat != "none":
        cls = nn.remat(block_cls, policy=REMAT_POLICIES[remat], prevent_cse=not scan)

    def run(parent_kwargs, x, *args):
        if scan:
            scanned = nn.scan(
                cls,
                variable_axes={"params": 0, "cache": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast,) * len(args),
                length=n_layer,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, stacked = scanned(**parent_kwargs, name=name)(x, *args)
            return x, {k: tuple(v[i] for i in range(n_layer)) for k, v in (stacked or {}).items()}
        outs = []
        for i in range(n_layer):
            x, extras = cls(**parent_kwargs, name=layer_name(name, i))(x, *args)
            outs.append(extras or {})
        return x, {k: tuple(o[k] for o in outs) for k in outs[0]}

    return run


def layer_outputs(
    x: Array, want_hidden: bool, want_attn: bool, **probs: Array
) -> tuple[Array, dict[str, Array]]:
    """A block's return value for ``block_stack``: its output ``x`` and the extras asked for
    (``"hidden"``: ``x`` itself; each of ``probs``, e.g. ``attentions=...``, when ``want_attn``)."""
    extras = {"hidden": x} if want_hidden else {}
    if want_attn:
        extras.update(probs)
    return x, extras


def hidden_states(
    embedded: Array, per_layer: dict, final: Array | None = None
) -> tuple[Array, ...]:
    """transformers' ``hidden_states``: the embedding output, then every layer's output; with
    ``final`` (GPT-2's and T5's final-norm output) the last layer's output is replaced by it, as
    transformers records it."""
    outs = (embedded, *per_layer["hidden"])
    return outs if final is None else outs[:-1] + (final,)


# ---- the params layout ``block_stack`` creates, for code that reads or writes params by layer ----


def layer_name(name: str, i: int) -> str:
    """The params key of layer ``i`` of an unscanned stack (scanned: one ``name``, layers
    stacked)."""
    return f"{name}_{i}"


def layer_path(path: Sequence[str | int], scan: bool) -> tuple[tuple[str, ...], int | None]:
    """A params path that names a layer by index, ``("h", 3, "attn", ...)``, -> (the keys it is
    stored under, its index on the leading "layers" axis or None).

    Scanned: ``(("h", "attn", ...), 3)``; unscanned: ``(("h_3", "attn", ...), None)``. A path
    without an int is stored as it is. The int follows the stack's name, as ``block_stack`` names
    it.
    """
    for j, key in enumerate(path):
        if isinstance(key, int):
            if j == 0:
                raise ValueError(f"{tuple(path)}: a layer index must follow the stack's name")
            if scan:
                return tuple(path[:j]) + tuple(path[j + 1 :]), key
            return tuple(path[: j - 1]) + (layer_name(path[j - 1], key),) + tuple(
                path[j + 1 :]
            ), None
    return tuple(path), None


def param_at(params: Any, path: Sequence[str | int], scan: bool) -> Any:
    """The array at ``path`` (see ``layer_path``): one layer's slice when scanned."""
    keys, index = layer_path(path, scan)
    x = functools.reduce(lambda d, k: d[k], keys, params)
    return x if index is None else x[index]


def unstacked_like(params: dict, like: Any) -> dict:
    """Scanned ``params`` in the unscanned layout of ``like`` (the unscanned model's params tree,
    or its ``jax.eval_shape``): each stack ``name`` becomes ``name_0`` ... ``name_{L-1}``, layer
    ``i`` the slice ``[i]`` of every leaf's leading "layers" axis; everything else as it is.
    Works on traced arrays (a jitted function can unstack once and then run unrolled layers)."""
    out = {}
    for k, v in like.items():
        if k in params:
            out[k] = unstacked_like(params[k], v) if isinstance(v, dict) else params[k]
            continue
        name, _, i = k.rpartition("_")
        if not (name and i.isdigit() and name in params):
            raise ValueError(
                f"params have neither {k!r} nor a layer stack {name!r} to take it from"
            )
        out[k] = jax.tree.map(lambda x, i=int(i): x[i], params[name])
    return out


def params_from_leaves(leaves: Iterable[tuple[Sequence[str | int], Any]], scan: bool) -> dict:
    """(path, array) pairs (paths as ``layer_path`` reads them) -> a nested params dict in the
    layout of ``block_stack``: each layer under ``name_i``, or when ``scan`` each leaf's layers
    stacked on a new leading axis in index order (every index 0 .. L-1 must be given once)."""
    tree: dict = {}
    stacks: dict[tuple[str, ...], dict[int, Any]] = {}

    def put(keys, x):
        d = functools.reduce(lambda d, k: d.setdefault(k, {}), keys[:-1], tree)
        if keys[-1] in d:
            raise ValueError(f"params path {keys} is given twice")
        d[keys[-1]] = x

    for path, x in leaves:
        keys, index = layer_path(path, scan)
        if index is None:
            put(keys, x)
        else:
            layers_of = stacks.setdefault(keys, {})
            if index in layers_of:
                raise ValueError(f"layer {index} of params path {keys} is given twice")
            layers_of[index] = x
    for keys, layers_of in stacks.items():
        if sorted(layers_of) != list(range(len(layers_of))):
            raise ValueError(
                f"params path {keys} has layers {sorted(layers_of)}, not 0 .. {len(layers_of) - 1}"
            )
        put(keys, np.stack([np.asarray(layers_of[i]) for i in range(len(layers_of))]))
    return tree


class HFWeight(NamedTuple):
    """One tensor of a transformers checkpoint, as a model file's ``hf_weights(config)`` lists it
    for the converter in ``jaxformers.hf``.

    Attributes:
      name: the name transformers saves it under.
      path: where it lives in our params, a layer given by index after the stack's name
        (``("h", 3, "attn", "qkv", "kernel")``, see ``layer_path``).
      layout: how the two arrays relate: "same" (as they are); "flat" (ours has more dims, theirs is
        1-D: a [3, N, H] bias); "linear k" (torch nn.Linear stores [out, in]; the first k dims of
        our kernel are its inputs, the rest its outputs); "conv1d k" (GPT-2's Conv1D stores
        [in, out]; the first k dims of ours are the inputs).
      aliases: other names real checkpoints use for it, accepted on load only (first found wins,
        after ``name``).
      vocab_axis: the dim of our array that runs over the vocabulary, if any: ours has the
        config's ``padded_vocab_size`` rows there, transformers' ``vocab_size`` (export drops
        the padding, import pads with zeros).
    """

    name: str
    path: tuple[str | int, ...]
    layout: str = "same"
    aliases: tuple[str, ...] = ()
    vocab_axis: int | None = None
