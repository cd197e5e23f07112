"""Accuracy of distillation recipes on the bundled MNIST split, over seeds.

Compares, for an MLP(100, 100) student and a small convnet teacher
(`keras_kd.models.mnist_convnet((16, 32), units=64)`, about 3M multiply-adds
per image so that it can run online on every step; trained once, seed 0, on
all 5,000 labels with the same random shift, and shared by every run):

  scratch         the student on the labels alone
  scratch_aug     the same, with the random shift applied to its batches
  kd              Hinton KD (teacher logits cached once, no augmentation)
  kd_aug          KD with consistent augmentation: the same shifted batch
                  goes to teacher and student (function matching)
  kd_aug_mixup    kd_aug plus mixup between examples of the batch

at each training budget (`--budgets`, in epochs over the 5,000 images, Adam
with a cosine decay to 0), and the few-labels experiment (`--labeled` labels,
the rest of the split unlabeled):

  few_hard        hard labels on the labeled images only
  few_soft        soft targets + labels on the labeled images only
  few_soft_unlab  soft targets on all 5,000, labels on the labeled ones (-1
                  marks the others), one fit
  (each also with the random shift: *_aug)

Few-labels runs take as many optimizer steps as a full-data run of
`--few-epochs` epochs (default: the first budget; the labeled images are
repeated). Runs without augmentation distill from a teacher-logits cache
(exactly the same targets, computed once). Each run appends one JSON line to
`--out`; the table (mean ± std over seeds, and the share of the
teacher-scratch gap each KD recipe recovers against the scratch run with the
same augmentation and budget) is printed at the end and can be rebuilt from
the file with `--table-only`.

    python benchmarks/accuracy_recipes.py --seeds 0 1 2 --budgets 20 60

`--student convnet` swaps the MLP for a small convnet
(`mnist_convnet((8, 16), units=32)`, a student close to its teacher);
`--teacher-filters` and `--teacher-units` change the teacher (give each
teacher its own `--teacher-path`).
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_kd  # noqa: E402

FULL = ("scratch", "scratch_aug", "kd", "kd_aug", "kd_aug_mixup")
FEW = (
    "few_hard",
    "few_hard_aug",
    "few_soft",
    "few_soft_aug",
    "few_soft_unlab",
    "few_soft_unlab_aug",
)
# Each KD recipe against the scratch run with the same augmentation.
BASELINE = {"kd": "scratch", "kd_aug": "scratch_aug", "kd_aug_mixup": "scratch_aug"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=int, nargs="+", default=[20, 60])
    parser.add_argument("--configs", nargs="+", default=list(FULL + FEW))
    parser.add_argument("--labeled", type=int, default=150)
    parser.add_argument(
        "--few-epochs", type=int, default=None, help="default: the first budget"
    )
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument(
        "--teacher-filters", type=int, nargs=2, default=[16, 32], metavar=("F1", "F2")
    )
    parser.add_argument("--teacher-units", type=int, default=64)
    parser.add_argument(
        "--student",
        choices=["mlp", "convnet"],
        default="mlp",
        help="mlp: MLP(100, 100); convnet: mnist_convnet((8, 16), units=32)",
    )
    parser.add_argument("--teacher-path", default="artifacts/bench/teacher.weights.h5")
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--mixup-alpha", type=float, default=0.4)
    parser.add_argument("--shift", type=float, default=0.1, help="fraction of 28 px")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--out", default="artifacts/bench/accuracy_recipes.jsonl")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument(
        "--also", nargs="*", default=[], help="more result files for the table"
    )
    return parser.parse_args(argv)


def shift(args, seed):
    return keras.layers.RandomTranslation(
        args.shift, args.shift, fill_mode="constant", seed=seed
    )


def optimizer(args, steps):
    schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate, steps)
    return keras.optimizers.Adam(schedule)


def accuracy_metric():
    return keras.metrics.SparseCategoricalAccuracy(name="accuracy")


def test_accuracy(student, test):
    student.compile(metrics=[accuracy_metric()], loss=None)
    logits = student.predict(test[0], batch_size=1000, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == test[1]))


def get_teacher(args, train, test):
    keras.utils.set_random_seed(0)
    teacher = keras_kd.models.mnist_convnet(
        tuple(args.teacher_filters), units=args.teacher_units, name="teacher"
    )
    if os.path.exists(args.teacher_path):
        teacher.load_weights(args.teacher_path)
        return teacher, test_accuracy(teacher, test)
    steps = args.teacher_epochs * int(np.ceil(len(train[0]) / args.batch_size))
    model = keras.Sequential([shift(args, 0), teacher])
    model.compile(
        optimizer=optimizer(args, steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(*train, batch_size=args.batch_size, epochs=args.teacher_epochs, verbose=0)
    os.makedirs(os.path.dirname(args.teacher_path) or ".", exist_ok=True)
    teacher.save_weights(args.teacher_path)
    return teacher, test_accuracy(teacher, test)


def make_student(args):
    if args.student == "convnet":
        return keras_kd.models.mnist_convnet((8, 16), units=32, name="student")
    return keras_kd.models.mnist_mlp((100, 100), name="student")


def train_scratch(args, x, y, epochs, seed, augment):
    student = make_student(args)
    model = keras.Sequential([shift(args, seed), student]) if augment else student
    steps = epochs * int(np.ceil(len(x) / args.batch_size))
    model.compile(
        optimizer=optimizer(args, steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=args.batch_size, epochs=epochs, verbose=0)
    return student


def train_kd(args, teacher, x, y, epochs, seed, augment, mixup=False, cache=False):
    student = make_student(args)
    distiller = keras_kd.Distiller(
        student,
        teacher,
        augmentation=shift(args, seed) if augment else None,
        mixup_alpha=args.mixup_alpha if mixup else None,
    )
    steps = epochs * int(np.ceil(len(x) / args.batch_size))
    distiller.compile(
        optimizer=optimizer(args, steps),
        alpha=args.alpha,
        temperature=args.temperature,
    )
    logits = keras_kd.cache_teacher_outputs(teacher, x) if cache else None
    distiller.fit(
        x,
        y,
        teacher_logits=logits,
        batch_size=args.batch_size,
        epochs=epochs,
        verbose=0,
    )
    return student


def run(args, config, seed, epochs, teacher, train, test):
    keras.utils.set_random_seed(seed)
    x, y = train
    few = config.startswith("few_")
    augment = config.endswith("_aug") or "_aug_" in config
    if few:
        repeats = int(np.ceil(len(x) / args.labeled))
        labeled = (x[: args.labeled], y[: args.labeled])
        repeated = tuple(np.concatenate([part] * repeats) for part in labeled)
        partial = (x, np.where(np.arange(len(y)) < args.labeled, y, -1))
    if config in ("scratch", "scratch_aug"):
        student = train_scratch(args, x, y, epochs, seed, augment)
    elif config == "kd":
        student = train_kd(args, teacher, x, y, epochs, seed, False, cache=True)
    elif config in ("kd_aug", "kd_aug_mixup"):
        student = train_kd(args, teacher, x, y, epochs, seed, True, "mixup" in config)
    elif config.startswith("few_hard"):
        student = train_scratch(args, *repeated, epochs, seed, augment)
    elif config.startswith("few_soft_unlab"):
        student = train_kd(
            args, teacher, *partial, epochs, seed, augment, cache=not augment
        )
    elif config.startswith("few_soft"):
        student = train_kd(
            args, teacher, *repeated, epochs, seed, augment, cache=not augment
        )
    else:
        raise ValueError(f"Unknown config {config!r}.")
    return test_accuracy(student, test)


def teacher_name(args):
    first, second = args.teacher_filters
    return f"mnist_convnet(({first}, {second}), {args.teacher_units})"


DEFAULT_TEACHER = teacher_name(parse_args([]))


def table(rows, teacher_accuracy, args):
    """The runs of `rows` made with this student and teacher, over seeds."""
    results = {}
    for row in rows:
        if row.get("student", "mlp") != args.student:
            continue
        # Rows written before the flags existed were all made with the defaults.
        if row.get("teacher", DEFAULT_TEACHER) != teacher_name(args):
            continue
        name = row["config"]
        if "kd" in name or "soft" in name:
            name += f" (T={row['temperature']:g}, alpha={row['alpha']:g})"
        results.setdefault((name, row["epochs"]), {})[row["seed"]] = row["accuracy"]
    lines = [
        f"student {args.student}; teacher {teacher_name(args)}, trained once: "
        f"{teacher_accuracy:.4f}",
        "",
        "| run | epochs | seeds | test accuracy (mean ± std) | gap recovered |",
        "|---|---|---|---|---|",
    ]
    order = {name: i for i, name in enumerate(FULL + FEW)}
    for config, epochs in sorted(
        results, key=lambda k: (k[1], order.get(k[0].split()[0], 99), k[0])
    ):
        values = results[(config, epochs)]
        accs = np.array([values[s] for s in sorted(values)])
        gap = ""
        base = results.get((BASELINE.get(config.split()[0]), epochs))
        if base:
            seeds = sorted(set(values) & set(base))
            ours = np.mean([values[s] for s in seeds])
            theirs = np.mean([base[s] for s in seeds])
            gap = f"{(ours - theirs) / (teacher_accuracy - theirs):.0%}"
        lines.append(
            f"| {config} | {epochs} | {len(accs)} | "
            f"{accs.mean():.4f} ± {accs.std(ddof=1) if len(accs) > 1 else 0:.4f} | "
            f"{gap} |"
        )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    train, test = keras_kd.datasets.load_mnist()
    teacher, teacher_accuracy = get_teacher(args, train, test)
    print(f"teacher test accuracy {teacher_accuracy:.4f}", flush=True)
    if not args.table_only:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        full = [c for c in args.configs if c in FULL]
        few = [c for c in args.configs if c in FEW]
        # The first budget and the few-labels runs first, then longer budgets.
        first, *longer = args.budgets
        few_epochs = args.few_epochs or first
        jobs = [(c, first, s) for s in args.seeds for c in full]
        jobs += [(c, few_epochs, s) for s in args.seeds for c in few]
        jobs += [(c, e, s) for e in longer for s in args.seeds for c in full]
        for config, epochs, seed in jobs:
            start = time.perf_counter()
            accuracy = run(args, config, seed, epochs, teacher, train, test)
            row = {
                "config": config,
                "epochs": epochs,
                "seed": seed,
                "accuracy": accuracy,
                "seconds": round(time.perf_counter() - start, 1),
                "temperature": args.temperature,
                "alpha": args.alpha,
                "mixup_alpha": args.mixup_alpha,
                "shift": args.shift,
                "labeled": args.labeled,
                "student": args.student,
                "teacher": teacher_name(args),
            }
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    rows = []
    for path in [args.out, *args.also]:
        with open(path) as f:
            rows += [json.loads(line) for line in f if line.strip()]
    print(table(rows, teacher_accuracy, args))


if __name__ == "__main__":
    main()
