import math

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd.mutual import MutualLearning
from tests import reference

X = [[1.0, 0.0, 2.0], [0.5, -1.0, 1.0], [3.0, 1.0, -2.0], [-1.0, 2.0, 0.0]]
Y = [2, 0, 1, 1]
KERNELS = [
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
    [[2.0, -1.0, 0.5], [0.0, 1.5, -0.5], [1.0, 0.0, 3.0]],
    [[0.0, 1.0, -1.0], [1.0, 0.5, 0.0], [-2.0, 1.0, 1.0]],
]


def linear(kernel, name, regularizer=None):
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(3, use_bias=False, kernel_regularizer=regularizer),
        ],
        name=name,
    )
    model.layers[0].set_weights([np.array(kernel, "float32")])
    return model


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def hand_terms(kernels, temperature):
    """Per student: label CE and T² KL(mean of the others || own), per example."""
    logits = [reference.matmul(X, k) for k in kernels]
    terms = []
    for k in range(len(kernels)):
        ce, mutual = [], []
        for i, label in enumerate(Y):
            others = [
                reference.softmax(logits[j][i], temperature)
                for j in range(len(kernels))
                if j != k
            ]
            target = [sum(c) / len(others) for c in zip(*others)]
            own = reference.softmax(logits[k][i], temperature)
            ce.append(reference.cross_entropy(label, logits[k][i]))
            mutual.append(temperature**2 * kl(target, own))
        terms.append((np.array(ce), np.array(mutual)))
    return terms


def frozen_logs(mutual, sample_weight=None, **compile_kw):
    mutual.compile(optimizer=keras.optimizers.SGD(0.0), **compile_kw)
    history = mutual.fit(
        np.array(X),
        np.array(Y),
        sample_weight=sample_weight,
        batch_size=3,
        shuffle=False,
        verbose=0,
    )
    return {key: values[-1] for key, values in history.history.items()}


@pytest.mark.parametrize("count", [2, 3])
def test_logged_losses_equal_hand_computation(count):
    students = [linear(k, f"s{i}") for i, k in enumerate(KERNELS[:count])]
    logs = frozen_logs(MutualLearning(students), alpha=0.3, temperature=2.0)
    terms = hand_terms(KERNELS[:count], 2.0)
    for k, (ce, mutual) in enumerate(terms):
        assert logs[f"student_{k}_loss"] == pytest.approx(ce.mean(), rel=1e-5)
        assert logs[f"mutual_{k}_loss"] == pytest.approx(mutual.mean(), rel=1e-4)
    expected = sum(0.3 * ce.mean() + 0.7 * mutual.mean() for ce, mutual in terms)
    assert logs["loss"] == pytest.approx(expected, rel=1e-4)


def test_sample_weight_unlabeled_rows_and_regularization_enter_the_loss():
    weights = np.array([1.0, 0.0, 2.0, 0.5])
    students = [
        linear(KERNELS[0], "s0", keras.regularizers.L2(0.1)),
        linear(KERNELS[1], "s1"),
    ]
    mutual = MutualLearning(students)
    mutual.compile(optimizer=keras.optimizers.SGD(0.0), alpha=0.5, temperature=1.0)
    y = np.array([2, -1, 1, 1])  # the second example is unlabeled
    history = mutual.fit(
        np.array(X), y, sample_weight=weights, batch_size=4, shuffle=False, verbose=0
    )
    terms = hand_terms(KERNELS[:2], 1.0)
    labeled = np.array([1.0, 0.0, 1.0, 1.0])
    expected = 0.1 * 3  # L2(0.1) on the identity kernel
    for ce, mutual_kl in terms:
        expected += 0.5 * (ce * labeled * weights).sum() / 4
        expected += 0.5 * (mutual_kl * weights).sum() / 4
    assert history.history["loss"][-1] == pytest.approx(expected, rel=1e-5)


def test_one_step_moves_each_student_by_its_own_loss_only():
    # d/ds [alpha CE(y, s) + (1 - alpha) T² KL(p_other || softmax(s / T))]
    # = alpha (softmax(s) - onehot(y)) + (1 - alpha) T (softmax(s / T) - p_other),
    # the other student's prediction held constant; kernel gradient x^T g / N.
    alpha, temperature, lr = 0.4, 2.0, 0.5
    students = [linear(KERNELS[0], "s0"), linear(KERNELS[1], "s1")]
    mutual = MutualLearning(students)
    mutual.compile(
        optimizer=keras.optimizers.SGD(lr), alpha=alpha, temperature=temperature
    )
    mutual.fit(np.array(X), np.array(Y), batch_size=4, shuffle=False, verbose=0)
    x = np.array(X)
    logits = [x @ np.array(k) for k in KERNELS[:2]]
    onehot = np.eye(3)[Y]
    for k in range(2):
        own, other = logits[k], logits[1 - k]
        soft = np.array([reference.softmax(r, temperature) for r in own])
        target = np.array([reference.softmax(r, temperature) for r in other])
        hard = np.array([reference.softmax(r) for r in own])
        grad = alpha * (hard - onehot) + (1 - alpha) * temperature * (soft - target)
        expected = np.array(KERNELS[k]) - lr * x.T @ grad / len(x)
        np.testing.assert_allclose(
            students[k].layers[0].get_weights()[0], expected, rtol=1e-5, atol=1e-6
        )


def test_predict_and_evaluate_use_the_first_student():
    students = [linear(KERNELS[1], "s0"), linear(KERNELS[2], "s1")]
    mutual = MutualLearning(students)
    mutual.compile(optimizer="sgd", metrics=["accuracy"])
    np.testing.assert_allclose(
        mutual.predict(np.array(X), verbose=0),
        reference.matmul(X, KERNELS[1]),
        rtol=1e-6,
    )
    logs = mutual.evaluate(np.array(X), np.array(Y), return_dict=True, verbose=0)
    ce = [
        reference.cross_entropy(g, r)
        for g, r in zip(Y, reference.matmul(X, KERNELS[1]))
    ]
    assert set(logs) == {"loss", "accuracy"}
    assert logs["loss"] == pytest.approx(np.mean(ce), rel=1e-5)
    predicted = np.argmax(reference.matmul(X, KERNELS[1]), axis=-1)
    assert logs["accuracy"] == pytest.approx(np.mean(predicted == np.array(Y)))


@pytest.mark.slow
def test_mutual_learning_trains_two_mnist_students():
    (x, y), (x_test, y_test) = keras_kd.datasets.load_mnist(num_train=1000)
    keras.utils.set_random_seed(0)
    students = [
        keras_kd.models.mnist_mlp((32,), name="a"),
        keras_kd.models.mnist_cnn((4, 8), name="b"),
    ]
    mutual = MutualLearning(students)
    mutual.compile(optimizer="adam", metrics=["accuracy"])
    history = mutual.fit(x, y, epochs=4, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    for student in students:
        student.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        # Both learned (chance is 0.1), not only the first one.
        accuracy = student.evaluate(x_test[:2000], y_test[:2000], verbose=0)[1]
        assert accuracy > 0.6


@pytest.mark.parametrize(
    "students, match",
    [
        ("one", "list of `keras.Model`s"),
        (["a"], "at least two"),
        (["a", 3], r"students\[1\]"),
        (["a", "a"], "same model object"),
    ],
)
def test_bad_students_are_rejected(students, match):
    models = {"a": linear(KERNELS[0], "a"), "one": linear(KERNELS[0], "one")}
    if isinstance(students, list):
        students = [models.get(s, s) if isinstance(s, str) else s for s in students]
    else:
        students = models[students]
    with pytest.raises(ValueError, match=match):
        MutualLearning(students)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": 1.5}, "alpha"),
        ({"temperature": 0}, "temperature"),
        ({"loss": "mse"}, "student_loss_fn"),
        ({"student_loss_fn": 3}, "student_loss_fn"),
    ],
)
def test_bad_compile_arguments_are_rejected(kwargs, match):
    mutual = MutualLearning([linear(KERNELS[0], "a"), linear(KERNELS[1], "b")])
    with pytest.raises(ValueError, match=match):
        mutual.compile(optimizer="sgd", **kwargs)


def test_fit_without_labels_is_rejected():
    mutual = MutualLearning([linear(KERNELS[0], "a"), linear(KERNELS[1], "b")])
    mutual.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="needs labels"):
        mutual.fit(np.array(X), epochs=1, verbose=0)


def test_keras_file_round_trip_restores_students_and_compile_state(tmp_path):
    mutual = MutualLearning([linear(KERNELS[1], "a"), linear(KERNELS[2], "b")])
    mutual.compile(optimizer="adam", alpha=0.25, temperature=3.0)
    mutual.fit(np.array(X), np.array(Y), epochs=1, verbose=0)
    path = str(tmp_path / "mutual.keras")
    mutual.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, MutualLearning)
    assert (restored.alpha, restored.temperature) == (0.25, 3.0)
    for before, after in zip(mutual.students, restored.students):
        for u, v in zip(before.get_weights(), after.get_weights()):
            np.testing.assert_array_equal(u, v)
    restored.fit(np.array(X), np.array(Y), epochs=1, verbose=0)
