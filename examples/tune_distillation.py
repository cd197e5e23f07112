"""Search the distillation temperature T and weight alpha with KerasTuner.

Distills a small convnet teacher into an MLP(100, 100) student on the MNIST
split bundled with keras_kd, with consistent augmentation (the same random
shift for teacher and student) and a cosine learning-rate decay, and lets
KerasTuner pick T and alpha by the student's validation accuracy. The search
holds out the last 1,000 of the 5,000 training images for validation and
never looks at the test set; the best student is scored on it at the end.

Needs KerasTuner (`pip install -e ".[tune]"`). Each trial trains the student
once with the teacher online, so keep `--max-trials` and `--epochs` small on
a CPU:

    python examples/tune_distillation.py --max-trials 8 --epochs 15
    python examples/tune_distillation.py --no-augment   # plain Hinton KD
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_kd  # noqa: E402

TEMPERATURES = [1.0, 2.0, 4.0, 8.0]
ALPHAS = [0.0, 0.1, 0.3, 0.5]


def import_keras_tuner():
    # KerasTuner 1.4 imports TensorBoard in every trial on the TensorFlow
    # backend, without depending on it.
    try:
        import keras_tuner
        import tensorboard  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "examples/tune_distillation.py needs KerasTuner and TensorBoard: "
            '`pip install -e ".[tune]"` (keras-tuner and tensorboard).'
        ) from error
    return keras_tuner


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=15, help="per trial")
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument(
        "--teacher-weights",
        default=None,
        help="weights of a trained mnist_convnet((16, 32), units=64) teacher, "
        "for example benchmarks/accuracy_recipes.py's",
    )
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--shift", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--directory", default="artifacts/tune_distillation")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def shift(args):
    return keras.layers.RandomTranslation(args.shift, args.shift, fill_mode="constant")


def cosine_adam(steps):
    return keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, steps))


def train_teacher(args, x, y):
    teacher = keras_kd.models.mnist_convnet((16, 32), units=64, name="teacher")
    if args.teacher_weights:
        teacher.load_weights(args.teacher_weights)
        return teacher
    steps = args.teacher_epochs * int(np.ceil(len(x) / args.batch_size))
    model = keras.Sequential([shift(args), teacher])
    model.compile(
        optimizer=cosine_adam(steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=args.batch_size, epochs=args.teacher_epochs, verbose=2)
    return teacher


def make_hypermodel(keras_tuner, args, teacher, steps):
    class DistillationHyperModel(keras_tuner.HyperModel):
        """Builds a compiled `keras_kd.Distiller` for one (T, alpha) pair."""

        def build(self, hp):
            temperature = hp.Choice("temperature", TEMPERATURES)
            alpha = hp.Choice("alpha", ALPHAS)
            distiller = keras_kd.Distiller(
                student=keras_kd.models.mnist_mlp((100, 100)),
                teacher=teacher,
                augmentation=None if args.no_augment else shift(args),
            )
            distiller.compile(
                optimizer=cosine_adam(steps),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                temperature=temperature,
                alpha=alpha,
            )
            return distiller

    return DistillationHyperModel()


def main(argv=None):
    args = parse_args(argv)
    keras_tuner = import_keras_tuner()
    keras.utils.set_random_seed(args.seed)
    (x, y), (x_test, y_test) = keras_kd.datasets.load_mnist()
    x_train, y_train, x_val, y_val = x[:4000], y[:4000], x[4000:], y[4000:]

    teacher = train_teacher(args, x_train, y_train)
    steps = args.epochs * int(np.ceil(len(x_train) / args.batch_size))
    tuner = keras_tuner.RandomSearch(
        make_hypermodel(keras_tuner, args, teacher, steps),
        objective=keras_tuner.Objective("val_accuracy", direction="max"),
        max_trials=args.max_trials,
        seed=args.seed,
        directory=args.directory,
        project_name="augmented" if not args.no_augment else "plain",
        overwrite=True,
    )
    tuner.search(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=args.epochs,
        batch_size=args.batch_size,
        verbose=2,
    )
    tuner.results_summary(num_trials=min(args.max_trials, 5))
    best = tuner.get_best_hyperparameters(1)[0]
    student = tuner.get_best_models(1)[0].student
    student.compile(metrics=[keras.metrics.SparseCategoricalAccuracy()])
    accuracy = np.mean(np.argmax(student.predict(x_test, verbose=0), axis=-1) == y_test)
    print(
        f"best: temperature={best.get('temperature')}, alpha={best.get('alpha')}; "
        f"student test accuracy {accuracy:.4f}"
    )


if __name__ == "__main__":
    main()
