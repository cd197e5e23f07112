"""The Distiller under tf.distribute strategies, after SIGKILL, and in mixed precision.

Runs that need logical CPU devices or `TF_CONFIG` go through
`tests/distributed_worker.py` in subprocesses (TensorFlow fixes its devices
when it starts); mixed precision runs in this process.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd._objective import logit_terms
from tests import distributed_worker

WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 150  # seconds for one process or job; a run takes 10 to 30 here.
LOG_KEYS = ("loss", "student_loss", "distillation_loss", "accuracy")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tf_config(ports, index):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


@contextlib.contextmanager
def job(argvs, tmp_path, env_per_process=None):
    """Starts one worker process per argv; kills every one of them on exit."""
    processes = []
    try:
        for i, argv in enumerate(argvs):
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
            env.update((env_per_process or [{}] * len(argvs))[i])
            log = open(tmp_path / f"worker_{i}_{time.monotonic_ns()}.log", "w")
            processes.append(
                subprocess.Popen(
                    [sys.executable, WORKER, *argv],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=REPO,
                )
            )
            log.close()
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


def wait_all(processes, tmp_path):
    deadline = time.monotonic() + TIMEOUT
    for process in processes:
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"a worker ran past {TIMEOUT}s; logs in {tmp_path}")
        assert process.returncode == 0, worker_logs(tmp_path)


def wait_for(path, processes, tmp_path):
    """Waits until `path` exists while every process is still alive."""
    deadline = time.monotonic() + TIMEOUT
    while not os.path.exists(path):
        if any(p.poll() is not None for p in processes):
            pytest.fail("a worker exited before pausing:\n" + worker_logs(tmp_path))
        if time.monotonic() > deadline:
            pytest.fail(f"no worker paused within {TIMEOUT}s")
        time.sleep(0.2)


def worker_logs(tmp_path):
    return "\n".join(p.read_text()[-3000:] for p in sorted(tmp_path.glob("*.log")))


def load(path):
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def _numbered(result, prefix):
    """`result[f"{prefix}_{i}"]` for i = 0, 1, ... (in number order, not text)."""
    keys = [k for k in result if k.startswith(prefix + "_")]
    return [result[k] for k in sorted(keys, key=lambda k: int(k.rsplit("_", 1)[1]))]


def student_weights(result):
    return _numbered(result, "student")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A teacher trained briefly on real MNIST, and the student's initial weights."""
    folder = tmp_path_factory.mktemp("weights")
    keras.utils.set_random_seed(0)
    (x, y), _ = keras_kd.datasets.load_mnist(num_train=1024)
    teacher = keras_kd.models.mnist_mlp(distributed_worker.TEACHER_UNITS, name="t")
    teacher.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    teacher.fit(x, y, epochs=2, batch_size=64, verbose=0)
    student = keras_kd.models.mnist_mlp(distributed_worker.STUDENT_UNITS, name="s")
    paths = {
        "teacher": str(folder / "teacher.weights.h5"),
        "student": str(folder / "student.weights.h5"),
    }
    teacher.save_weights(paths["teacher"])
    student.save_weights(paths["student"])
    paths["teacher_weights"] = [np.array(v) for v in teacher.weights]
    paths["student_weights"] = [np.array(v) for v in student.weights]
    return paths


class Runs:
    """Runs the worker script once per configuration and keeps the results."""

    def __init__(self, weights, folder):
        self.weights, self.folder, self.cache = weights, folder, {}

    def argv(self, name, **options):
        argv = ["--teacher", self.weights["teacher"]]
        argv += ["--student", self.weights["student"]]
        argv += ["--out", str(self.folder / f"{name}.npz")]
        for key, value in options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        return argv

    def single(self, strategy, cpus=1, epochs=1, trainer="distiller"):
        name = f"{strategy}_{cpus}_{epochs}_{trainer}"
        if name not in self.cache:
            argv = self.argv(
                name, strategy=strategy, cpus=cpus, epochs=epochs, trainer=trainer
            )
            with job([argv], self.folder) as processes:
                wait_all(processes, self.folder)
            self.cache[name] = load(self.folder / f"{name}.npz")
        return self.cache[name]

    def multi_worker(self, epochs=1, trainer="distiller"):
        name = f"multi_worker_{epochs}_{trainer}"
        if name not in self.cache:
            ports = [free_port(), free_port()]
            argv = self.argv(
                name, strategy="multi_worker", epochs=epochs, trainer=trainer
            )
            envs = [{"TF_CONFIG": tf_config(ports, i)} for i in range(2)]
            with job([argv, argv], self.folder, envs) as processes:
                wait_all(processes, self.folder)
            self.cache[name] = load(self.folder / f"{name}.npz")
        return self.cache[name]


@pytest.fixture(scope="module")
def runs(weights, tmp_path_factory):
    return Runs(weights, tmp_path_factory.mktemp("runs"))


def assert_same_training(
    result, reference, rtol=1e-5, atol=1e-6, log_keys=LOG_KEYS, prefixes=("student",)
):
    assert int(result["iterations"]) == int(reference["iterations"])
    for prefix in prefixes:
        ours, theirs = _numbered(result, prefix), _numbered(reference, prefix)
        assert len(ours) == len(theirs) > 0
        for mine, other in zip(ours, theirs):
            np.testing.assert_allclose(mine, other, rtol=rtol, atol=atol)
    for key in log_keys:
        assert float(result[f"log_{key}"]) == pytest.approx(
            float(reference[f"log_{key}"]), rel=rtol
        ), key


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("strategy, cpus", [("one_device", 1), ("mirrored", 2)])
def test_strategy_trains_like_the_default_strategy(runs, weights, strategy, cpus):
    reference = runs.single("default")
    result = runs.single(strategy, cpus=cpus)
    assert int(result["replicas"]) == cpus
    # A loss averaged per replica and summed by the optimizer would double
    # the step; logs from the first replica only would differ in the 3rd digit.
    assert_same_training(result, reference)
    trained = student_weights(result)
    assert len(trained) == len(weights["student_weights"])
    for before, after in zip(weights["student_weights"], trained):
        assert before.shape == after.shape
        assert not np.array_equal(before, after)  # every student weight trained
    teacher = _numbered(result, "teacher")
    assert len(teacher) == len(weights["teacher_weights"])
    for before, after in zip(weights["teacher_weights"], teacher):
        np.testing.assert_array_equal(before, after)


@pytest.mark.tensorflow_only
@pytest.mark.slow
def test_multi_worker_trains_like_the_default_strategy(runs):
    reference = runs.single("default")
    result = runs.multi_worker()
    assert int(result["replicas"]) == 2
    assert_same_training(result, reference)


MUTUAL_LOG_KEYS = (
    "loss",
    "student_0_loss",
    "mutual_0_loss",
    "student_1_loss",
    "mutual_1_loss",
    "accuracy",
)


@pytest.mark.tensorflow_only
@pytest.mark.slow
def test_mutual_learning_multi_worker_trains_like_the_default_strategy(runs, weights):
    reference = runs.single("default", trainer="mutual")
    result = runs.multi_worker(trainer="mutual")
    assert int(result["replicas"]) == 2
    # Both networks train, on two workers as on one device.
    assert_same_training(
        result, reference, log_keys=MUTUAL_LOG_KEYS, prefixes=("student", "teacher")
    )
    second = _numbered(result, "teacher")
    assert not np.array_equal(second[0], weights["teacher_weights"][0])


def kill_and_resume(runs, tmp_path, workers, pausing_worker):
    """Kills a job with SIGKILL mid-epoch 2 of 2, restarts it, returns the result."""
    name = f"resumed_{workers}"
    backup = tmp_path / "backup"
    argv = runs.argv(name, epochs=2, backup_dir=backup)
    if workers == 1:
        argv += ["--strategy", "default"]
        envs = None
    else:
        argv += ["--strategy", "multi_worker"]
        ports = [free_port(), free_port()]
        envs = [{"TF_CONFIG": tf_config(ports, i)} for i in range(workers)]
    marker = tmp_path / "paused"
    argvs = [list(argv) for _ in range(workers)]
    # 16 steps per epoch: step 24 is in the middle of the second epoch.
    argvs[pausing_worker] += ["--pause-at-step", "24", "--marker", str(marker)]
    with job(argvs, tmp_path, envs) as processes:
        wait_for(marker, processes, tmp_path)
        os.kill(processes[pausing_worker].pid, signal.SIGKILL)
        processes[pausing_worker].wait(timeout=30)
        assert processes[pausing_worker].returncode == -signal.SIGKILL
    # The job is restarted as a whole, from the backup of the first epoch.
    for i in range(workers):
        assert (backup / f"worker_{i}" / "latest.weights.h5").exists()
    assert not (runs.folder / f"{name}.npz").exists()
    if envs:
        ports = [free_port(), free_port()]
        envs = [{"TF_CONFIG": tf_config(ports, i)} for i in range(workers)]
    with job([list(argv) for _ in range(workers)], tmp_path, envs) as processes:
        wait_all(processes, tmp_path)
    assert not backup.exists() or not any(backup.iterdir()), "backup left behind"
    return load(runs.folder / f"{name}.npz")


@pytest.mark.tensorflow_only
@pytest.mark.slow
def test_killed_run_resumes_to_the_same_student(runs, weights, tmp_path):
    reference = runs.single("default", epochs=2)
    result = kill_and_resume(runs, tmp_path, workers=1, pausing_worker=0)
    # Only the interrupted epoch ran again, and no step was lost or repeated.
    assert int(result["epochs_run"]) == 1
    assert int(result["iterations"]) == 32
    assert_same_training(result, reference, rtol=1e-6, atol=1e-7)
    teacher = _numbered(result, "teacher")
    assert len(teacher) == len(weights["teacher_weights"])
    for before, after in zip(weights["teacher_weights"], teacher):
        np.testing.assert_array_equal(before, after)


@pytest.mark.tensorflow_only
@pytest.mark.slow
def test_job_with_a_killed_worker_resumes_to_the_same_student(runs, tmp_path):
    reference = runs.single("default", epochs=2)
    result = kill_and_resume(runs, tmp_path, workers=2, pausing_worker=1)
    assert int(result["epochs_run"]) == 1
    assert int(result["iterations"]) == 32
    assert_same_training(result, reference)


@pytest.mark.tensorflow_only
def test_student_created_outside_the_scope_is_rejected_early():
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    student = keras_kd.models.mnist_mlp((8,), name="student")
    with strategy.scope():
        teacher = keras_kd.models.mnist_mlp((16,), name="teacher")
        distiller = keras_kd.Distiller(student, teacher)
        distiller.compile()
    x, y = np.zeros((8, 28, 28, 1), "float32"), np.zeros((8,), "int64")
    with pytest.raises(ValueError, match="student's variables were created outside"):
        distiller.fit(x, y, verbose=0)

    with strategy.scope():
        student = keras_kd.models.mnist_mlp((8,), name="student")
        distiller = keras_kd.Distiller(student, teacher)
    distiller.compile()  # outside: the optimizer belongs to the default strategy
    with strategy.scope():
        with pytest.raises(ValueError, match="optimizer .* created outside"):
            distiller.fit(x, y, verbose=0)


# Mixed precision, in this process.


@pytest.fixture
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_global_policy("float32")


def distiller_under_policy(weights, optimizer, policy):
    keras.mixed_precision.set_global_policy(policy)
    teacher = keras_kd.models.mnist_mlp(distributed_worker.TEACHER_UNITS, name="t")
    teacher.load_weights(weights["teacher"])
    student = keras_kd.models.mnist_mlp(distributed_worker.STUDENT_UNITS, name="s")
    student.load_weights(weights["student"])
    distiller = keras_kd.Distiller(student, teacher)
    distiller.compile(optimizer=optimizer, alpha=0.3, temperature=4.0)
    return distiller


def kd_float64(teacher_logits, student_logits, temperature):
    def log_softmax(logits):
        logits = np.asarray(logits, "float64") / temperature
        logits = logits - logits.max(axis=-1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))

    log_t, log_s = log_softmax(teacher_logits), log_softmax(student_logits)
    return temperature**2 * (np.exp(log_t) * (log_t - log_s)).sum(axis=-1)


MIXED = pytest.mark.parametrize(
    "policy", ["mixed_float16", "mixed_bfloat16"], indirect=True
)


@MIXED
def test_mixed_precision_loss_matches_float32_on_a_fixed_batch(weights, policy):
    (x, y), _ = keras_kd.datasets.load_mnist(num_train=256)
    logs = {}
    for name in ("float32", policy):
        distiller = distiller_under_policy(weights, keras.optimizers.SGD(0.0), name)
        history = distiller.fit(x, y, batch_size=256, shuffle=False, verbose=0)
        logs[name] = {key: values[0] for key, values in history.history.items()}
    compute_dtype = keras.mixed_precision.Policy(policy).compute_dtype
    dtype = keras.backend.standardize_dtype(distiller.student(x[:2]).dtype)
    assert dtype == compute_dtype
    scaled = isinstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16")  # bfloat16 needs no loss scaling
    tolerance = 2e-2 if policy == "mixed_bfloat16" else 3e-3
    for key, value in logs["float32"].items():
        assert logs[policy][key] == pytest.approx(value, rel=tolerance), key

    # The tempered KL itself runs in float32 on the low-precision logits: on
    # the same half-precision logits it matches float64 far more closely than
    # half precision could. (The logits are taken once, eagerly, and fed to the
    # step's loss: a CPU with native bfloat16 kernels may round the traced
    # forward pass of `fit` differently from an eager one.)
    teacher_logits = distiller.teacher(x)
    student_logits = distiller.student(x)
    dtypes = {
        keras.backend.standardize_dtype(t.dtype)
        for t in (teacher_logits, student_logits)
    }
    assert dtypes == {compute_dtype}
    _, _, distillation_sum, count, _ = logit_terms(
        distiller,
        y,
        student_logits,
        distiller._as_teacher_logits(teacher_logits),
        None,
        None,
        None,
    )
    exact = kd_float64(
        keras.ops.convert_to_numpy(teacher_logits),
        keras.ops.convert_to_numpy(student_logits),
        4.0,
    ).mean()
    assert float(distillation_sum / count) == pytest.approx(exact, rel=1e-5)


@MIXED
def test_mixed_precision_gradients_are_unscaled(weights, policy):
    (x, y), _ = keras_kd.datasets.load_mnist(num_train=256)
    steps = {}
    for name in ("float32", policy):
        distiller = distiller_under_policy(weights, keras.optimizers.SGD(0.5), name)
        before = [keras.ops.convert_to_numpy(v) for v in distiller.student.weights]
        distiller.fit(x, y, batch_size=256, shuffle=False, verbose=0)
        after = [keras.ops.convert_to_numpy(v) for v in distiller.student.weights]
        steps[name] = np.concatenate([(a - b).ravel() for a, b in zip(after, before)])
        assert all(v.dtype == "float32" for v in distiller.student.trainable_weights)
    # Gradients left scaled by the loss scale (2**15) would move 32768x further.
    error = np.linalg.norm(steps[policy] - steps["float32"])
    assert error < 0.05 * np.linalg.norm(steps["float32"])


@pytest.mark.slow
@MIXED
def test_mixed_precision_converges_like_float32(weights, policy):
    (x, y), (x_test, y_test) = keras_kd.datasets.load_mnist(num_train=2048)
    results = {}
    for name in ("float32", policy):
        keras.utils.set_random_seed(0)
        distiller = distiller_under_policy(weights, keras.optimizers.Adam(2e-3), name)
        history = distiller.fit(x, y, batch_size=64, epochs=3, verbose=0)
        losses = history.history["distillation_loss"]
        assert losses[-1] < 0.5 * losses[0], name
        predictions = distiller.predict(x_test[:2000], verbose=0)
        accuracy = np.mean(np.argmax(predictions, -1) == y_test[:2000])
        results[name] = (losses[-1], accuracy)
    assert results[policy][0] == pytest.approx(results["float32"][0], rel=0.1)
    assert abs(results[policy][1] - results["float32"][1]) < 0.02
