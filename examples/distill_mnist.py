"""Distill a CNN teacher into a small student on real MNIST, and compare.

Trains, on the same data:
  1. the teacher (the keras.io example's CNN, 256/512 channels),
  2. the student from scratch on the labels alone,
  3. the same student distilled from the teacher with `keras_kd.Distiller`,
then prints parameters, test accuracy and per-image latency of each.

Offline by default: it uses the real MNIST split bundled with keras_kd (5,000
training images, the official 10,000 test images). `--dataset tfds` uses the
full MNIST through `tensorflow_datasets` when the machine is online.

    python examples/distill_mnist.py                 # about 5 minutes on 2 cores
    python examples/distill_mnist.py --seeds 0 1 2   # mean and spread, for RESULTS.md
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_kd  # noqa: E402

STUDENTS = {
    "cnn": lambda: keras_kd.models.mnist_cnn((16, 32), name="student"),
    "mlp": lambda: keras_kd.models.mnist_mlp((100, 100), name="student"),
    "mlp32": lambda: keras_kd.models.mnist_mlp((32,), name="student"),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["bundled", "tfds"], default="bundled")
    parser.add_argument("--teacher-filters", type=int, nargs=2, default=(256, 512))
    parser.add_argument("--teacher-epochs", type=int, default=5)
    parser.add_argument("--student", choices=sorted(STUDENTS), default="mlp")
    parser.add_argument("--epochs", type=int, default=10, help="student epochs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--verbose", type=int, default=2, help="Keras fit verbosity")
    return parser.parse_args(argv)


def compile_classifier(model):
    model.compile(
        optimizer=keras.optimizers.Adam(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def latency_ms(model, x, repeats=50):
    """Median wall time of one single-image forward pass, in milliseconds."""
    image = x[:1]
    model(image, training=False)  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(image, training=False)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def accuracy(model, x, y):
    logits = model.predict(x, batch_size=1024, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def run_seed(seed, args, data):
    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    teacher = keras_kd.models.mnist_cnn(tuple(args.teacher_filters), name="teacher")
    compile_classifier(teacher).fit(
        x_train,
        y_train,
        epochs=args.teacher_epochs,
        batch_size=args.batch_size,
        verbose=args.verbose,
    )

    keras.utils.set_random_seed(seed + 1000)
    scratch = compile_classifier(STUDENTS[args.student]())
    scratch.fit(
        x_train,
        y_train,
        epochs=args.epochs,
        batch_size=args.batch_size,
        verbose=args.verbose,
    )

    keras.utils.set_random_seed(seed + 1000)  # same initial student weights
    student = STUDENTS[args.student]()
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer=keras.optimizers.Adam(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        alpha=args.alpha,
        temperature=args.temperature,
    )
    distiller.fit(
        x_train,
        y_train,
        epochs=args.epochs,
        batch_size=args.batch_size,
        verbose=args.verbose,
    )
    models = {
        "teacher": teacher,
        "scratch student": scratch,
        "distilled student": student,
    }
    return {
        name: accuracy(model, x_test, y_test) for name, model in models.items()
    }, models


def main(argv=None):
    args = parse_args(argv)
    data = keras_kd.datasets.load_mnist(args.dataset)
    print(
        f"MNIST ({args.dataset}): {len(data[0][0])} training, {len(data[1][0])} test "
        f"images; student {args.student}, T={args.temperature}, alpha={args.alpha}"
    )
    results = []
    for seed in args.seeds:
        accuracies, models = run_seed(seed, args, data)
        results.append(accuracies)
        print(
            f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in accuracies.items())
        )

    x_test = data[1][0]
    print(f"\n{'model':<18} {'params':>10} {'test accuracy':>22} {'latency/image':>14}")
    for name, model in models.items():
        values = np.array([r[name] for r in results])
        spread = f" ± {values.std(ddof=1):.4f}" if len(values) > 1 else ""
        print(
            f"{name:<18} {model.count_params():>10,} {values.mean():>14.4f}{spread:<8} "
            f"{latency_ms(model, x_test):>11.2f} ms"
        )
    teacher = np.array([r["teacher"] for r in results])
    scratch = np.array([r["scratch student"] for r in results])
    distilled = np.array([r["distilled student"] for r in results])
    gap = teacher - scratch
    recovered = np.where(
        gap > 0, (distilled - scratch) / np.where(gap > 0, gap, 1), np.nan
    )
    print(
        f"\ndistilled - scratch: {np.mean(distilled - scratch):+.4f} "
        f"(per seed {np.round(distilled - scratch, 4).tolist()}); "
        f"share of the teacher-scratch gap recovered: {np.nanmean(recovered):.0%}"
    )
    return results


if __name__ == "__main__":
    main()
