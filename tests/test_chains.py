import keras
import numpy as np
import pytest

import keras_kd
from keras_kd.chains import ChainStage, distill_chain
from tests import reference

X = [[1.0, 0.0, 2.0], [0.5, -1.0, 1.0], [3.0, 1.0, -2.0], [-1.0, 2.0, 0.0]]
Y = [2, 0, 1, 1]
TEACHER = [[2.0, -1.0, 0.5], [0.0, 1.5, -0.5], [1.0, 0.0, 3.0]]
ASSISTANT = [[0.0, 1.0, -1.0], [1.0, 0.5, 0.0], [-2.0, 1.0, 1.0]]
STUDENT = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


def linear(kernel, name):
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(3, use_bias=False)], name=name
    )
    model.layers[0].set_weights([np.array(kernel, "float32")])
    return model


@pytest.mark.parametrize("cache_teacher", [True, False])
def test_each_stage_distills_from_the_previous_model(cache_teacher):
    teacher = linear(TEACHER, "teacher")
    assistant, student = linear(ASSISTANT, "assistant"), linear(STUDENT, "student")
    stages = distill_chain(
        teacher,
        [assistant, student],
        np.array(X),
        np.array(Y),
        epochs=[1, 2],
        batch_size=4,
        optimizer=keras.optimizers.SGD(0.0),  # frozen: logs describe the kernels
        alpha=[0.0, 0.5],
        temperature=2.0,
        cache_teacher=cache_teacher,
        metrics=lambda: [keras.metrics.SparseCategoricalAccuracy(name="acc")],
        fit_kwargs={"verbose": 0, "shuffle": False},
    )
    assert [type(s) for s in stages] == [ChainStage, ChainStage]
    assert stages[0].teacher is teacher and stages[0].student is assistant
    assert stages[1].teacher is assistant and stages[1].student is student
    assert len(stages[0].history.history["loss"]) == 1
    assert len(stages[1].history.history["loss"]) == 2
    assert "acc" in stages[1].history.history
    pairs = [(TEACHER, ASSISTANT), (ASSISTANT, STUDENT)]
    for stage, (t_kernel, s_kernel) in zip(stages, pairs):
        t_rows, s_rows = reference.matmul(X, t_kernel), reference.matmul(X, s_kernel)
        expected = np.mean([reference.kd(t, s, 2.0) for t, s in zip(t_rows, s_rows)])
        logged = stage.history.history["distillation_loss"][-1]
        assert logged == pytest.approx(expected, rel=1e-5)
    # Stage 1 weighs the label loss with its own alpha.
    ce = np.mean(
        [reference.cross_entropy(g, r) for g, r in zip(Y, reference.matmul(X, STUDENT))]
    )
    logs = stages[1].history.history
    assert logs["loss"][-1] == pytest.approx(
        0.5 * ce + 0.5 * logs["distillation_loss"][-1], rel=1e-5
    )
    # Trainable flags are restored, so the assistant can be trained again.
    assert teacher.trainable and assistant.trainable and student.trainable


@pytest.mark.slow
def test_chain_trains_every_stage_on_mnist_without_labels():
    (x, y), (x_test, y_test) = keras_kd.datasets.load_mnist(num_train=1000)
    keras.utils.set_random_seed(0)
    teacher = keras_kd.models.mnist_mlp((64,), name="teacher")
    teacher.compile(
        "adam",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    teacher.fit(x, y, epochs=5, batch_size=32, verbose=0)
    before = [w.copy() for w in teacher.get_weights()]
    assistant = keras_kd.models.mnist_mlp((32,), name="assistant")
    student = keras_kd.models.mnist_mlp((16,), name="student")
    stages = distill_chain(
        teacher,
        [assistant, student],
        x,
        epochs=5,
        batch_size=32,
        temperature=2.0,
        fit_kwargs={"verbose": 0},
    )
    for stage in stages:
        losses = stage.history.history["distillation_loss"]
        assert losses[-1] < losses[0] / 2
    assert all(np.array_equal(u, v) for u, v in zip(before, teacher.get_weights()))
    logits = student.predict(x_test[:2000], verbose=0)
    # Distilled through the assistant from soft targets alone (chance: 0.1).
    assert np.mean(np.argmax(logits, -1) == y_test[:2000]) > 0.6


@pytest.mark.parametrize(
    "chain, kwargs, match",
    [
        ("student", {}, "list of `keras.Model`s"),
        ([], {}, "empty"),
        (["assistant", 3], {}, r"assistants_and_student\[1\]"),
        (["teacher"], {}, "twice"),
        (["assistant", "student"], {"epochs": [1]}, "`epochs` has 1 entries"),
        (["assistant", "student"], {"alpha": [0.1, 0.2, 0.3]}, "`alpha`"),
        (["assistant", "student"], {"fit_kwargs": {"epochs": 3}}, "epochs"),
        (
            ["assistant", "student"],
            {"metrics": [keras.metrics.SparseCategoricalAccuracy()]},
            "Metric objects",
        ),
    ],
)
def test_bad_chains_are_rejected(chain, kwargs, match):
    models = {
        "teacher": linear(TEACHER, "teacher"),
        "assistant": linear(ASSISTANT, "assistant"),
        "student": linear(STUDENT, "student"),
    }
    if isinstance(chain, str):
        chain = models[chain]
    else:
        chain = [models[m] if isinstance(m, str) else m for m in chain]
    with pytest.raises(ValueError, match=match):
        distill_chain(models["teacher"], chain, np.array(X), np.array(Y), **kwargs)
