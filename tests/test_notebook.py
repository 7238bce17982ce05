"""examples/quickstart.ipynb runs top to bottom through the Python API, on a slice of the digits."""

from pathlib import Path

import pytest

# Whole runs of a script or notebook: in `make test`, not in `make test-fast`.
pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for key, value in {
        "QUICKSTART_WORK": str(tmp_path), "QUICKSTART_LIMIT": "80", "QUICKSTART_BACKBONES": "mobilenet_v2 densenet121",
        "QUICKSTART_INPUT_SIZE": "32", "QUICKSTART_EPOCHS": "2", "MPLBACKEND": "Agg", "TF_CPP_MIN_LOG_LEVEL": "3",
        # The kernel imports this checkout's packages, ahead of any installed copy.
        "PYTHONPATH": str(NOTEBOOK.parent.parent),
    }.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = {index: "".join(output.get("text", "") for output in cell.get("outputs", []))
               for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"}
    text = "\n".join(outputs.values())
    assert "weights: none" in text
    assert "mobilenet_v2   (80, 1280) float16" in text
    assert "fusion_without_densenet121" in text  # the comparison table lists the ablation
    assert "-> " in text  # predictions printed
    assert (tmp_path / "run" / "exported.keras").is_file()
    assert (tmp_path / "run" / "report.md").is_file()
