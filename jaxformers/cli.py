"""``jaxformers train|prepare|sample|fill-mask|embed|convert|plot`` (also ``python -m jaxformers``).

    jaxformers train EXPERIMENT.py --workdir DIR [--variant tiny] [--set a.b=value ...]
    jaxformers prepare EXPERIMENT.py --workdir DIR [--set tokens=N]   (data + sizes, no training)
    jaxformers train EXPERIMENT.py --list-variants
    jaxformers sample --workdir DIR --prompt TEXT [--method greedy|sample|beam] [--temperature ...]
                      [--crop]  (GPT-2: past the model's positions, from the last n_positions)
    jaxformers sample --workdir T5_DIR --input "to be or <extra_id_0> to be"
    jaxformers fill-mask --model DIR --text "the [MASK] of the play"   (BERT)
    jaxformers tag --model DIR --text "Good morrow, Hamlet." [--json]   (entities; BERT NER)
    jaxformers embed --model DIR --text T ... | --file F --out X.npy [--pooling mean|cls]   (.npy)
    jaxformers answer --model DIR --question Q --context C [--json]   (BERT question answering)
    jaxformers convert --workdir DIR --to-hf OUT | --from-hf HF_DIR   (Hugging Face format)
    jaxformers plot --workdir DIR            (loss curves -> DIR/loss.png)
    jaxformers eval --model DIR --text FILE [--context N] [--stride S] [--json]   (GPT-2:
                    perplexity, bits per byte; or --tfds NAME[:SPLIT]; --lambada FILE|tfds:NAME)

Running ``train`` again with the same workdir resumes from its latest checkpoint (a larger
``steps`` extends the run); with settings that change what is trained (model, task, data,
optimizer, batch size, seed) it refuses and names them, unless ``--restart`` moves the old run
aside to WORKDIR/previous-<time>/. Wherever a
Hugging Face directory is read (sample, fill-mask, convert --from-hf, init_from), a Hugging Face
Hub id works too (owner/name or owner/name@revision): its config, safetensors and tokenizer files
are fetched into huggingface_hub's cache (HF_HUB_CACHE; with HF_HUB_OFFLINE=1 only the cache is
read). A path that exists always wins over a Hub id.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import jax
import numpy as np

from jaxformers import config, evaluate, features, inference, launch, models, perf, plot, train


def describe(trainer: train.Trainer) -> list[str]:
    """What a run will do, measured on its prepared data: the lines ``prepare`` prints (and
    ``train`` before step 1)."""
    exp, d = trainer.exp, trainer.data
    n_params = sum(x.size for x in jax.tree.leaves(trainer.abstract_state.params))
    tokens_per_step = exp.batch_size * d.tokens_per_example
    per_epoch = d.steps_per_epoch(exp)
    lines = [
        f"{exp.name}: {n_params:,} parameters ({models.of_config(exp.model).name}), "
        f"mesh {dict(trainer.mesh.shape)}",
        f"data: {d.num_train_tokens:,} train / {d.num_val_tokens:,} validation tokens",
    ]
    if d.num_train_bytes:
        lines[-1] += (
            f"; {d.num_train_bytes / max(d.num_train_tokens, 1):.3f} bytes (UTF-8) per token "
            f"({d.num_train_bytes:,} train / {d.num_val_bytes:,} validation bytes)"
        )
    lines.append(
        f"steps: {exp.steps:,} of {exp.batch_size} x {d.tokens_per_example} tokens "
        f"({tokens_per_step:,} per step, {exp.steps * tokens_per_step:,} in all); "
        f"{per_epoch:,.1f} steps per epoch, so {exp.steps / per_epoch:.2f} epochs"
    )
    flops = d.flops_per_example(exp.model) * exp.batch_size
    lines.append(
        f"compute: {flops:.4g} training FLOPs per step (forward and backward), "
        f"{flops * exp.steps:.4g} in all"
    )
    return lines


def _build(args) -> train.Trainer:
    if not args.workdir:
        raise ValueError(f"{args.command} needs --workdir DIR (where the run keeps its files)")
    launch.initialize(args.coordinator, args.num_processes, args.process_id)
    exp = config.load_experiment(args.experiment, args.variant, args.set)
    # A dry run (prepare) never moves anything.
    restart = getattr(args, "restart", False) and not getattr(args, "dry_run", False)
    return train.Trainer(exp, args.workdir, restart=restart)


def _prepare(args) -> int:
    if args.list_variants:
        return _list_variants(args)
    trainer = _build(args)
    if jax.process_index() == 0:
        print("\n".join(describe(trainer)), flush=True)
        print(f"prepared: data and tokenizer in {trainer.workdir}; train with the same arguments")
    launch.barrier("jaxformers-prepare-done")
    return 0


def _list_variants(args) -> int:
    names = config.experiment_variants(args.experiment)
    for i, (name, what) in enumerate(names.items()):
        print(f"{name}{' (default)' if i == 0 else ''}: {what}")
    return 0


def _train(args) -> int:
    if args.list_variants:
        return _list_variants(args)
    if args.dry_run:
        return _prepare(args)
    t = time.time()
    trainer = _build(args)
    exp = trainer.exp
    if jax.process_index() == 0:
        print("\n".join(describe(trainer)), flush=True)
    result = trainer.run()
    if result.preempted:
        return 0
    ev = result.eval_metrics
    print(
        f"done: step {result.final_step}, {result.wall_seconds:.0f} s in all (setup included: "
        f"{time.time() - t:.0f} s), {result.tokens_per_second:,.0f} tokens/s, "
        f"MFU {perf.describe_mfu(result.mfu)}, "
        f"compile {result.compile_seconds:.1f} s",
        flush=True,
    )
    if ev:
        print("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in ev.items()), flush=True)
    if result.final_step == exp.steps and jax.process_index() == 0:
        print(f"loss plot: {plot.plot_workdir(args.workdir)}")
        if jax.process_count() > 1:
            # Reading the export back goes through orbax's collective restore, which every process
            # would have to join: sample afterwards with `jaxformers sample` on one host.
            print(f"samples: jaxformers sample --workdir {args.workdir} --prompt ...")
        elif models.of_config(exp.model).decoder == "causal" and exp.sample.max_new_tokens > 0:
            # Cropped past the context (the experiment asks for max_new_tokens explicitly), one
            # seed per prompt (inference.sample_prompts).
            texts = inference.sample_prompts(
                args.workdir,
                exp.sample.prompts,
                exp.sample.max_new_tokens,
                exp.sample.temperature,
                exp.sample.top_k,
            )
            for prompt, text in zip(exp.sample.prompts, texts):
                print(f"\n--- sample ({prompt!r}) ---\n{text}")
    # Every process leaves together: none may reach the runtime's shutdown while another still
    # works.
    launch.barrier("jaxformers-train-done")
    return 0


def _fill_mask(args) -> int:
    for n, cands in enumerate(inference.fill_mask(args.model, args.text, args.top_k)):
        print(f"[MASK] #{n + 1}:")
        for token, p in cands:
            print(f"  {token:<15} {p:.4f}")
    return 0


def _embed(args) -> int:
    if (args.text is None) == (args.file is None):
        raise ValueError("give the texts with --text T [--text T2 ...] or --file F, not both")
    texts = args.text
    if args.file is not None:
        with open(args.file, encoding="utf-8") as f:
            texts = f.read().splitlines()
        if not texts:
            raise ValueError(f"{args.file} is empty: it needs one text per line")
    if args.layers is not None and args.concat_last is not None:
        raise ValueError("give --layers or --concat-last, not both")
    model, params, tok = inference.load(args.model)
    emb = features.embed_texts(
        model,
        params,
        tok,
        texts,
        pooling=args.pooling,
        layers=-1 if args.layers is None else args.layers,
        concat_last=args.concat_last,
        batch_size=args.batch_size,
        max_length=args.max_length,
    )
    np.save(args.out, emb)
    print(f"{args.out}: {emb.shape[0]} texts x {emb.shape[1]} ({args.pooling} pooling)")
    return 0


def _tag(args) -> int:
    """Named entities of --text with a token-classification model: one line per entity,
    ``LABEL<TAB>START<TAB>END<TAB>TEXT`` (character offsets, ``text[START:END]``), or with --json
    one line ``{"text": ..., "entities": [{"text", "label", "start", "end"}, ...]}``."""
    from jaxformers.tasks import token_classification as tc

    model, params, tok = inference.load(args.model)
    if getattr(model.config, "architecture", None) != "BertForTokenClassification":
        raise ValueError(
            f"{args.model} is not a token-classification model (BertForTokenClassification)"
        )
    labels = tc.label_names(args.model, model.config.num_labels)
    found = tc.tag_text(model, params, tok, labels, args.text, args.max_length)
    if args.json:
        print(json.dumps({"text": args.text, "entities": found}))
        return 0
    for e in found:
        print(f"{e['label']}\t{e['start']}\t{e['end']}\t{e['text']}")
    return 0


def _answer(args) -> int:
    """The answer span to --question in --context, from a question-answering workdir or an HF
    BertForQuestionAnswering directory: its text, [start, end) characters and score."""
    from jaxformers.tasks import question_answering as qa

    model, params, tok = inference.load(args.model)
    qa.check_model(model)
    # A flag given wins; else what the workdir's run trained with; else the reference's.
    saved = qa.saved_settings(args.model)
    s = {k: saved.get(k) if v is None else v for k, v in vars(args).items() if k in qa.SETTINGS}
    T = min(s["max_seq_length"] or 384, model.config.max_position_embeddings)
    stride = s["doc_stride"] or min(128, max(1, T // 3))
    query = s["max_query_length"] or min(64, max(1, T // 6))
    limits = {k: s[k] for k in ("n_best", "max_answer_length") if s[k] is not None}
    if saved:
        print(
            f"windows of {T} pieces, stride {stride}, questions up to {query} pieces "
            f"(trained with {saved}; flags override)",
            file=sys.stderr,
        )
    pred, cut, windows = qa.answer(
        model, params, tok, args.question, args.context, T, stride, query, **limits
    )  # fmt: skip
    if cut:
        print(f"note: the question was cut to its first {query} pieces", file=sys.stderr)
    score = None if pred.start < 0 else round(pred.score, 4)
    if args.json:
        out = dict(answer=pred.text, start=pred.start, end=pred.end, score=score)
        out.update(probability=round(pred.probability, 4), windows=windows)
        print(json.dumps(out))
    elif pred.start < 0:
        print("no answer: no span of the context qualified")
    else:
        print(f"answer: {pred.text}")
        print(f"characters: [{pred.start}, {pred.end}) of the context")
        print(f"score: {pred.score:.4f} (start + end logit; probability {pred.probability:.4f})")
    return 0


def _sample(args) -> int:
    if args.prompt is None and args.input is None:
        raise ValueError("give --prompt TEXT (GPT-2) or --input TEXT (T5)")
    print(
        inference.sample_text(
            args.workdir,
            args.prompt,
            args.max_new_tokens,
            args.method,
            args.temperature,
            args.top_k,
            args.top_p,
            args.seed,
            args.num_beams,
            args.input,
            crop=args.crop,
        )
    )
    return 0


def _convert(args) -> int:
    """Hugging Face dir <-> jaxformers export (workdir with model.json + orbax params +
    tokenizer)."""
    if bool(args.from_hf) == bool(args.to_hf):
        raise ValueError(
            "give exactly one of --from-hf DIR_OR_HUB_ID (import) or --to-hf DIR (export)"
        )
    if args.from_hf:
        inference.import_hf(args.from_hf, args.workdir)
        print(f"imported {args.from_hf} -> {args.workdir}")
    else:
        inference.export_hf(args.workdir, args.to_hf)
        print(f"exported {args.workdir} -> {args.to_hf} (transformers' from_pretrained reads it)")
    return 0


def _eval(args) -> int:
    given = [f for f in ("text", "tfds", "lambada") if getattr(args, f)]
    if len(given) != 1:
        raise ValueError(
            "give exactly one of --text FILE, --tfds NAME[:SPLIT] (perplexity, bits per byte) or "
            "--lambada FILE|tfds:NAME[:SPLIT] (last-word accuracy)"
        )
    if args.lambada:
        if args.lambada.startswith("tfds:"):
            passages = evaluate.tfds_texts(
                args.lambada[len("tfds:") :], args.field or "text", args.data_dir
            )
        else:
            passages = evaluate.read_passages(args.lambada, args.field or "text")
    elif args.text:
        texts = [evaluate.read_text(args.text)]
    else:
        texts = evaluate.tfds_texts(args.tfds, args.field or "text", args.data_dir)
    model, params, tok = inference.load(args.model)
    t = time.time()
    if args.lambada:
        out = evaluate.lambada(model, params, tok, passages, args.batch_size)
        summary = (
            f"LAMBADA: accuracy {out['lambada_accuracy']:.4f} on {out['examples']:,} passages, "
            f"last-word perplexity {out['lambada_perplexity']:.3f}"
        )
    else:
        r = evaluate.perplexity(
            model, params, tok, texts, documents=bool(args.tfds), context=args.context,
            stride=args.stride, batch_size=args.batch_size,
        )  # fmt: skip
        out = r.as_dict()
        summary = (
            f"perplexity {r.perplexity:.4f} ({r.nll_sum / r.tokens:.4f} nats per token) over "
            f"{r.tokens:,} tokens; {r.bits_per_byte:.4f} bits per byte ({r.bytes:,} bytes)"
        )
    print(json.dumps(out) if args.json else f"{summary} [{time.time() - t:.1f} s]")
    return 0


def _plot(args) -> int:
    print(plot.plot_workdir(args.workdir, args.out))
    return 0


def _model_argument(p: argparse.ArgumentParser, flag: str) -> None:
    p.add_argument(
        flag,
        required=True,
        help="a training workdir, a Hugging Face directory or a Hugging Face Hub id",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jaxformers", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an experiment (resumes from the workdir's checkpoints)")
    pr = sub.add_parser(
        "prepare",
        help="prepare an experiment's data and tokenizer, print its sizes (tokens, bytes per "
        "token, steps per epoch, parameters, FLOPs) and exit",
    )
    for q in (t, pr):
        q.add_argument("experiment", help="path to an experiments/*.py file")
        q.add_argument("--workdir", default=None, help="the run's directory (required)")
        q.add_argument(
            "--variant",
            default=None,
            help="the experiment's variant (default: the first it declares; --list-variants)",
        )
        q.add_argument(
            "--list-variants", action="store_true", help="list the experiment's variants and exit"
        )
        q.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a setting, e.g. optim.lr=1e-3; tokens=N or epochs=X set the length",
        )
        q.add_argument(
            "--coordinator",
            default=None,
            help="multi-host: HOST:PORT of process 0 (auto on TPU VMs, SLURM)",
        )
        q.add_argument(
            "--num-processes", type=int, default=None, help="multi-host: number of processes"
        )
        q.add_argument(
            "--process-id", type=int, default=None, help="multi-host: this process's index"
        )
    t.add_argument(
        "--dry-run", action="store_true", help="prepare and print the sizes only (= prepare)"
    )
    t.add_argument(
        "--restart",
        action="store_true",
        help="start afresh in a workdir that holds a run: move that run (checkpoints, params, "
        "model.json, metrics, tensorboard, tokenizer) to WORKDIR/previous-<time>/ first. Without "
        "it, a workdir whose checkpoints were written with other settings refuses to train",
    )
    t.set_defaults(fn=_train)
    pr.set_defaults(fn=_prepare)
    s = sub.add_parser("sample", help="generate text from a trained workdir")
    _model_argument(s, "--workdir")
    s.add_argument("--prompt", default=None, help="GPT-2: the text to continue")
    s.add_argument(
        "--input",
        default=None,
        help="T5: the encoder input, e.g. a text with <extra_id_0> sentinels",
    )
    s.add_argument("--max-new-tokens", type=int, default=200)
    s.add_argument("--method", default="sample", choices=["greedy", "sample", "beam"])
    s.add_argument("--num-beams", type=int, default=4)
    s.add_argument("--temperature", type=float, default=0.8)
    s.add_argument("--top-k", type=int, default=40)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--crop",
        action="store_true",
        help="GPT-2: generate all --max-new-tokens, predicting each token past the model's "
        "positions from the last n_positions tokens (nanoGPT's sampling); without it the "
        "request is cut to fit",
    )
    s.set_defaults(fn=_sample)
    fm = sub.add_parser("fill-mask", help="top-k tokens for each [MASK] with a BERT model")
    _model_argument(fm, "--model")
    fm.add_argument("--text", required=True)
    fm.add_argument("--top-k", type=int, default=5)
    fm.set_defaults(fn=_fill_mask)
    em = sub.add_parser(
        "embed", help="one feature vector per text (pooled hidden states) -> a float32 .npy"
    )
    _model_argument(em, "--model")
    em.add_argument("--text", action="append", default=None, help="a text (repeat for more)")
    em.add_argument("--file", default=None, help="a UTF-8 file, one text per line")
    em.add_argument("--out", required=True, help="the .npy to write: float32 [n_texts, D]")
    em.add_argument(
        "--pooling",
        default="mean",
        choices=["mean", "cls"],
        help="mean over real tokens (sentence-transformers style) or the [CLS] token (BERT)",
    )
    em.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=None,
        help="hidden states to concatenate: 0 = embeddings, -1 = last layer (default -1)",
    )
    em.add_argument(
        "--concat-last",
        type=int,
        default=None,
        help="concatenate the last N layers (4: the BERT paper's feature-based NER features)",
    )
    em.add_argument("--batch-size", type=int, default=32)
    em.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per text, special tokens included (default: the model's positions); longer "
        "texts keep their first tokens and the count of truncated texts is printed",
    )
    em.set_defaults(fn=_embed)
    tg = sub.add_parser("tag", help="named entities of a text (BERT token classification)")
    _model_argument(tg, "--model")
    tg.add_argument("--text", required=True, help="the text; split into words as the task does")
    tg.add_argument(
        "--max-length", type=int, default=None, help="pieces per chunk (default: the model's)"
    )
    tg.add_argument("--json", action="store_true", help="print one JSON line")
    tg.set_defaults(fn=_tag)
    an = sub.add_parser(
        "answer", help="extractive question answering (BERT): the answer span in a context"
    )
    _model_argument(an, "--model")
    an.add_argument("--question", required=True)
    an.add_argument("--context", required=True, help="the text holding the answer")
    # Defaults: a question-answering workdir's own (question_answering.json), else these.
    an.add_argument(
        "--max-seq-length",
        type=int,
        default=None,
        help="window length, at most the positions (default: the run's data.seq_len, else 384)",
    )
    an.add_argument(
        "--doc-stride", type=int, default=None, help="default: the run's, else min(128, length / 3)"
    )
    an.add_argument(
        "--max-query-length",
        type=int,
        default=None,
        help="default: the run's, else min(64, length / 6)",
    )
    an.add_argument(
        "--max-answer-length", type=int, default=None, help="in pieces (the run's, else 30)"
    )
    an.add_argument(
        "--n-best", type=int, default=None, help="logits tried per window (the run's, else 20)"
    )
    an.add_argument(
        "--json", action="store_true", help="one JSON line: answer, start, end, score, ..."
    )
    an.set_defaults(fn=_answer)
    cv = sub.add_parser("convert", help="Hugging Face format <-> jaxformers workdir export")
    cv.add_argument("--workdir", required=True)
    cv.add_argument(
        "--from-hf",
        default=None,
        help="import this Hugging Face directory or Hugging Face Hub id into --workdir",
    )
    cv.add_argument(
        "--to-hf", default=None, help="export --workdir's params to this Hugging Face dir"
    )
    cv.set_defaults(fn=_convert)
    ev = sub.add_parser(
        "eval",
        help="causal LM (GPT-2): perplexity and bits per byte of a text with a sliding window, or "
        "LAMBADA last-word accuracy",
    )
    _model_argument(ev, "--model")
    ev.add_argument("--text", default=None, help="a UTF-8 text file, scored as one token stream")
    ev.add_argument(
        "--tfds",
        default=None,
        metavar="NAME[:SPLIT]",
        help="a prepared TFDS split (default validation, else test); its documents each end "
        "with the end-of-text token, as training packs them",
    )
    ev.add_argument(
        "--lambada",
        default=None,
        metavar="FILE|tfds:NAME[:SPLIT]",
        help="LAMBADA: JSONL with a text field per line, or one passage per line; the last word "
        "is predicted greedily (accuracy)",
    )
    ev.add_argument(
        "--field", default=None, help="the JSONL / TFDS field holding the text (default text)"
    )
    ev.add_argument(
        "--context",
        type=int,
        default=None,
        help="window length in tokens (default: the model's positions)",
    )
    ev.add_argument(
        "--stride",
        type=int,
        default=None,
        help="tokens between window starts (default: the context, disjoint windows); each "
        "window scores only its new tokens",
    )
    ev.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    ev.add_argument(
        "--data-dir", default=None, help="TFDS data_dir (default $JAXFORMERS_DATA_DIR or TFDS's)"
    )
    ev.add_argument("--json", action="store_true", help="print one JSON line")
    ev.set_defaults(fn=_eval)
    pl = sub.add_parser("plot", help="plot the loss curves of a workdir as PNG")
    pl.add_argument("--workdir", required=True)
    pl.add_argument("--out", default=None)
    pl.set_defaults(fn=_plot)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _quiet_logs()
    perf.apply_xla_flags()  # the accelerator's XLA flags, before jax starts its backends
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, RuntimeError, FloatingPointError) as e:
        print(f"jaxformers: error: {e}", file=sys.stderr)
        return 2


def _quiet_logs() -> None:
    logging.getLogger("absl").setLevel(
        logging.ERROR
    )  # TFDS/orbax info lines drown the progress bar
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_experiment_file(path: str) -> None:
    """``python experiments/x.py --workdir DIR [--variant V] [--set k=v]``: the same as
    ``jaxformers train``."""
    sys.exit(main(["train", path, *sys.argv[1:]]))
