"""Distiller throughput at 1 and 2 replicas (MirroredStrategy), as a ratio.

Each configuration runs in its own process (logical devices are fixed when
TensorFlow starts): the default strategy on the whole CPU, and
`MirroredStrategy` over the CPU split into 2 logical devices (or
`--devices gpu` for the GPUs of the machine). Same model, same global batch;
the first epoch (tracing) is not timed.

    python benchmarks/replicas.py            # about 1 minute on 2 cores

On CPU the 2 replicas share the same cores, so the ratio measures the
distribution overhead rather than a speed-up; with 2 GPUs it is the scaling.
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--devices", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--batch-size", type=int, default=256, help="global batch")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs")
    parser.add_argument("--num-train", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting")
    return parser.parse_args(argv)


def measure(args):
    """Examples per second of `Distiller.fit` at `args.replicas` replicas."""
    import tensorflow as tf

    if args.replicas > 1 and args.devices == "cpu":
        (cpu,) = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(args.replicas)]
        )
    import keras

    import keras_kd

    if args.replicas == 1:
        strategy = tf.distribute.get_strategy()
    else:
        kind = "CPU" if args.devices == "cpu" else "GPU"
        devices = [d.name for d in tf.config.list_logical_devices(kind)]
        strategy = tf.distribute.MirroredStrategy(devices[: args.replicas])
    (x, y), _ = keras_kd.datasets.load_mnist(num_train=args.num_train)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        teacher = keras_kd.models.mnist_cnn((32, 64), name="teacher")
        student = keras_kd.models.mnist_cnn((16, 32), name="student")
        distiller = keras_kd.Distiller(student=student, teacher=teacher)
        distiller.compile(optimizer=keras.optimizers.Adam(), temperature=4.0)
    distiller.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0)
    start = time.perf_counter()
    distiller.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0)
    seconds = time.perf_counter() - start
    return {
        "replicas": strategy.num_replicas_in_sync,
        "examples_per_second": args.epochs * len(x) / seconds,
    }


def run(args, replicas):
    command = [sys.executable, __file__, "--replicas", str(replicas)]
    for key in ("devices", "batch_size", "epochs", "num_train"):
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    output = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def main(argv=None):
    args = parse_args(argv)
    if args.replicas is not None:
        print(json.dumps(measure(args)))
        return
    speeds = {1: [], 2: []}
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        for replicas in speeds:
            speeds[replicas].append(run(args, replicas)["examples_per_second"])
    best = {replicas: max(values) for replicas, values in speeds.items()}
    setting = f"devices={args.devices} global batch={args.batch_size}"
    print(f"{setting} cpu cores={os.cpu_count()}")
    for replicas, values in speeds.items():
        runs = ", ".join(f"{v:.0f}" for v in values)
        print(f"{replicas} replica(s): best {best[replicas]:.0f} examples/s ({runs})")
    print(f"ratio 2 replicas / 1 replica: {best[2] / best[1]:.2f}")


if __name__ == "__main__":
    main()
