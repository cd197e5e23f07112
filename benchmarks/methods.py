"""Distillation methods side by side on the bundled MNIST split (issue #6).

Two measurements, each over several seeds, printed as Markdown tables:

1. Label merging: teacher A (`mnist_cnn((16, 32), num_classes=5)`) trained on
   digits 0-4 only, teacher B on 5-9 only (3 epochs each on their ~2,500
   images); `keras_kd.LabelMergingTeacher` merges them and an MLP student
   (100 hidden units) is distilled from the merged teacher on all 5,000
   training images *without labels* (10 epochs, T = 1, cached teacher
   logits), then scored on the 10,000 test images, for both `combine` modes.
2. Logits losses with one budget: a convnet teacher (`mnist_convnet`, 5
   epochs) on all 5,000 labeled images; MLP students (100, 100), 10 epochs,
   batch 64, Adam, same initial weights per seed: scratch, classic KD
   (alpha 0.1, T 4), DKD (Distiller alpha 0.5, DKD alpha 1, beta 8 or 2,
   T 4), a teacher-assistant chain (teacher -> MLP (300, 300) -> student,
   10 epochs per stage, KD alpha 0.1, T 4) and deep mutual learning (two
   such MLPs trained together, alpha 0.5, T 1; the first one scored).
3. Feature and relation losses with one budget: the same convnet teacher;
   small convnet students (`mnist_convnet((8, 16), units=32)`), 10 epochs,
   batch 64, Adam, same initial weights per seed, teacher online: scratch,
   classic KD (alpha 0.1, T 4), and KD plus one feature term each: FitNets
   hints (penultimate dense layers, Dense adapter 32 -> 128, weight 1),
   attention transfer (second convolutions, both 24x24, weight 500), RKD
   (penultimate layers, distance 25, angle 50) and similarity-preserving KD
   (penultimate layers, weight 3000).

    python benchmarks/methods.py --only merging       # 3 seeds, ~5 min on 2 cores
    python benchmarks/methods.py --only features      # 3 seeds, about 1 h (estimate)
    python benchmarks/methods.py --seeds 0 --only merging
    python benchmarks/methods.py --seeds 0 --only features --epochs 1  # smoke
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd.chains import distill_chain  # noqa: E402
from keras_kd.ensembles import LabelMergingTeacher  # noqa: E402
from keras_kd.losses import (  # noqa: E402
    DKD,
    RKD,
    AttentionTransfer,
    HintLoss,
    SimilarityPreserving,
)
from keras_kd.mutual import MutualLearning  # noqa: E402

SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, 1000, verbose=0), -1) == y))


def train_split_teachers(x, y, seed, epochs=3):
    """Teacher A on digits 0-4, teacher B on 5-9 (labels 0-4 within each)."""
    keras.utils.set_random_seed(seed)
    teachers = []
    for low in (0, 5):
        keep = (y >= low) & (y < low + 5)
        teacher = keras_kd.models.mnist_cnn((16, 32), num_classes=5, name=f"t{low}")
        teacher.compile("adam", SCE)
        teacher.fit(x[keep], y[keep] - low, epochs=epochs, batch_size=64, verbose=0)
        teachers.append(teacher)
    return teachers


def distill_unlabeled(teacher, x, seed, epochs=10, temperature=1.0):
    keras.utils.set_random_seed(seed)
    student = keras_kd.models.mnist_mlp((100,), name="student")
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer="adam", temperature=temperature)
    logits = keras_kd.cache_teacher_outputs(teacher, x)
    distiller.fit(x, teacher_logits=logits, epochs=epochs, batch_size=64, verbose=0)
    return student


def merging_seed(seed, data):
    (x, y), (x_test, y_test) = data
    teachers = train_split_teachers(x, y, seed)
    maps = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    results = {}
    for combine in ("logits", "log_probabilities"):
        merged = LabelMergingTeacher(teachers, maps, 10, combine=combine)
        results[f"merged teacher ({combine})"] = accuracy(merged, x_test, y_test)
        student = distill_unlabeled(merged, x, seed + 1000)
        results[f"student, no labels ({combine})"] = accuracy(student, x_test, y_test)
    return results


def student_mlp(seed, units=(100, 100), name="student"):
    keras.utils.set_random_seed(seed)
    return keras_kd.models.mnist_mlp(units, name=name)


def distilled(seed, teacher, logits, x, y, epochs, alpha, loss=None, temperature=4.0):
    student = student_mlp(seed)
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer="adam",
        alpha=alpha,
        temperature=None if loss is not None else temperature,
        distillation_loss_fn=loss,
    )
    distiller.fit(x, y, teacher_logits=logits, epochs=epochs, batch_size=64, verbose=0)
    return student


def convnet_teacher(seed, x, y, epochs=5):
    keras.utils.set_random_seed(seed)
    teacher = keras_kd.models.mnist_convnet(name="teacher")
    teacher.compile("adam", SCE)
    teacher.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return teacher


def losses_seed(seed, data, epochs=10, teacher_epochs=5):
    (x, y), (x_test, y_test) = data
    teacher = convnet_teacher(seed, x, y, teacher_epochs)
    logits = keras_kd.cache_teacher_outputs(teacher, x)
    results = {"teacher (convnet)": accuracy(teacher, x_test, y_test)}
    student_seed = seed + 1000

    scratch = student_mlp(student_seed)
    scratch.compile("adam", SCE)
    scratch.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    results["scratch"] = accuracy(scratch, x_test, y_test)

    kd = distilled(student_seed, teacher, logits, x, y, epochs, alpha=0.1)
    results["classic KD (alpha 0.1, T 4)"] = accuracy(kd, x_test, y_test)
    for beta in (8.0, 2.0):
        dkd = distilled(
            student_seed, teacher, logits, x, y, epochs, 0.5, DKD(1.0, beta, 4.0)
        )
        results[f"DKD (beta {beta:g}, T 4)"] = accuracy(dkd, x_test, y_test)

    keras.utils.set_random_seed(student_seed)
    assistant = keras_kd.models.mnist_mlp((300, 300), name="assistant")
    student = student_mlp(student_seed)
    distill_chain(
        teacher,
        [assistant, student],
        x,
        y,
        epochs=epochs,
        batch_size=64,
        alpha=0.1,
        temperature=4.0,
        fit_kwargs={"verbose": 0},
    )
    results["TA chain (-> MLP 300x300 -> student)"] = accuracy(student, x_test, y_test)

    students = [student_mlp(student_seed), student_mlp(student_seed + 1, name="peer")]
    mutual = MutualLearning(students)
    mutual.compile(optimizer="adam", alpha=0.5, temperature=1.0)
    mutual.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    results["mutual learning (2 MLPs, no teacher)"] = accuracy(
        students[0], x_test, y_test
    )
    return results


def convnet_student(seed):
    keras.utils.set_random_seed(seed)
    return keras_kd.models.mnist_convnet((8, 16), units=32, name="student")


def feature_methods(teacher, student):
    """`{row: feature_losses}`; layers 1 and 5 are the second conv and the dense."""
    t_conv, t_dense = teacher.layers[1].name, teacher.layers[5].name
    s_conv, s_dense = student.layers[1].name, student.layers[5].name
    return {
        "KD (alpha 0.1, T 4), online": [],
        "KD + FitNets hints (dense, adapter 32 -> 128)": [HintLoss(t_dense, s_dense)],
        "KD + attention transfer (conv 2, weight 500)": [
            AttentionTransfer(t_conv, s_conv, weight=500.0)  # as RESULTS.md ran it
        ],
        "KD + RKD (dense; distance 25, angle 50)": [RKD(t_dense, s_dense)],
        "KD + similarity-preserving (dense, weight 3000)": [
            SimilarityPreserving(t_dense, s_dense)
        ],
    }


def features_seed(seed, data, epochs=10, teacher_epochs=5):
    (x, y), (x_test, y_test) = data
    teacher = convnet_teacher(seed, x, y, teacher_epochs)
    results = {"teacher (convnet)": accuracy(teacher, x_test, y_test)}
    student_seed = seed + 1000
    scratch = convnet_student(student_seed)
    scratch.compile("adam", SCE)
    scratch.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    results["scratch (convnet 8/16/32)"] = accuracy(scratch, x_test, y_test)
    names = list(feature_methods(teacher, convnet_student(student_seed)))
    for name in names:
        student = convnet_student(student_seed)
        feature_losses = feature_methods(teacher, student)[name]
        distiller = keras_kd.Distiller(student=student, teacher=teacher)
        distiller.compile(
            optimizer="adam", alpha=0.1, temperature=4.0, feature_losses=feature_losses
        )
        distiller.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
        results[name] = accuracy(student, x_test, y_test)
    return results


def table(title, runs):
    print(
        f"\n{title}\n\n| model | test accuracy (mean ± std) | per seed |\n|---|---|---|"
    )
    for key in runs[0]:
        values = np.array([run[key] for run in runs])
        spread = f" ± {values.std(ddof=1):.4f}" if len(values) > 1 else ""
        print(
            f"| {key} | {values.mean():.4f}{spread} | {np.round(values, 4).tolist()} |"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--only", choices=["merging", "losses", "features"], default=None
    )
    parser.add_argument(
        "--epochs", type=int, default=10, help="student epochs (losses, features)"
    )
    parser.add_argument(
        "--teacher-epochs", type=int, default=5, help="teacher epochs (same)"
    )
    args = parser.parse_args(argv)
    data = keras_kd.datasets.load_mnist()
    budget = {"epochs": args.epochs, "teacher_epochs": args.teacher_epochs}
    for name, run in (
        ("merging", merging_seed),
        ("losses", lambda seed, data: losses_seed(seed, data, **budget)),
        ("features", lambda seed, data: features_seed(seed, data, **budget)),
    ):
        if args.only not in (None, name):
            continue
        runs = []
        for seed in args.seeds:
            start = time.time()
            runs.append(run(seed, data))
            print(
                f"{name} seed {seed} ({time.time() - start:.0f} s): {runs[-1]}",
                flush=True,
            )
        table(f"{name}, seeds {args.seeds}", runs)


if __name__ == "__main__":
    main()
