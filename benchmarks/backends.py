"""Distillation cost on each Keras backend: TensorFlow, JAX and PyTorch, side by side.

The keras.io pair of `side_by_side.py` (CNN 256/512 teacher trained one
epoch, CNN 16/32 student), the bundled 5,000 MNIST images, batch 64, on each
backend in its own process (Keras fixes the backend at import). Per backend:

  student alone         the student trained on labels
  teacher pass          one `predict` over the training set
  keras_kd online       `Distiller.fit`, the teacher runs every step
  keras_kd cached       `cache_teacher_outputs` (included) + `fit`
  keras.distillation    Keras' built-in Distiller on the same backend

The "physical limit" of online distillation is the student's training plus
one teacher pass per epoch. Each repetition runs the three backends in a
rotated order, and each backend's rows in a rotated order; a ratio is the
median over repetitions of the per-repetition ratios (these machines drift
by tens of percent within minutes). The teacher is trained once, on
TensorFlow, and every backend loads its weights.

    pip install -e ".[jax,torch]"
    python benchmarks/backends.py                      # about 20 minutes here
    python benchmarks/backends.py --epochs 2 --repetitions 1   # smoke
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BACKENDS = ("tensorflow", "jax", "torch")
ROWS = ("student alone", "teacher pass", "keras_kd online", "keras_kd cached")
ROWS += ("keras.distillation",)
TEACHER_FILTERS = (256, 512)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--num-train", type=int, default=5000)
    parser.add_argument("--out", default="artifacts/backends")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # JSON of one run
    parser.add_argument("--rotation", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def data(num_train):
    import keras_kd

    (x, y), _ = keras_kd.datasets.load_mnist()
    return x[:num_train], y[:num_train]


def teacher_path(args):
    return os.path.join(args.out, "teacher.weights.h5")


def child(args) -> None:
    """Times every row once on this process's backend; writes `{row: seconds}`."""
    import keras

    from benchmarks import side_by_side as sbs

    x, y = data(args.num_train)
    teacher = sbs.train_teacher(TEACHER_FILTERS, x, y, 0, seed=0)
    teacher.load_weights(teacher_path(args))
    runners = {
        "student alone": lambda: sbs.run_student_alone(x, y, args.epochs, 1),
        "teacher pass": lambda: sbs.run_inference_pass(teacher, x),
        "keras_kd online": lambda: sbs.run_keras_kd(teacher, x, y, args.epochs, 1),
        "keras_kd cached": lambda: sbs.run_keras_kd(
            teacher, x, y, args.epochs, 1, cached=True
        ),
        "keras.distillation": lambda: sbs.run_builtin(teacher, x, y, args.epochs, 1),
    }
    # Warm the backend up (thread pools, JIT caches): the first row of a
    # process would otherwise pay for it.
    sbs.run_student_alone(x[:256], y[:256], 1, 1)
    sbs.run_inference_pass(teacher, x[:256])
    order = ROWS[args.rotation % len(ROWS) :] + ROWS[: args.rotation % len(ROWS)]
    seconds = {}
    for row in order:
        start = time.perf_counter()
        runners[row]()
        seconds[row] = time.perf_counter() - start
    seconds["backend"] = keras.backend.backend()
    with open(args.child, "w") as f:
        json.dump(seconds, f)


def train_shared_teacher(args) -> None:
    from benchmarks import side_by_side as sbs

    x, y = data(args.num_train)
    teacher = sbs.train_teacher(TEACHER_FILTERS, x, y, 1, seed=0)
    teacher.save_weights(teacher_path(args))


def run_child(args, backend, repetition) -> dict:
    out = os.path.join(args.out, f"{backend}_{repetition}.json")
    command = [sys.executable, os.path.abspath(__file__), "--child", out]
    command += ["--epochs", str(args.epochs), "--num-train", str(args.num_train)]
    command += ["--out", args.out, "--rotation", str(repetition)]
    env = dict(os.environ, KERAS_BACKEND=backend)
    subprocess.run(command, env=env, check=True, cwd=REPO)
    with open(out) as f:
        return json.load(f)


def ratios(run: dict, epochs: int) -> dict:
    limit = run["student alone"] + epochs * run["teacher pass"]
    return {
        "online / student alone": run["keras_kd online"] / run["student alone"],
        "cached / student alone": run["keras_kd cached"] / run["student alone"],
        "keras.distillation / student alone": run["keras.distillation"]
        / run["student alone"],
        "online / physical limit": run["keras_kd online"] / limit,
        "online / keras.distillation": run["keras_kd online"]
        / run["keras.distillation"],
        "cached / keras.distillation": run["keras_kd cached"]
        / run["keras.distillation"],
    }


def report(runs: dict, epochs: int) -> str:
    """Markdown tables: per-backend ratios and backends against TensorFlow."""
    lines = ["| ratio (median of repetitions) | " + " | ".join(runs) + " |"]
    lines.append("|---" * (len(runs) + 1) + "|")
    per_backend = {b: [ratios(r, epochs) for r in rs] for b, rs in runs.items()}
    for key in per_backend[next(iter(runs))][0]:
        cells = [
            f"{statistics.median(r[key] for r in per_backend[b]):.2f}" for b in runs
        ]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "| row, time / TensorFlow's (median) | " + " | ".join(runs) + " |"]
    lines.append("|---" * (len(runs) + 1) + "|")
    for row in ROWS:
        cells = []
        for backend in runs:
            pairs = zip(runs[backend], runs["tensorflow"])
            cells.append(f"{statistics.median(a[row] / t[row] for a, t in pairs):.2f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    seconds = [
        f"{b}: "
        + ", ".join(
            f"{row} {statistics.median(r[row] for r in rs):.1f}" for row in ROWS
        )
        for b, rs in runs.items()
    ]
    return "\n".join(lines + ["", "Median seconds:"] + seconds)


def main():
    args = parse_args()
    if args.child:
        return child(args)
    os.makedirs(args.out, exist_ok=True)
    train_shared_teacher(args)
    runs = {backend: [] for backend in BACKENDS}
    for repetition in range(args.repetitions):
        shift = repetition % len(BACKENDS)
        for backend in BACKENDS[shift:] + BACKENDS[:shift]:
            runs[backend].append(run_child(args, backend, repetition))
            print(backend, repetition, runs[backend][-1], flush=True)
    text = report(runs, args.epochs)
    print(text)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "runs.json"), "w") as f:
        json.dump(runs, f, indent=1)


if __name__ == "__main__":
    main()
