"""Merge two teachers that know different digits into one student, without labels.

Teacher A is trained on MNIST digits 0-4 only, teacher B on 5-9 only (each a
small CNN with 5 outputs). `keras_kd.LabelMergingTeacher` maps their outputs
into the ten student classes; a student MLP is distilled from the merged
teacher on all training images with no label at all (`fit(x)`), and learns
all ten digits. For comparison it also builds a `keras_kd.TeacherEnsemble`
of two full ten-class teachers of different architectures and distills a
student from it with labels.

    python examples/multi_teacher.py     # about 2 minutes on 2 cores

One run printed: merged teacher 0.7946, student without labels 0.7938 (one
teacher's digits alone would give 0.5); cnn 0.9204, mlp 0.9257, their
ensemble 0.9278, its student 0.9125.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd.ensembles import LabelMergingTeacher, TeacherEnsemble  # noqa: E402

SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, 1000, verbose=0), -1) == y))


def main():
    (x, y), (x_test, y_test) = keras_kd.datasets.load_mnist()
    keras.utils.set_random_seed(0)

    # 1. Two teachers with disjoint label sets.
    teachers = []
    for low in (0, 5):
        keep = (y >= low) & (y < low + 5)
        teacher = keras_kd.models.mnist_cnn((16, 32), num_classes=5, name=f"t{low}")
        teacher.compile("adam", SCE)
        teacher.fit(x[keep], y[keep] - low, epochs=3, batch_size=64, verbose=0)
        teachers.append(teacher)
    merged = LabelMergingTeacher(
        teachers, class_maps=[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], num_classes=10
    )
    print(
        "merged teacher, test accuracy on 10 digits:",
        f"{accuracy(merged, x_test, y_test):.4f}",
    )

    student = keras_kd.models.mnist_mlp((100,), name="student")
    distiller = keras_kd.Distiller(student=student, teacher=merged)
    distiller.compile(optimizer="adam", temperature=1.0)
    logits = keras_kd.cache_teacher_outputs(merged, x)  # the teachers run once
    distiller.fit(x, teacher_logits=logits, epochs=10, batch_size=64, verbose=0)
    print(
        "student distilled without labels:",
        f"{accuracy(student, x_test, y_test):.4f}",
    )

    # 2. An ensemble of two full teachers of different architectures.
    cnn = keras_kd.models.mnist_cnn((16, 32), name="cnn")
    mlp = keras_kd.models.mnist_mlp((200,), name="mlp")
    for model in (cnn, mlp):
        model.compile("adam", SCE)
        model.fit(x, y, epochs=5, batch_size=64, verbose=0)
    ensemble = TeacherEnsemble([cnn, mlp])  # or weights=[...] per teacher
    for model in (cnn, mlp, ensemble):
        print(f"{model.name:>16}: {accuracy(model, x_test, y_test):.4f}")
    student = keras_kd.models.mnist_mlp((100,), name="ensemble_student")
    distiller = keras_kd.Distiller(student=student, teacher=ensemble)
    distiller.compile(optimizer="adam", alpha=0.1, temperature=4.0)
    logits = keras_kd.cache_teacher_outputs(ensemble, x)
    distiller.fit(x, y, teacher_logits=logits, epochs=10, batch_size=64, verbose=0)
    print(f"student of the ensemble: {accuracy(student, x_test, y_test):.4f}")


if __name__ == "__main__":
    main()
