"""The vision distillation table (issue #15): one teacher/student pair, every method.

Rows, in the style of RepDistiller's and mdistiller's tables (each student
starts from the same weights per seed; the teacher is trained once per data
set and pair, saved under `artifacts/teachers/`, and reused by later runs):

- teacher; scratch (the student on labels alone);
- KD: `alpha 0.1`, T 4 (mdistiller's CE 0.1 + KD 0.9);
- KD + logit standardization (Sun et al. 2024): the same, `standardize=True`;
- DKD: `DKD(alpha=1, beta=8, T=4)`, Distiller `alpha 0.5` (CE and DKD
  weighted equally, as mdistiller's CE 1 + DKD 1);
- DIST: `DIST(beta=2, gamma=2, T=4)`, Distiller `alpha 0.5` (likewise);
- the feature methods as their papers ran them, label loss plus the feature
  term and no KD term (Distiller `alpha 1`): FitNets hints on the middle
  stage (1x1 adapter, weight 100), attention transfer on every stage
  (weight 1000 each), RKD on the pooled features (distance 25, angle 50),
  similarity-preserving on the last stage (weight 3000).

"Gap recovered" is `(method - scratch) / (teacher - scratch)`, on the seed
means.

The data and budgets (`--epochs` sets the student's, `--teacher-epochs` the
teacher's; the papers' CIFAR budget is `--epochs 240 --teacher-epochs 240`):

- `fashion_mnist`: the full 60,000/10,000 (`../shared/data/fashion_mnist`);
  `mnist_convnet` teacher (32/64 filters, 128 units, 1.2M parameters) and a
  `mnist_convnet((8, 16), units=32)` student (74k); Adam 1e-3, batch 128, no
  augmentation, so the logit rows train on the cached teacher logits and
  the feature rows run the teacher online.
- `cifar10` (the JPEG copy of CIFAR-10: close to, not equal to, the
  official pixels; `artifacts/cifar10.npz` from
  `python ../shared/data/cifar10_to_npz.py artifacts/cifar10.npz`): the CIFAR
  ResNets of `benchmarks/cifar_models.py`, `--pair resnet56-resnet20` or
  `resnet32x4-resnet8x4`; SGD momentum 0.9, weight decay 5e-4, learning rate
  0.05 on a cosine schedule, batch 128, pad-4 crop and horizontal flip
  (`RandomTranslation(0.125, nearest)` + `RandomFlip`) seen by both models,
  teacher online; `--train-size` trains on a stratified prefix.

    python -m benchmarks.vision_table --data fashion_mnist --epochs 10
    python -m benchmarks.vision_table --data cifar10 --pair resnet56-resnet20 \\
        --epochs 30 --teacher-epochs 30
    python -m benchmarks.vision_table --data fashion_mnist --epochs 1 \\
        --teacher-epochs 1 --seeds 0 --train-size 2000        # smoke
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_kd  # noqa: E402
from benchmarks import cifar_models  # noqa: E402
from keras_kd.losses import (  # noqa: E402
    DIST,
    DKD,
    RKD,
    AttentionTransfer,
    HintLoss,
    KDLoss,
    SimilarityPreserving,
)

SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ARTIFACTS = os.path.join(ROOT, "artifacts")
FASHION_MNIST = os.path.join(ROOT, "..", "shared", "data", "fashion_mnist")


class Pair:
    """A teacher/student pair: builders, feature layers, data and recipe."""

    def __init__(self, data, name, teacher, student, layers, augmented, batch_size):
        self.data, self.name = data, name
        self.build_teacher, self.build_student = teacher, student
        # {"stages": [layer, ...], "hint": layer, "pooled": layer}: the layers
        # compared, by name (the same in both models) or by position.
        self.layers = layers
        self.augmented = augmented
        self.batch_size = batch_size

    def optimizer(self, epochs, steps_per_epoch):
        if self.data == "fashion_mnist":
            return keras.optimizers.Adam(1e-3)
        schedule = keras.optimizers.schedules.CosineDecay(
            0.05, decay_steps=max(1, epochs * steps_per_epoch)
        )
        return keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=5e-4)

    def augmentation(self):
        if not self.augmented:
            return None
        return keras.Sequential(
            [
                keras.layers.RandomTranslation(
                    0.125, 0.125, fill_mode="constant", interpolation="nearest"
                ),
                keras.layers.RandomFlip("horizontal"),
            ],
            name="crop_flip",
        )


def _fashion_pair():
    # Positions in `mnist_convnet`: 0, 1 the convolutions, 5 the hidden dense.
    return Pair(
        "fashion_mnist",
        "convnet-convnet_8_16",
        lambda: keras_kd.models.mnist_convnet(name="teacher"),
        lambda: keras_kd.models.mnist_convnet((8, 16), units=32, name="student"),
        {"stages": [0, 1], "hint": 1, "pooled": 5},
        augmented=False,
        batch_size=128,
    )


def _cifar_pair(teacher_name, student_name):
    depth = {name: int(name[6:].split("x")[0]) for name in (teacher_name, student_name)}
    width = {name: "x4" if name.endswith("x4") else "standard" for name in depth}
    return Pair(
        "cifar10",
        f"{teacher_name}-{student_name}",
        lambda: cifar_models.cifar_resnet(depth[teacher_name], width[teacher_name]),
        lambda: cifar_models.cifar_resnet(depth[student_name], width[student_name]),
        {"stages": ["stage1", "stage2", "stage3"], "hint": "stage2", "pooled": "pool"},
        augmented=True,
        batch_size=128,
    )


PAIRS = {
    ("fashion_mnist", "convnet-convnet_8_16"): _fashion_pair,
    ("cifar10", "resnet56-resnet20"): lambda: _cifar_pair("resnet56", "resnet20"),
    ("cifar10", "resnet32x4-resnet8x4"): lambda: _cifar_pair("resnet32x4", "resnet8x4"),
}


def _layer_pair(teacher, student, layer):
    """`(teacher layer name, student layer name)` of a name or a position."""
    if isinstance(layer, int):
        return teacher.layers[layer].name, student.layers[layer].name
    return layer, layer


def methods(pair, teacher, student):
    """`{row: (alpha, distillation_loss_fn, feature_losses)}`."""
    hint = _layer_pair(teacher, student, pair.layers["hint"])
    pooled = _layer_pair(teacher, student, pair.layers["pooled"])
    stages = [_layer_pair(teacher, student, layer) for layer in pair.layers["stages"]]
    return {
        "KD (alpha 0.1, T 4)": (0.1, KDLoss(4.0), []),
        "KD + logit standardization": (0.1, KDLoss(4.0, standardize=True), []),
        "DKD (alpha 1, beta 8, T 4)": (0.5, DKD(1.0, 8.0, 4.0), []),
        "DIST (beta 2, gamma 2, T 4)": (0.5, DIST(2.0, 2.0, 4.0), []),
        "FitNets hints (weight 100)": (1.0, None, [HintLoss(*hint, weight=100.0)]),
        "attention transfer (every stage, 1000)": (
            1.0,
            None,
            [AttentionTransfer(t, s, weight=1000.0) for t, s in stages],
        ),
        "RKD (distance 25, angle 50)": (1.0, None, [RKD(*pooled)]),
        "similarity-preserving (3000)": (
            1.0,
            None,
            [SimilarityPreserving(*stages[-1], weight=3000.0)],
        ),
    }


def load_data(data, train_size):
    if data == "fashion_mnist":
        (x, y), test = keras_kd.datasets.load_fashion_mnist(data_dir=FASHION_MNIST)
    else:
        arrays = np.load(os.path.join(ARTIFACTS, "cifar10.npz"))
        x, y = arrays["x_train"], arrays["y_train"].reshape(-1)
        test = (arrays["x_test"], arrays["y_test"].reshape(-1))
        mean = np.array([0.4914, 0.4822, 0.4465], np.float32)
        std = np.array([0.2470, 0.2435, 0.2616], np.float32)
        x = ((x / 255.0 - mean) / std).astype(np.float32)
        test = (((test[0] / 255.0 - mean) / std).astype(np.float32), test[1])
    if train_size is not None:
        keep = _stratified_prefix(y, train_size)
        x, y = x[keep], y[keep]
    return (x, y), test


def _stratified_prefix(y, size):
    """Indices of the first `size / classes` examples of each class, in order."""
    classes = np.unique(y)
    per_class = size // len(classes)
    keep = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in classes])
    return np.sort(keep)


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, 1000, verbose=0), -1) == y))


def trained_teacher(pair, data, epochs):
    """The pair's teacher, trained once (seed 0) and reused from artifacts/."""
    (x, y), _ = data
    path = os.path.join(
        ARTIFACTS, "teachers", f"{pair.data}_{pair.name}_{epochs}ep_{len(x)}.keras"
    )
    if os.path.exists(path):
        return keras.saving.load_model(path)
    keras.utils.set_random_seed(0)
    teacher = pair.build_teacher()
    steps = -(-len(x) // pair.batch_size)
    augmentation = pair.augmentation()
    trained = (
        teacher if augmentation is None else keras.Sequential([augmentation, teacher])
    )
    trained.compile(pair.optimizer(epochs, steps), SCE)
    trained.fit(x, y, epochs=epochs, batch_size=pair.batch_size, verbose=2)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    teacher.save(path)
    return teacher


def student(pair, seed):
    keras.utils.set_random_seed(seed)
    return pair.build_student()


def scratch(pair, seed, x, y, epochs):
    model = student(pair, seed)
    augmentation = pair.augmentation()
    trained = model if augmentation is None else keras.Sequential([augmentation, model])
    trained.compile(pair.optimizer(epochs, -(-len(x) // pair.batch_size)), SCE)
    trained.fit(x, y, epochs=epochs, batch_size=pair.batch_size, verbose=0)
    return model


def distilled(pair, seed, teacher, logits, x, y, epochs, row):
    model = student(pair, seed)
    alpha, loss, feature_losses = methods(pair, teacher, model)[row]
    distiller = keras_kd.Distiller(
        student=model, teacher=teacher, augmentation=pair.augmentation()
    )
    distiller.compile(
        optimizer=pair.optimizer(epochs, -(-len(x) // pair.batch_size)),
        alpha=alpha,
        distillation_loss_fn=loss,
        feature_losses=feature_losses,
    )
    cached = logits if not feature_losses and not pair.augmented else None
    distiller.fit(
        x,
        y,
        teacher_logits=cached,
        epochs=epochs,
        batch_size=pair.batch_size,
        verbose=0,
    )
    return model


def run_seed(pair, seed, data, teacher, epochs, rows):
    (x, y), (x_test, y_test) = data
    logits = (
        None
        if pair.augmented
        else keras_kd.cache_teacher_outputs(teacher, x, verbose=0)
    )
    student_seed = seed + 1000
    results = {
        "scratch": accuracy(scratch(pair, student_seed, x, y, epochs), x_test, y_test)
    }
    for name in methods(pair, teacher, pair.build_student()):
        if rows and not any(row in name for row in rows):
            continue
        model = distilled(pair, student_seed, teacher, logits, x, y, epochs, name)
        results[name] = accuracy(model, x_test, y_test)
    return results


def table(teacher_accuracy, runs):
    scratch_mean = np.mean([run["scratch"] for run in runs])
    gap = teacher_accuracy - scratch_mean
    lines = [
        "| model | test accuracy (mean ± std) | gap recovered | per seed |",
        "|---|---|---|---|",
        f"| teacher | {teacher_accuracy:.4f} | | |",
    ]
    for key in runs[0]:
        values = np.array([run[key] for run in runs])
        spread = f" ± {values.std(ddof=1):.4f}" if len(values) > 1 else ""
        recovered = (values.mean() - scratch_mean) / gap if gap > 0 else float("nan")
        lines.append(
            f"| {key} | {values.mean():.4f}{spread} | {recovered:+.0%} | "
            f"{np.round(values, 4).tolist()} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", choices=["fashion_mnist", "cifar10"], default="fashion_mnist"
    )
    parser.add_argument("--pair", default=None, help="default: the data's first pair")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10, help="student epochs")
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument(
        "--rows", nargs="*", default=None, help="substrings of row names"
    )
    parser.add_argument("--output", default=None, help="JSON file of the results")
    args = parser.parse_args(argv)
    names = [name for data, name in PAIRS if data == args.data]
    pair_name = args.pair or names[0]
    if (args.data, pair_name) not in PAIRS:
        parser.error(
            f"--pair must be one of {names} for {args.data}, got {pair_name!r}"
        )
    pair = PAIRS[(args.data, pair_name)]()
    data = load_data(args.data, args.train_size)
    start = time.time()
    teacher = trained_teacher(pair, data, args.teacher_epochs)
    teacher_accuracy = accuracy(teacher, *data[1])
    print(f"teacher {teacher_accuracy:.4f} ({time.time() - start:.0f} s)", flush=True)
    runs = []
    for seed in args.seeds:
        start = time.time()
        runs.append(run_seed(pair, seed, data, teacher, args.epochs, args.rows))
        print(f"seed {seed} ({time.time() - start:.0f} s): {runs[-1]}", flush=True)
        if args.output:
            with open(args.output, "w") as file:
                json.dump(
                    {"args": vars(args), "teacher": teacher_accuracy, "runs": runs},
                    file,
                )
    title = f"{args.data}, {pair.name}, seeds {args.seeds}"
    print(f"\n{title}\n\n{table(teacher_accuracy, runs)}")


if __name__ == "__main__":
    main()
