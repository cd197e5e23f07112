"""Checks, on tiny arrays, what the alternatives compute, against keras_kd.

Each row of the README's comparison table is measured here, for the keras.io
"Knowledge Distillation" example as published for Keras 3 (the class in
benchmarks/side_by_side.py), Keras' built-in `keras.distillation.Distiller`
and keras_kd, all on the same teacher, student and batch:

  - does the teacher change during `fit`?
  - is the logged loss the documented `alpha * CE + (1 - alpha) * T² * KL`?
    (built-in: with its default `loss="kl_divergence"` and with an explicit
    `keras.losses.KLDivergence()` instance)
  - does `sample_weight` change the loss? do the student's regularization
    losses enter it? does `evaluate` run the teacher?

    python benchmarks/alternatives.py     # about a minute on 2 cores
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_kd  # noqa: E402
from benchmarks.side_by_side import KerasIODistiller  # noqa: E402

ALPHA, T = 0.3, 2.0
RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 4)).astype("float32")
Y = RNG.integers(0, 3, 32)
WEIGHTS = np.where(np.arange(32) < 16, 1.0, 0.0).astype("float32")


def models(regularizer=None):
    keras.utils.set_random_seed(0)
    teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="t")
    kernel = np.random.default_rng(1).normal(size=(4, 3)) * 2
    teacher.layers[0].set_weights([kernel, np.zeros(3)])
    student = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, kernel_regularizer=regularizer)],
        name="s",
    )
    return teacher, student


def exact_loss(teacher, student, weights=None):
    """alpha * CE + (1 - alpha) * T² * KL, per example, Keras' weighting."""
    t, s = teacher.predict(X, verbose=0), student.predict(X, verbose=0)
    ce = np.asarray(
        keras.losses.sparse_categorical_crossentropy(Y, s, from_logits=True)
    )
    kd = np.asarray(keras_kd.kd_loss(t, s, T))
    per_example = ALPHA * ce + (1 - ALPHA) * kd
    weights = np.ones(len(X)) if weights is None else weights
    return float(np.sum(per_example * weights) / len(X))


def build(kind, teacher, student):
    if kind == "keras.io pattern":
        model = KerasIODistiller(student=student, teacher=teacher)
        model.compile(
            optimizer=keras.optimizers.SGD(0.0),
            metrics=[],
            student_loss_fn=keras.losses.SparseCategoricalCrossentropy(
                from_logits=True
            ),
            distillation_loss_fn=keras.losses.KLDivergence(),
            alpha=ALPHA,
            temperature=T,
        )
        return model
    if kind.startswith("keras.distillation"):
        loss = keras.losses.KLDivergence() if "instance" in kind else "kl_divergence"
        model = keras.distillation.Distiller(
            teacher=teacher,
            student=student,
            distillation_losses=keras.distillation.LogitsDistillation(
                temperature=T, loss=loss
            ),
            student_loss_weight=ALPHA,
        )
        model.compile(
            optimizer=keras.optimizers.SGD(0.0),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        return model
    model = keras_kd.Distiller(student, teacher)
    model.compile(optimizer=keras.optimizers.SGD(0.0), alpha=ALPHA, temperature=T)
    return model


def logged_loss(kind, sample_weight=None, regularizer=None):
    teacher, student = models(regularizer)
    model = build(kind, teacher, student)
    history = model.fit(
        X, Y, sample_weight=sample_weight, batch_size=32, shuffle=False, verbose=0
    )
    logs = history.history
    return logs.get("loss", logs.get("total_loss"))[-1], teacher, student


def teacher_changes(kind):
    teacher, student = models()
    model = build(kind, teacher, student)
    before = [w.numpy().copy() for w in teacher.weights]
    model.optimizer.learning_rate = 0.1
    model.fit(X, Y, epochs=3, batch_size=8, verbose=0)
    return any(
        not np.array_equal(a, b.numpy()) for a, b in zip(before, teacher.weights)
    )


def evaluate_runs_teacher(kind):
    teacher, student = models()
    model = build(kind, teacher, student)
    model.fit(X, Y, verbose=0)
    calls = []
    original = teacher.call

    def counting_call(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    teacher.call = counting_call
    model.evaluate(X, Y, verbose=0)
    return bool(calls)


def main():
    kinds = [
        "keras.io pattern",
        "keras.distillation (default loss)",
        "keras.distillation (KLDivergence instance)",
        "keras_kd",
    ]
    print("| check | " + " | ".join(kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    rows = {
        name: []
        for name in [
            "teacher changes in fit",
            "loss / exact loss",
            "loss with sample_weight / exact weighted",
            "loss with L2(1.0) - loss without",
            "evaluate runs the teacher",
        ]
    }
    for kind in kinds:
        loss, teacher, student = logged_loss(kind)
        exact = exact_loss(teacher, student)
        weighted, teacher, student = logged_loss(kind, sample_weight=WEIGHTS)
        exact_weighted = exact_loss(teacher, student, WEIGHTS)
        regularized, _, _ = logged_loss(kind, regularizer=keras.regularizers.L2(1.0))
        rows["teacher changes in fit"].append(str(teacher_changes(kind)))
        rows["loss / exact loss"].append(f"{loss / exact:.3f}")
        rows["loss with sample_weight / exact weighted"].append(
            f"{weighted / exact_weighted:.3f}"
        )
        rows["loss with L2(1.0) - loss without"].append(f"{regularized - loss:+.3f}")
        rows["evaluate runs the teacher"].append(str(evaluate_runs_teacher(kind)))
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(values) + " |")
    _, student = models(keras.regularizers.L2(1.0))
    expected = float(np.sum(np.square(student.get_weights()[0])))
    print(
        f"\nexpected regularization term with L2(1.0): +{expected:.3f}; "
        "ratios of 1.000 are exact"
    )


if __name__ == "__main__":
    main()
