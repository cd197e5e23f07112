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
run; peak memory is the process's peak resident set during the row (Linux
VmHWM, reset before each row). A second table grows the teacher and the data.

    python benchmarks/side_by_side.py                 # about 25 minutes on 2 cores
    python benchmarks/side_by_side.py --epochs 2 --num-train 1000 --no-scaling  # smoke

PyTorch rows need `pip install -e .[bench]`; without torch they are skipped.
"""

import argparse
import os
import platform
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


def measure(fn, *args, **kwargs):
    reset_peak_memory()
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, peak_memory_mb(), result


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

    class SamePadMaxPool(nn.Module):
        def forward(self, x):  # 2x2, stride 1, 'same': pad right and bottom
            x = nn.functional.pad(x, (0, 1, 0, 1), value=float("-inf"))
            return nn.functional.max_pool2d(x, 2, stride=1)

    return nn.Sequential(
        nn.Conv2d(1, first, 3, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        SamePadMaxPool(),
        nn.Conv2d(first, second, 3, stride=2, padding=1),
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


def torch_teacher_like(teacher):
    """A PyTorch copy of a trained Keras teacher (same weights, same logits)."""
    import torch

    model = torch_cnn((teacher.layers[0].filters, teacher.layers[3].filters))
    conv1, conv2, dense = teacher.layers[0], teacher.layers[3], teacher.layers[5]
    with torch.no_grad():
        model[0].weight.copy_(
            torch.from_numpy(np.transpose(conv1.kernel.numpy(), (3, 2, 0, 1)))
        )
        model[0].bias.copy_(torch.from_numpy(conv1.bias.numpy()))
        model[3].weight.copy_(
            torch.from_numpy(np.transpose(conv2.kernel.numpy(), (3, 2, 0, 1)))
        )
        model[3].bias.copy_(torch.from_numpy(conv2.bias.numpy()))
        # Keras flattens NHWC, PyTorch NCHW: permute the dense rows to match.
        channels = conv2.filters
        kernel = dense.kernel.numpy().reshape(7, 7, channels, 10).transpose(2, 0, 1, 3)
        model[5].weight.copy_(torch.from_numpy(kernel.reshape(-1, 10).T.copy()))
        model[5].bias.copy_(torch.from_numpy(dense.bias.numpy()))
    model.eval()
    return model


def have_torch():
    try:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        return True
    except ImportError:
        return False


def main_table(args, x, y, x_test, y_test):
    teacher = train_teacher((256, 512), x, y, args.teacher_epochs, args.seed)
    teacher_weights = [w.numpy() for w in teacher.weights]
    rows = []

    def add(name, fn, predict_of=keras_predict):
        seconds, memory, model = measure(fn)
        score = (
            accuracy(predict_of(model), x_test, y_test) if model is not None else None
        )
        rows.append((name, seconds, memory, score))
        print(f"  measured {name}: {seconds:.1f} s", flush=True)

    e, s = args.epochs, args.seed
    add("student alone", lambda: run_student_alone(x, y, e, s))
    add("teacher inference pass", lambda: run_inference_pass(teacher, x))
    add("keras_kd online", lambda: run_keras_kd(teacher, x, y, e, s))
    add(
        "keras_kd online, XLA",
        lambda: run_keras_kd(teacher, x, y, e, s, jit_compile=True),
    )
    seconds, memory, _ = measure(lambda: keras_kd.cache_teacher_outputs(teacher, x))
    rows.append(("  cache build (in the row below)", seconds, memory, None))
    add("keras_kd cached", lambda: run_keras_kd(teacher, x, y, e, s, cached=True))
    add("keras.distillation", lambda: run_builtin(teacher, x, y, e, s))
    unchanged = all(
        np.array_equal(a, b.numpy()) for a, b in zip(teacher_weights, teacher.weights)
    )
    # The keras.io pattern updates its teacher: give it a copy.
    teacher_copy = keras.models.clone_model(teacher)
    teacher_copy.set_weights(teacher.get_weights())
    add("keras.io pattern", lambda: run_keras_io(teacher_copy, x, y, e, s))
    io_changed = any(
        not np.array_equal(a, b.numpy())
        for a, b in zip(teacher_weights, teacher_copy.weights)
    )
    if have_torch():
        torch_teacher = torch_teacher_like(teacher)
        add("PyTorch student alone", lambda: run_torch(x, y, e, s), torch_predict)
        add(
            "PyTorch distillation",
            lambda: run_torch(x, y, e, s, torch_teacher),
            torch_predict,
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
    print("| method | time (s) | time / student alone | peak memory (MB) | accuracy |")
    print("|---|---|---|---|---|")
    for name, seconds, memory, score in rows:
        acc = f"{score:.4f}" if score is not None else ""
        ratio = f"{seconds / base:.2f}x"
        print(f"| {name} | {seconds:.1f} | {ratio} | {memory:,.0f} | {acc} |")
    times = {name: seconds for name, seconds, _, _ in rows}
    student, teacher_pass = times["student alone"], times["teacher inference pass"]
    online = times["keras_kd online"]
    cached = times["keras_kd cached"]  # build included
    build = times["  cache build (in the row below)"]
    builtin = times["keras.distillation"]
    print(
        "\nonline epoch / (student epoch + teacher pass): "
        f"{online / (student + args.epochs * teacher_pass):.2f}"
        f"\nonline / keras.distillation: {online / builtin:.2f}"
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


def scaling_table(args, x_all, y_all):
    print("\nHow cost grows: time / student alone at the same data size, 2 epochs")
    print(
        "| teacher | images | student alone (s) | keras_kd online | keras_kd cached "
        "| keras.distillation |"
    )
    print("|---|---|---|---|---|---|")
    for filters in [(64, 128), (128, 256), (256, 512)]:
        teacher = train_teacher(filters, x_all, y_all, 0, args.seed)
        for count in [1250, 2500, 5000]:
            data = (x_all[:count], y_all[:count], 2, args.seed)
            student, _, _ = measure(run_student_alone, *data)
            online, _, _ = measure(run_keras_kd, teacher, *data)
            cached, _, _ = measure(run_keras_kd, teacher, *data, cached=True)
            builtin, _, _ = measure(run_builtin, teacher, *data)
            print(
                f"| {filters[0]}/{filters[1]} ({teacher.count_params():,}) | {count} "
                f"| {student:.1f} | {online / student:.2f}x | {cached / student:.2f}x "
                f"| {builtin / student:.2f}x |",
                flush=True,
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--num-train", type=int, default=5000)
    parser.add_argument("--teacher-epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-scaling", action="store_true")
    args = parser.parse_args()
    (x, y), (x_test, y_test) = keras_kd.datasets.load_mnist(num_train=args.num_train)
    machine = platform.processor() or platform.machine()
    print(
        f"{time.strftime('%Y-%m-%d')}, {machine}, {os.cpu_count()} cores, "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}"
    )
    main_table(args, x, y, x_test, y_test)
    if not args.no_scaling:
        scaling_table(args, *keras_kd.datasets.load_mnist()[0])


if __name__ == "__main__":
    main()
