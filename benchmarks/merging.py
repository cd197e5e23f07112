"""Label merging without labels: today's merge, prior matching, propagation (#17).

For each seed: teacher A (`mnist_cnn((16, 32), num_classes=5)`) is trained on
classes 0-4 only, teacher B on 5-9 only (`--teacher-epochs`, Adam, batch 64);
then, with **no label at all**, a student (`--student`: an MLP of 100 hidden
units, or `mnist_cnn((16, 32))`, the teachers' architecture) is distilled
on the whole training set (10 epochs, T = 1, cached targets, batch 64) from

- today's merge: `LabelMergingTeacher(combine="logits")`,
- the merge calibrated by prior matching (`LabelMergingTeacher.calibrate`),
- `keras_kd.merging.merged_targets`: prior matching, propagation over the 5
  nearest training images (cosine similarity of pixels, alpha 0.9), prior
  matching again (uniform class priors assumed);

and, for reference, the same student is trained with all the labels. Rows:
each teacher alone on the test images of its own classes; each merged
teacher and each student on the whole test set; the accuracy of the
transfer-set targets against the (unused) training labels.

    python -m benchmarks.merging --data mnist          # 3 seeds, ~2 min
    python -m benchmarks.merging --data mnist --student cnn
    python -m benchmarks.merging --data fashion_mnist  # 3 seeds, ~30 min
    python -m benchmarks.merging --data mnist --seeds 0 --teacher-epochs 1  # smoke
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_kd  # noqa: E402
from benchmarks.methods import table  # noqa: E402

SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
MAPS = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
FASHION_DIR = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "fashion_mnist"
)


def load(name, data_dir):
    if name == "mnist":
        return keras_kd.datasets.load_mnist()
    return keras_kd.datasets.load_fashion_mnist(data_dir=data_dir or FASHION_DIR)


def accuracy(model_or_logits, x, y):
    logits = model_or_logits
    if isinstance(model_or_logits, keras.Model):
        logits = model_or_logits.predict(x, 1000, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == y))


def split_teachers(x, y, seed, epochs):
    keras.utils.set_random_seed(seed)
    teachers = []
    for classes in MAPS:
        keep = np.isin(y, classes)
        teacher = keras_kd.models.mnist_cnn((16, 32), num_classes=5)
        teacher.compile("adam", SCE)
        teacher.fit(
            x[keep], y[keep] - classes[0], epochs=epochs, batch_size=64, verbose=0
        )
        teachers.append(teacher)
    return teachers


STUDENTS = {
    "mlp": lambda: keras_kd.models.mnist_mlp((100,), name="student"),
    "cnn": lambda: keras_kd.models.mnist_cnn((16, 32), name="student"),
}
STUDENT = "mlp"


def student(seed):
    keras.utils.set_random_seed(seed)
    return STUDENTS[STUDENT]()


def distil(seed, teacher, x, targets, epochs):
    model = student(seed)
    distiller = keras_kd.Distiller(student=model, teacher=teacher)
    distiller.compile(optimizer="adam", temperature=1.0)
    distiller.fit(x, teacher_logits=targets, epochs=epochs, batch_size=64, verbose=0)
    return model


def merging_seed(seed, data, teacher_epochs, epochs):
    (x, y), (x_test, y_test) = data
    teachers = split_teachers(x, y, seed, teacher_epochs)
    results = {}
    for index, (teacher, classes) in enumerate(zip(teachers, MAPS)):
        own = np.isin(y_test, classes)
        results[f"teacher {'AB'[index]} on its own classes"] = accuracy(
            teacher(x_test[own]), None, y_test[own] - classes[0]
        )
    merged = keras_kd.LabelMergingTeacher(teachers, MAPS, 10)
    today = merged.predict(x, 1000, verbose=0)
    results["today's merge: teacher"] = accuracy(merged, x_test, y_test)
    results["today's merge: targets on the transfer set"] = accuracy(today, x, y)
    results["today's merge: student"] = accuracy(
        distil(seed + 1000, merged, x, today, epochs), x_test, y_test
    )
    targets = keras_kd.merging.merged_targets(merged, x)
    results["propagated: targets on the transfer set"] = accuracy(targets, x, y)
    results["propagated: student"] = accuracy(
        distil(seed + 1000, merged, x, targets, epochs), x_test, y_test
    )
    merged.calibrate(x)
    results["prior-matched: teacher"] = accuracy(merged, x_test, y_test)
    calibrated = merged.predict(x, 1000, verbose=0)
    results["prior-matched: student"] = accuracy(
        distil(seed + 1000, merged, x, calibrated, epochs), x_test, y_test
    )
    labelled = student(seed + 1000)
    labelled.compile("adam", SCE)
    labelled.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    results["student with all labels"] = accuracy(labelled, x_test, y_test)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["mnist", "fashion_mnist"], default="mnist")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST idx files")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10, help="student epochs")
    parser.add_argument("--student", choices=sorted(STUDENTS), default="mlp")
    args = parser.parse_args(argv)
    global STUDENT
    STUDENT = args.student
    data = load(args.data, args.data_dir)
    runs = []
    for seed in args.seeds:
        start = time.time()
        runs.append(merging_seed(seed, data, args.teacher_epochs, args.epochs))
        print(f"seed {seed} ({time.time() - start:.0f} s): {runs[-1]}", flush=True)
    table(
        f"{args.data}, teachers {args.teacher_epochs} epochs, {args.student} "
        f"student, seeds {args.seeds}",
        runs,
    )


if __name__ == "__main__":
    main()
