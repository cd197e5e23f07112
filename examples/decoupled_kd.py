"""Decoupled KD (DKD) next to classic Hinton KD, from one cached teacher.

Trains a convnet teacher on the bundled MNIST split, caches its logits once,
then distills an MLP(100, 100) student three ways with the same initial
weights and budget: classic KD (`keras_kd.losses.KDLoss`), DKD with the
paper's weights (`keras_kd.DKD(alpha=1, beta=8)`), and DKD with a smaller
non-target weight (`beta=2`). DKD needs the true class; the Distiller passes
the label (or, for unlabeled examples, the teacher's top class).

    python examples/decoupled_kd.py             # about 2 minutes on 2 cores
    python examples/decoupled_kd.py --epochs 2  # smoke

RESULTS.md has the same comparison over 3 seeds.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_kd  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="student epochs")
    parser.add_argument("--teacher-epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, 1000, verbose=0), -1) == y))


def main(argv=None):
    args = parse_args(argv)
    (x, y), (x_test, y_test) = keras_kd.datasets.load_mnist()
    keras.utils.set_random_seed(args.seed)
    teacher = keras_kd.models.mnist_convnet(name="teacher")
    teacher.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    teacher.fit(x, y, epochs=args.teacher_epochs, batch_size=64, verbose=0)
    print(f"teacher {accuracy(teacher, x_test, y_test):.4f}")

    logits = keras_kd.cache_teacher_outputs(teacher, x)  # the teacher runs once
    methods = {
        "classic KD (alpha 0.1, T 4)": (0.1, keras_kd.losses.KDLoss(temperature=4.0)),
        "DKD (alpha 1, beta 8, T 4)": (0.5, keras_kd.DKD(1.0, 8.0, temperature=4.0)),
        "DKD (alpha 1, beta 2, T 4)": (0.5, keras_kd.DKD(1.0, 2.0, temperature=4.0)),
    }
    for name, (alpha, loss) in methods.items():
        keras.utils.set_random_seed(args.seed + 1000)  # same student weights
        student = keras_kd.models.mnist_mlp((100, 100))
        distiller = keras_kd.Distiller(student=student, teacher=teacher)
        distiller.compile(optimizer="adam", alpha=alpha, distillation_loss_fn=loss)
        distiller.fit(
            x, y, teacher_logits=logits, epochs=args.epochs, batch_size=64, verbose=0
        )
        print(f"{name}: student {accuracy(student, x_test, y_test):.4f}")


if __name__ == "__main__":
    main()
