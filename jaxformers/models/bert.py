"""BERT: a post-LayerNorm encoder with learned positions and segment (token type) embeddings.

Numerically the same function as transformers' ``BertModel`` / ``BertForPreTraining`` /
``BertForSequenceClassification``: embeddings (word + position + token type, LayerNorm, dropout),
post-LN blocks with separate query/key/value projections and an exact-erf GELU MLP, a pooler
(dense + tanh on [CLS]), the MLM head (dense + act + LayerNorm + decoder tied to the word
embeddings + its own bias) and the NSP head, as google-research/bert.

The module classes own their head type: ``BertForPreTraining(config)`` stores
``architecture="BertForPreTraining"`` in its config, so ``hf.save_pretrained`` always writes the
``architectures`` that matches the params it writes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import flax.struct
import jax.numpy as jnp

from jaxformers.models import layers
from jaxformers.models.layers import Array, HFWeight, block_stack

ARCHITECTURES = ("BertModel", "BertForPreTraining", "BertForSequenceClassification")


@dataclasses.dataclass(frozen=True)
class BertConfig(layers.ModelConfig):
    """Hyperparameters of a BERT model (field names as transformers' BertConfig).

    ``architecture`` is the head type, one of ``ARCHITECTURES``. The module classes set it on
    construction; None lets ``model_from_config`` decide: from the weights when loading, else
    BertForPreTraining (training from scratch). ``num_labels`` and ``classifier_dropout`` (None =
    use ``hidden_dropout_prob``) serve ``BertForSequenceClassification``. Run fields as GPT2Config:
    ``dtype`` compute, ``param_dtype`` storage, ``scan_layers``, ``remat`` ("none" | "full" |
    "save_dots" | "save_dots_no_batch"), ``attention_impl`` ("xla" | "cudnn" | "auto").
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    architecture: str | None = None
    num_labels: int = 2
    classifier_dropout: float | None = None

    # The BERT miniatures' sizes (Turc et al. 2019) plus the paper's base and large.
    FAMILY = "BERT"
    family = "bert"
    PRESETS = {
        "tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2),
        "mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4),
        "small": dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8),
        "medium": dict(num_hidden_layers=8, hidden_size=512, num_attention_heads=8),
        "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12),
        "large": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16),
    }

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> BertConfig:
        """A named size; intermediate_size is 4 * hidden_size unless overridden."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown BERT preset {name!r}; choose one of {sorted(cls.PRESETS)}")
        kwargs = dict(cls.PRESETS[name])
        kwargs["intermediate_size"] = 4 * overrides.get("hidden_size", kwargs["hidden_size"])
        return cls(**{**kwargs, **overrides})

    def __post_init__(self):
        layers.check_positive(
            self,
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
            "num_labels",
        )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                f"{self.num_attention_heads}; pick a head count dividing hidden_size"
            )
        layers.activation(self.hidden_act)
        self.check_run_fields()
        if self.architecture is not None and self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture={self.architecture!r}; choose one of {ARCHITECTURES}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def flops_per_example(self, seq_len: int, num_predictions: int | None = None) -> float:
        """Training FLOPs (forward + backward) of one ``seq_len``-token example, PaLM appendix B.

        Per token 6 * (matmul parameters each token passes through) + 12 * L * T * D for attention
        scores. The encoder runs on all T positions; the MLM transform + vocabulary projection
        (D*D + D*V) only on the ``num_predictions`` gathered masked positions (None: every position,
        the ungathered ``[B, T, V]`` forward; 0: no MLM head, e.g. classification), and the pooler +
        NSP head (D*D + 2*D) once per example.
        """
        D, L, F, V, T = (
            self.hidden_size,
            self.num_hidden_layers,
            self.intermediate_size,
            self.vocab_size,
            seq_len,
        )
        P = T if num_predictions is None else num_predictions
        encoder = L * (4 * D * D + 2 * D * F) * T
        return 6.0 * (encoder + (D * D + D * V) * P + (D * D + 2 * D)) + 12.0 * L * T * D * T


@flax.struct.dataclass
class BertOutput:
    last_hidden_state: Array  # [B, T, D]
    pooler_output: Array  # [B, D]


@flax.struct.dataclass
class BertForPreTrainingOutput:
    mlm_logits: Array  # [B, T, V], or [B, P, V] for gathered masked_lm_positions
    nsp_logits: Array  # [B, 2]; class 1 = "B is a random sentence", as google-research/bert


@flax.struct.dataclass
class BertForSequenceClassificationOutput:
    logits: Array  # [B, num_labels]


def _check_range(ids: Any, limit: int, name: str, why: str) -> None:
    """ValueError for ids outside [0, limit) when the values are concrete (not under jit)."""
    arr = layers.concrete_values(ids)
    if arr is None:
        return
    if arr.size and (arr.min() < 0 or arr.max() >= limit):
        bad = int(arr.max()) if arr.max() >= limit else int(arr.min())
        raise ValueError(f"{name} holds {bad}, outside [0, {limit}): {why}")


def _embedding_init(stddev: float, pad_token_id: int | None):
    """normal(stddev) with the padding row zeroed, as transformers' padding_idx init."""
    base = nn.initializers.normal(stddev)

    def init(key, shape, dtype=jnp.float32):
        table = base(key, shape, dtype)
        if pad_token_id is not None and 0 <= pad_token_id < shape[0]:
            table = table.at[pad_token_id].set(0)
        return table

    return init


def _with_architecture(module: nn.Module, name: str, **extra: Any) -> None:
    """Records the head type in the module's config (see the module docstring)."""
    c = module.config
    changes = {"architecture": name, **{k: v for k, v in extra.items() if getattr(c, k) != v}}
    if c.architecture != name or len(changes) > 1:
        object.__setattr__(module, "config", dataclasses.replace(c, **changes))


class BertLayer(nn.Module):
    """One post-LN encoder block: ``x = LN(x + attn(x)); x = LN(x + mlp(x))``."""

    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, mask: Array | None):  # x [B, T, D], mask bool [B, 1, 1, T]
        c = self.config
        dtype, pdtype = layers.dtype_of(c.dtype), layers.dtype_of(c.param_dtype)
        init = nn.initializers.normal(c.initializer_range)
        h = layers.Attention(
            num_heads=c.num_attention_heads,
            head_dim=c.head_dim,
            use_bias=True,
            fused_qkv=False,
            dropout_rate=c.attention_probs_dropout_prob,
            dtype=dtype,
            param_dtype=pdtype,
            kernel_init=init,
            out_init=init,
            impl=c.attention_impl,
            name="attention",
        )(x, mask=mask, deterministic=self.deterministic)
        h = nn.Dropout(c.hidden_dropout_prob)(h, deterministic=self.deterministic)
        x = layers.layer_norm(c.layer_norm_eps, dtype, pdtype, "attention_ln")(x + h)
        h = layers.MLP(
            d_ff=c.intermediate_size,
            act=c.hidden_act,
            dtype=dtype,
            param_dtype=pdtype,
            kernel_init=init,
            out_init=init,
            name="mlp",
        )(x, deterministic=self.deterministic)
        h = nn.Dropout(c.hidden_dropout_prob)(h, deterministic=self.deterministic)
        x = layers.layer_norm(c.layer_norm_eps, dtype, pdtype, "output_ln")(x + h)
        return layers.constrain(
            x, ("activation_batch", "activation_length", "activation_embed")
        ), None


class BertModel(nn.Module):
    """The encoder and pooler.

    ``apply({"params": p}, input_ids, token_type_ids=None, attention_mask=None, position_ids=None,
    deterministic=True) -> BertOutput(last_hidden_state [B, T, D], pooler_output [B, D])``.
    """

    config: BertConfig

    def __post_init__(self):
        _with_architecture(self, "BertModel")
        super().__post_init__()

    def setup(self):
        # The word embeddings are a setup attribute so that the MLM head can call ``attend``.
        c = self.config
        self.word_embeddings = layers.Embed(
            c.vocab_size,
            c.hidden_size,
            dtype=layers.dtype_of(c.dtype),
            param_dtype=layers.dtype_of(c.param_dtype),
            embedding_init=_embedding_init(c.initializer_range, c.pad_token_id),
        )

    def attend(self, x: Array) -> Array:  # [B, T, D] -> [B, T, V]
        """Logits tied to the word embeddings."""
        return self.word_embeddings.attend(x)

    @nn.compact
    def __call__(
        self,
        input_ids: Array,  # [B, T] int
        token_type_ids: Array | None = None,  # [B, T] segment ids; None = all 0
        attention_mask: Array | None = None,  # [B, T] 1 = token, 0 = padding; None = all tokens
        position_ids: Array | None = None,  # [B, T]; None = 0 .. T-1
        deterministic: bool = True,
        masked_lm_positions: Array | None = None,  # only BertForPreTraining uses it
    ) -> BertOutput:
        c = self.config
        if masked_lm_positions is not None:
            raise ValueError("masked_lm_positions needs the MLM head: use BertForPreTraining")
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
        B, T = input_ids.shape
        layers.check_length(T, c.max_position_embeddings, "input_ids", "max_position_embeddings")
        layers.check_token_ids(input_ids, c.vocab_size)
        for name, x in (
            ("token_type_ids", token_type_ids),
            ("attention_mask", attention_mask),
            ("position_ids", position_ids),
        ):
            if x is not None and tuple(x.shape) != (B, T):
                raise ValueError(
                    f"{name} must have the shape of input_ids {(B, T)}, got {tuple(x.shape)}"
                )
        _check_range(
            token_type_ids,
            c.type_vocab_size,
            "token_type_ids",
            f"the model has type_vocab_size={c.type_vocab_size} segment types",
        )
        _check_range(
            position_ids,
            c.max_position_embeddings,
            "position_ids",
            f"the model has max_position_embeddings={c.max_position_embeddings}",
        )

        dtype, pdtype = layers.dtype_of(c.dtype), layers.dtype_of(c.param_dtype)
        init = nn.initializers.normal(c.initializer_range)
        if token_type_ids is None:
            token_type_ids = jnp.zeros((B, T), jnp.int32)
        if position_ids is None:
            position_ids = jnp.arange(T)[None, :]
        embed = lambda n, name: layers.Embed(  # noqa: E731
            n,
            c.hidden_size,
            axes=(None, "embed"),
            dtype=dtype,
            param_dtype=pdtype,
            embedding_init=init,
            name=name,
        )
        x = (
            self.word_embeddings(input_ids)
            + embed(c.max_position_embeddings, "position_embeddings")(position_ids)
            + embed(c.type_vocab_size, "token_type_embeddings")(token_type_ids)
        )
        x = layers.layer_norm(c.layer_norm_eps, dtype, pdtype, "embeddings_ln")(x)
        x = nn.Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)
        x = layers.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
        mask = None if attention_mask is None else layers.padding_mask(attention_mask)
        x = block_stack(BertLayer, c.num_hidden_layers, c.scan_layers, c.remat, "layer")(
            dict(config=c, deterministic=deterministic), x, mask
        )
        pooled = layers.Dense(
            c.hidden_size,
            ("embed", "mlp"),
            dtype=dtype,
            param_dtype=pdtype,
            kernel_init=init,
            name="pooler",
        )(x[:, 0])
        pooled = layers.constrain(jnp.tanh(pooled), ("activation_batch", "activation_embed"))
        return BertOutput(last_hidden_state=x, pooler_output=pooled)


class BertForPreTraining(nn.Module):
    """BERT with the MLM and NSP heads.

    ``apply(..., masked_lm_positions=None) -> BertForPreTrainingOutput(mlm_logits, nsp_logits)``.
    With ``masked_lm_positions`` [B, P] the hidden states are gathered at those positions before
    the MLM transform and vocabulary projection (as google-research/bert), giving [B, P, V].
    """

    config: BertConfig

    def __post_init__(self):
        _with_architecture(self, "BertForPreTraining")
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        token_type_ids: Array | None = None,
        attention_mask: Array | None = None,
        position_ids: Array | None = None,
        deterministic: bool = True,
        masked_lm_positions: Array | None = None,
    ) -> BertForPreTrainingOutput:  # as BertModel; [B, P]
        c = self.config
        dtype, pdtype = layers.dtype_of(c.dtype), layers.dtype_of(c.param_dtype)
        init = nn.initializers.normal(c.initializer_range)
        bert = BertModel(c, name="bert")
        out = bert(input_ids, token_type_ids, attention_mask, position_ids, deterministic)
        h = out.last_hidden_state
        if masked_lm_positions is not None:
            if masked_lm_positions.ndim != 2 or masked_lm_positions.shape[0] != h.shape[0]:
                raise ValueError(
                    "masked_lm_positions must be [batch, num_predictions], "
                    f"got shape {masked_lm_positions.shape}"
                )
            _check_range(
                masked_lm_positions,
                h.shape[1],
                "masked_lm_positions",
                f"positions index the input's {h.shape[1]} tokens",
            )
            h = jnp.take_along_axis(
                h, masked_lm_positions[:, :, None].astype(jnp.int32), axis=1
            )  # [B, P, D]
        h = layers.Dense(
            c.hidden_size,
            ("embed", "mlp"),
            dtype=dtype,
            param_dtype=pdtype,
            kernel_init=init,
            name="mlm_dense",
        )(h)
        h = layers.activation(c.hidden_act)(h)
        h = layers.layer_norm(c.layer_norm_eps, dtype, pdtype, "mlm_ln")(h)
        bias = self.param(
            "mlm_bias",
            layers.partitioned(nn.initializers.zeros, ("vocab",)),
            (c.vocab_size,),
            pdtype,
        )
        logits = bert.attend(h) + bias.astype(dtype)
        logits = layers.constrain(
            logits, ("activation_batch", "activation_length", "activation_vocab")
        )
        nsp = layers.Dense(
            2,
            ("embed", None),
            dtype=dtype,
            param_dtype=pdtype,
            kernel_init=init,
            name="nsp",
        )(out.pooler_output)
        return BertForPreTrainingOutput(mlm_logits=logits, nsp_logits=nsp)


class BertForSequenceClassification(nn.Module):
    """BERT with dropout + a linear classifier on the pooled output.

    ``num_labels`` (None = ``config.num_labels``) is recorded in the config.
    ``apply(...) -> BertForSequenceClassificationOutput(logits [B, num_labels])``.
    """

    config: BertConfig
    num_labels: int | None = None

    def __post_init__(self):
        _with_architecture(
            self,
            "BertForSequenceClassification",
            num_labels=self.num_labels or self.config.num_labels,
        )
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        token_type_ids: Array | None = None,
        attention_mask: Array | None = None,
        position_ids: Array | None = None,
        deterministic: bool = True,
        masked_lm_positions: Array | None = None,
    ) -> BertForSequenceClassificationOutput:  # as BertModel
        c = self.config
        if masked_lm_positions is not None:
            raise ValueError("masked_lm_positions needs the MLM head: use BertForPreTraining")
        out = BertModel(c, name="bert")(
            input_ids, token_type_ids, attention_mask, position_ids, deterministic
        )
        rate = c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout
        h = nn.Dropout(rate)(out.pooler_output, deterministic=deterministic)
        logits = layers.Dense(
            c.num_labels,
            ("embed", None),
            dtype=layers.dtype_of(c.dtype),
            param_dtype=layers.dtype_of(c.param_dtype),
            kernel_init=nn.initializers.normal(c.initializer_range),
            name="classifier",
        )(h)
        return BertForSequenceClassificationOutput(logits=logits)


MODEL_CLASSES = {
    "BertModel": BertModel,
    "BertForPreTraining": BertForPreTraining,
    "BertForSequenceClassification": BertForSequenceClassification,
}


# ----------------------------------------------------------------------------------------------
# Hugging Face format (used by jaxformers.hf)

# The fields transformers' BertConfig shares with ours (the rest are jaxformers' run settings).
_HF_CONFIG_FIELDS = [
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
    "classifier_dropout",
]


def config_from_hf(hf: dict, **overrides: Any) -> BertConfig:
    """transformers' config.json dict -> BertConfig. The head comes from ``architectures`` when it
    names one of ours; without it the weights decide (``model_from_config``)."""
    for flag, ok in (
        ("is_decoder", False),
        ("add_cross_attention", False),
        ("position_embedding_type", "absolute"),
        ("tie_word_embeddings", True),
    ):
        if hf.get(flag, ok) != ok:
            raise ValueError(
                f"BERT config sets {flag}={hf[flag]!r}, which jaxformers does not implement"
            )
    kwargs = {k: hf[k] for k in _HF_CONFIG_FIELDS if hf.get(k) is not None}
    archs = hf.get("architectures") or []
    known = [a for a in archs if a in ARCHITECTURES]
    # Google's checkpoints on the Hub (bert-base-uncased ...) say BertForMaskedLM but hold the NSP
    # head and pooler too: for those the weights decide.
    if archs and not known and "BertForMaskedLM" not in archs:
        raise ValueError(
            f"architectures {archs} holds no BERT head jaxformers implements; "
            f"supported: {ARCHITECTURES}"
        )
    if known:
        kwargs["architecture"] = known[0]
    if hf.get("num_labels") is not None:
        kwargs["num_labels"] = int(hf["num_labels"])
    elif hf.get("id2label"):
        kwargs["num_labels"] = len(hf["id2label"])
    return BertConfig(**{**kwargs, **overrides})


def config_to_hf(c: BertConfig) -> dict:
    out = {k: getattr(c, k) for k in _HF_CONFIG_FIELDS}
    arch = _architecture_of(c, None)
    out.update(model_type="bert", architectures=[arch], tie_word_embeddings=True)
    if arch == "BertForSequenceClassification":
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(c.num_labels)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(c.num_labels)}
    return out


def _architecture_of(c: BertConfig, tensors: dict | None) -> str:
    """The config's head, else what the weights hold; with neither (a model built to be trained
    from scratch, e.g. by ``train.build_model``) the pre-training model."""
    if c.architecture is not None:
        return c.architecture
    if tensors is None:
        return "BertForPreTraining"
    if any(k.startswith("cls.predictions.") for k in tensors):
        if not any(k.startswith("cls.seq_relationship.") for k in tensors):
            raise ValueError(
                "the weights hold an MLM head without the NSP head (a BertForMaskedLM "
                "checkpoint), which jaxformers does not implement"
            )
        return "BertForPreTraining"
    if any(k.startswith("classifier.") for k in tensors):
        return "BertForSequenceClassification"
    return "BertModel"


def model_from_config(c: BertConfig, architectures=None, tensors=None) -> nn.Module:
    """``config_from_hf`` already read ``architectures`` into ``c.architecture``."""
    arch = _architecture_of(c, tensors)
    if arch == "BertForSequenceClassification" and tensors and "classifier.weight" in tensors:
        c = dataclasses.replace(c, num_labels=int(tensors["classifier.weight"].shape[0]))
    return MODEL_CLASSES[arch](dataclasses.replace(c, architecture=arch))


def _spellings(name: str, encoder: bool) -> list[str]:
    """Every spelling of a BERT tensor name accepted on load: an encoder tensor with and without
    the ``bert.`` prefix (a bare BertModel and the heads differ); a LayerNorm's TF-era
    ``gamma``/``beta`` for ``weight``/``bias``."""
    names = [name, f"bert.{name}"] if encoder else [name]
    for suffix, tf in (
        (".LayerNorm.weight", ".LayerNorm.gamma"),
        (".LayerNorm.bias", ".LayerNorm.beta"),
    ):
        names += [n.removesuffix(suffix) + tf for n in names if n.endswith(suffix)]
    return names


def hf_weights(c: BertConfig) -> list[HFWeight]:
    """transformers' tensors of the head ``_architecture_of(c, None)``: BertModel names carry no
    prefix, the heads hold the encoder under ``bert.``. The MLM decoder's weight and bias are tied
    to the word embeddings and ``cls.predictions.bias``, so not saved (as transformers 5); some
    exports keep only ``cls.predictions.decoder.bias``: accepted on load."""
    arch = _architecture_of(c, None)
    heads = arch != "BertModel"
    enc = ("bert",) if heads else ()

    def w(name, path, layout="same", encoder=True, extra=()):
        full = f"bert.{name}" if heads and encoder else name
        aliases = [n for n in _spellings(name, encoder) if n != full]
        return HFWeight(full, tuple(path), layout, tuple(aliases) + tuple(extra))

    def ln(name, path, encoder=True):
        return [
            w(f"{name}.weight", (*path, "scale"), encoder=encoder),
            w(f"{name}.bias", (*path, "bias"), encoder=encoder),
        ]

    def linear(name, path, k=1, bias="same", encoder=True):  # torch Linear stores [out, in]
        return [
            w(f"{name}.weight", (*path, "kernel"), f"linear {k}", encoder),
            w(f"{name}.bias", (*path, "bias"), bias, encoder),
        ]

    out = [
        w("embeddings.word_embeddings.weight", (*enc, "word_embeddings", "embedding")),
        w("embeddings.position_embeddings.weight", (*enc, "position_embeddings", "embedding")),
        w("embeddings.token_type_embeddings.weight", (*enc, "token_type_embeddings", "embedding")),
        *ln("embeddings.LayerNorm", (*enc, "embeddings_ln")),
        *linear("pooler.dense", (*enc, "pooler")),
    ]
    for i in range(c.num_hidden_layers):
        p, layer = f"encoder.layer.{i}.", (*enc, "layer", i)
        out += [
            *[
                x
                for proj in ("query", "key", "value")  # our kernel [D, N, H], bias [N, H]
                for x in linear(
                    f"{p}attention.self.{proj}", (*layer, "attention", proj), bias="flat"
                )
            ],
            *linear(p + "attention.output.dense", (*layer, "attention", "out"), k=2),  # [N, H, D]
            *ln(p + "attention.output.LayerNorm", (*layer, "attention_ln")),
            *linear(p + "intermediate.dense", (*layer, "mlp", "wi")),
            *linear(p + "output.dense", (*layer, "mlp", "wo")),
            *ln(p + "output.LayerNorm", (*layer, "output_ln")),
        ]
    if arch == "BertForPreTraining":
        out += [
            *linear("cls.predictions.transform.dense", ("mlm_dense",), encoder=False),
            *ln("cls.predictions.transform.LayerNorm", ("mlm_ln",), encoder=False),
            w(
                "cls.predictions.bias",
                ("mlm_bias",),
                encoder=False,
                extra=("cls.predictions.decoder.bias",),
            ),
            *linear("cls.seq_relationship", ("nsp",), encoder=False),
        ]
    if arch == "BertForSequenceClassification":
        out += linear("classifier", ("classifier",), encoder=False)
    return out
