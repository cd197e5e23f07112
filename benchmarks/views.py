"""Online function matching against the view cache, side by side (issue #16).

The MNIST pair of RESULTS.md's recipe (issue #8): teacher
`mnist_convnet((16, 32), units=64)` trained once with the random shift,
student `mnist_mlp((100, 100))`, Adam 1e-3 with cosine decay, batch 64, KD
alpha 0.1, T 1, the bundled 5,000 training images. Per seed, one after the
other, the same epochs for every row:

- `kd`: no augmentation, teacher logits cached;
- `online`: consistent shift online (`RandomTranslation(0.1, 0.1)`, constant
  fill, in the Distiller: the teacher runs on every step);
- `views_K`: `cache_teacher_views` with `ShiftFlip(3)` (integer shifts up to
  3 px, parameters stored), K in `--views`;
- `subpixel_K`: `ShiftFlip(2.8, subpixel=True)`, the online row's
  translation (bilinear, zero fill) with its parameters stored, K in
  `--subpixel-views`;
- `pixels_K`: K recorded views of the online row's `RandomTranslation`,
  pixels stored, K in `--pixel-views`.

Time is the wall clock of the whole row, cache build included; each row's
time is divided by the online row's of the same seed, and the median over
seeds is reported. "Gain kept" is `(row - kd) / (online - kd)`.

    python -m benchmarks.views --seeds 0 1 2 --epochs 80
    python -m benchmarks.views --seeds 0 --epochs 2 --views 4  # smoke
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_kd  # noqa: E402
from benchmarks import accuracy_recipes as recipes  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--views", type=int, nargs="*", default=[4, 16, 64])
    parser.add_argument("--pixel-views", type=int, nargs="*", default=[16])
    parser.add_argument("--subpixel-views", type=int, nargs="*", default=[16, 64])
    parser.add_argument("--out", default="artifacts/bench/views.jsonl")
    args, _ = parser.parse_known_args(argv)
    recipe = recipes.parse_args(["--temperature", "1"])
    for key, value in vars(args).items():
        setattr(recipe, key, value)
    return recipe


def rows(args, teacher, seed, x, y):
    """`{row: (build, augmentation)}`; `build()` gives `fit`'s data and options."""
    batch = {"batch_size": args.batch_size}

    def cached():
        logits = keras_kd.cache_teacher_outputs(teacher, x, verbose=0)
        return (x, y), {"teacher_logits": logits, **batch}

    def views(augmentation, count):
        def build():
            cache = keras_kd.cache_teacher_views(
                teacher, x, augmentation, num_views=count, seed=seed, verbose=0
            )
            return (cache.dataset(x, y, seed=seed, **batch),), {}

        return build

    table = {"kd": (cached, None), "online": (lambda: ((x, y), batch), "shift")}
    for count in args.views:
        table[f"views_{count}"] = (views(keras_kd.views.ShiftFlip(3), count), None)
    subpixel = keras_kd.views.ShiftFlip(args.shift * 28, subpixel=True)
    for count in args.subpixel_views:
        table[f"subpixel_{count}"] = (views(subpixel, count), None)
    for count in args.pixel_views:
        table[f"pixels_{count}"] = (views(recipes.shift(args, seed), count), None)
    return table


def run_seed(args, teacher, seed, train, test):
    results = {}
    for name, (build, augmentation) in rows(args, teacher, seed, *train).items():
        start = time.perf_counter()
        data, options = build()
        keras.utils.set_random_seed(seed)
        student = recipes.make_student(args)
        distiller = keras_kd.Distiller(
            student,
            teacher,
            augmentation=recipes.shift(args, seed) if augmentation else None,
        )
        steps = args.epochs * int(np.ceil(len(train[0]) / args.batch_size))
        distiller.compile(
            optimizer=recipes.optimizer(args, steps),
            alpha=args.alpha,
            temperature=args.temperature,
        )
        distiller.fit(*data, epochs=args.epochs, verbose=0, **options)
        seconds = time.perf_counter() - start
        results[name] = (recipes.test_accuracy(student, test), seconds)
        print(f"seed {seed} {name}: {results[name]}", flush=True)
    return results


def table(runs):
    print("\n| row | test accuracy | gain kept | time / online (median) |")
    print("|---|---|---|---|")
    for name in runs[0]:
        accuracy = np.array([run[name][0] for run in runs])
        gains = [
            (run[name][0] - run["kd"][0]) / (run["online"][0] - run["kd"][0])
            for run in runs
        ]
        ratio = np.median([run[name][1] / run["online"][1] for run in runs])
        spread = f" ± {accuracy.std(ddof=1):.4f}" if len(runs) > 1 else ""
        print(
            f"| {name} | {accuracy.mean():.4f}{spread} | "
            f"{np.mean(gains):.0%} | {ratio:.2f} |"
        )


def main(argv=None):
    args = parse_args(argv)
    train, test = keras_kd.datasets.load_mnist()
    teacher, teacher_accuracy = recipes.get_teacher(args, train, test)
    print(f"teacher: {teacher_accuracy:.4f}", flush=True)
    runs = []
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for seed in args.seeds:
        runs.append(run_seed(args, teacher, seed, train, test))
        with open(args.out, "a") as handle:
            handle.write(json.dumps({"seed": seed, "epochs": args.epochs, **runs[-1]}))
            handle.write("\n")
    table(runs)


if __name__ == "__main__":
    main()
