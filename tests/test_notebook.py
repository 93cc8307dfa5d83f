"""notebooks/mha_playground: its two halves agree, and it runs top to bottom.

The notebook checks its own numbers with `assert`s against independent computations
(a NumPy float64 closed form, finite differences, attention.dot_product_attention),
so a run without a cell error is a run whose checks held.
"""

import pathlib

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

from mha_jax.data import offline

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "mha_playground"


def cell_contents(notebook):
  return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def test_py_and_ipynb_hold_the_same_cells_and_no_outputs():
  script = jupytext.read(NOTEBOOK.with_suffix(".py"))
  stored = nbformat.read(NOTEBOOK.with_suffix(".ipynb"), as_version=4)
  assert cell_contents(stored) == cell_contents(script), (
      "the pair is out of sync: run `jupytext --sync notebooks/mha_playground.py`")
  assert script.metadata["jupytext"]["formats"] == "ipynb,py:percent"
  assert [cell.outputs for cell in stored.cells if cell.cell_type == "code"] == [
      [] for cell in stored.cells if cell.cell_type == "code"], "commit the .ipynb without outputs"


@pytest.mark.slow
def test_notebook_runs_without_a_cell_error():
  offline.prepare_shakespeare()  # a no-op once `prepare offline` has run
  notebook = nbformat.read(NOTEBOOK.with_suffix(".ipynb"), as_version=4)
  # Raises CellExecutionError, naming the cell, on the first exception (failed asserts too).
  NotebookClient(notebook, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
  code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
  assert all(cell.execution_count is not None for cell in code_cells)
  errors = [out for cell in code_cells for out in cell.outputs if out.output_type == "error"]
  assert errors == []
  images = [out for cell in code_cells for out in cell.outputs
            if "image/png" in out.get("data", {})]
  assert len(images) >= 5  # the α′ sweep, the α′ fit, loss curves, attention maps, depth
