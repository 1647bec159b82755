"""``jaxformers train|sample|fill-mask|convert|plot`` (also ``python -m jaxformers``).

    jaxformers train EXPERIMENT.py --workdir DIR [--variant tiny] [--set a.b=value ...]
    jaxformers sample --workdir DIR --prompt TEXT [--method greedy|sample|beam] [--temperature ...]
    jaxformers sample --workdir T5_DIR --input "to be or <extra_id_0> to be"
    jaxformers fill-mask --model DIR --text "the [MASK] of the play"   (BERT; workdir or HF dir)
    jaxformers convert --workdir DIR --to-hf OUT | --from-hf HF_DIR   (Hugging Face format)
    jaxformers plot --workdir DIR            (loss curves -> DIR/loss.png)

Running ``train`` again with the same workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time


def load_experiment(path: str, variant: str = "default", settings: list[str] | None = None):
    """Imports an experiment file and returns its ``get_config(variant)`` with overrides applied."""
    from jaxformers.config import apply_overrides

    if not os.path.isfile(path):
        raise FileNotFoundError(f"experiment file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"jaxformers_experiment_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} has no get_config(); an experiment file must define one")
    return apply_overrides(module.get_config(variant), settings)


def _train(args) -> int:
    from jaxformers import launch

    launch.initialize(args.coordinator, args.num_processes, args.process_id)
    from jaxformers import train

    exp = load_experiment(args.experiment, args.variant, args.set)
    t = time.time()
    trainer = train.Trainer(exp, args.workdir)
    d = trainer.data
    print(f"{exp.name}: {sum(x.size for x in _leaves(trainer.abstract_state.params)) / 1e6:.2f}M params, "
          f"{d.num_train_tokens:,} train / {d.num_val_tokens:,} validation tokens, "
          f"mesh {dict(trainer.mesh.shape)}", flush=True)
    result = trainer.run()
    if result.preempted:
        return 0
    ev = result.eval_metrics
    print(f"done: step {result.final_step}, {result.wall_seconds:.0f} s in all (setup included: {time.time() - t:.0f} s), "
          f"{result.tokens_per_second:,.0f} tokens/s, MFU {result.mfu:.1%}, compile {result.compile_seconds:.1f} s",
          flush=True)
    if ev:
        print("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in ev.items()), flush=True)
    if result.final_step == exp.steps and jax_process_index() == 0:
        from jaxformers import plot

        print(f"loss plot: {plot.plot_workdir(args.workdir)}")
        if jax_process_count() > 1:
            # Reading the export back goes through orbax's collective restore, which every process
            # would have to join: sample afterwards with `jaxformers sample` on one host.
            print(f"samples: jaxformers sample --workdir {args.workdir} --prompt ...")
        elif exp.objective == "causal_lm" and exp.sample.max_new_tokens > 0:
            for prompt in exp.sample.prompts:
                text = sample_text(args.workdir, prompt, exp.sample.max_new_tokens, "sample",
                                   exp.sample.temperature, exp.sample.top_k, None, seed=0)
                print(f"\n--- sample ({prompt!r}) ---\n{text}")
    # Every process leaves together: none may reach the runtime's shutdown while another still works.
    launch.barrier("jaxformers-train-done")
    return 0


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def jax_process_count() -> int:
    import jax

    return jax.process_count()


def jax_process_index() -> int:
    import jax

    return jax.process_index()


def load_tokenizer(family: str, directory: str):
    """The tokenizer saved beside a model: BPE (GPT-2), WordPiece (BERT) or SentencePiece (T5)."""
    if family == "gpt2":
        from jaxformers.data.tokenizers import BPETokenizer
        return BPETokenizer.load(directory)
    if family == "bert":
        from jaxformers.data.wordpiece import WordPieceTokenizer
        lower = True
        cfg = os.path.join(directory, "tokenizer_config.json")
        if os.path.isfile(cfg):
            with open(cfg) as f:
                lower = json.load(f).get("do_lower_case", True)
        path = os.path.join(directory, "vocab.txt")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no vocab.txt in {directory}: BERT needs its WordPiece vocabulary")
        return WordPieceTokenizer.from_vocab_file(path, lowercase=lower)
    from jaxformers.data.sentencepiece_vocab import SentencePieceVocab
    return SentencePieceVocab(os.path.join(directory, "spiece.model"))


def load_for_inference(path: str):
    """(model, params, tokenizer) from a finished training workdir or a Hugging Face-format dir."""
    from jaxformers import checkpoint, hf

    if os.path.isfile(os.path.join(path, "config.json")):
        model, params = hf.from_pretrained(path)
        return model, params, load_tokenizer(hf.family_of(model.config), path)
    meta_path = os.path.join(path, "model.json")
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{path} is neither a finished training workdir (model.json) nor a "
                                "Hugging Face model directory (config.json)")
    with open(meta_path) as f:
        meta = json.load(f)
    fam = hf.family_module(meta["family"])
    config_cls = next(getattr(fam, n) for n in dir(fam) if n.endswith("Config") and n.lower().startswith(meta["family"]))
    config = config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()})
    model = fam.model_from_config(config)
    params = checkpoint.load_params(os.path.join(path, "params"))
    return model, params, load_tokenizer(meta["family"], os.path.join(path, "tokenizer"))


def fill_mask(model_dir: str, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each [MASK] in ``text``: the ``top_k`` (token, probability) pairs of a BERT MLM head."""
    import jax
    import numpy as np

    if "[MASK]" not in text:
        raise ValueError("the text has no [MASK] token; write e.g. --text 'the [MASK] of the play'")
    model, params, tok = load_for_inference(model_dir)
    if not hasattr(model, "config") or type(model).__name__ != "BertForPreTraining":
        raise ValueError(f"{model_dir} holds a {type(model).__name__} without a masked-LM head; "
                         "fill-mask needs BertForPreTraining weights")
    ids = tok.encode(text, add_special_tokens=True)
    limit = model.config.max_position_embeddings
    if len(ids) > limit:
        raise ValueError(f"the text is {len(ids)} tokens long, the model takes at most {limit}")
    positions = [i for i, t in enumerate(ids) if t == tok.mask_id]
    out = model.apply({"params": params}, np.asarray([ids]), attention_mask=np.ones((1, len(ids)), np.int32),
                      masked_lm_positions=np.asarray([positions]))
    probs = np.asarray(jax.nn.softmax(out.mlm_logits[0].astype("float32"), axis=-1))
    result = []
    for p in probs:
        best = np.argsort(-p)[:top_k]
        result.append([(tok.vocab[i], float(p[i])) for i in best])
    return result


def _fill_mask(args) -> int:
    for n, cands in enumerate(fill_mask(args.model, args.text, args.top_k)):
        print(f"[MASK] #{n + 1}:")
        for token, p in cands:
            print(f"  {token:<15} {p:.4f}")
    return 0


def sample_text(workdir, prompt, max_new_tokens, method, temperature, top_k, top_p, seed=0, num_beams=4,
                model_input=None) -> str:
    """GPT-2: continues ``prompt``. T5: generates from ``model_input`` (or ``prompt``)."""
    import jax
    import numpy as np

    from jaxformers import decoding

    model, params, tok = load_for_inference(workdir)
    family = type(model).__name__
    text = model_input if model_input is not None else prompt
    ids = tok.encode(text)
    if not ids:
        raise ValueError("the prompt is empty; give some text with --prompt (GPT-2) or --input (T5)")
    if family.startswith("T5"):
        ids = ids + [tok.eos_id]
        room = max_new_tokens
    else:
        room = min(max_new_tokens, model.config.n_positions - len(ids))
        if room < 1:
            raise ValueError(f"the prompt has {len(ids)} tokens, the model only {model.config.n_positions} positions")
    out = decoding.generate(model, params, np.asarray([ids]), max_new_tokens=room, method=method,
                            temperature=temperature, top_k=top_k or None, top_p=top_p, num_beams=num_beams,
                            eos_token_id=tok.eos_id if family.startswith("T5") else None,
                            rng=jax.random.PRNGKey(seed))
    return tok.decode(np.asarray(out[0]).tolist())


def _sample(args) -> int:
    if args.prompt is None and args.input is None:
        raise ValueError("give --prompt TEXT (GPT-2) or --input TEXT (T5)")
    text = sample_text(args.workdir, args.prompt, args.max_new_tokens, args.method, args.temperature,
                       args.top_k, args.top_p, args.seed, args.num_beams, args.input)
    print(text)
    return 0


def _convert(args) -> int:
    """Hugging Face dir <-> jaxformers export (workdir with model.json + orbax params + tokenizer)."""
    import dataclasses
    import shutil

    from jaxformers import checkpoint, hf

    if bool(args.from_hf) == bool(args.to_hf):
        raise ValueError("give exactly one of --from-hf DIR (import) or --to-hf DIR (export)")
    if args.from_hf:
        model, params = hf.from_pretrained(args.from_hf)
        checkpoint.export_params(params, os.path.join(args.workdir, "params"))
        with open(os.path.join(args.workdir, "model.json"), "w") as f:
            json.dump({"family": hf.family_of(model.config), "config": dataclasses.asdict(model.config)}, f, indent=2)
        tok_dir = os.path.join(args.workdir, "tokenizer")
        os.makedirs(tok_dir, exist_ok=True)
        for name in ("vocab.txt", "vocab.json", "merges.txt", "tokenizer.json", "spiece.model", "tokenizer_config.json"):
            if os.path.isfile(os.path.join(args.from_hf, name)):
                shutil.copy(os.path.join(args.from_hf, name), tok_dir)
        print(f"imported {args.from_hf} -> {args.workdir}")
    else:
        model, params, _ = load_for_inference(args.workdir)
        hf.save_pretrained(model, params, args.to_hf)
        tok_dir = os.path.join(args.workdir, "tokenizer")
        if os.path.isdir(tok_dir):
            for name in os.listdir(tok_dir):
                shutil.copy(os.path.join(tok_dir, name), args.to_hf)
        print(f"exported {args.workdir} -> {args.to_hf} (transformers' from_pretrained reads it)")
    return 0


def _plot(args) -> int:
    from jaxformers import plot

    print(plot.plot_workdir(args.workdir, args.out))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxformers", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an experiment (resumes from the workdir's checkpoints)")
    t.add_argument("experiment", help="path to an experiments/*.py file")
    t.add_argument("--workdir", required=True)
    t.add_argument("--variant", default="default", help="the experiment's variant, e.g. tiny")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting, e.g. optim.lr=1e-3")
    t.add_argument("--coordinator", default=None, help="multi-host: HOST:PORT of process 0 (auto on TPU VMs, SLURM)")
    t.add_argument("--num-processes", type=int, default=None, help="multi-host: number of processes")
    t.add_argument("--process-id", type=int, default=None, help="multi-host: this process's index")
    t.set_defaults(fn=_train)
    s = sub.add_parser("sample", help="generate text from a trained workdir")
    s.add_argument("--workdir", required=True)
    s.add_argument("--prompt", default=None, help="GPT-2: the text to continue")
    s.add_argument("--input", default=None, help="T5: the encoder input, e.g. a text with <extra_id_0> sentinels")
    s.add_argument("--max-new-tokens", type=int, default=200)
    s.add_argument("--method", default="sample", choices=["greedy", "sample", "beam"])
    s.add_argument("--num-beams", type=int, default=4)
    s.add_argument("--temperature", type=float, default=0.8)
    s.add_argument("--top-k", type=int, default=40)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=_sample)
    fm = sub.add_parser("fill-mask", help="top-k tokens for each [MASK] with a BERT model")
    fm.add_argument("--model", required=True, help="a training workdir or a Hugging Face-format directory")
    fm.add_argument("--text", required=True)
    fm.add_argument("--top-k", type=int, default=5)
    fm.set_defaults(fn=_fill_mask)
    cv = sub.add_parser("convert", help="Hugging Face format <-> jaxformers workdir export")
    cv.add_argument("--workdir", required=True)
    cv.add_argument("--from-hf", default=None, help="import this Hugging Face dir into --workdir")
    cv.add_argument("--to-hf", default=None, help="export --workdir's params to this Hugging Face dir")
    cv.set_defaults(fn=_convert)
    pl = sub.add_parser("plot", help="plot the loss curves of a workdir as PNG")
    pl.add_argument("--workdir", required=True)
    pl.add_argument("--out", default=None)
    pl.set_defaults(fn=_plot)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _quiet_logs()
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, RuntimeError, FloatingPointError) as e:
        print(f"jaxformers: error: {e}", file=sys.stderr)
        return 2


def _quiet_logs() -> None:
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)  # TFDS/orbax info lines drown the progress bar
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_experiment_file(path: str) -> None:
    """``python experiments/x.py --workdir DIR [--variant V] [--set k=v]``: the same as ``jaxformers train``."""
    sys.exit(main(["train", path, *sys.argv[1:]]))
