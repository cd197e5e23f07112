"""The Colab tutorials: structure checks, and each notebook run top to bottom.

The execution test runs every notebook in `tutorials/` offline and in its
quick configuration (`KERAS_KD_TUTORIAL_QUICK=1`, `KERAS_KD_TUTORIAL_OFFLINE=1`)
and fails on the first cell that raises. The committed notebooks carry the
outputs of a full run, so the structure test also checks that they were
executed in order, without errors, and stayed small.
"""

import pathlib
import re
import sys

import nbformat
import pytest

TUTORIALS = pathlib.Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
COLAB_URL = (
    "https://colab.research.google.com/github/keras-kd/keras_kd/blob/main/tutorials/{}"
)
INSTALL = "pip install -q git+https://github.com/keras-kd/keras_kd"
MAX_BYTES = 300 * 1024
CELL_TIMEOUT = 600


def _ids(paths):
    return [path.stem for path in paths]


def _code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_the_tutorials_exist():
    names = {path.stem for path in NOTEBOOKS}
    assert {
        "01_distillation_in_10_minutes",
        "02_temperature_and_alpha",
        "03_teacher_to_phone",
        "04_cached_teacher_outputs",
        "05_several_teachers_and_label_merging",
        "06_scaling_out_with_tf_distribute",
    } <= names
    readme = (TUTORIALS / "README.md").read_text()
    for path in NOTEBOOKS:
        assert path.name in readme, f"tutorials/README.md does not list {path.name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_has_badge_install_cell_and_is_small(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    first = notebook.cells[0]
    assert first.cell_type == "markdown"
    assert COLAB_URL.format(path.name) in first.source, "Colab badge missing or stale"
    install = _code_cells(notebook)[0].source
    assert INSTALL in install, "the first code cell must install keras_kd in Colab"
    assert '"google.colab" in sys.modules' in install, "install must be Colab-only"
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size} B"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_committed_with_a_clean_full_run(path):
    notebook = nbformat.read(path, as_version=4)
    cells = _code_cells(notebook)
    counts = [cell.execution_count for cell in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        f"{path.name} must be committed after one run top to bottom: "
        f"execution counts {counts}"
    )
    text = []
    for cell in cells:
        for output in cell.outputs:
            assert output.output_type != "error", f"{path.name} has an error output"
            text.append(output.get("text", ""))
            text.append(str(output.get("data", {}).get("text/plain", "")))
    assert not re.search(r"Traceback \(most recent call last\)", "".join(text))
    figures = sum(
        "image/png" in output.get("data", {})
        for cell in cells
        for output in cell.outputs
    )
    assert figures >= 1, f"{path.name} has no rendered figure"


# The notebooks are written for Colab's default backend, TensorFlow (two of
# them export to TFLite and use `tf.distribute`); the JAX and PyTorch suites
# run the README's quickstart instead (tests/test_quickstart.py).
@pytest.mark.tensorflow_only
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_offline_in_quick_mode(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("KERAS_KD_TUTORIAL_QUICK", "1")
    monkeypatch.setenv("KERAS_KD_TUTORIAL_OFFLINE", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(path, as_version=4)
    # The "python3" kernel must be this interpreter's environment (where
    # keras_kd is installed), not another Python found on the PATH.
    notebook.cells.insert(
        0,
        nbformat.v4.new_code_cell(
            f"import sys\nassert sys.prefix == {sys.prefix!r}, sys.executable"
        ),
    )
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(tmp_path)}},  # files go to tmp_path
        allow_errors=True,  # run every cell, then report the failed ones below
    )
    client.execute()
    failed = [
        f"cell {index}: {output.ename}: {output.evalue}"
        for index, cell in enumerate(_code_cells(notebook))
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not failed, failed
    assert all(cell.execution_count is not None for cell in _code_cells(notebook))
