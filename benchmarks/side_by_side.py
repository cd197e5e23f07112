"""Distillation cost side by side: keras_kd against the alternatives, one process.

On the same data (the bundled MNIST split), models (the keras.io example's CNN
teacher, 256/512 channels, and its 16/32 student), batch size and epochs, it
times and scores:

  student alone             the student trained on labels, no teacher
  teacher inference pass    one `predict` over the training set (a yardstick)
  keras_kd online           `Distiller.fit`, the teacher runs every step
  keras_kd online, XLA      the same, `compile(jit_compile=True)`
  keras_kd cached           `cache_teacher_outputs` (timed, included) + `fit`
  keras.distillation        Keras' built-in Distiller with `KLDivergence()`
  keras.io pattern          the keras.io example as published for Keras 3
  PyTorch student alone     a plain PyTorch loop, same architecture
  PyTorch distillation      a plain PyTorch KD loop (teacher under no_grad)

Times are printed as ratios to the "student alone" row, measured in this one
run. Peak memory is measured separately, each row alone in a fresh child
process (2 epochs, Linux VmHWM), so that one row's allocations do not show
up in the next. A third table grows the teacher and the data, timing steady
epochs (the first, which traces, excluded).

    python benchmarks/side_by_side.py                 # about 30 minutes on 2 cores
    python benchmarks/side_by_side.py --epochs 2 --num-train 1000 --no-scaling  # smoke
    python benchmarks/side_by_side.py --only scaling  # or --only main, --only memory

PyTorch rows need `pip install -e .[bench]`; without torch they are skipped.
This script runs Keras on TensorFlow; `benchmarks/backends.py` measures the
same pair on each Keras backend (TensorFlow, JAX, PyTorch), one process each.
"""

import argparse
import os
import platform
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

import keras_kd  # noqa: E402

ALPHA, TEMPERATURE, BATCH = 0.1, 10.0, 64


def reset_peak_memory():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def accuracy(predict, x, y):
    return float(np.mean(np.argmax(predict(x), axis=-1) == y))


def keras_predict(model):
    return lambda x: model.predict(x, batch_size=1024, verbose=0)


def label_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class KerasIODistiller(keras.Model):
    """The keras.io "Knowledge Distillation" example's Distiller, as published.

    Kept as is, defects included (the teacher stays trainable), because this is
    the code most users copied.
    """

    def __init__(self, student, teacher):
        super().__init__()
        self.teacher = teacher
        self.student = student

    def compile(
        self,
        optimizer,
        metrics,
        student_loss_fn,
        distillation_loss_fn,
        alpha=0.1,
        temperature=3,
    ):
        super().compile(optimizer=optimizer, metrics=metrics)
        self.student_loss_fn = student_loss_fn
        self.distillation_loss_fn = distillation_loss_fn
        self.alpha = alpha
        self.temperature = temperature

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, allow_empty=False
    ):
        teacher_pred = self.teacher(x, training=False)
        student_loss = self.student_loss_fn(y, y_pred)
        distillation_loss = self.distillation_loss_fn(
            ops.softmax(teacher_pred / self.temperature, axis=1),
            ops.softmax(y_pred / self.temperature, axis=1),
        ) * (self.temperature**2)
        return self.alpha * student_loss + (1 - self.alpha) * distillation_loss

    def call(self, x):
        return self.student(x)


def make_student(seed):
    keras.utils.set_random_seed(seed)
    return keras_kd.models.mnist_cnn((16, 32), name="student")


def run_student_alone(x, y, epochs, seed):
    student = make_student(seed)
    student.compile(optimizer="adam", loss=label_loss())
    student.fit(x, y, epochs=epochs, batch_size=BATCH, verbose=0)
    return student


def run_inference_pass(teacher, x):
    teacher.predict(x, batch_size=BATCH, verbose=0)


def run_keras_kd(teacher, x, y, epochs, seed, cached=False, jit_compile="auto"):
    student = make_student(seed)
    distiller = keras_kd.Distiller(student, teacher)
    distiller.compile(
        optimizer="adam", alpha=ALPHA, temperature=TEMPERATURE, jit_compile=jit_compile
    )
    logits = keras_kd.cache_teacher_outputs(teacher, x) if cached else None
    distiller.fit(
        x, y, teacher_logits=logits, epochs=epochs, batch_size=BATCH, verbose=0
    )
    return student


def run_builtin(teacher, x, y, epochs, seed):
    student = make_student(seed)
    distiller = keras.distillation.Distiller(
        teacher=teacher,
        student=student,
        distillation_losses=keras.distillation.LogitsDistillation(
            temperature=TEMPERATURE, loss=keras.losses.KLDivergence()
        ),
        student_loss_weight=ALPHA,
    )
    distiller.compile(optimizer="adam", loss=label_loss())
    distiller.fit(x, y, epochs=epochs, batch_size=BATCH, verbose=0)
    return student


def run_keras_io(teacher, x, y, epochs, seed):
    student = make_student(seed)
    distiller = KerasIODistiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer=keras.optimizers.Adam(),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
        student_loss_fn=label_loss(),
        distillation_loss_fn=keras.losses.KLDivergence(),
        alpha=ALPHA,
        temperature=TEMPERATURE,
    )
    distiller.fit(x, y, epochs=epochs, batch_size=BATCH, verbose=0)
    return student


def torch_cnn(filters):
    """The keras.io CNN in PyTorch (NCHW), with TensorFlow's 'same' padding."""
    import torch
    from torch import nn

    first, second = filters

    class PadRightBottom(nn.Module):
        """TensorFlow's 'same' padding where it needs one extra row and column.

        For a 3x3 stride-2 convolution on an even size and a 2x2 stride-1
        pool, 'same' pads only the right and bottom edges; PyTorch's
        `padding=1` would pad all four and shift every window by a pixel.
        """

        def __init__(self, value=0.0):
            super().__init__()
            self.value = value

        def forward(self, x):
            return nn.functional.pad(x, (0, 1, 0, 1), value=self.value)

    return nn.Sequential(
        PadRightBottom(),
        nn.Conv2d(1, first, 3, stride=2),
        nn.LeakyReLU(0.2),
        PadRightBottom(float("-inf")),
        nn.MaxPool2d(2, stride=1),
        PadRightBottom(),
        nn.Conv2d(first, second, 3, stride=2),
        nn.Flatten(),
        nn.Linear(second * 7 * 7, 10),
    ).to(torch.float32)


def run_torch(x, y, epochs, seed, teacher=None):
    """A plain PyTorch training loop; with a teacher, Hinton's KD loss."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    images = torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy())
    labels = torch.from_numpy(y)
    student = torch_cnn((16, 32))
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), BATCH):
            index = order[start : start + BATCH]
            batch, target = images[index], labels[index]
            logits = student(batch)
            loss = F.cross_entropy(logits, target)
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(batch)
                kd = F.kl_div(
                    F.log_softmax(logits / TEMPERATURE, dim=1),
                    F.log_softmax(teacher_logits / TEMPERATURE, dim=1),
                    log_target=True,
                    reduction="batchmean",
                )
                loss = ALPHA * loss + (1 - ALPHA) * TEMPERATURE**2 * kd
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    student.eval()
    return student


def torch_predict(model):
    import torch

    def predict(x):
        with torch.no_grad():
            return model(torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy())).numpy()

    return predict


def train_teacher(filters, x, y, epochs, seed):
    keras.utils.set_random_seed(seed)
    teacher = keras_kd.models.mnist_cnn(filters, name="teacher")
    teacher.compile(optimizer="adam", loss=label_loss())
    if epochs:
        teacher.fit(x, y, epochs=epochs, batch_size=BATCH, verbose=0)
    return teacher


def torch_teacher_like(teacher, x):
    """A PyTorch copy of a trained Keras teacher: same weights, same logits.

    Raises `RuntimeError` if its logits on `x` differ from the Keras teacher's.
    """
    import torch

    model = torch_cnn((teacher.layers[0].filters, teacher.layers[3].filters))
    conv1, conv2, dense = teacher.layers[0], teacher.layers[3], teacher.layers[5]
    torch_conv1, torch_conv2, torch_dense = model[1], model[6], model[8]
    with torch.no_grad():
        for keras_conv, torch_conv in ((conv1, torch_conv1), (conv2, torch_conv2)):
            kernel = np.transpose(keras_conv.kernel.numpy(), (3, 2, 0, 1))
            torch_conv.weight.copy_(torch.from_numpy(kernel))
            torch_conv.bias.copy_(torch.from_numpy(keras_conv.bias.numpy()))
        # Keras flattens NHWC, PyTorch NCHW: permute the dense rows to match.
        channels = conv2.filters
        kernel = dense.kernel.numpy().reshape(7, 7, channels, 10).transpose(2, 0, 1, 3)
        torch_dense.weight.copy_(torch.from_numpy(kernel.reshape(-1, 10).T.copy()))
        torch_dense.bias.copy_(torch.from_numpy(dense.bias.numpy()))
    model.eval()
    expected = teacher.predict(x, verbose=0)
    difference = np.max(np.abs(torch_predict(model)(x) - expected))
    if difference > 1e-3 * max(1.0, np.max(np.abs(expected))):
        raise RuntimeError(f"PyTorch teacher differs from Keras': {difference:.2e}")
    return model


def have_torch():
    try:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        return True
    except ImportError:
        return False


def row_runners(teacher, x, y, epochs, seed):
    """Each row's work, as `name -> (function, how to predict with its result)`."""
    e, s = epochs, seed

    def keras_io():
        # The keras.io pattern updates its teacher: give it a copy.
        # `keras_kd.Distiller` froze `teacher`, and `clone_model` copies that
        # flag; a user's teacher copied from the example is trainable.
        teacher_copy = keras.models.clone_model(teacher)
        teacher_copy.set_weights(teacher.get_weights())
        teacher_copy.trainable = True
        student = run_keras_io(teacher_copy, x, y, e, s)
        student.teacher_changed = any(
            not np.array_equal(a.numpy(), b.numpy())
            for a, b in zip(teacher.weights, teacher_copy.weights)
        )
        return student

    runners = {
        "student alone": (lambda: run_student_alone(x, y, e, s), keras_predict),
        "teacher inference pass": (lambda: run_inference_pass(teacher, x), None),
        "keras_kd online": (lambda: run_keras_kd(teacher, x, y, e, s), keras_predict),
        "keras_kd online, XLA": (
            lambda: run_keras_kd(teacher, x, y, e, s, jit_compile=True),
            keras_predict,
        ),
        CACHE_BUILD: (lambda: keras_kd.cache_teacher_outputs(teacher, x), None),
        "keras_kd cached": (
            lambda: run_keras_kd(teacher, x, y, e, s, cached=True),
            keras_predict,
        ),
        "keras.distillation": (lambda: run_builtin(teacher, x, y, e, s), keras_predict),
        "keras.io pattern": (keras_io, keras_predict),
    }
    if have_torch():
        torch_teacher = torch_teacher_like(teacher, x[:256])
        runners["PyTorch student alone"] = (
            lambda: run_torch(x, y, e, s),
            torch_predict,
        )
        runners["PyTorch distillation"] = (
            lambda: run_torch(x, y, e, s, torch_teacher),
            torch_predict,
        )
    return runners


CACHE_BUILD = "  cache build (in the row below)"


def main_table(args, x, y, x_test, y_test):
    teacher = train_teacher((256, 512), x, y, args.teacher_epochs, args.seed)
    teacher_weights = [w.numpy() for w in teacher.weights]
    rows = []
    io_changed = None
    for name, (run, predict_of) in row_runners(
        teacher, x, y, args.epochs, args.seed
    ).items():
        start = time.perf_counter()
        model = run()
        seconds = time.perf_counter() - start
        score = None
        if predict_of is not None:
            score = accuracy(predict_of(model), x_test, y_test)
        io_changed = getattr(model, "teacher_changed", io_changed)
        rows.append((name, seconds, score))
        print(f"  measured {name}: {seconds:.1f} s", flush=True)
    unchanged = all(
        np.array_equal(a, b.numpy()) for a, b in zip(teacher_weights, teacher.weights)
    )
    print_main_table(rows, args, teacher, x_test, y_test)
    print(f"teacher unchanged by keras_kd and keras.distillation: {unchanged}")
    print(f"teacher changed by the keras.io pattern: {io_changed}")
    return rows


def print_main_table(rows, args, teacher, x_test, y_test):
    base = rows[0][1]
    print(
        f"\n{args.epochs} epochs, {args.num_train} images, batch {BATCH}; teacher CNN "
        f"256/512 ({teacher.count_params():,} params, test accuracy "
        f"{accuracy(keras_predict(teacher), x_test, y_test):.4f}), student CNN 16/32\n"
    )
    print("| method | time (s) | time / student alone | accuracy |")
    print("|---|---|---|---|")
    for name, seconds, score in rows:
        acc = f"{score:.4f}" if score is not None else ""
        print(f"| {name} | {seconds:.1f} | {seconds / base:.2f}x | {acc} |")
    times = {name: seconds for name, seconds, _ in rows}
    student, teacher_pass = times["student alone"], times["teacher inference pass"]
    online = times["keras_kd online"]
    online_xla = times["keras_kd online, XLA"]
    cached = times["keras_kd cached"]  # `run_keras_kd` builds its cache: included
    build = times[CACHE_BUILD]  # the same build, timed on its own
    builtin = times["keras.distillation"]
    yardstick = student + args.epochs * teacher_pass
    print(
        "\nonline / (student alone + one teacher pass per epoch): "
        f"{online / yardstick:.2f} (XLA {online_xla / yardstick:.2f})"
        f"\nonline / keras.distillation: {online / builtin:.2f} "
        f"(XLA {online_xla / builtin:.2f})"
        f"\ncached total (build included) / keras.distillation: {cached / builtin:.2f}"
        "\ncached epochs (build excluded) / student alone: "
        f"{(cached - build) / student:.2f}"
    )
    if "PyTorch distillation" in times:
        torch_kd = times["PyTorch distillation"]
        print(
            f"online / PyTorch distillation: {online / torch_kd:.2f}; cached (build "
            f"included) / PyTorch distillation: {cached / torch_kd:.2f}"
        )


def memory_row(args, name):
    """Runs one row alone in this (fresh) process; prints its peak memory."""
    (x, y), _ = keras_kd.datasets.load_mnist(num_train=args.num_train)
    # Weight values do not change memory: an untrained teacher will do.
    teacher = train_teacher((256, 512), x, y, 0, args.seed)
    runners = row_runners(teacher, x, y, args.epochs, args.seed)
    if name == "keras_kd cached":
        name = CACHE_BUILD + "+cached"
        logits = keras_kd.cache_teacher_outputs(teacher, x)
        print(f"CACHE_MB {logits.nbytes / 2**20:.2f}")
        reset_peak_memory()
        runners[name] = runners["keras_kd cached"]
    reset_peak_memory()
    runners[name][0]()
    print(f"PEAK_MB {peak_memory_mb():.0f}")


def memory_table(args):
    """Each row in its own process: peak resident memory, 2 epochs."""
    names = [
        "student alone",
        "teacher inference pass",
        "keras_kd online",
        "keras_kd online, XLA",
        "keras_kd cached",
        "keras.distillation",
        "keras.io pattern",
    ]
    if have_torch():
        names += ["PyTorch student alone", "PyTorch distillation"]
    peaks, cache_mb = {}, 0.0
    for name in names:
        command = [sys.executable, os.path.abspath(__file__), "--memory-row", name]
        command += ["--epochs", "2", "--num-train", str(args.num_train)]
        output = subprocess.run(
            command, capture_output=True, text=True, check=True
        ).stdout
        for line in output.splitlines():
            if line.startswith("PEAK_MB"):
                peaks[name] = float(line.split()[1])
            if line.startswith("CACHE_MB"):
                cache_mb = float(line.split()[1])
        print(f"  measured memory of {name}: {peaks[name]:,.0f} MB", flush=True)
    base = max(peaks["student alone"], peaks["teacher inference pass"])
    print(
        "\nPeak resident memory, each row alone in a fresh process (2 epochs; "
        "TensorFlow and the data included). Ratio to the larger of student "
        "training and teacher inference; the cached row's cache is "
        f"{cache_mb:.2f} MB.\n"
    )
    print("| method | peak memory (MB) | / max(student alone, teacher pass) |")
    print("|---|---|---|")
    for name in names:
        print(f"| {name} | {peaks[name]:,.0f} | {peaks[name] / base:.2f}x |")


class EpochTimes(keras.callbacks.Callback):
    """Wall time of each epoch of a `fit`."""

    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)


def steady_epoch(model, x, y, epochs=6, **fit_kwargs):
    """Median time of the epochs of `model.fit` after the first (which traces).

    Epochs of a few thousand images last a fraction of a second here: the
    median of five resists the odd slow epoch that a mean would carry.
    """
    timer = EpochTimes()
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=epochs,
        verbose=0,
        callbacks=[timer],
        **fit_kwargs,
    )
    return float(np.median(timer.times[1:]))


def scaling_table(args, x_all, y_all):
    print(
        "\nHow cost grows: the median epoch after the first (tracing excluded), as a "
        "ratio to a student-alone epoch on the same data; the cache build is "
        "one teacher pass, shown separately"
    )
    print(
        "| teacher | images | student epoch (s) | keras_kd online | "
        "keras.distillation | keras_kd cached | cache build |"
    )
    print("|---|---|---|---|---|---|---|")
    loss = label_loss()
    for filters in [(64, 128), (128, 256), (256, 512)]:
        teacher = train_teacher(filters, x_all, y_all, 0, args.seed)
        for count in [1250, 2500, 5000]:
            x, y = x_all[:count], y_all[:count]

            student = make_student(args.seed)
            student.compile(optimizer="adam", loss=loss)
            alone = steady_epoch(student, x, y)
            distiller = keras_kd.Distiller(make_student(args.seed), teacher)
            distiller.compile(optimizer="adam", alpha=ALPHA, temperature=TEMPERATURE)
            online = steady_epoch(distiller, x, y)
            builtin = keras.distillation.Distiller(
                teacher=teacher,
                student=make_student(args.seed),
                distillation_losses=keras.distillation.LogitsDistillation(
                    temperature=TEMPERATURE, loss=keras.losses.KLDivergence()
                ),
                student_loss_weight=ALPHA,
            )
            builtin.compile(optimizer="adam", loss=loss)
            built_in = steady_epoch(builtin, x, y)
            start = time.perf_counter()
            logits = keras_kd.cache_teacher_outputs(teacher, x)
            build = time.perf_counter() - start
            distiller = keras_kd.Distiller(make_student(args.seed), teacher)
            distiller.compile(optimizer="adam", alpha=ALPHA, temperature=TEMPERATURE)
            cached = steady_epoch(distiller, x, y, teacher_logits=logits)
            print(
                f"| {filters[0]}/{filters[1]} ({teacher.count_params():,}) | {count} "
                f"| {alone:.2f} | {online / alone:.2f}x | {built_in / alone:.2f}x "
                f"| {cached / alone:.2f}x | {build / alone:.2f}x |",
                flush=True,
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--num-train", type=int, default=5000)
    parser.add_argument("--teacher-epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument(
        "--only",
        choices=["main", "memory", "scaling"],
        default=None,
        help="run one table only",
    )
    parser.add_argument("--memory-row", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_row:
        memory_row(args, args.memory_row)
        return
    (x, y), (x_test, y_test) = keras_kd.datasets.load_mnist(num_train=args.num_train)
    machine = platform.processor() or platform.machine()
    print(
        f"{time.strftime('%Y-%m-%d')}, {machine}, {os.cpu_count()} cores, "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}"
    )
    tables = {args.only} if args.only else {"main", "memory", "scaling"}
    if args.no_memory:
        tables.discard("memory")
    if args.no_scaling:
        tables.discard("scaling")
    if "main" in tables:
        main_table(args, x, y, x_test, y_test)
    if "memory" in tables:
        memory_table(args)
    if "scaling" in tables:
        scaling_table(args, *keras_kd.datasets.load_mnist()[0])


if __name__ == "__main__":
    main()
