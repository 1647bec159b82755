"""Inference from a finished training workdir or a Hugging Face directory.

A training workdir's export is ``model.json`` (the family and its model config), ``params/`` (an
orbax params-only checkpoint) and ``tokenizer/``; an HF directory is ``config.json`` +
``model.safetensors`` + the tokenizer's files, or a Hugging Face Hub id fetched into such a
directory (``hf.resolve``). ``load`` reads either; ``sample_text`` and ``fill_mask`` are what
``jaxformers sample`` and ``jaxformers fill-mask`` print, ``sample_prompts`` the samples at the end
of ``jaxformers train``; ``import_hf`` and
``export_hf`` convert between the two layouts. ``model.json`` is written and read only here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from typing import Any

import jax
import numpy as np

from jaxformers import checkpoint, decoding, hf, models, storage
from jaxformers.data.tokenizers import load_tokenizer

MODEL_JSON = "model.json"
# The names of a classifier's labels in id order (written by the token-classification task).
LABELS_JSON = "labels.json"
# A question-answering run's window settings (data.seq_len, task.doc_stride, ...), which
# ``jaxformers answer`` reads so that it answers with the windows the model was trained on.
QA_JSON = "question_answering.json"
# The tokenizer files an HF directory may hold, copied on import and export.
TOKENIZER_FILES = hf.TOKENIZER_FILES


def write_model_json(workdir: str, config: Any) -> None:
    """Records what ``load`` needs to rebuild the model: its family and config."""
    meta = {"family": models.of_config(config).name, "config": dataclasses.asdict(config)}
    storage.write_text(storage.join(workdir, MODEL_JSON), json.dumps(meta, indent=2))


def read_model_json(workdir: str) -> Any:
    """The model config a training run exported (``write_model_json``)."""
    meta = json.loads(storage.read_text(storage.join(workdir, MODEL_JSON)))
    family = models.get(meta["family"])
    # JSON has no tuples: lists come back as the tuples the frozen configs hold.
    return family.config_class(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}
    )


def load(path: str):
    """(model, params, tokenizer) from a finished training workdir, a Hugging Face-format dir or a
    Hugging Face Hub id (``owner/name[@revision]``, see ``hf.resolve``)."""
    if storage.is_url(path):
        path = storage.absolute(path)
        if storage.isfile(storage.join(path, "config.json")):
            path = storage.download(path)  # an HF directory on cloud storage: read locally
    else:
        path = hf.resolve(path)
    if storage.isfile(storage.join(path, "config.json")):
        model, params = hf.from_pretrained(path)
        return model, params, load_tokenizer(models.of_model(model).tokenizer, path)
    if not storage.isfile(storage.join(path, MODEL_JSON)):
        raise FileNotFoundError(
            f"{path} is neither a finished training workdir ({MODEL_JSON}) nor a "
            "Hugging Face model directory (config.json)"
        )
    config = read_model_json(path)
    family = models.of_config(config)
    model = family.build(config)
    params = checkpoint.load_params(storage.join(path, "params"))
    tok_dir = storage.download(storage.join(path, "tokenizer"))  # local files for the libraries
    return model, params, load_tokenizer(family.tokenizer, tok_dir)


def sample_text(
    path: str,
    prompt: str | None,
    max_new_tokens: int = 200,
    method: str = "sample",
    temperature: float = 0.8,
    top_k: int | None = 40,
    top_p: float | None = None,
    seed: int = 0,
    num_beams: int = 4,
    model_input: str | None = None,
    *,
    crop: bool = False,
) -> str:
    """Causal LM (GPT-2): continues ``prompt``. Seq2seq (T5): generates from ``model_input`` (or
    ``prompt``) until EOS or ``max_new_tokens``.

    GPT-2 with ``crop``: exactly ``max_new_tokens`` tokens, the context cropped to the model's last
    ``n_positions`` tokens once it is full (``decoding.generate(crop=True)``). Without it the
    request is cut to what fits, and a line on stderr says so and by how much.
    """
    model, params, tok = _load_generator(path)
    return _generate_text(
        model,
        params,
        tok,
        model_input if model_input is not None else prompt,
        max_new_tokens,
        method,
        temperature,
        top_k,
        top_p,
        seed,
        num_beams,
        crop,
    )


def sample_prompts(
    path: str,
    prompts: list[str] | tuple[str, ...],
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int | None = 40,
) -> list[str]:
    """The end-of-training samples: one sampled continuation per prompt, ``max_new_tokens`` each
    (cropped past the context: the experiment asked for that many), the model loaded once.

    Prompt i samples with seed i: one shared seed gave every prompt the same random draws, and
    samples that shared whole lines.
    """
    model, params, tok = _load_generator(path)
    return [
        _generate_text(
            model,
            params,
            tok,
            p,
            max_new_tokens,
            "sample",
            temperature,
            top_k,
            top_p=None,
            seed=i,
            num_beams=1,
            crop=True,
        )  # fmt: skip
        for i, p in enumerate(prompts)
    ]


def _load_generator(path: str):
    """``load``, for a model that generates text (GPT-2 or T5)."""
    model, params, tok = load(path)
    family = models.of_model(model)
    if family.decoder is None:
        raise ValueError(
            f"{path} holds a {family.name} model, which does not generate text; "
            "sample needs a GPT-2 or T5 model"
        )
    return (*decoding.unrolled(model, params), tok)  # scanned layers: unstacked once, here


def _generate_text(
    model, params, tok, text, max_new_tokens, method, temperature, top_k, top_p, seed, num_beams,
    crop,
) -> str:  # fmt: skip
    family = models.of_model(model)
    ids = tok.encode(text)
    if not ids:
        raise ValueError(
            "the prompt is empty; give some text with --prompt (GPT-2) or --input (T5)"
        )
    limit = family.max_positions(model.config)
    if family.decoder == "seq2seq":
        if crop:
            raise ValueError(
                "--crop applies to GPT-2 models; a T5 model has relative positions and no context "
                "window to crop"
            )
        ids = ids + [tok.eos_id]
        room, eos = max_new_tokens, tok.eos_id
    elif crop:
        room, eos = max_new_tokens, None
    else:
        room, eos = min(max_new_tokens, limit - len(ids)), None
        if room < 1:
            raise ValueError(
                f"the prompt has {len(ids)} tokens, the model only {limit} positions; --crop "
                f"continues from the prompt's last {limit} tokens"
            )
        if room < max_new_tokens:
            print(
                f"jaxformers: the model has {limit} positions; generated {room} of the "
                f"{max_new_tokens} requested tokens (the prompt took {len(ids)}); --crop "
                f"(crop=True) keeps generating with the context cropped to the last {limit} "
                "tokens",
                file=sys.stderr,
            )
    out = decoding.generate(
        model,
        params,
        np.asarray([ids]),
        max_new_tokens=room,
        method=method,
        temperature=temperature,
        top_k=top_k or None,
        top_p=top_p,
        num_beams=num_beams,
        eos_token_id=eos,
        rng=jax.random.PRNGKey(seed),
        crop=crop,
    )
    return tok.decode(np.asarray(out[0]).tolist())


def fill_mask(path: str, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each [MASK] in ``text``: the ``top_k`` (token, probability) pairs of a BERT MLM head."""
    if "[MASK]" not in text:
        raise ValueError("the text has no [MASK] token; write e.g. --text 'the [MASK] of the play'")
    model, params, tok = load(path)
    mlm_heads = ("BertForPreTraining", "BertForMaskedLM")
    if getattr(model.config, "architecture", None) not in mlm_heads:
        raise ValueError(
            f"{path} holds a {type(model).__name__} without a masked-LM head; "
            "fill-mask needs BertForPreTraining or BertForMaskedLM weights"
        )
    ids = tok.encode(text, add_special_tokens=True)
    limit = models.of_model(model).max_positions(model.config)
    if len(ids) > limit:
        raise ValueError(f"the text is {len(ids)} tokens long, the model takes at most {limit}")
    positions = [i for i, t in enumerate(ids) if t == tok.mask_id]
    out = model.apply(
        {"params": params},
        np.asarray([ids]),
        attention_mask=np.ones((1, len(ids)), np.int32),
        masked_lm_positions=np.asarray([positions]),
    )
    logits = out.mlm_logits if hasattr(out, "mlm_logits") else out.logits
    probs = np.asarray(jax.nn.softmax(logits[0].astype("float32"), axis=-1))
    result = []
    for p in probs:
        best = np.argsort(-p)[:top_k]
        result.append([(tok.vocab[i], float(p[i])) for i in best])
    return result


def _copy_tokenizer(src: str, dst: str) -> None:
    storage.makedirs(dst)
    for name in TOKENIZER_FILES:
        path = storage.join(src, name)
        if storage.isfile(path):
            storage.write_bytes(storage.join(dst, name), storage.read_bytes(path))


def import_hf(hf_dir: str, workdir: str) -> None:
    """An HF directory or Hub id (``hf.resolve``) -> a workdir export (params, ``model.json``,
    tokenizer)."""
    hf_dir = hf.resolve(hf_dir)
    model, params = hf.from_pretrained(hf_dir)
    checkpoint.export_params(params, storage.join(workdir, "params"))
    write_model_json(workdir, model.config)
    _copy_tokenizer(hf_dir, storage.join(workdir, "tokenizer"))
    with open(os.path.join(hf_dir, "config.json")) as f:
        id2label = json.load(f).get("id2label") or {}
    names = [id2label[str(i)] for i in range(len(id2label))]
    if names and any(n != f"LABEL_{i}" for i, n in enumerate(names)):
        storage.write_text(storage.join(workdir, LABELS_JSON), json.dumps(names))


def export_hf(workdir: str, hf_dir: str) -> None:
    """A workdir export -> an HF directory that transformers' ``from_pretrained`` reads."""
    model, params, _ = load(workdir)
    hf.save_pretrained(model, params, hf_dir)
    if storage.isfile(storage.join(workdir, LABELS_JSON)):  # the classes' names (token/sequence)
        names = json.loads(storage.read_text(storage.join(workdir, LABELS_JSON)))
        path = os.path.join(hf_dir, "config.json")
        with open(path) as f:
            cfg = json.load(f)
        cfg["id2label"] = {str(i): n for i, n in enumerate(names)}
        cfg["label2id"] = {n: i for i, n in enumerate(names)}
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2)
    if storage.isfile(storage.join(workdir, QA_JSON)):  # `jaxformers answer` reads it there too
        with open(os.path.join(hf_dir, QA_JSON), "w") as f:
            f.write(storage.read_text(storage.join(workdir, QA_JSON)))
    tok_dir = storage.download(storage.join(workdir, "tokenizer"))  # local files
    if os.path.isdir(tok_dir):
        for name in os.listdir(tok_dir):
            shutil.copy(os.path.join(tok_dir, name), hf_dir)
