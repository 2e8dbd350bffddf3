"""The quickstart notebook runs from top to bottom (its training part skips itself without Flickr8k)."""
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="the notebook test needs nbclient and ipykernel (the test extra)")
nbformat = pytest.importorskip("nbformat", reason="the notebook test needs nbformat (the test extra)")

NOTEBOOK = Path(__file__).parents[1] / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_executes():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parents[1])}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(output.get("text", "") for output in outputs)
    assert "confidence" in text and "caption names subject" in text  # the n-best list and the labelled-folder figures printed
