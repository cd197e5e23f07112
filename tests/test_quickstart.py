"""The README's main job, `examples/distill_mnist.py`, on this suite's backend.

CI runs the suite under `KERAS_BACKEND=tensorflow`, `jax` and `torch`: this
test is how each backend proves the quickstart end to end on real MNIST
(the bundled 5,000-image split), export to SavedModel and TFLite included
(through a TensorFlow process off TensorFlow), at a short budget.
"""

import json
import os
import subprocess
import sys

import keras
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = (
    "import json, sys; sys.path.insert(0, 'examples'); import distill_mnist; "
    "results = distill_mnist.main(sys.argv[1:]); print(json.dumps(results[0]))"
)


@pytest.mark.slow
def test_main_job_distills_and_exports_on_this_backend(tmp_path):
    args = ["--teacher-epochs", "2", "--epochs", "4", "--verbose", "0"]
    args += ["--export-dir", str(tmp_path / "export")]
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    process = subprocess.run(
        [sys.executable, "-c", RUN, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    accuracy = json.loads(process.stdout.strip().splitlines()[-1])
    assert accuracy["teacher"] > 0.95
    assert accuracy["distilled student"] > 0.9
    # Few labels: soft targets on the 4,500 unlabeled images help a lot.
    assert accuracy["distilled, 500 labels"] > accuracy["scratch, 500 labels"] + 0.02
    for name in ("student_float32.tflite", "student_int8.tflite", "saved_model"):
        assert (tmp_path / "export" / name).exists(), name
    assert "| teacher |" in process.stdout  # the compression report
