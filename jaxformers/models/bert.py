"""BERT: a post-LayerNorm encoder with learned positions and segment (token type) embeddings.

Numerically the same function as transformers' ``BertModel`` / ``BertForPreTraining`` /
``BertForMaskedLM`` / ``BertForSequenceClassification`` (regression with ``num_labels=1``) /
``BertForTokenClassification`` / ``BertForQuestionAnswering``: embeddings (word + position + token
type, LayerNorm, dropout), post-LN blocks with separate query/key/value projections and an
exact-erf GELU MLP, a pooler (dense + tanh on [CLS]), the MLM head (dense + act + LayerNorm +
decoder tied to the word embeddings + its own bias) and the NSP head, as google-research/bert; the
classifiers and the span (start/end) head as transformers. Every model can also return every
layer's hidden states and attention probabilities (``output_hidden_states`` /
``output_attentions``).

The heads are ``BertWithHead`` subclasses that state only what differs (architecture name, pooler,
output record, the head itself). The module classes own their head type:
``BertForPreTraining(config)`` stores ``architecture="BertForPreTraining"`` in its config, so
``hf.save_pretrained`` always writes the ``architectures`` that matches the params it writes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import flax.struct
import jax.numpy as jnp

from jaxformers.models import layers
from jaxformers.models.layers import Array, HFWeight, block_stack

ARCHITECTURES = (
    "BertModel",
    "BertForPreTraining",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertForQuestionAnswering",
)
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


@dataclasses.dataclass(frozen=True)
class BertConfig(layers.ModelConfig):
    """Hyperparameters of a BERT model (field names as transformers' BertConfig).

    ``architecture`` is the head type, one of ``ARCHITECTURES``. The module classes set it on
    construction; None lets ``model_from_config`` decide: from the weights when loading, else
    BertForPreTraining (training from scratch). ``num_labels`` and ``classifier_dropout`` (None =
    use ``hidden_dropout_prob``) serve the sequence and token classifiers; ``problem_type`` is
    transformers' (None, or one of ``PROBLEM_TYPES``): the sequence classifier with
    ``num_labels=1`` is a regression either way. Run fields as GPT2Config:
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
    problem_type: str | None = None

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
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type={self.problem_type!r}; choose one of {PROBLEM_TYPES}")

    @property
    def is_regression(self) -> bool:
        """One output read as a value (transformers' rule: problem_type, else num_labels == 1)."""
        if self.problem_type is not None:
            return self.problem_type == "regression"
        return self.num_labels == 1

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def flops_per_example(self, seq_len: int, num_predictions: int | None = None) -> float:
        """Training FLOPs (forward + backward) of one ``seq_len``-token example, PaLM appendix B.

        Per token 6 * (matmul parameters each token passes through) + 12 * L * T * D for attention
        scores. The encoder runs on all T positions; the MLM transform + vocabulary projection
        (D*D + D*V) only on the ``num_predictions`` gathered masked positions (None: every position,
        the ungathered ``[B, T, V]`` forward; 0: no MLM head, e.g. classification), and the pooler +
        NSP head (D*D + 2*D) once per example. The vocabulary projection counts its padded rows
        (``padded_vocab_size``): the hardware multiplies them too.
        """
        D, L, F, V, T = (
            self.hidden_size,
            self.num_hidden_layers,
            self.intermediate_size,
            self.padded_vocab_size,
            seq_len,
        )
        P = T if num_predictions is None else num_predictions
        encoder = L * (4 * D * D + 2 * D * F) * T
        return 6.0 * (encoder + (D * D + D * V) * P + (D * D + 2 * D)) + 12.0 * L * T * D * T


@flax.struct.dataclass
class BertOutput:
    last_hidden_state: Array  # [B, T, D]
    pooler_output: Array | None = None  # [B, D]; None in heads without the pooler
    # With output_hidden_states / output_attentions (else None), as transformers:
    hidden_states: tuple[Array, ...] | None = None  # L + 1 x [B, T, D], embedding output first
    attentions: tuple[Array, ...] | None = None  # L x [B, N, T, T] attention probabilities


@flax.struct.dataclass
class BertForPreTrainingOutput:
    mlm_logits: Array  # [B, T, V], or [B, P, V] for gathered masked_lm_positions
    nsp_logits: Array  # [B, 2]; class 1 = "B is a random sentence", as google-research/bert
    hidden_states: tuple[Array, ...] | None = None
    attentions: tuple[Array, ...] | None = None


@flax.struct.dataclass
class BertLogitsOutput:
    """BertForSequenceClassification: logits [B, C]; BertForTokenClassification: [B, T, C];
    BertForMaskedLM: [B, T, V] ([B, P, V] for gathered masked_lm_positions)."""

    logits: Array
    hidden_states: tuple[Array, ...] | None = None
    attentions: tuple[Array, ...] | None = None


BertForSequenceClassificationOutput = BertLogitsOutput  # the name before the other heads existed


@flax.struct.dataclass
class BertForQuestionAnsweringOutput:
    start_logits: Array  # [B, T]
    end_logits: Array  # [B, T]
    hidden_states: tuple[Array, ...] | None = None
    attentions: tuple[Array, ...] | None = None


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
    output_hidden_states: bool = False
    output_attentions: bool = False

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
        )(x, mask=mask, deterministic=self.deterministic, return_weights=self.output_attentions)
        h, probs = h if self.output_attentions else (h, None)
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
        x = layers.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
        return layers.layer_outputs(
            x, self.output_hidden_states, self.output_attentions, attentions=probs
        )


class BertModel(nn.Module):
    """The encoder and pooler.

    ``apply({"params": p}, input_ids, token_type_ids=None, attention_mask=None, position_ids=None,
    deterministic=True, output_hidden_states=False, output_attentions=False) ->
    BertOutput(last_hidden_state [B, T, D], pooler_output [B, D])``, with ``hidden_states`` /
    ``attentions`` when asked for. ``add_pooling_layer=False`` (as transformers' heads that do not
    read the pooler: token classification, question answering, masked LM) leaves the pooler out.
    """

    config: BertConfig
    add_pooling_layer: bool = True

    def __post_init__(self):
        _with_architecture(self, "BertModel")
        super().__post_init__()

    def setup(self):
        # The word embeddings are a setup attribute so that the MLM head can call ``attend``.
        c = self.config
        self.word_embeddings = layers.Embed(
            c.padded_vocab_size,
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
        masked_lm_positions: Array | None = None,  # only the MLM heads use it
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BertOutput:
        c = self.config
        if masked_lm_positions is not None:
            raise ValueError(_NO_MLM_HEAD)
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
        embedded = x = layers.constrain(
            x, ("activation_batch", "activation_length", "activation_embed")
        )
        mask = None if attention_mask is None else layers.padding_mask(attention_mask)
        x, per_layer = block_stack(BertLayer, c.num_hidden_layers, c.scan_layers, c.remat, "layer")(
            dict(
                config=c,
                deterministic=deterministic,
                output_hidden_states=output_hidden_states,
                output_attentions=output_attentions,
            ),
            x,
            mask,
        )
        pooled = None
        if self.add_pooling_layer:
            pooled = layers.Dense(
                c.hidden_size,
                ("embed", "mlp"),
                dtype=dtype,
                param_dtype=pdtype,
                kernel_init=init,
                name="pooler",
            )(x[:, 0])
            pooled = layers.constrain(jnp.tanh(pooled), ("activation_batch", "activation_embed"))
        return BertOutput(
            last_hidden_state=x,
            pooler_output=pooled,
            hidden_states=layers.hidden_states(embedded, per_layer)
            if output_hidden_states
            else None,
            attentions=per_layer["attentions"] if output_attentions else None,
        )


_NO_MLM_HEAD = "masked_lm_positions needs an MLM head: use BertForPreTraining or BertForMaskedLM"


class BertWithHead(nn.Module):
    """The encoder (params under ``bert``) and one task head, as transformers' ``BertFor*``.

    A head class states its HF architecture name (``ARCHITECTURE``), whether its encoder has the
    pooler (``POOLER``, transformers' ``add_pooling_layer``), its output record (``OUTPUT``), the
    label count it fixes (``FIXED_LABELS``; None: ``num_labels``, else ignored) and ``head``: the
    encoder's output -> the output record's head fields. ``num_labels`` (None =
    ``config.num_labels``) is recorded in the config of heads that read it.

    ``apply({"params": p}, input_ids, token_type_ids=None, attention_mask=None, position_ids=None,
    deterministic=True, masked_lm_positions=None, output_hidden_states=False,
    output_attentions=False) -> OUTPUT``; ``masked_lm_positions`` [B, P] only for the MLM heads.
    """

    config: BertConfig
    num_labels: int | None = None

    ARCHITECTURE: ClassVar[str] = ""
    POOLER: ClassVar[bool] = True
    OUTPUT: ClassVar[type] = BertLogitsOutput
    FIXED_LABELS: ClassVar[int | None] = None
    USES_LABELS: ClassVar[bool] = False
    GATHERS: ClassVar[bool] = False  # takes masked_lm_positions

    def __post_init__(self):
        extra = {}
        if self.USES_LABELS:
            extra["num_labels"] = self.FIXED_LABELS or self.num_labels or self.config.num_labels
        _with_architecture(self, self.ARCHITECTURE, **extra)
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
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ):  # inputs as BertModel; masked_lm_positions [B, P]
        if masked_lm_positions is not None and not self.GATHERS:
            raise ValueError(_NO_MLM_HEAD)
        bert = BertModel(self.config, add_pooling_layer=self.POOLER, name="bert")
        out = bert(
            input_ids,
            token_type_ids,
            attention_mask,
            position_ids,
            deterministic,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        fields = self.head(bert, out, deterministic, masked_lm_positions)
        return self.OUTPUT(**fields, hidden_states=out.hidden_states, attentions=out.attentions)

    def head(self, bert: BertModel, out: BertOutput, deterministic: bool, positions) -> dict:
        raise NotImplementedError

    # Pieces the heads share (they create their params under the head model's own names).
    def _dense(self, features: int, name: str, axes=("embed", None)) -> layers.Dense:
        c = self.config
        return layers.Dense(
            features,
            axes,
            dtype=layers.dtype_of(c.dtype),
            param_dtype=layers.dtype_of(c.param_dtype),
            kernel_init=nn.initializers.normal(c.initializer_range),
            name=name,
        )

    def _classifier(self, h: Array, deterministic: bool) -> Array:  # [..., D] -> [..., C]
        c = self.config
        rate = c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout
        h = nn.Dropout(rate)(h, deterministic=deterministic)
        return self._dense(c.num_labels, "classifier")(h)

    def _mlm_logits(self, bert: BertModel, h: Array, positions: Array | None) -> Array:
        """The MLM head (transform, LayerNorm, decoder tied to the word embeddings + its own bias)
        on every position, or with ``positions`` [B, P] on those gathered first (as
        google-research/bert): [B, T, V] or [B, P, V]."""
        c = self.config
        dtype, pdtype = layers.dtype_of(c.dtype), layers.dtype_of(c.param_dtype)
        if positions is not None:
            if positions.ndim != 2 or positions.shape[0] != h.shape[0]:
                raise ValueError(
                    "masked_lm_positions must be [batch, num_predictions], "
                    f"got shape {positions.shape}"
                )
            _check_range(
                positions,
                h.shape[1],
                "masked_lm_positions",
                f"positions index the input's {h.shape[1]} tokens",
            )
            h = jnp.take_along_axis(h, positions[:, :, None].astype(jnp.int32), axis=1)
        h = self._dense(c.hidden_size, "mlm_dense", ("embed", "mlp"))(h)
        h = layers.activation(c.hidden_act)(h)
        h = layers.layer_norm(c.layer_norm_eps, dtype, pdtype, "mlm_ln")(h)
        bias = self.param(
            "mlm_bias",
            layers.partitioned(nn.initializers.zeros, ("vocab",)),
            (c.padded_vocab_size,),
            pdtype,
        )
        return layers.vocab_logits(bert.attend(h) + bias.astype(dtype), c.vocab_size)


class BertForPreTraining(BertWithHead):
    """BERT with the MLM and NSP heads: ``BertForPreTrainingOutput(mlm_logits, nsp_logits)``.
    With ``masked_lm_positions`` [B, P] the MLM logits are [B, P, V]."""

    ARCHITECTURE = "BertForPreTraining"
    OUTPUT = BertForPreTrainingOutput
    GATHERS = True

    def head(self, bert, out, deterministic, positions):
        return dict(
            mlm_logits=self._mlm_logits(bert, out.last_hidden_state, positions),
            nsp_logits=self._dense(2, "nsp")(out.pooler_output),
        )


class BertForMaskedLM(BertWithHead):
    """BERT with the MLM head only (no pooler, as transformers): ``logits`` [B, T, V]
    ([B, P, V] with ``masked_lm_positions``)."""

    ARCHITECTURE = "BertForMaskedLM"
    POOLER = False
    GATHERS = True

    def head(self, bert, out, deterministic, positions):
        return dict(logits=self._mlm_logits(bert, out.last_hidden_state, positions))


class BertForSequenceClassification(BertWithHead):
    """Dropout + a linear classifier on the pooled output: ``logits`` [B, num_labels].
    ``num_labels=1`` is regression (the one logit is the predicted value), as transformers; a
    sentence pair is told apart by ``token_type_ids``."""

    ARCHITECTURE = "BertForSequenceClassification"
    USES_LABELS = True

    def head(self, bert, out, deterministic, positions):
        return dict(logits=self._classifier(out.pooler_output, deterministic))


class BertForTokenClassification(BertWithHead):
    """Dropout + a linear classifier on every token (no pooler): ``logits`` [B, T, num_labels]."""

    ARCHITECTURE = "BertForTokenClassification"
    POOLER = False
    USES_LABELS = True

    def head(self, bert, out, deterministic, positions):
        return dict(logits=self._classifier(out.last_hidden_state, deterministic))


class BertForQuestionAnswering(BertWithHead):
    """A linear map of every token to (start, end) logits (no pooler):
    ``BertForQuestionAnsweringOutput(start_logits [B, T], end_logits [B, T])``."""

    ARCHITECTURE = "BertForQuestionAnswering"
    POOLER = False
    OUTPUT = BertForQuestionAnsweringOutput
    FIXED_LABELS = 2
    USES_LABELS = True

    def head(self, bert, out, deterministic, positions):
        logits = self._dense(2, "qa_outputs")(out.last_hidden_state)  # [B, T, 2]
        return dict(start_logits=logits[..., 0], end_logits=logits[..., 1])


MODEL_CLASSES = {
    "BertModel": BertModel,
    **{
        cls.ARCHITECTURE: cls
        for cls in (
            BertForPreTraining,
            BertForMaskedLM,
            BertForSequenceClassification,
            BertForTokenClassification,
            BertForQuestionAnswering,
        )
    },
}
assert tuple(MODEL_CLASSES) == ARCHITECTURES


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
    "problem_type",
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
    # Google's checkpoints on the Hub (bert-base-uncased ...) say BertForMaskedLM but hold the NSP
    # head and pooler too: for BertForMaskedLM the weights decide (``_architecture_of``).
    known = [a for a in archs if a in ARCHITECTURES and a != "BertForMaskedLM"]
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
    if getattr(MODEL_CLASSES[arch], "USES_LABELS", False):
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(c.num_labels)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(c.num_labels)}
    return out


def _architecture_of(c: BertConfig, tensors: dict | None) -> str:
    """The config's head, else what the weights hold; with neither (a model built to be trained
    from scratch, e.g. by ``train.build_model``) the pre-training model.

    From the weights: an MLM head with the NSP head is BertForPreTraining, without it
    BertForMaskedLM; ``qa_outputs`` is question answering; a ``classifier`` reads the pooled output
    (sequence classification) when the checkpoint has the pooler, else every token.
    """
    if c.architecture is not None:
        return c.architecture
    if tensors is None:
        return "BertForPreTraining"

    def has(prefix):
        return any(k.startswith((prefix, f"bert.{prefix}")) for k in tensors)

    if has("cls.predictions."):
        return "BertForPreTraining" if has("cls.seq_relationship.") else "BertForMaskedLM"
    if has("qa_outputs."):
        return "BertForQuestionAnswering"
    if has("classifier."):
        return "BertForSequenceClassification" if has("pooler.") else "BertForTokenClassification"
    return "BertModel"


def model_from_config(c: BertConfig, architectures=None, tensors=None) -> nn.Module:
    """``config_from_hf`` already read ``architectures`` into ``c.architecture``."""
    arch = _architecture_of(c, tensors)
    cls = MODEL_CLASSES[arch]
    if getattr(cls, "USES_LABELS", False) and not cls.FIXED_LABELS:
        if tensors and "classifier.weight" in tensors:
            c = dataclasses.replace(c, num_labels=int(tensors["classifier.weight"].shape[0]))
    return cls(dataclasses.replace(c, architecture=arch))


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

    def w(name, path, layout="same", encoder=True, extra=(), vocab_axis=None):
        full = f"bert.{name}" if heads and encoder else name
        aliases = [n for n in _spellings(name, encoder) if n != full]
        return HFWeight(full, tuple(path), layout, tuple(aliases) + tuple(extra), vocab_axis)

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
        w(
            "embeddings.word_embeddings.weight",
            (*enc, "word_embeddings", "embedding"),
            vocab_axis=0,
        ),
        w("embeddings.position_embeddings.weight", (*enc, "position_embeddings", "embedding")),
        w("embeddings.token_type_embeddings.weight", (*enc, "token_type_embeddings", "embedding")),
        *ln("embeddings.LayerNorm", (*enc, "embeddings_ln")),
    ]
    if getattr(MODEL_CLASSES[arch], "POOLER", True):  # BertModel has it
        out += linear("pooler.dense", (*enc, "pooler"))
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
    mlm = [
        *linear("cls.predictions.transform.dense", ("mlm_dense",), encoder=False),
        *ln("cls.predictions.transform.LayerNorm", ("mlm_ln",), encoder=False),
        w(
            "cls.predictions.bias",
            ("mlm_bias",),
            encoder=False,
            extra=("cls.predictions.decoder.bias",),
            vocab_axis=0,
        ),
    ]
    classifier = linear("classifier", ("classifier",), encoder=False)
    heads = {
        "BertModel": [],
        "BertForPreTraining": mlm + linear("cls.seq_relationship", ("nsp",), encoder=False),
        "BertForMaskedLM": mlm,
        "BertForSequenceClassification": classifier,
        "BertForTokenClassification": classifier,
        "BertForQuestionAnswering": linear("qa_outputs", ("qa_outputs",), encoder=False),
    }
    return out + heads[arch]
