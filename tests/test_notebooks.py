"""The Colab notebooks: all present, library-only, saved with outputs, and executing headlessly at smoke size.

Each notebook runs in a fresh kernel with R1JAX_SMOKE=1 in a temporary working directory (its runs/
folder lands there), under a per-cell timeout; any cell error fails the test.
"""
import json
import os
import pathlib
import re

import conftest
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
EXPECTED = ("r1_zero_small", "distill_small", "swap_reward")
CELL_TIMEOUT_S = 300
# training logic belongs in r1jax: a notebook that differentiates, jits or builds optimizers has grown its own
TRAINING_LOGIC = (r"\bjax\.(grad|value_and_grad|jit|vmap|lax)\b", r"\boptax\b", r"\bflax\b", r"apply_gradients",
                  r"\binit_params\b", r"\bTransformer\(", r"\bjnp\.", r"\bdef \w*(loss|step|train)\w*\(")


def _code(path: pathlib.Path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_the_expected_notebooks_and_no_others():
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_imports_r1jax_and_defines_no_training_logic(name):
    cells = _code(NOTEBOOK_DIR / f"{name}.ipynb")
    assert "R1JAX_GIT" in cells[0] and "import r1jax" in cells[0], "the first code cell installs r1jax"
    assert any(re.search(r"^from r1jax\.recipes import", c, re.M) for c in cells), "training comes from a recipe"
    source = "\n".join(cells)
    for pattern in TRAINING_LOGIC:
        assert not re.search(pattern, source), f"{name}: training logic ({pattern}) belongs in r1jax"
    assert "R1JAX_SMOKE" in source


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_is_saved_with_outputs_of_a_clean_run(name):
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), f"{name}: cells not run once, in order: {counts}"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{name}: saved outputs hold an error: {errors[0].get('ename')}"
    assert "_smoke" not in json.dumps([c.outputs for c in code]), f"{name}: saved from a smoke run"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """Environment of the notebook kernels: smoke size, this checkout's r1jax, one shared compilation cache."""
    env = {"R1JAX_SMOKE": "1", "R1JAX_PROGRESS": "0", "JAX_PLATFORMS": "cpu",
           # one CPU device, as on Colab (conftest asks the test process for 8), compiled as in the tests
           "XLA_FLAGS": conftest.FAST_COMPILE_XLA_FLAGS,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax-cache")),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    return env


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_executes_at_smoke_size(name, tmp_path, monkeypatch, kernel_env):
    for key, value in kernel_env.items():
        monkeypatch.setenv(key, value)  # the kernel is a subprocess: it inherits these
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, startup_timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    assert (tmp_path / "runs").is_dir(), "the run's workdir goes under the working directory"
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, f"{name}: no plot was shown"
