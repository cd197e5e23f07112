"""The same numbers on TensorFlow, JAX and PyTorch, and `.keras` files across them.

`tests/backend_run.py` trains fully determined small runs (fixed weights,
SGD, no shuffling, two epochs): plain KD, unlabeled rows, a padded
`(batch, time, vocab)` batch, mixup with a fixed seed, and a hint loss. Each
backend runs it in its own process (Keras fixes its backend at import); the
logged losses and the final students must agree to 1e-4. Then each backend
resumes, for its second epoch, a distiller saved after one epoch by another
backend, and must reach the uninterrupted run's student. Last, JAX trains
the same runs under `keras.distribution.DataParallel` over two CPU devices
and must match its one-device run.

Runs once, from the TensorFlow suite: the JAX and PyTorch suites skip it.
"""

import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

RUNNER = os.path.join(os.path.dirname(__file__), "backend_run.py")
BACKENDS = ("tensorflow", "jax", "torch")
TOLERANCE = 1e-4
TIMEOUT = 300

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow",
        reason="compares every backend in subprocesses; runs from the TF suite",
    ),
]


def available(backend):
    return importlib.util.find_spec(backend) is not None


def run(backend, *args, **env_vars):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    env.update(env_vars)
    result = subprocess.run(
        [sys.executable, RUNNER, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, f"{backend} failed:\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    missing = [b for b in BACKENDS if not available(b)]
    if missing:
        pytest.skip(f"backends not installed: {missing} (the [jax], [torch] extras)")
    directory = tmp_path_factory.mktemp("backends")
    files = {}
    for backend in BACKENDS:
        files[backend] = directory / f"{backend}.npz"
        run(backend, files[backend], "--save-after-one", directory / f"{backend}.keras")
    resumed = {}
    for source, backend in zip(BACKENDS, BACKENDS[1:] + BACKENDS[:1]):
        resumed[source, backend] = directory / f"{source}_to_{backend}.npz"
        run(
            backend, resumed[source, backend], "--resume", directory / f"{source}.keras"
        )
    parallel = directory / "jax_data_parallel.npz"
    run(
        "jax",
        parallel,
        "--data-parallel",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )
    return (
        {b: dict(np.load(f)) for b, f in files.items()},
        {k: dict(np.load(f)) for k, f in resumed.items()},
        dict(np.load(parallel)),
    )


SCENARIOS = ("plain", "unlabeled", "padded_tokens", "mixup", "hint")


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_logs_and_student_match_tensorflow(runs, backend, scenario):
    results, _, _ = runs
    reference, other = results["tensorflow"], results[backend]
    keys = [k for k in reference if k.startswith(f"{scenario}/")]
    assert any(k.endswith("/loss") for k in keys) and any("weight" in k for k in keys)
    for key in keys:
        np.testing.assert_allclose(
            other[key], reference[key], atol=TOLERANCE, rtol=0, err_msg=key
        )


def test_scenarios_differ_so_that_matching_means_something(runs):
    reference = runs[0]["tensorflow"]
    losses = [tuple(reference[f"{s}/loss"]) for s in SCENARIOS]
    assert len(set(losses)) == len(SCENARIOS)
    # Training moved the student: the second epoch's loss is lower.
    for scenario in SCENARIOS:
        first, second = reference[f"{scenario}/loss"]
        assert second < first, scenario


@pytest.mark.parametrize(
    "source, backend", list(zip(BACKENDS, BACKENDS[1:] + BACKENDS[:1]))
)
def test_keras_file_from_one_backend_keeps_training_on_another(runs, source, backend):
    results, resumed, _ = runs
    uninterrupted = results[source]
    second = resumed[source, backend]
    np.testing.assert_allclose(
        second["resumed/loss"], uninterrupted["plain/loss"][1:], atol=TOLERANCE
    )
    for i in range(4):
        np.testing.assert_allclose(
            second[f"resumed/weight{i}"],
            uninterrupted[f"plain/weight{i}"],
            atol=TOLERANCE,
        )


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_jax_data_parallel_trains_like_one_device(runs, scenario):
    """Two CPU devices under `keras.distribution.DataParallel`, as one."""
    results, _, parallel = runs
    one_device = results["jax"]
    keys = [k for k in one_device if k.startswith(f"{scenario}/")]
    for key in keys:
        np.testing.assert_allclose(
            parallel[key], one_device[key], atol=TOLERANCE, rtol=0, err_msg=key
        )
