"""Peak memory and time per step of token-level KD at large vocabularies (#14).

Rows, each in its own process:

- `alone`: the student trained alone on the labels (sparse cross-entropy);
- `unchunked`: `Distiller(alpha=0.5)` with the forward-KL
  `TokenDivergence` through autodiff;
- `chunked`: the same with `chunk_size=--chunk` positions per sequence.

Peak memory is Linux's high-water mark of the resident set (`VmHWM`), reset
(`/proc/self/clear_refs`) when training begins (after `fit`'s checks),
minus the resident set then: the training steps' own memory, tracing
included. The children run with `MALLOC_MMAP_THRESHOLD_=65536`: glibc's
dynamic threshold would keep freed chunks of up to 32 MB resident in the
heap, and the peak would count them.

The student is `Embedding(vocab, 64) -> Dense(vocab)`, the teacher the same
at width 128, batch x length `--batch x --length` random tokens, Adam; 6
steps, the time per step is the median of the last 5. Rows are alternated
over `--repetitions` (rotated order), and the ratios to `alone` are the
median of the per-repetition ratios.

    python -m benchmarks.token_memory --vocab 32000 256000 --repetitions 3

`--cache-sizes` instead prints the bytes per token of the teacher caches
(`cache_teacher_outputs` on the same batch: dense float16, and top-k at
`--top-k`), read off the arrays themselves:

    python -m benchmarks.token_memory --vocab 4096 32000 256000 --cache-sizes
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROWS = ("alone", "unchunked", "chunked")


def language_model(vocab, width, length, name):
    import keras

    return keras.Sequential(
        [
            keras.Input((length,), dtype="int32"),
            keras.layers.Embedding(vocab, width),
            keras.layers.Dense(vocab),
        ],
        name=name,
    )


def _status_mb(key):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def reset_peak():
    """Sets the peak resident set (VmHWM) to the current one (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


class StepTimes:
    def __init__(self):
        import keras

        class Callback(keras.callbacks.Callback):
            def on_train_begin(inner, logs=None):
                reset_peak()
                self.before = _status_mb("VmRSS:")

            def on_train_batch_begin(inner, batch, logs=None):
                inner.start = time.perf_counter()

            def on_train_batch_end(inner, batch, logs=None):
                self.times.append(time.perf_counter() - inner.start)

        self.times = []
        self.callback = Callback()


def run_row(row, vocab, batch, length, chunk):
    """`{"peak_mb", "step_s"}` of one row, in this process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    import keras_kd

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    steps = 6
    x = rng.integers(0, vocab, size=(batch * steps, length)).astype("int32")
    y = rng.integers(0, vocab, size=(batch * steps, length)).astype("int32")
    student = language_model(vocab, 64, length, "student")
    sce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if row == "alone":
        model = student
        model.compile(keras.optimizers.Adam(1e-3), sce)
    else:
        teacher = language_model(vocab, 128, length, "teacher")
        loss = keras_kd.losses.TokenDivergence(
            "forward_kl", chunk_size=chunk if row == "chunked" else None
        )
        model = keras_kd.Distiller(student=student, teacher=teacher)
        model.compile(keras.optimizers.Adam(1e-3), alpha=0.5, distillation_loss_fn=loss)
    times = StepTimes()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=[times.callback])
    peak = _status_mb("VmHWM:") - times.before
    return {"peak_mb": peak, "step_s": statistics.median(times.times[1:])}


def child(row, args):
    command = [
        sys.executable,
        "-m",
        "benchmarks.token_memory",
        "--row",
        row,
        "--vocab",
        str(args.vocab[0]),
        "--batch",
        str(args.batch),
        "--length",
        str(args.length),
        "--chunk",
        str(args.chunk),
    ]
    # A fixed mmap threshold turns off glibc's dynamic one, under which freed
    # blocks of up to 32 MB stay in the heap, resident, and the peak counts
    # dead chunks.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    output = subprocess.run(
        command, check=True, capture_output=True, text=True, env=env
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def cache_sizes(vocabularies, batch, length, ks):
    """Prints bytes per token of dense and top-k caches, per vocabulary."""
    import numpy as np

    import keras_kd

    print("| vocab | cache | bytes per token | x dense float16 |")
    print("|---|---|---|---|")
    for vocab in vocabularies:
        teacher = language_model(vocab, 128, length, "teacher")
        x = np.random.default_rng(0).integers(0, vocab, size=(batch, length))
        tokens = batch * length
        dense = keras_kd.cache_teacher_outputs(teacher, x, dtype="float16", verbose=0)
        print(f"| {vocab} | dense float16 | {dense.nbytes / tokens:.0f} | 1 |")
        for k in ks:
            cache = keras_kd.cache_teacher_outputs(teacher, x, top_k=k, verbose=0)
            assert cache.dense_nbytes("float16") == dense.nbytes
            print(
                f"| {vocab} | top-{k} ({cache.indices.dtype} ids) "
                f"| {cache.nbytes / tokens:.0f} | {cache.nbytes / dense.nbytes:.4f} |",
                flush=True,
            )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 256000])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--row", choices=ROWS, default=None, help="(internal)")
    parser.add_argument("--cache-sizes", action="store_true")
    parser.add_argument("--top-k", type=int, nargs="+", default=[8, 32])
    args = parser.parse_args(argv)
    if args.cache_sizes:
        cache_sizes(args.vocab, args.batch, args.length, args.top_k)
        return
    if args.row is not None:
        print(
            json.dumps(
                run_row(args.row, args.vocab[0], args.batch, args.length, args.chunk)
            )
        )
        return
    print(
        f"batch {args.batch} x length {args.length}, chunk {args.chunk}, "
        f"{args.repetitions} repetitions\n"
    )
    print("| vocab | row | peak MB (median) | x alone | step s (median) | x alone |")
    print("|---|---|---|---|---|---|")
    for vocab in args.vocab:
        one = argparse.Namespace(**{**vars(args), "vocab": [vocab]})
        runs = {row: [] for row in ROWS}
        for repetition in range(args.repetitions):
            order = ROWS[repetition % 3 :] + ROWS[: repetition % 3]
            for row in order:
                runs[row].append(child(row, one))
            print(f"# vocab {vocab} repetition {repetition}: {runs}", file=sys.stderr)
        for row in ROWS:
            memory = [
                r["peak_mb"] / a["peak_mb"] for r, a in zip(runs[row], runs["alone"])
            ]
            speed = [
                r["step_s"] / a["step_s"] for r, a in zip(runs[row], runs["alone"])
            ]
            peak = statistics.median(r["peak_mb"] for r in runs[row])
            step = statistics.median(r["step_s"] for r in runs[row])
            print(
                f"| {vocab} | {row} | {peak:.0f} | {statistics.median(memory):.2f} "
                f"| {step:.3f} | {statistics.median(speed):.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
