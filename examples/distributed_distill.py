"""Distill on several devices or several machines with `tf.distribute`.

Shows the one pattern that works under every strategy: create the teacher,
the student and the Distiller, and call `compile`, inside
`strategy.scope()`; give `fit` the global batch size; add
`keras.callbacks.BackupAndRestore` so that a killed job resumes from its last
epoch. The code is the same for one device, several GPUs of one machine
(`MirroredStrategy`), several machines (`MultiWorkerMirroredStrategy`,
configured by `TF_CONFIG`) and TPUs (`TPUStrategy`).

One machine, several devices (here two logical CPU devices stand in for GPUs):

    python examples/distributed_distill.py --strategy mirrored --cpus 2

Several workers: one process per worker, each with the same `TF_CONFIG`
cluster and its own task index (shown with two workers on localhost):

    CLUSTER='"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]}'
    TF_CONFIG="{$CLUSTER, \"task\": {\"type\": \"worker\", \"index\": 0}}" \\
        python examples/distributed_distill.py --strategy multi_worker &
    TF_CONFIG="{$CLUSTER, \"task\": {\"type\": \"worker\", \"index\": 1}}" \\
        python examples/distributed_distill.py --strategy multi_worker
    wait

Add `--mixed-precision mixed_float16` (GPU) or `mixed_bfloat16` (TPU, recent
CPUs) to train in mixed precision; the distillation loss stays in float32.
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", choices=STRATEGIES, default="mirrored")
    parser.add_argument(
        "--cpus", type=int, default=0, help="split the CPU into N logical devices"
    )
    parser.add_argument("--batch-size", type=int, default=128, help="global batch")
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-train", type=int, default=5000)
    parser.add_argument("--mixed-precision", default=None)
    parser.add_argument("--backup-dir", default="/tmp/keras_kd_backup")
    return parser.parse_args(argv)


def make_strategy(name, cpus):
    """Creates the strategy; must run before TensorFlow initializes devices."""
    import tensorflow as tf

    if cpus > 1:
        (cpu,) = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(cpus)]
        )
    if name == "multi_worker":
        # Reads TF_CONFIG. Create it first: collectives are set up at startup.
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if name == "mirrored":
        if cpus > 1:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
            return tf.distribute.MirroredStrategy(devices)
        return tf.distribute.MirroredStrategy()  # all local GPUs
    return tf.distribute.get_strategy()


def worker_index():
    return json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0)


def main(argv=None):
    args = parse_args(argv)
    strategy = make_strategy(args.strategy, args.cpus)

    import keras

    import keras_kd

    if args.mixed_precision:
        keras.mixed_precision.set_global_policy(args.mixed_precision)
    (x, y), (x_test, y_test) = keras_kd.datasets.load_mnist(num_train=args.num_train)
    print(f"{type(strategy).__name__}: {strategy.num_replicas_in_sync} replicas")

    # The teacher is trained first, on its own (in a real job: trained once and
    # saved). Keras 3 cannot `fit` a plain model across workers
    # (tensorflow/tensorflow#72388), so every worker trains the same copy here.
    keras.utils.set_random_seed(0)
    trained = keras_kd.models.mnist_cnn((32, 64), name="teacher")
    trained.compile(
        optimizer=keras.optimizers.Adam(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    trained.fit(x, y, batch_size=128, epochs=args.teacher_epochs, verbose=2)

    with strategy.scope():
        # Everything that creates variables: both models, the Distiller and its
        # optimizer (made by `compile`). A saved teacher is loaded here, with
        # `keras.saving.load_model`; here its weights are copied in.
        teacher = keras_kd.models.mnist_cnn((32, 64), name="teacher")
        teacher.set_weights(trained.get_weights())
        student = keras_kd.models.mnist_mlp((64,), name="student")
        distiller = keras_kd.Distiller(student=student, teacher=teacher)
        distiller.compile(
            optimizer=keras.optimizers.Adam(),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            alpha=0.1,
            temperature=4.0,
        )
    # One backup directory per worker: every worker writes its own copy.
    backup = keras.callbacks.BackupAndRestore(
        os.path.join(args.backup_dir, f"worker_{worker_index()}")
    )
    distiller.fit(
        x,
        y,
        batch_size=args.batch_size,  # global: split evenly over the replicas
        epochs=args.epochs,
        callbacks=[backup],
        verbose=2,
    )
    results = distiller.evaluate(x_test, y_test, verbose=0, return_dict=True)
    print("student test accuracy:", round(float(results["accuracy"]), 4))


if __name__ == "__main__":
    main()
