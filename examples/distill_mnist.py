"""Distill a CNN teacher into a small MLP student on real MNIST, and compare.

Trains, on the same 5,000 images:
  1. a convnet teacher (`keras_kd.models.mnist_convnet`) on all the labels,
  2. an MLP student from scratch on the labels alone,
  3. the same student distilled from the teacher (`keras_kd.Distiller`, with
     the teacher's logits cached once by `keras_kd.cache_teacher_outputs`),
and, for the few-labels use of distillation, the same student with labels on
only 500 of the images: from scratch on those 500, and distilled on all 5,000
(the other 4,500 unlabeled, label -1, soft targets only). It prints
parameters and test accuracy, then writes the distilled
student as a SavedModel and as TFLite files (float32 and int8), each checked
against Keras with the LiteRT interpreter, and prints the compression report
(parameters, file sizes, per-image latency in Keras and LiteRT, accuracy of
teacher, scratch and distilled students).

Offline by default: it uses the real MNIST split bundled with keras_kd (5,000
training images, the official 10,000 test images). `--dataset tfds` uses the
full MNIST through `tensorflow_datasets` (the `[datasets]` extra) when the
machine is online. Any Keras backend: `KERAS_BACKEND=jax` or `torch` (the
`[jax]` / `[torch]` extras); the export runs in a TensorFlow process then.

    pip install -e ".[export]"                       # LiteRT, verifies the TFLite files
    python examples/distill_mnist.py                 # about 5 minutes on 2 cores
    python examples/distill_mnist.py --seeds 0 1 2   # mean and spread, for RESULTS.md
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_kd  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["bundled", "tfds"], default="bundled")
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--student-units", type=int, nargs="+", default=[100, 100])
    parser.add_argument("--epochs", type=int, default=20, help="student epochs")
    parser.add_argument("--labeled", type=int, default=500, help="few-labels run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--verbose", type=int, default=2, help="Keras fit verbosity")
    parser.add_argument("--export-dir", default="artifacts/distill_mnist")
    return parser.parse_args(argv)


def compile_classifier(model):
    model.compile(
        optimizer=keras.optimizers.Adam(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def accuracy(model, x, y):
    logits = model.predict(x, batch_size=1024, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def scratch_student(args, seed, x, y, epochs):
    keras.utils.set_random_seed(seed)
    student = keras_kd.models.mnist_mlp(args.student_units, name="student")
    compile_classifier(student).fit(
        x, y, epochs=epochs, batch_size=args.batch_size, verbose=args.verbose
    )
    return student


def distilled_student(args, seed, teacher, logits, x, y):
    keras.utils.set_random_seed(seed)  # the scratch student's initial weights
    student = keras_kd.models.mnist_mlp(args.student_units, name="student")
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer=keras.optimizers.Adam(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        alpha=args.alpha,
        temperature=args.temperature,
    )
    distiller.fit(
        x,
        y,
        teacher_logits=logits,
        epochs=args.epochs,
        batch_size=args.batch_size,
        verbose=args.verbose,
    )
    return student


def run_seed(seed, args, data):
    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    teacher = keras_kd.models.mnist_convnet(name="teacher")
    compile_classifier(teacher).fit(
        x_train,
        y_train,
        epochs=args.teacher_epochs,
        batch_size=args.batch_size,
        verbose=args.verbose,
    )
    # No augmentation here, so the teacher's logits are computed once.
    logits = keras_kd.cache_teacher_outputs(teacher, x_train)

    student_seed = seed + 1000
    models = {
        "teacher": teacher,
        "scratch student": scratch_student(
            args, student_seed, x_train, y_train, args.epochs
        ),
        "distilled student": distilled_student(
            args, student_seed, teacher, logits, x_train, y_train
        ),
    }
    # Few labels: the bundled order is balanced, so the first images cover
    # every digit. Scratch gets as many optimizer steps as the distilled run.
    few = args.labeled
    partial = np.where(np.arange(len(y_train)) < few, y_train, -1)
    steps_ratio = max(1, round(len(x_train) / few))
    models[f"scratch, {few} labels"] = scratch_student(
        args, student_seed, x_train[:few], y_train[:few], args.epochs * steps_ratio
    )
    models[f"distilled, {few} labels"] = distilled_student(
        args, student_seed, teacher, logits, x_train, partial
    )
    return {name: accuracy(m, x_test, y_test) for name, m in models.items()}, models


def main(argv=None):
    args = parse_args(argv)
    keras_kd.export.require_litert()  # the export at the end needs it: fail now
    data = keras_kd.datasets.load_mnist(args.dataset)
    print(
        f"MNIST ({args.dataset}): {len(data[0][0])} training, {len(data[1][0])} "
        f"test images; student MLP {args.student_units}, T={args.temperature}, "
        f"alpha={args.alpha}, {args.epochs} epochs"
    )
    results = []
    for seed in args.seeds:
        accuracies, models = run_seed(seed, args, data)
        results.append(accuracies)
        print(
            f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in accuracies.items())
        )

    print("\n| model | params | test accuracy |")
    print("|---|---|---|")
    for name, model in models.items():
        values = np.array([r[name] for r in results])
        spread = f" ± {values.std(ddof=1):.4f}" if len(values) > 1 else ""
        print(f"| {name} | {model.count_params():,} | {values.mean():.4f}{spread} |")

    def gain(distilled, scratch, teacher="teacher"):
        d, s, t = (
            np.array([r[k] for r in results]) for k in (distilled, scratch, teacher)
        )
        share = np.mean((d - s) / (t - s))
        print(
            f"{distilled} - {scratch}: {np.mean(d - s):+.4f} per seed "
            f"{np.round(d - s, 4).tolist()}; share of the teacher gap: {share:.0%}"
        )

    print()
    gain("distilled student", "scratch student")
    gain(f"distilled, {args.labeled} labels", f"scratch, {args.labeled} labels")
    export(args, models, data)
    return results


def export(args, models, data):
    """Ships the distilled student and compares sizes and latencies (last seed)."""
    (x_train, _), (x_test, y_test) = data
    result = keras_kd.export_student(
        models["distilled student"],
        args.export_dir,
        quantization=("float32", "int8"),
        representative_data=x_train[:500],
        verify_data=x_test,
    )
    print(f"\nWrote {result.saved_model} and {', '.join(result.tflite.values())}")
    rows = keras_kd.compression_report(
        {
            name: models[name]
            for name in ("teacher", "scratch student", "distilled student")
        },
        x_test,
        y_test,
        representative_data=x_train[:500],
        directory=os.path.join(args.export_dir, "report"),
    )
    print(keras_kd.format_report(rows))


if __name__ == "__main__":
    main()
