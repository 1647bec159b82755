"""GPT-2: a decoder-only transformer with learned positions and tied input/output embeddings.

Numerically the same function as transformers' ``GPT2LMHeadModel``: pre-LayerNorm blocks, fused
QKV projection, GELU (tanh) MLP of width 4D, final LayerNorm, logits = h @ wte^T.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax.numpy as jnp

from jaxformers.models import layers
from jaxformers.models.layers import Array, HFWeight, block_stack


@dataclasses.dataclass(frozen=True)
class GPT2Config(layers.ModelConfig):
    """Hyperparameters of a GPT-2 model (field names as transformers' GPT2Config).

    ``dtype`` is the compute dtype, ``param_dtype`` the storage dtype; ``scan_layers`` runs the
    blocks under ``nn.scan`` (compile time flat in depth, params stacked on a "layers" axis);
    ``remat`` is "none" | "full" | "save_dots" | "save_dots_no_batch";
    ``attention_impl`` is "xla" | "cudnn" | "auto".
    """

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    bos_token_id: int = 50256
    eos_token_id: int = 50256

    FAMILY = "GPT-2"
    family = "gpt2"
    PRESETS = {
        "tiny": dict(n_positions=128, n_embd=64, n_layer=2, n_head=4, vocab_size=512),
        "124m": dict(n_embd=768, n_layer=12, n_head=12),
        "355m": dict(n_embd=1024, n_layer=24, n_head=16),
        "774m": dict(n_embd=1280, n_layer=36, n_head=20),
        "1558m": dict(n_embd=1600, n_layer=48, n_head=25),
    }

    def __post_init__(self):
        layers.check_positive(self, "vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                "pick n_head dividing n_embd"
            )
        layers.activation(self.activation_function)
        self.check_run_fields()

    @property
    def d_ff(self) -> int:
        return self.n_inner or 4 * self.n_embd

    def flops_per_example(self, seq_len: int) -> float:
        """Training FLOPs (forward + backward) of one ``seq_len``-token example, PaLM appendix B:
        per token 6 * (matmul parameters, LM head included) + 12 * L * T * D for attention
        scores. The LM head counts its padded rows (``padded_vocab_size``): the hardware
        multiplies them too."""
        D, L, F = self.n_embd, self.n_layer, self.d_ff
        matmul_params = L * (4 * D * D + 2 * D * F) + D * self.padded_vocab_size
        return (6.0 * matmul_params + 12.0 * L * seq_len * D) * seq_len


@flax.struct.dataclass
class GPT2Output:
    """What ``GPT2LMHeadModel`` returns when asked for all-layer outputs (else the logits)."""

    logits: Array  # [B, T, V]
    hidden_states: tuple[Array, ...] | None = None  # L + 1 x [B, T, D]; the last after ln_f
    attentions: tuple[Array, ...] | None = None  # L x [B, N, T, S] attention probabilities


class GPT2Block(nn.Module):
    config: GPT2Config
    deterministic: bool = True
    decode: bool = False
    output_hidden_states: bool = False
    output_attentions: bool = False

    @nn.compact
    def __call__(self, x: Array, mask: Array | None):  # x [B, T, D]
        c = self.config
        dtype, pdtype = layers.dtype_of(c.dtype), layers.dtype_of(c.param_dtype)
        init = nn.initializers.normal(c.initializer_range)
        # transformers scales the residual projections' init by 1/sqrt(2 L) (GPT-2 paper, 2.3).
        proj_init = nn.initializers.normal(c.initializer_range / math.sqrt(2 * c.n_layer))
        h = layers.layer_norm(c.layer_norm_epsilon, dtype, pdtype, "ln_1")(x)
        h = layers.Attention(
            num_heads=c.n_head,
            head_dim=c.n_embd // c.n_head,
            fused_qkv=True,
            dropout_rate=c.attn_pdrop,
            dtype=dtype,
            param_dtype=pdtype,
            kernel_init=init,
            out_init=proj_init,
            impl=c.attention_impl,
            name="attn",
        )(
            h,
            mask=mask,
            deterministic=self.deterministic,
            decode=self.decode,
            causal=True,
            return_weights=self.output_attentions,
        )
        h, probs = h if self.output_attentions else (h, None)
        x = x + nn.Dropout(c.resid_pdrop)(h, deterministic=self.deterministic)
        h = layers.layer_norm(c.layer_norm_epsilon, dtype, pdtype, "ln_2")(x)
        h = layers.MLP(
            d_ff=c.d_ff,
            act=c.activation_function,
            dtype=dtype,
            param_dtype=pdtype,
            kernel_init=init,
            out_init=proj_init,
            name="mlp",
        )(h, deterministic=self.deterministic)
        x = x + nn.Dropout(c.resid_pdrop)(h, deterministic=self.deterministic)
        x = layers.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
        return layers.layer_outputs(
            x, self.output_hidden_states, self.output_attentions, attentions=probs
        )


class GPT2LMHeadModel(nn.Module):
    """GPT-2 with the tied LM head. ``apply({"params": p}, input_ids) -> logits [B, T, V]``;
    with ``output_hidden_states`` or ``output_attentions`` a ``GPT2Output`` instead."""

    config: GPT2Config

    @nn.compact
    def __call__(
        self,
        input_ids: Array,  # [B, T] int
        attention_mask: Array
        | None = None,  # [B, T] 1 = token, 0 = padding ([B, S_max] when decoding)
        position_ids: Array | None = None,  # [B, T]
        deterministic: bool = True,
        decode: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> Array | GPT2Output:  # [B, T, V]
        c = self.config
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
        B, T = input_ids.shape
        layers.check_length(T, c.n_positions, "input_ids", "n_positions")
        layers.check_token_ids(input_ids, c.vocab_size)
        dtype, pdtype = layers.dtype_of(c.dtype), layers.dtype_of(c.param_dtype)
        init = nn.initializers.normal(c.initializer_range)
        wte = layers.Embed(
            c.padded_vocab_size,
            c.n_embd,
            dtype=dtype,
            param_dtype=pdtype,
            embedding_init=init,
            name="wte",
        )
        wpe = layers.Embed(
            c.n_positions,
            c.n_embd,
            axes=(None, "embed"),
            dtype=dtype,
            param_dtype=pdtype,
            embedding_init=init,
            name="wpe",
        )
        if position_ids is None:
            if decode and not self.is_initializing():
                raise ValueError(
                    "decoding needs explicit position_ids (the cache position of each token)"
                )
            position_ids = jnp.arange(T)[None, :]
        x = wte(input_ids) + wpe(position_ids)
        x = nn.Dropout(c.embd_pdrop)(x, deterministic=deterministic)
        embedded = x = layers.constrain(
            x, ("activation_batch", "activation_length", "activation_embed")
        )
        mask = None if attention_mask is None else layers.padding_mask(attention_mask)
        x, per_layer = block_stack(GPT2Block, c.n_layer, c.scan_layers, c.remat, "h")(
            dict(
                config=c,
                deterministic=deterministic,
                decode=decode,
                output_hidden_states=output_hidden_states,
                output_attentions=output_attentions,
            ),
            x,
            mask,
        )
        x = layers.layer_norm(c.layer_norm_epsilon, dtype, pdtype, "ln_f")(x)
        logits = layers.vocab_logits(wte.attend(x), c.vocab_size)
        if not (output_hidden_states or output_attentions):
            return logits
        return GPT2Output(
            logits=logits,
            hidden_states=layers.hidden_states(embedded, per_layer, final=x)
            if output_hidden_states
            else None,
            attentions=per_layer["attentions"] if output_attentions else None,
        )


# ----------------------------------------------------------------------------------------------
# Hugging Face format (used by jaxformers.hf)

# The fields transformers' GPT2Config shares with ours (the rest are jaxformers' run settings).
_HF_CONFIG_FIELDS = [
    "vocab_size",
    "n_positions",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "activation_function",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "layer_norm_epsilon",
    "initializer_range",
    "bos_token_id",
    "eos_token_id",
]


def config_from_hf(hf: dict, **overrides: Any) -> GPT2Config:
    for flag, ok in (
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("reorder_and_upcast_attn", False),
        ("add_cross_attention", False),
    ):
        if hf.get(flag, ok) != ok:
            raise ValueError(
                f"GPT-2 config sets {flag}={hf[flag]}, which jaxformers does not implement"
            )
    kwargs = {k: hf[k] for k in _HF_CONFIG_FIELDS if hf.get(k) is not None}
    return GPT2Config(**{**kwargs, **overrides})


def config_to_hf(c: GPT2Config) -> dict:
    out = {k: getattr(c, k) for k in _HF_CONFIG_FIELDS}
    out.update(model_type="gpt2", architectures=["GPT2LMHeadModel"], tie_word_embeddings=True)
    return out


def hf_weights(c: GPT2Config) -> list[HFWeight]:
    """transformers' GPT2LMHeadModel tensors (``lm_head.weight`` is tied to ``wte``, not saved).
    Checkpoints of the bare GPT2Model spell them without ``transformer.``: accepted on load."""

    def w(name, path, layout="same", vocab_axis=None):
        return HFWeight(f"transformer.{name}", path, layout, aliases=(name,), vocab_axis=vocab_axis)

    def ln(name, path):
        return [w(f"{name}.weight", (*path, "scale")), w(f"{name}.bias", (*path, "bias"))]

    def conv1d(name, path, k=1, bias="same"):  # Conv1D stores [in, out]
        return [
            w(f"{name}.weight", (*path, "kernel"), f"conv1d {k}"),
            w(f"{name}.bias", (*path, "bias"), bias),
        ]

    out = [
        w("wte.weight", ("wte", "embedding"), vocab_axis=0),
        w("wpe.weight", ("wpe", "embedding")),
        *ln("ln_f", ("ln_f",)),
    ]
    for i in range(c.n_layer):
        p, h = f"h.{i}.", ("h", i)
        out += [
            *ln(p + "ln_1", (*h, "ln_1")),
            # The fused output is ordered (q|k|v, head, head_dim): our kernel [D, 3, N, H],
            # bias [3, N, H].
            *conv1d(p + "attn.c_attn", (*h, "attn", "qkv"), bias="flat"),
            *conv1d(p + "attn.c_proj", (*h, "attn", "out"), k=2),  # [N, H, D]
            *ln(p + "ln_2", (*h, "ln_2")),
            *conv1d(p + "mlp.c_fc", (*h, "mlp", "wi")),
            *conv1d(p + "mlp.c_proj", (*h, "mlp", "wo")),
        ]
    return out


def model_from_config(c: GPT2Config, architectures=None, tensors=None) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(c)
