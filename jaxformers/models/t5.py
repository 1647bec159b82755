"""T5: an encoder-decoder transformer with relative position biases (v1.0 and v1.1 variants).

Numerically the same function as transformers' ``T5ForConditionalGeneration``: a shared token
embedding, pre-norm blocks with T5's RMS norm (no mean, no bias), no biases anywhere, attention
without the 1/sqrt(H) scale (T5 folds it into the initialisation), a learned relative position bias
computed once per stack (bidirectional buckets in the encoder, causal ones in the decoder) and added
in every layer, and a ReLU (v1.0) or gated-GELU (v1.1) MLP. The head is either tied to the shared
embedding or a separate ``lm_head``; the decoder output is scaled by d_model**-0.5 before it when
``scale_decoder_outputs`` (v1.0 checkpoints: yes, v1.1: no).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax.numpy as jnp

from jaxformers.models import layers
from jaxformers.models.layers import Array, HFWeight, block_stack


def parse_feed_forward_proj(proj: str) -> tuple[str, bool]:
    """``feed_forward_proj`` -> (activation name, gated) exactly as transformers' T5Config reads it.

    "relu" -> ("relu", False); "gated-gelu" -> ("gelu_new", True) (transformers keeps this mapping
    for backwards compatibility); "gated-silu" -> ("silu", True).
    """
    parts = proj.split("-")
    if (len(parts) > 1 and parts[0] != "gated") or len(parts) > 2:
        raise ValueError(
            f"feed_forward_proj={proj!r} is not of the form 'ACT' or 'gated-ACT' "
            "(e.g. 'relu', 'gated-gelu')"
        )
    act = "gelu_new" if proj == "gated-gelu" else parts[-1]
    return act, parts[0] == "gated"


# v1.0 (the T5 paper): ReLU MLP, tied head, scaled decoder output. v1.1: gated GELU, separate head,
# no scaling.
_V10 = dict(
    vocab_size=32128, feed_forward_proj="relu", tie_word_embeddings=True, scale_decoder_outputs=True
)
_V11 = dict(
    vocab_size=32128,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    scale_decoder_outputs=False,
)


@dataclasses.dataclass(frozen=True)
class T5Config(layers.ModelConfig):
    """Hyperparameters of a T5 model (field names as transformers' T5Config).

    ``tie_word_embeddings``: the head reuses the shared embedding (else a separate ``lm_head``).
    ``scale_decoder_outputs``: multiply the decoder output by d_model**-0.5 before the head (v1.0).
    ``n_positions``: T5 has no absolute positions; this only bounds the encoder and decoder lengths
    that the input checks accept (as the Hub's t5 configs state it), not the parameters.
    Run fields as GPT2Config: ``dtype`` (compute), ``param_dtype`` (storage), ``scan_layers``,
    ``remat`` ("none" | "full" | "save_dots" | "save_dots_no_batch"), ``attention_impl``.
    """

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None  # None: as many as the encoder (transformers' rule)
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    initializer_factor: float = 1.0
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    scale_decoder_outputs: bool = True
    n_positions: int = 512
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0

    FAMILY = "T5"
    family = "t5"
    PRESETS = {
        "tiny": dict(
            vocab_size=512,
            d_model=64,
            d_kv=16,
            d_ff=128,
            num_layers=2,
            num_heads=4,
            n_positions=128,
        ),
        "t5-small": dict(_V10, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8),
        "t5-base": dict(_V10, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12),
        "t5-large": dict(_V10, d_model=1024, d_kv=64, d_ff=4096, num_layers=24, num_heads=16),
        "t5.1.1-small": dict(_V11, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6),
        "t5.1.1-base": dict(_V11, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12),
        "t5.1.1-large": dict(_V11, d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16),
    }

    def __post_init__(self):
        if self.num_decoder_layers is None:
            object.__setattr__(self, "num_decoder_layers", self.num_layers)
        layers.check_positive(
            self,
            "vocab_size",
            "d_model",
            "d_kv",
            "d_ff",
            "num_layers",
            "num_decoder_layers",
            "num_heads",
            "relative_attention_num_buckets",
            "relative_attention_max_distance",
            "n_positions",
        )
        layers.activation(parse_feed_forward_proj(self.feed_forward_proj)[0])
        self.check_run_fields()

    @property
    def dense_act_fn(self) -> str:
        return parse_feed_forward_proj(self.feed_forward_proj)[0]

    @property
    def is_gated_act(self) -> bool:
        return parse_feed_forward_proj(self.feed_forward_proj)[1]

    def flops_per_example(self, input_length: int, target_length: int) -> float:
        """Training FLOPs (forward + backward) of one example, PaLM appendix B convention.

        6 x (matmul parameters each token passes through) per token, plus 12 x layers x (attended
        length) x (heads * d_kv) per token for attention scores and values: encoder tokens pass the
        encoder and every decoder layer's cross-attention key/value projections and attend to the
        inputs; target tokens pass the rest of the decoder and the LM head and attend to the targets
        (self) and the inputs (cross). Embedding lookups and norms are not counted. The LM head
        counts its padded rows (``padded_vocab_size``): the hardware multiplies them too.
        """
        D, inner, F = self.d_model, self.num_heads * self.d_kv, self.d_ff
        V = self.padded_vocab_size
        Le, Ld = self.num_layers, self.num_decoder_layers
        mlp = (3 if self.is_gated_act else 2) * D * F
        enc_params = Le * (4 * D * inner + mlp) + Ld * 2 * D * inner  # + cross-attention k, v
        # self, cross q/o, MLP, head
        dec_params = Ld * (4 * D * inner + 2 * D * inner + mlp) + D * V
        Ti, Tt = input_length, target_length
        matmuls = 6.0 * (Ti * enc_params + Tt * dec_params)
        attention = 12.0 * inner * (Ti * Le * Ti + Tt * Ld * (Tt + Ti))
        return matmuls + attention


def relative_position_bucket(
    relative_position: Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
    """Key position minus query position -> bucket id in [0, num_buckets), as Mesh
    TensorFlow/transformers.

    Half the buckets (per direction when bidirectional) hold exact distances, the rest logarithmic
    bins up to ``max_distance``; causal buckets send all future keys to bucket 0.
    """
    rp = relative_position.astype(jnp.int32)
    buckets = jnp.zeros_like(rp)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (rp > 0).astype(jnp.int32) * num_buckets
        rp = jnp.abs(rp)
    else:
        rp = -jnp.minimum(rp, 0)
    max_exact = num_buckets // 2
    is_small = rp < max_exact
    # float32 as transformers; the max() only keeps log(0) out of the branch that is discarded.
    large = max_exact + (
        jnp.log(jnp.maximum(rp, 1).astype(jnp.float32) / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(is_small, rp, large)


def _normal(std: float):
    return nn.initializers.normal(std)


@flax.struct.dataclass
class T5EncoderOutput:
    """``encode`` with all-layer outputs asked for (else the last hidden state alone)."""

    last_hidden_state: Array  # [B, T, D]
    hidden_states: tuple[Array, ...] | None = None  # L + 1 x [B, T, D]; the last after the norm
    attentions: tuple[Array, ...] | None = None  # L x [B, N, T, T]


@flax.struct.dataclass
class Seq2SeqLMOutput:
    """``__call__`` (``decode``: the decoder fields) with all-layer outputs asked for (else the
    logits alone); names and meaning as transformers' Seq2SeqLMOutput."""

    logits: Array  # [B, S, V]
    encoder_last_hidden_state: Array | None = None  # [B, T, D]
    encoder_hidden_states: tuple[Array, ...] | None = None  # L_enc + 1 x [B, T, D]
    encoder_attentions: tuple[Array, ...] | None = None  # L_enc x [B, N, T, T]
    decoder_hidden_states: tuple[Array, ...] | None = None  # L_dec + 1 x [B, S, D]
    decoder_attentions: tuple[Array, ...] | None = None  # L_dec x [B, N, S, S]
    cross_attentions: tuple[Array, ...] | None = None  # L_dec x [B, N, S, T]


class T5Block(nn.Module):
    """One encoder block (self-attention, MLP) or decoder block (self-, cross-attention, MLP)."""

    config: T5Config
    is_decoder: bool = False
    deterministic: bool = True
    decode: bool = False
    output_hidden_states: bool = False
    output_attentions: bool = False

    @nn.compact
    def __call__(self, x, bias, mask, encoded, encoded_mask):  # x [B, T, D]
        c = self.config
        dtype, pdtype = layers.dtype_of(c.dtype), layers.dtype_of(c.param_dtype)
        D, N, H, f = c.d_model, c.num_heads, c.d_kv, c.initializer_factor
        norm = functools.partial(layers.layer_norm, c.layer_norm_epsilon, dtype, pdtype, rms=True)
        drop = nn.Dropout(c.dropout_rate)
        # transformers' initialisation: q std (D H)^-1/2 (the folded 1/sqrt(H)), k/v D^-1/2,
        # o (N H)^-1/2.
        attention = functools.partial(
            layers.Attention,
            num_heads=N,
            head_dim=H,
            use_bias=False,
            scale=1.0,
            dropout_rate=c.dropout_rate,
            dtype=dtype,
            param_dtype=pdtype,
            kernel_init=_normal(f * D**-0.5),
            q_init=_normal(f * (D * H) ** -0.5),
            out_init=_normal(f * (N * H) ** -0.5),
            impl=c.attention_impl,
        )
        h = norm(name="self_attn_norm")(x)
        h = attention(name="self_attn")(
            h,
            mask=mask,
            bias=bias,
            deterministic=self.deterministic,
            decode=self.decode,
            causal=self.is_decoder,
            return_weights=self.output_attentions,
        )
        h, probs = h if self.output_attentions else (h, None)
        x = x + drop(h, deterministic=self.deterministic)
        cross = {}
        if self.is_decoder:
            h = norm(name="cross_attn_norm")(x)
            h = attention(name="cross_attn")(
                h,
                kv=encoded,
                mask=encoded_mask,
                deterministic=self.deterministic,
                decode=self.decode,
                return_weights=self.output_attentions,
            )
            if self.output_attentions:
                h, cross["cross_attentions"] = h
            x = x + drop(h, deterministic=self.deterministic)
        h = norm(name="mlp_norm")(x)
        act, gated = parse_feed_forward_proj(c.feed_forward_proj)
        h = layers.MLP(
            d_ff=c.d_ff,
            act=act,
            gated=gated,
            use_bias=False,
            inner_dropout=c.dropout_rate,
            dtype=dtype,
            param_dtype=pdtype,
            kernel_init=_normal(f * D**-0.5),
            out_init=_normal(f * c.d_ff**-0.5),
            name="mlp",
        )(h, deterministic=self.deterministic)
        x = x + drop(h, deterministic=self.deterministic)
        x = layers.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
        return layers.layer_outputs(
            x, self.output_hidden_states, self.output_attentions, attentions=probs, **cross
        )


class T5Stack(nn.Module):
    """Encoder or decoder stack over embedded tokens: dropout, blocks, final RMS norm, dropout.

    The relative position bias table lives here (transformers keeps it in block 0 and shares the
    bias it computes with all later blocks: the same function) so that scanned blocks are uniform.
    """

    config: T5Config
    is_decoder: bool = False

    @nn.compact
    def __call__(
        self,
        x: Array,  # [B, T, D] embedded tokens
        mask: Array
        | None,  # bool [B, 1, 1, T] (self-attention padding; [B, 1, 1, S_max] when decoding)
        encoded: Array | None = None,  # [B, S, D] encoder output (decoder only)
        encoded_mask: Array | None = None,  # bool [B, 1, 1, S]
        positions: Array | None = None,  # [T] or [B, T] absolute decoder positions
        deterministic: bool = True,
        decode: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> tuple[Array, dict]:  # [B, T, D], the all-layer outputs asked for
        """The stack's output and a dict of what was asked for: ``hidden_states`` (embedding
        output first, the last after the final norm, as transformers), ``attentions`` and in the
        decoder ``cross_attentions`` (tuples over layers); empty when nothing was."""
        c = self.config
        dtype, pdtype = layers.dtype_of(c.dtype), layers.dtype_of(c.param_dtype)
        T = x.shape[1]
        n_layers = c.num_decoder_layers if self.is_decoder else c.num_layers
        name = "block"
        q_pos = k_pos = jnp.arange(T) if positions is None else positions
        if decode and self.is_decoder:
            state = self._cache_state(name)
            if state is not None:  # a decoding step: keys are the cache slots 0 .. S_max - 1
                index, cache_len = state
                k_pos = jnp.arange(cache_len)
                q_pos = index + jnp.arange(T) if positions is None else positions
        rel = k_pos[..., None, :] - q_pos[..., :, None]  # [T, S] or [B, T, S]
        buckets = relative_position_bucket(
            rel,
            not self.is_decoder,
            c.relative_attention_num_buckets,
            c.relative_attention_max_distance,
        )
        table = layers.Embed(
            c.relative_attention_num_buckets,
            c.num_heads,
            axes=("relpos_buckets", "heads"),
            dtype=dtype,
            param_dtype=pdtype,
            embedding_init=_normal(c.initializer_factor * c.d_model**-0.5),
            name="relative_attention_bias",
        )
        bias = jnp.moveaxis(table(buckets), -1, -3)  # [..., N, T, S]
        if bias.ndim == 3:
            bias = bias[None]
        x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
        embedded = x = layers.constrain(
            x, ("activation_batch", "activation_length", "activation_embed")
        )
        x, per_layer = block_stack(T5Block, n_layers, c.scan_layers, c.remat, name)(
            dict(
                config=c,
                is_decoder=self.is_decoder,
                deterministic=deterministic,
                decode=decode,
                output_hidden_states=output_hidden_states,
                output_attentions=output_attentions,
            ),
            x,
            bias,
            mask,
            encoded,
            encoded_mask,
        )
        x = layers.layer_norm(c.layer_norm_epsilon, dtype, pdtype, "final_layer_norm", rms=True)(x)
        x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
        extras = {k: v for k, v in per_layer.items() if k != "hidden"}
        if output_hidden_states:
            extras["hidden_states"] = layers.hidden_states(embedded, per_layer, final=x)
        return x, extras

    def _cache_state(self, name: str):
        """(tokens already in the cache, cache length S_max) from the first block's self-attention
        cache, or None before the cache exists (the call that creates it)."""
        cache = self.variables.get("cache", {})
        scanned = self.config.scan_layers
        block = cache.get(name if scanned else layers.layer_name(name, 0))
        if block is None or "cached_key" not in block.get("self_attn", {}):
            return None
        attn = block["self_attn"]
        index = attn["cache_index"][0] if scanned else attn["cache_index"]
        return index, attn["cached_value"].shape[3 if scanned else 2]  # [(L,) B, N, S_max, H]


class T5ForConditionalGeneration(nn.Module):
    """T5 with its LM head:
    ``apply({"params": p}, input_ids, decoder_input_ids) -> logits [B, S, V]``.

    ``encode`` and ``decode`` run the two halves on their own
    (``model.apply(v, ..., method=model.encode)``), which is what the decoding engine does: encode
    once, then decode with a KV cache.
    """

    config: T5Config

    def setup(self):
        c = self.config
        dtype, pdtype = layers.dtype_of(c.dtype), layers.dtype_of(c.param_dtype)
        self.shared = layers.Embed(
            c.padded_vocab_size,
            c.d_model,
            dtype=dtype,
            param_dtype=pdtype,
            embedding_init=_normal(c.initializer_factor),
        )
        self.encoder = T5Stack(c, is_decoder=False)
        self.decoder = T5Stack(c, is_decoder=True)
        if not c.tie_word_embeddings:
            self.lm_head = layers.Dense(
                c.padded_vocab_size,
                ("embed", "vocab"),
                use_bias=False,
                dtype=dtype,
                param_dtype=pdtype,
                # As t5x's logits_dense: variance scaling by fan-in (std ~ d_model**-0.5), so a
                # fresh T5.1.1 starts near ln(vocab). transformers' std 1.0 (fine for loading
                # weights, which is all it is used for there) starts at a loss of ~28.
                kernel_init=nn.initializers.variance_scaling(
                    c.initializer_factor, "fan_in", "truncated_normal"
                ),
            )

    def encode(
        self,
        input_ids: Array,  # [B, T] int
        attention_mask: Array | None = None,  # [B, T] 1 = token, 0 = padding
        deterministic: bool = True,
        segment_ids: Array | None = None,  # [B, T] packed examples (0 = padding)
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> Array | T5EncoderOutput:  # [B, T, D]
        """The encoder output; a ``T5EncoderOutput`` when all-layer outputs are asked for."""
        c = self.config
        _check_ids(input_ids, "input_ids", c)
        _check_mask(attention_mask, input_ids.shape, "attention_mask", "input_ids")
        mask = None if attention_mask is None else layers.padding_mask(attention_mask)
        if segment_ids is not None:
            mask = layers.combine_masks(mask, layers.segment_mask(segment_ids, segment_ids))
        x, extras = self.encoder(
            self.shared(input_ids),
            mask,
            deterministic=deterministic,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        if not (output_hidden_states or output_attentions):
            return x
        return T5EncoderOutput(last_hidden_state=x, **extras)

    def decode(
        self,
        decoder_input_ids: Array,  # [B, T] int
        encoder_outputs: Array,  # [B, S, D] from ``encode``
        attention_mask: Array | None = None,  # [B, S] the encoder's padding mask
        decoder_attention_mask: Array | None = None,  # [B, T] ([B, S_max] when decode=True)
        deterministic: bool = True,
        decode: bool = False,
        decoder_positions: Array | None = None,  # [T] or [B, T]
        decoder_segment_ids: Array | None = None,  # [B, T] packed examples (0 = padding)
        encoder_segment_ids: Array | None = None,  # [B, S]
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> Array | Seq2SeqLMOutput:  # [B, T, V]
        """Decoder and head: the logits, or with all-layer outputs asked for a ``Seq2SeqLMOutput``
        with its decoder fields.

        With ``decode=True`` self-attention keys/values go to the ``cache`` collection. The first
        such call (``mutable=["cache"]``, no cache given, see ``init_decode_cache``) only creates
        it: its ``decoder_input_ids`` length sets the cache size S_max and the cross-attention keys
        and values of ``encoder_outputs`` are projected and stored with the real params. Later calls
        pass the cache and feed new tokens. The relative position bias of a new token needs its
        absolute position: ``decoder_positions`` when given, else the number of tokens already in
        the cache (the first decoder block's self-attention ``cache_index``), so feeding tokens in
        order needs no positions. Outside decoding they default to 0 .. T-1 and, when given, place
        both the queries and the keys.
        """
        c = self.config
        if encoder_outputs.ndim != 3 or encoder_outputs.shape[-1] != c.d_model:
            raise ValueError(
                f"encoder_outputs must be [batch, length, d_model={c.d_model}], "
                f"got shape {encoder_outputs.shape}"
            )
        _check_ids(decoder_input_ids, "decoder_input_ids", c)
        if encoder_outputs.shape[0] != decoder_input_ids.shape[0]:
            raise ValueError(
                f"encoder_outputs has batch {encoder_outputs.shape[0]} but decoder_input_ids "
                f"has batch {decoder_input_ids.shape[0]}"
            )
        _check_mask(
            attention_mask, encoder_outputs.shape[:2], "attention_mask", "the encoder input"
        )
        if not decode:
            _check_mask(
                decoder_attention_mask,
                decoder_input_ids.shape,
                "decoder_attention_mask",
                "decoder_input_ids",
            )
        self_mask = (
            None if decoder_attention_mask is None else layers.padding_mask(decoder_attention_mask)
        )
        cross_mask = None if attention_mask is None else layers.padding_mask(attention_mask)
        if decoder_segment_ids is not None:
            if encoder_segment_ids is None:
                raise ValueError(
                    "packed decoding needs encoder_segment_ids with decoder_segment_ids"
                )
            self_mask = layers.combine_masks(
                self_mask, layers.segment_mask(decoder_segment_ids, decoder_segment_ids)
            )
            cross_mask = layers.combine_masks(
                cross_mask, layers.segment_mask(decoder_segment_ids, encoder_segment_ids)
            )
        h, extras = self.decoder(
            self.shared(decoder_input_ids),
            self_mask,
            encoder_outputs,
            cross_mask,
            positions=decoder_positions,
            deterministic=deterministic,
            decode=decode,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        if c.scale_decoder_outputs:
            h = h * (c.d_model**-0.5)
        logits = self.shared.attend(h) if c.tie_word_embeddings else self.lm_head(h)
        logits = layers.vocab_logits(logits, c.vocab_size)
        if not (output_hidden_states or output_attentions):
            return logits
        return Seq2SeqLMOutput(
            logits=logits,
            decoder_hidden_states=extras.get("hidden_states"),
            decoder_attentions=extras.get("attentions"),
            cross_attentions=extras.get("cross_attentions"),
        )

    def __call__(
        self,
        input_ids: Array,  # [B, T] int
        # [B, S] int (targets shifted right, starting with decoder_start_token_id)
        decoder_input_ids: Array,
        attention_mask: Array | None = None,  # [B, T]
        decoder_attention_mask: Array | None = None,  # [B, S]
        deterministic: bool = True,
        decode: bool = False,
        encoder_segment_ids: Array | None = None,  # [B, T] packed examples (0 = padding)
        decoder_segment_ids: Array | None = None,  # [B, S]
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> Array | Seq2SeqLMOutput:  # [B, S, V]
        """The logits; with ``output_hidden_states`` / ``output_attentions`` a
        ``Seq2SeqLMOutput``."""
        _check_ids(decoder_input_ids, "decoder_input_ids", self.config)  # fail before encoding
        flags = dict(output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        encoded = self.encode(
            input_ids,
            attention_mask,
            deterministic=deterministic,
            segment_ids=encoder_segment_ids,
            **flags,
        )
        want = output_hidden_states or output_attentions
        out = self.decode(
            decoder_input_ids,
            encoded.last_hidden_state if want else encoded,
            attention_mask,
            decoder_attention_mask,
            deterministic=deterministic,
            decode=decode,
            decoder_segment_ids=decoder_segment_ids,
            encoder_segment_ids=encoder_segment_ids,
            **flags,
        )
        if not want:
            return out
        return out.replace(
            encoder_last_hidden_state=encoded.last_hidden_state,
            encoder_hidden_states=encoded.hidden_states,
            encoder_attentions=encoded.attentions,
        )


def _check_ids(ids: Any, name: str, c: T5Config) -> None:
    if ids.ndim != 2:
        raise ValueError(f"{name} must be [batch, length], got shape {ids.shape}")
    layers.check_length(ids.shape[1], c.n_positions, name, "n_positions")
    layers.check_token_ids(ids, c.vocab_size, name)


def _check_mask(mask: Any, shape: tuple, name: str, of: str) -> None:
    if mask is not None and tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(mask.shape)} but {of} has shape {tuple(shape)}")


def init_decode_cache(
    model: T5ForConditionalGeneration,
    params: Any,
    encoder_outputs: Array,
    max_length: int,
    attention_mask: Array | None = None,
) -> Any:
    """The decoder's ``cache`` collection for ``max_length`` decoder tokens, empty (index 0), with
    the cross-attention keys/values of ``encoder_outputs`` [B, S, D] already projected by
    ``params``.

    Do not build it from ``model.init`` (or zero an abstract one): the cross-attention entries would
    then hold keys/values of random (or zero) weights and be reused as they are.
    """
    B = encoder_outputs.shape[0]
    dummy = jnp.full((B, max_length), model.config.decoder_start_token_id, jnp.int32)
    _, variables = model.apply(
        {"params": params},
        dummy,
        encoder_outputs,
        attention_mask,
        decode=True,
        method=model.decode,
        mutable=["cache"],
    )
    return variables["cache"]


# ----------------------------------------------------------------------------------------------
# Hugging Face format (used by jaxformers.hf)

# The fields transformers' T5Config shares with ours (the rest are jaxformers' run settings).
_HF_CONFIG_FIELDS = [
    "vocab_size",
    "d_model",
    "d_kv",
    "d_ff",
    "num_layers",
    "num_decoder_layers",
    "num_heads",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
    "dropout_rate",
    "layer_norm_epsilon",
    "initializer_factor",
    "feed_forward_proj",
    "n_positions",
    "pad_token_id",
    "eos_token_id",
    "decoder_start_token_id",
]
_ARCHITECTURES = ("T5ForConditionalGeneration", "T5WithLMHeadModel", "T5Model")


def config_from_hf(hf: dict, **overrides: Any) -> T5Config:
    """transformers' config.json (4.x or 5.x) -> T5Config.

    4.x marks v1.1 heads with ``tie_word_embeddings: false`` (which also meant "no output scaling");
    5.x always writes ``tie_word_embeddings: true`` and states ``scale_decoder_outputs``. So the
    scaling follows ``scale_decoder_outputs`` when present, else ``tie_word_embeddings``; the tie
    set here is corrected by ``model_from_config`` from the weights: the head is untied exactly when
    they hold ``lm_head.weight``.
    """
    if hf.get("is_decoder") or hf.get("is_encoder_decoder") is False:
        raise ValueError(
            "this T5 config describes a decoder-only or encoder-only model; jaxformers "
            "implements T5ForConditionalGeneration (encoder and decoder)"
        )
    kwargs = {k: hf[k] for k in _HF_CONFIG_FIELDS if hf.get(k) is not None}
    if isinstance(kwargs.get("eos_token_id"), (list, tuple)):
        kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
    act, gated = parse_feed_forward_proj(kwargs.get("feed_forward_proj", "relu"))
    for key, implied in (("dense_act_fn", act), ("is_gated_act", gated)):
        if hf.get(key) is not None and hf[key] != implied:
            raise ValueError(
                f"T5 config sets {key}={hf[key]!r}, but feed_forward_proj="
                f"{kwargs.get('feed_forward_proj', 'relu')!r} implies {implied!r}"
            )
    tie = hf.get("tie_word_embeddings")
    tie = True if tie is None else bool(tie)
    scale = hf.get("scale_decoder_outputs")
    kwargs.update(
        tie_word_embeddings=tie, scale_decoder_outputs=tie if scale is None else bool(scale)
    )
    return T5Config(**{**kwargs, **overrides})


def config_to_hf(c: T5Config) -> dict:
    """Both spellings of the head: 5.x reads ``scale_decoder_outputs`` (and ties or not from the
    weights), 4.x reads ``tie_word_embeddings`` for both tying and scaling, right for v1.0 and
    v1.1."""
    out = {k: getattr(c, k) for k in _HF_CONFIG_FIELDS}
    out.update(
        model_type="t5",
        architectures=["T5ForConditionalGeneration"],
        is_encoder_decoder=True,
        tie_word_embeddings=c.tie_word_embeddings,
        scale_decoder_outputs=c.scale_decoder_outputs,
        dense_act_fn=c.dense_act_fn,
        is_gated_act=c.is_gated_act,
    )
    return out


def hf_weights(c: T5Config) -> list[HFWeight]:
    """transformers' T5ForConditionalGeneration tensors: ``lm_head.weight`` exactly when the head is
    untied; the embedding copies tied to ``shared`` are not saved (some exports keep only
    ``encoder.embed_tokens.weight``: accepted on load). The relative position bias table, which
    transformers keeps in block 0, is each stack's own here."""
    out = [
        HFWeight(
            "shared.weight",
            ("shared", "embedding"),
            aliases=("encoder.embed_tokens.weight",),
            vocab_axis=0,
        )
    ]
    if not c.tie_word_embeddings:  # our kernel [D, V]
        out.append(HFWeight("lm_head.weight", ("lm_head", "kernel"), "linear 1", vocab_axis=1))
    for stack, n in (("encoder", c.num_layers), ("decoder", c.num_decoder_layers)):
        out += [
            HFWeight(
                f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                (stack, "relative_attention_bias", "embedding"),
            ),
            HFWeight(f"{stack}.final_layer_norm.weight", (stack, "final_layer_norm", "scale")),
        ]
        attns = [("self_attn", "SelfAttention")] + (
            [("cross_attn", "EncDecAttention")] if stack == "decoder" else []
        )
        for i in range(n):
            p, block = f"{stack}.block.{i}.layer.", (stack, "block", i)
            for j, (ours, theirs) in enumerate(attns):
                out.append(HFWeight(f"{p}{j}.layer_norm.weight", (*block, f"{ours}_norm", "scale")))
                # torch Linear [out, in]; our q/k/v kernels [D, N, H], the output's [N, H, D].
                out += [
                    HFWeight(
                        f"{p}{j}.{theirs}.{w}.weight",
                        (*block, ours, name, "kernel"),
                        "linear 2" if w == "o" else "linear 1",
                    )
                    for w, name in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out"))
                ]
            f = len(attns)
            out.append(HFWeight(f"{p}{f}.layer_norm.weight", (*block, "mlp_norm", "scale")))
            out += [
                HFWeight(
                    f"{p}{f}.DenseReluDense.{w}.weight", (*block, "mlp", w, "kernel"), "linear 1"
                )
                for w in (("wi_0", "wi_1", "wo") if c.is_gated_act else ("wi", "wo"))
            ]
    return out


def model_from_config(c: T5Config, architectures=None, tensors=None) -> T5ForConditionalGeneration:
    """The model for a config; with the checkpoint's ``tensors`` the head is untied exactly when
    they hold ``lm_head.weight`` (whatever config.json said about tying)."""
    for arch in architectures or ():
        if arch not in _ARCHITECTURES:
            raise ValueError(
                f"T5 architecture {arch!r} is not supported; jaxformers implements "
                "T5ForConditionalGeneration (T5Model weights load with the tied head)"
            )
    if tensors is not None:
        c = dataclasses.replace(c, tie_word_embeddings="lm_head.weight" not in tensors)
    return T5ForConditionalGeneration(c)
