"""Deep mutual learning: two students teach each other, no pre-trained teacher.

Two MLPs of different widths train together with `keras_kd.MutualLearning`
(each on cross-entropy plus KL from the other's prediction), and are compared
with the same two MLPs trained alone with the same budget on the bundled
MNIST split. Then the small one is distilled through a teacher-assistant
chain (`keras_kd.distill_chain`) from the large one, for comparison.

    python examples/mutual_learning.py   # about 1 minute on 2 cores

One run printed: mlp_100 alone 0.9323, mutual 0.9341; mlp_300 alone 0.9388,
mutual 0.9375 (one seed: within the spread, see RESULTS.md); chain
mlp_300 -> assistant 0.9168 -> tiny 0.9018.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd.chains import distill_chain  # noqa: E402
from keras_kd.mutual import MutualLearning  # noqa: E402

EPOCHS = 10


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, 1000, verbose=0), -1) == y))


def students(seed):
    keras.utils.set_random_seed(seed)
    return [
        keras_kd.models.mnist_mlp((100, 100), name="mlp_100"),
        keras_kd.models.mnist_mlp((300,), name="mlp_300"),
    ]


def main():
    (x, y), (x_test, y_test) = keras_kd.datasets.load_mnist()

    alone = students(0)
    for model in alone:
        model.compile(
            "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        model.fit(x, y, epochs=EPOCHS, batch_size=64, verbose=0)

    together = students(0)  # the same initial weights
    mutual = MutualLearning(together)
    mutual.compile(optimizer="adam", metrics=["accuracy"], alpha=0.5, temperature=1.0)
    mutual.fit(x, y, epochs=EPOCHS, batch_size=64, verbose=2)
    print(
        "evaluate() scores the first student:",
        mutual.evaluate(x_test, y_test, verbose=0),
    )

    for a, b in zip(alone, together):
        print(
            f"{a.name}: alone {accuracy(a, x_test, y_test):.4f}, "
            f"mutual {accuracy(b, x_test, y_test):.4f}"
        )

    # A chain: the large mutual student teaches a tiny MLP through an assistant.
    keras.utils.set_random_seed(1)
    assistant = keras_kd.models.mnist_mlp((50,), name="assistant")
    tiny = keras_kd.models.mnist_mlp((20,), name="tiny")
    stages = distill_chain(
        together[1],
        [assistant, tiny],
        x,
        y,
        epochs=EPOCHS,
        batch_size=64,
        alpha=0.1,
        temperature=4.0,
        fit_kwargs={"verbose": 0},
    )
    for stage in stages:
        print(
            f"{stage.teacher.name} -> {stage.student.name}: "
            f"{accuracy(stage.student, x_test, y_test):.4f}"
        )


if __name__ == "__main__":
    main()
