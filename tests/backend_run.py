"""Fully determined small distillation runs, for comparing Keras backends.

Run as `KERAS_BACKEND=<name> python tests/backend_run.py OUT.npz [--resume
FILE.keras]`: every scenario builds its models with fixed weights, trains
with SGD for two epochs without shuffling, and writes its logged losses and
the student's final weights to `OUT.npz`. `tests/test_backends.py` runs it
under each backend and compares the files. `--save-after-one FILE` also
saves the plain scenario's distiller after its first epoch; `--resume FILE`
loads such a file (written on any backend) and trains its second epoch.
"""

import argparse
import os
import sys

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras_kd  # noqa: E402

CLASSES, FEATURES, EXAMPLES, BATCH = 5, 8, 32, 8
TIME, VOCAB = 6, 7
LOG_KEYS = ("loss", "student_loss", "distillation_loss", "hint_loss")


def mlp(name, widths, rng, input_shape):
    inputs = keras.Input(input_shape)
    hidden = inputs
    for i, width in enumerate(widths[:-1]):
        hidden = keras.layers.Dense(width, "relu", name=f"{name}_hidden{i}")(hidden)
    outputs = keras.layers.Dense(widths[-1], name=f"{name}_logits")(hidden)
    model = keras.Model(inputs, outputs, name=name)
    model.set_weights(
        [rng.normal(0, 0.5, w.shape).astype("float32") for w in model.get_weights()]
    )
    return model


def classifier_data(rng):
    x = rng.normal(size=(EXAMPLES, FEATURES)).astype("float32")
    return x, rng.integers(0, CLASSES, EXAMPLES)


def distiller_for(rng, input_shape=(FEATURES,), classes=CLASSES, **kwargs):
    teacher = mlp("teacher", (12, classes), rng, input_shape)
    student = mlp("student", (12, classes), rng, input_shape)
    return keras_kd.Distiller(student=student, teacher=teacher, **kwargs)


def compile_distiller(distiller, **kwargs):
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.1), alpha=0.3, temperature=2.0, **kwargs
    )


def train(distiller, x, y, sample_weight=None, epochs=2):
    history = distiller.fit(
        x,
        y,
        sample_weight=sample_weight,
        batch_size=BATCH,
        epochs=epochs,
        shuffle=False,
        verbose=0,
    )
    return history.history


def scenarios():
    """`{name: (distiller, fit arguments)}`, each from its own seeded generator."""
    runs = {}
    rng = np.random.default_rng(0)
    runs["plain"] = (distiller_for(rng), classifier_data(rng))
    rng = np.random.default_rng(1)
    x, y = classifier_data(rng)
    y[::3] = -1
    runs["unlabeled"] = (distiller_for(rng), (x, y))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(EXAMPLES, TIME, FEATURES)).astype("float32")
    y = rng.integers(0, VOCAB, (EXAMPLES, TIME))
    lengths = rng.integers(1, TIME + 1, EXAMPLES)
    mask = (np.arange(TIME)[None, :] < lengths[:, None]).astype("float32")
    distiller = distiller_for(rng, (TIME, FEATURES), VOCAB)
    runs["padded_tokens"] = (distiller, (x, y, mask))
    rng = np.random.default_rng(3)
    runs["mixup"] = (
        distiller_for(rng, mixup_alpha=0.4, mixup_seed=11),
        classifier_data(rng),
    )
    rng = np.random.default_rng(4)
    runs["hint"] = (distiller_for(rng), classifier_data(rng))
    return runs


def run_all() -> dict:
    results = {}
    for name, (distiller, data) in scenarios().items():
        kwargs = {}
        if name == "hint":
            kwargs["feature_losses"] = [
                keras_kd.HintLoss("teacher_hidden0", "student_hidden0", weight=0.5)
            ]
        compile_distiller(distiller, **kwargs)
        history = train(distiller, *data)
        record(results, name, history, distiller.student)
    return results


def record(results, name, history, student):
    for key in LOG_KEYS:
        if key in history:
            results[f"{name}/{key}"] = np.asarray(history[key], "float64")
    for i, weight in enumerate(student.get_weights()):
        results[f"{name}/weight{i}"] = weight


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--save-after-one")
    parser.add_argument("--resume")
    parser.add_argument(
        "--data-parallel",
        action="store_true",
        help="JAX: keras.distribution.DataParallel over the local devices",
    )
    args = parser.parse_args()
    if args.data_parallel:
        devices = keras.distribution.list_devices()
        assert len(devices) > 1, f"one device only: {devices} (set XLA_FLAGS)"
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices)
        )
    if args.resume:
        distiller, (x, y) = scenarios()["plain"]
        loaded = keras.saving.load_model(args.resume)
        results = {}
        record(results, "resumed", train(loaded, x, y, epochs=1), loaded.student)
    else:
        results = run_all()
    if args.save_after_one:
        distiller, (x, y) = scenarios()["plain"]
        compile_distiller(distiller)
        train(distiller, x, y, epochs=1)
        distiller.save(args.save_after_one)
    np.savez(args.out, backend=keras.backend.backend(), **results)


if __name__ == "__main__":
    main()
