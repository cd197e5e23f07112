"""Two versions of keras_kd side by side: does a change slow distillation down?

Runs the keras.io pair of `side_by_side.py` (teacher CNN 256/512, student CNN
16/32, 5,000 MNIST images, batch 64) online and cached, once per version and
repetition, each run in a fresh process that imports keras_kd from the given
source tree. The order of the versions alternates between repetitions, and
the table quotes the median over repetitions of the per-repetition ratio
new / old, so that machine drift cancels.

    git worktree add /tmp/keras_kd_old <commit>
    python benchmarks/versions.py --old /tmp/keras_kd_old --repeats 5
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BATCH, ALPHA, TEMPERATURE = 64, 0.1, 10.0
MODES = ("online", "cached")


def worker(args):
    """Times one distillation with the keras_kd found in `args.package_dir`."""
    sys.path.insert(0, args.package_dir)
    import keras

    import keras_kd

    assert keras_kd.__file__.startswith(args.package_dir), keras_kd.__file__
    (x, y), _ = keras_kd.datasets.load_mnist()
    teacher = keras_kd.models.mnist_cnn((256, 512), name="teacher")
    teacher.load_weights(args.teacher)
    keras.utils.set_random_seed(0)
    student = keras_kd.models.mnist_cnn((16, 32), name="student")
    distiller = keras_kd.Distiller(student, teacher)
    distiller.compile(optimizer="adam", alpha=ALPHA, temperature=TEMPERATURE)
    epoch_ends = []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: epoch_ends.append(time.perf_counter())
    )
    start = time.perf_counter()
    logits = None
    if args.mode == "cached":
        logits = keras_kd.cache_teacher_outputs(teacher, x)
    history = distiller.fit(
        x,
        y,
        teacher_logits=logits,
        epochs=args.epochs,
        batch_size=BATCH,
        verbose=0,
        callbacks=[timer],
    )
    seconds = time.perf_counter() - start
    steady = statistics.median(b - a for a, b in zip(epoch_ends, epoch_ends[1:]))
    loss = history.history["loss"][-1]
    epochs = [b - a for a, b in zip([start] + epoch_ends, epoch_ends)]
    print(
        json.dumps({"seconds": seconds, "epoch": steady, "loss": loss, "all": epochs})
    )


def train_teacher(path):
    sys.path.insert(0, ROOT)
    import keras

    import keras_kd

    keras.utils.set_random_seed(0)
    (x, y), _ = keras_kd.datasets.load_mnist()
    teacher = keras_kd.models.mnist_cnn((256, 512), name="teacher")
    teacher.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    teacher.fit(x, y, epochs=1, batch_size=BATCH, verbose=0)
    teacher.save_weights(path)


def run(package_dir, mode, teacher, epochs):
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        "--package-dir",
        package_dir,
        "--mode",
        mode,
        "--teacher",
        teacher,
        "--epochs",
        str(epochs),
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    output = subprocess.run(command, capture_output=True, text=True, env=env)
    if output.returncode:
        raise RuntimeError(output.stderr[-3000:])
    return json.loads(output.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", help="source tree of the version to compare with")
    parser.add_argument("--new", default=ROOT)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--package-dir", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--teacher", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if not args.old:
        parser.error("--old is required")
    teacher = os.path.join(tempfile.mkdtemp(), "teacher.weights.h5")
    train_teacher(teacher)
    versions = {"old": os.path.abspath(args.old), "new": os.path.abspath(args.new)}
    modes = args.modes
    ratios = {(mode, key): [] for mode in modes for key in ("seconds", "epoch")}
    print(
        "| repetition | mode | old (s) | new (s) | new / old | steady epoch "
        "new / old | loss old, new |"
    )
    print("|---|---|---|---|---|---|---|")
    for repetition in range(args.repeats):
        order = ["old", "new"] if repetition % 2 == 0 else ["new", "old"]
        for mode in modes:
            result = {v: run(versions[v], mode, teacher, args.epochs) for v in order}
            for key in ("seconds", "epoch"):
                ratios[mode, key].append(result["new"][key] / result["old"][key])
            print(
                f"| {repetition} | {mode} | {result['old']['seconds']:.1f} | "
                f"{result['new']['seconds']:.1f} | {ratios[mode, 'seconds'][-1]:.3f} "
                f"| {ratios[mode, 'epoch'][-1]:.3f} | "
                f"{result['old']['loss']:.5f}, {result['new']['loss']:.5f} |",
                flush=True,
            )
    print()
    for (mode, key), values in ratios.items():
        what = "whole run" if key == "seconds" else "steady epoch"
        print(
            f"{mode}, {what}: median new / old = {statistics.median(values):.3f} "
            f"(range {min(values):.3f}-{max(values):.3f}, {args.repeats} "
            f"repetitions, {args.epochs} epochs)"
        )


if __name__ == "__main__":
    main()
