"""One `Distiller.fit` run under a chosen `tf.distribute` strategy, in its own process.

`tests/test_distribute.py` starts this script with `sys.executable`: logical
CPU devices and `TF_CONFIG` must be set before TensorFlow initializes its
devices, which a pytest process has already done. Every run builds the
teacher and the student inside the strategy's scope (the pattern the README
documents), loads their weights from files the test wrote, distills on the
first `--num-train` bundled MNIST images without shuffling, and saves the
student's and teacher's weights, the last epoch's logs and the optimizer's
step count to `--out` (chief only).

    python tests/distributed_worker.py --strategy mirrored --cpus 2 \
        --teacher t.weights.h5 --student s.weights.h5 --out run.npz

`--pause-at-step N --marker FILE` writes FILE after global step N and then
sleeps, so that the test can kill the process with SIGKILL mid-epoch.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker")
TRAINERS = ("distiller", "mutual")
TEACHER_UNITS = (64,)
STUDENT_UNITS = (32,)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", choices=STRATEGIES, default="default")
    parser.add_argument(
        "--trainer",
        choices=TRAINERS,
        default="distiller",
        help="mutual: MutualLearning of the student and the teacher's network",
    )
    parser.add_argument("--cpus", type=int, default=1, help="logical CPU devices")
    parser.add_argument("--teacher", required=True, help="teacher .weights.h5")
    parser.add_argument("--student", required=True, help="initial student weights")
    parser.add_argument("--out", required=True, help=".npz written by the chief")
    parser.add_argument("--num-train", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--policy", default="float32")
    parser.add_argument("--backup-dir", default=None)
    parser.add_argument("--pause-at-step", type=int, default=None)
    parser.add_argument("--marker", default=None)
    return parser.parse_args(argv)


def make_strategy(name, cpus):
    """The strategy `name` over `cpus` logical CPU devices of this process."""
    import tensorflow as tf

    if cpus > 1:
        (cpu,) = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(cpus)]
        )
    if name == "multi_worker":
        # Collective ops are configured at startup: before any device listing.
        return tf.distribute.MultiWorkerMirroredStrategy()
    devices = tf.config.list_logical_devices("CPU")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(devices[0].name)
    return tf.distribute.MirroredStrategy([d.name for d in devices])


def is_chief():
    config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = config.get("task", {})
    return task.get("type", "worker") in ("worker", "chief") and not task.get("index")


def task_index():
    return json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0)


def build_callbacks(args):
    import keras

    callbacks = []
    if args.backup_dir:
        # One directory per worker: Keras 3's BackupAndRestore has no chief
        # logic, and two processes writing one HDF5 file would corrupt it.
        backup_dir = os.path.join(args.backup_dir, f"worker_{task_index()}")
        callbacks.append(keras.callbacks.BackupAndRestore(backup_dir))
    if args.pause_at_step is not None:
        callbacks.append(PauseAt(args.pause_at_step, args.marker))
    return callbacks


def steps(model):
    import keras

    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


class PauseAt:
    """A callback that, after global step `step`, writes `marker` and waits."""

    def __new__(cls, step, marker):
        import keras

        class _PauseAt(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if steps(self.model) >= step:
                    with open(marker, "w") as f:
                        f.write(str(steps(self.model)))
                    while True:
                        time.sleep(1)

        return _PauseAt()


def main(argv=None):
    args = parse_args(argv)

    import keras
    import numpy as np

    import keras_kd

    keras.config.disable_traceback_filtering()
    keras.mixed_precision.set_global_policy(args.policy)
    strategy = make_strategy(args.strategy, args.cpus)
    (x, y), _ = keras_kd.datasets.load_mnist(num_train=args.num_train)

    with strategy.scope():
        teacher = keras_kd.models.mnist_mlp(TEACHER_UNITS, name="teacher")
        teacher.load_weights(args.teacher)
        student = keras_kd.models.mnist_mlp(STUDENT_UNITS, name="student")
        student.load_weights(args.student)
        if args.trainer == "mutual":
            # Both networks train: "teacher" is the second student.
            distiller = keras_kd.MutualLearning([student, teacher])
        else:
            distiller = keras_kd.Distiller(student=student, teacher=teacher)
        distiller.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            alpha=0.3,
            temperature=4.0,
        )
    history = distiller.fit(
        x,
        y,
        batch_size=args.batch_size,
        epochs=args.epochs,
        shuffle=False,
        callbacks=build_callbacks(args),
        verbose=0,
    )
    logs = {key: values[-1] for key, values in history.history.items()}
    result = {
        "replicas": strategy.num_replicas_in_sync,
        "epochs_run": len(history.epoch),
        "iterations": steps(distiller),
        "optimizer": type(distiller.optimizer).__name__,
        **{f"log_{key}": value for key, value in logs.items()},
    }
    for i, weight in enumerate(student.weights):
        result[f"student_{i}"] = keras.ops.convert_to_numpy(weight)
    for i, weight in enumerate(teacher.weights):
        result[f"teacher_{i}"] = keras.ops.convert_to_numpy(weight)
    if is_chief():
        np.savez(args.out + ".tmp.npz", **result)
        os.replace(args.out + ".tmp.npz", args.out)
    print(json.dumps({k: v for k, v in result.items() if np.ndim(v) == 0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
