"""Feature distillation on MNIST: FitNets hints + attention transfer + KD in one fit.

Trains a convnet teacher (`keras_kd.models.mnist_convnet()`, 1.2M
parameters) on the bundled 5,000 MNIST images, then distills it into a small
convnet (`mnist_convnet((8, 16), units=32)`, about 75k parameters) with one
`Distiller` whose loss composes several terms:

- `--method hints` (default): Hinton KD + FitNets hints between the dense
  layers (a learnable `Dense(32 -> 128)` adapter, owned by the distiller)
  + attention transfer between the second convolutions (both 24x24);
- `--method rkd`: KD + relational KD (distance and angle) on the dense layers;
- `--method sp`: KD + similarity-preserving KD on the dense layers.

It prints the test accuracy of the teacher, of the same student trained from
scratch, and of the distilled student, the per-term losses of the last epoch,
and checks that the exported student holds no adapter weights.

    python examples/feature_distillation.py                 # hints + AT + KD
    python examples/feature_distillation.py --method rkd --epochs 5
"""

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd.losses import (  # noqa: E402
    RKD,
    AttentionTransfer,
    HintLoss,
    SimilarityPreserving,
)

SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
# `mnist_convnet`'s layers: 1 is the second convolution, 5 the hidden dense.
CONV, DENSE = 1, 5


def feature_losses(method, teacher, student):
    t_conv, t_dense = teacher.layers[CONV].name, teacher.layers[DENSE].name
    s_conv, s_dense = student.layers[CONV].name, student.layers[DENSE].name
    if method == "hints":
        return [
            HintLoss(t_dense, s_dense, weight=1.0),
            AttentionTransfer(t_conv, s_conv, weight=500.0),
        ]
    if method == "rkd":
        return [RKD(t_dense, s_dense, distance_weight=25.0, angle_weight=50.0)]
    return [SimilarityPreserving(t_dense, s_dense, weight=3000.0)]


def small_convnet(seed):
    keras.utils.set_random_seed(seed)
    return keras_kd.models.mnist_convnet((8, 16), units=32, name="student")


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, 1000, verbose=0), -1) == y))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["hints", "rkd", "sp"], default="hints")
    parser.add_argument("--epochs", type=int, default=3, help="student epochs")
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--num-train", type=int, default=None, help="default: 5000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=0)
    args = parser.parse_args(argv)

    (x, y), (x_test, y_test) = keras_kd.datasets.load_mnist(num_train=args.num_train)
    keras.utils.set_random_seed(args.seed)
    teacher = keras_kd.models.mnist_convnet(name="teacher")
    teacher.compile("adam", SCE)
    teacher.fit(x, y, epochs=args.teacher_epochs, batch_size=64, verbose=args.verbose)

    scratch = small_convnet(args.seed + 1)
    scratch.compile("adam", SCE)
    scratch.fit(x, y, epochs=args.epochs, batch_size=64, verbose=args.verbose)

    student = small_convnet(args.seed + 1)  # the same initial weights
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer="adam",
        alpha=0.1,
        temperature=4.0,
        feature_losses=feature_losses(args.method, teacher, student),
    )
    history = distiller.fit(
        x, y, epochs=args.epochs, batch_size=64, verbose=args.verbose
    )

    print(
        f"teacher  ({teacher.count_params():,} parameters): "
        f"{accuracy(teacher, x_test, y_test):.4f}"
    )
    print(
        f"scratch  ({scratch.count_params():,} parameters): "
        f"{accuracy(scratch, x_test, y_test):.4f}"
    )
    print(
        f"{args.method:8s} ({student.count_params():,} parameters): "
        f"{accuracy(student, x_test, y_test):.4f}"
    )
    last = {key: round(values[-1], 4) for key, values in history.history.items()}
    print(f"last epoch's losses: {last}")

    with tempfile.TemporaryDirectory() as directory:
        result = keras_kd.export_student(
            distiller, directory, formats="saved_model", verify_data=x_test[:256]
        )
    adapters = sum(a.count_params() for a in distiller.feature_adapters.values())
    print(
        f"exported student: {result.parameters:,} parameters; the distiller's "
        f"{len(distiller.feature_adapters)} adapter(s) ({adapters:,} parameters) "
        "stayed behind"
    )


if __name__ == "__main__":
    main()
