"""README.md says what works: its two commands match CI, and every ```python snippet in it runs.

Snippets name model directories with placeholders ``path/to/<name>``; the test replaces each with a
real Hugging Face-format directory of a small randomly initialised transformers model (see
``PLACEHOLDERS``). A snippet that uses a placeholder not listed there fails with the list of known
ones, so the README keeps to them (or this table grows). A snippet runs in a subprocess with a
temporary working directory, so relative output paths such as ``out/gpt2`` land there; every
Hugging Face directory a snippet writes must then load in transformers.
"""

import os
import re
import subprocess
import sys

import pytest
from helpers import ROOT

README = os.path.join(ROOT, "README.md")
CI_RUN = os.path.join(ROOT, ".ci", "run")
PLACEHOLDER = re.compile(r"path/to/([A-Za-z0-9_.-]+)")


def readme() -> str:
    with open(README, encoding="utf-8") as f:
        return f.read()


def section(text: str, heading: str) -> str:
    m = re.search(rf"^{re.escape(heading)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"README.md has no '{heading}' section"
    return m.group(1)


def fenced(text: str, lang: str) -> list[str]:
    return [b.strip("\n") for b in re.findall(rf"^```{lang}[ \t]*\n(.*?)^```", text, re.M | re.S)]


def command_line(block: str) -> str:
    """A fenced shell block as one command line (backslash continuations joined)."""
    return re.sub(r"\s*\\\n\s*", " ", block).strip()


PYTHON_SNIPPETS = fenced(readme(), "python")


# ------------------------------------------------------------------------------ the two commands


def test_two_commands_match_ci():
    blocks = fenced(section(readme(), "## The two commands"), "bash")
    assert len(blocks) == 2, (
        f"'## The two commands' must hold exactly two ```bash blocks, found {len(blocks)}"
    )
    main_job, tests = (command_line(b) for b in blocks)
    assert "\n" not in main_job and "\n" not in tests, (
        "each of the two commands is one command line"
    )
    assert "jaxformers train experiments/gpt2_shakespeare.py" in main_job
    assert "pytest" in tests

    with open(CI_RUN, encoding="utf-8") as f:
        ci = [
            line.strip()
            for line in f
            if line.strip().startswith("pip install") and "pytest" in line
        ]
    assert len(ci) == 1, (
        f".ci/run must hold one 'pip install ... && python -m pytest ...' line, found {ci}"
    )
    assert tests == ci[0], (
        f"README's test command and .ci/run differ:\n  README: {tests}\n  CI:     {ci[0]}"
    )


# ------------------------------------------------------------------------------ python snippets


def _gpt2(out):
    import transformers

    cfg = transformers.GPT2Config(vocab_size=50257, n_positions=128, n_embd=32, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(out)


def _bert(out):
    import transformers

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
        chr(c) for c in range(ord("a"), ord("z") + 1)
    ]
    words += ["the", "of", "and", "to", "a", "in", "play", "king", "lord", "##s"]
    cfg = transformers.BertConfig(
        vocab_size=len(words),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    transformers.BertForPreTraining(cfg).save_pretrained(out)
    with open(os.path.join(out, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(words) + "\n")


def _t5(out):
    import transformers

    cfg = transformers.T5Config(
        vocab_size=32128,
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    )
    transformers.T5ForConditionalGeneration(cfg).save_pretrained(out)


# placeholder name -> builder of a Hugging Face directory (random weights, real vocabulary sizes so
# that token ids from the real tokenizers, such as GPT-2's 464 3290 318, are valid)
PLACEHOLDERS = {"gpt2": _gpt2, "bert": _bert, "t5": _t5}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    made = {}

    def get(name):
        if name not in PLACEHOLDERS:
            pytest.fail(
                f"README.md uses the placeholder path/to/{name}; known ones: "
                f"{', '.join('path/to/' + k for k in PLACEHOLDERS)} "
                "(or add a builder to tests/test_readme.py)"
            )
        if name not in made:
            pytest.importorskip("torch")  # the builders make transformers (PyTorch) models
            pytest.importorskip("transformers")
            out = str(tmp_path_factory.mktemp(f"hf_{name}"))
            PLACEHOLDERS[name](out)
            made[name] = out
        return made[name]

    return get


def test_readme_has_python_snippets():
    assert PYTHON_SNIPPETS, "README.md has no ```python snippet (the quick start should have one)"


@pytest.mark.parametrize("index", range(len(PYTHON_SNIPPETS)))
def test_python_snippet_runs(index, model_dirs, tmp_path):
    code = PLACEHOLDER.sub(
        lambda m: model_dirs(m.group(1)).replace("\\", "/"), PYTHON_SNIPPETS[index]
    )
    script = tmp_path / f"readme_snippet_{index}.py"
    script.write_text(code, encoding="utf-8")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=path)
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (
        f"README python snippet #{index + 1} failed:\n{code}\n--- stderr ---\n{proc.stderr[-4000:]}"
    )

    # What a snippet writes in Hugging Face format must load in transformers ("loads it unchanged").
    written = [
        d for d, _, files in os.walk(cwd) if "config.json" in files and "model.safetensors" in files
    ]
    if written:
        pytest.importorskip("torch")
        transformers = pytest.importorskip("transformers")
        for d in written:
            transformers.AutoModel.from_pretrained(d)
