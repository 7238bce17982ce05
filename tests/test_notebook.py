"""examples/quickstart.ipynb runs top to bottom through the Python API, on a slice of the digits, and shows its plots inline."""

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"


def _outputs(cell):
    """The cell's outputs as (mime type or stream name, text)."""
    found = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            found.append((output["name"], output["text"]))
        for mime, data in output.get("data", {}).items():
            found.append((mime, data if isinstance(data, str) else "".join(data)))
    return found


def _cells_with(notebook, text):
    return [cell for cell in notebook.cells if cell.cell_type == "code" and text in cell.source]


def _check_outputs(notebook):
    """What a reader of the notebook must see: tables as HTML, every plot as an inline PNG, the deployed winner."""
    for call in ("plot_model_comparison", "plot_reliability", "plot_cost", "plot_training_curves"):
        (cell,) = _cells_with(notebook, f"fusion.{call}(")
        mimes = [mime for mime, _ in _outputs(cell)]
        assert mimes.count("image/png") == 1, f"{call}: {mimes}"  # shown once, not twice
    for call, column in (("store.summary()", "precompute_seconds_per_image"), ("run.leaderboard()", "ece")):
        (cell,) = _cells_with(notebook, call)
        html = [text for mime, text in _outputs(cell) if mime == "text/html"]
        assert html and column in html[0] and "<table" in html[0], call
    (train_cell,) = _cells_with(notebook, "fusion.train_run(")
    lines = "".join(text for name, text in _outputs(train_cell) if name == "stdout")
    assert "fusion: training" in lines and "report:" in lines  # one line per model by default
    errors = "".join(text for cell in notebook.cells if cell.cell_type == "code"
                     for name, text in _outputs(cell) if name == "stderr")
    # Neither retracing warnings nor TensorFlow's start-up notices (features.tensorflow_noise) fill the cells.
    assert "retracing" not in errors and "WARNING" not in errors and "oneDNN" not in errors, errors
    text = "".join(text for cell in notebook.cells if cell.cell_type == "code" for _, text in _outputs(cell))
    assert "-> " in text  # predictions printed


def test_the_committed_notebook_holds_its_outputs():
    # A reader on a repository page sees the tables and plots without running anything.
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.get("execution_count") for cell in code_cells)
    assert [cell.execution_count for cell in code_cells] == list(range(1, len(code_cells) + 1))  # top to bottom
    _check_outputs(notebook)


@pytest.mark.slow
def test_quickstart_notebook_executes_and_shows_plots_inline(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # The kernel chooses its own matplotlib backend, as in Jupyter: no MPLBACKEND from the test runner.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    for key, value in {
        "QUICKSTART_WORK": str(tmp_path), "QUICKSTART_LIMIT": "80", "QUICKSTART_BACKBONES": "mobilenet_v2 resnet50",
        "QUICKSTART_INPUT_SIZE": "32", "QUICKSTART_EPOCHS": "2",
        # The kernel imports this checkout's packages, ahead of any installed copy.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(NOTEBOOK.parent.parent), os.environ.get("PYTHONPATH")])),
    }.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    _check_outputs(notebook)
    text = "".join(text for cell in notebook.cells if cell.cell_type == "code" for _, text in _outputs(cell))
    assert "weights: none" in text
    assert "fusion_without_resnet50" in text  # the leaderboard lists the ablation
    assert (tmp_path / "run" / "report.html").is_file()
    assert len(list(tmp_path.glob("run/exported*.keras"))) == 1
