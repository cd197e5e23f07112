"""The compression report: teacher and students side by side, as deployed.

`compression_report` exports each model with `keras_kd.export_student` and
measures parameters, file sizes (SavedModel, TFLite float32 and int8), batch-1
latency in Keras and in LiteRT, and test accuracy; `format_report` prints it
as a Markdown table and `plot_report` draws it.
"""

import os
import re
import statistics
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from keras_kd._distribute import on_tensorflow
from keras_kd.deploy.export import export_student
from keras_kd.deploy.inputs import keras_outputs, num_examples, rows, student_of
from keras_kd.deploy.litert import (
    litert_interpreter,
    quantize_input,
    require_litert,
    resize_input,
    tflite_predict,
)

# Untimed runs before each latency is measured.
_WARMUP_RUNS = 10


def _median_latency_ms(run, runs, warmup):
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def _keras_latency_ms(model, batch, runs, warmup):
    """Median ms of one Keras inference on a batch of one, compiled per backend.

    A traced `tf.function` on TensorFlow; the model's `predict_on_batch`
    elsewhere (jitted on JAX, without gradients on PyTorch). `batch` is an
    array, or a dict of arrays for a model of named inputs.
    """
    if not on_tensorflow():
        return _median_latency_ms(lambda: model.predict_on_batch(batch), runs, warmup)
    serve = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    batch = keras.tree.map_structure(tf.constant, batch)
    return _median_latency_ms(lambda: serve(batch).numpy(), runs, warmup)


def _litert_latency_ms(tflite_bytes, batch, runs, warmup, num_threads):
    interpreter = litert_interpreter(tflite_bytes, num_threads=num_threads)
    if isinstance(batch, dict):
        runner = interpreter.get_signature_runner()
        details = runner.get_input_details()
        named = {
            name: np.asarray(batch[name], details[name]["dtype"]) for name in details
        }
        return _median_latency_ms(lambda: runner(**named), runs, warmup)
    detail, output_detail = resize_input(interpreter, batch.shape)
    value = quantize_input(batch, detail)

    def run():
        interpreter.set_tensor(detail["index"], value)
        interpreter.invoke()
        interpreter.get_tensor(output_detail["index"])

    return _median_latency_ms(run, runs, warmup)


_REPORT_COLUMNS = (
    ("model", "Model", "{}"),
    ("parameters", "Params", "{:,}"),
    ("saved_model_kb", "SavedModel KB", "{:.1f}"),
    ("tflite_float32_kb", "TFLite f32 KB", "{:.1f}"),
    ("tflite_int8_kb", "TFLite int8 KB", "{:.1f}"),
    ("keras_ms", "Keras ms", "{:.3f}"),
    ("litert_float32_ms", "LiteRT f32 ms", "{:.3f}"),
    ("litert_int8_ms", "LiteRT int8 ms", "{:.3f}"),
    ("accuracy", "Acc Keras", "{:.4f}"),
    ("accuracy_int8", "Acc int8", "{:.4f}"),
    ("int8_agreement", "int8 = Keras", "{:.2%}"),
)


def compression_report(
    models,
    x_test,
    y_test,
    representative_data=None,
    latency_runs=100,
    num_threads=1,
    directory=None,
):
    """Measures size, latency and accuracy of teacher and students side by side.

    For each model: its parameter count; the size of its SavedModel and of
    its float32 and int8 `.tflite` files; the median batch-1 latency in
    milliseconds of Keras (a traced `tf.function` call, no `predict`
    overhead) and of LiteRT (`invoke` on one example, `num_threads` threads,
    as on a phone core); and top-1 test accuracy in Keras and with the int8
    file. Timings are wall-clock on this machine and noisy on a shared one;
    compare rows measured together. Each model goes through `export_student`,
    so the SavedModel and float32 file are verified against Keras on `x_test`;
    the int8 file's top-1 agreement with Keras is reported
    (`int8_agreement`), not enforced, so that a weak model still gets a row.

    Args:
        models: `{name: model}`, e.g. `{"teacher": teacher, "student
            (scratch)": scratch, "student (distilled)": distiller}`; a
            `Distiller` stands for its student.
        x_test: Test inputs `(n, ...)`, or a dict of arrays for models of
            named inputs (then without `representative_data`: int8 files
            take models of one input).
        y_test: Integer test labels `(n,)`.
        representative_data: Calibration inputs for the int8 files. Defaults
            to `None`: the int8 columns are left `None`.
        latency_runs: Timed runs per latency (after 10 warm-up runs); the
            median is reported. Defaults to `100`.
        num_threads: LiteRT interpreter threads. Defaults to `1`.
        directory: Where to keep the exported files, one subdirectory per
            model. Defaults to `None`, a temporary directory.

    Returns:
        A list of dicts, one per model, with keys `model`, `parameters`,
        `saved_model_kb`, `tflite_float32_kb`, `tflite_int8_kb`, `keras_ms`,
        `litert_float32_ms`, `litert_int8_ms`, `accuracy`, `accuracy_int8`
        and `int8_agreement` (share of `x_test` where the int8 file's top-1
        class equals Keras'). Print it with `format_report`.

    Raises:
        ValueError: for an empty `models`, labels that do not match
            `x_test`, or `latency_runs < 1`.
        ImportError: if ai-edge-litert is not installed.

    Example:

    ```python
    rows = keras_kd.compression_report(
        {"teacher": teacher, "student (scratch)": scratch, "student (KD)": distiller},
        x_test,
        y_test,
        representative_data=x_train[:500],
    )
    print(keras_kd.format_report(rows))
    ```
    """
    y_test = _check_report_arguments(models, x_test, y_test, latency_runs)
    require_litert()
    quantizations = ("float32", "int8") if representative_data is not None else ()
    quantizations = quantizations or ("float32",)
    if not isinstance(x_test, dict):
        x_test = np.asarray(x_test, dtype="float32")
    report_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = tmp if directory is None else os.fspath(directory)
        for index, (name, model) in enumerate(models.items()):
            slug = re.sub(r"[^\w.-]+", "_", name)
            result = export_student(
                model,
                os.path.join(root, f"{index}_{slug}"),
                quantization=quantizations,
                representative_data=representative_data,
                verify_data=x_test,
                min_top1_agreement=0.0,
            )
            report_rows.append(
                _report_row(
                    name, model, result, x_test, y_test, latency_runs, num_threads
                )
            )
    return report_rows


def _check_report_arguments(models, x_test, y_test, latency_runs):
    """Raises for bad `compression_report` arguments; returns `y_test` flat."""
    if not models:
        raise ValueError("`models` must be a non-empty dict `{name: model}`.")
    y_test = np.asarray(y_test).reshape(-1)
    if len(y_test) != num_examples(x_test):
        raise ValueError(
            f"`y_test` has {len(y_test)} labels for {num_examples(x_test)} inputs in "
            "`x_test`; pass integer class labels, one per input."
        )
    if (
        isinstance(latency_runs, bool)
        or not isinstance(latency_runs, int)
        or latency_runs < 1
    ):
        raise ValueError(
            f"`latency_runs` must be an integer >= 1, got {latency_runs!r}."
        )
    return y_test


def _report_row(name, model, result, x_test, y_test, runs, num_threads):
    """One `compression_report` row: `model` measured, `result` its export."""
    student = student_of(model)
    logits = keras_outputs(student, x_test)
    one = rows(x_test, 0, 1)
    row = {
        "model": name,
        "parameters": result.parameters,
        "saved_model_kb": result.sizes["saved_model"] / 1024,
        "tflite_float32_kb": result.sizes["float32"] / 1024,
        "tflite_int8_kb": None,
        "keras_ms": _keras_latency_ms(student, one, runs, _WARMUP_RUNS),
        "litert_float32_ms": None,
        "litert_int8_ms": None,
        "accuracy": float(np.mean(np.argmax(logits, -1) == y_test)),
        "accuracy_int8": None,
        "int8_agreement": None,
    }
    for mode, path in result.tflite.items():
        with open(path, "rb") as f:
            tflite_bytes = f.read()
        row[f"litert_{mode}_ms"] = _litert_latency_ms(
            tflite_bytes, one, runs, _WARMUP_RUNS, num_threads
        )
    if "int8" in result.tflite:
        row["tflite_int8_kb"] = result.sizes["int8"] / 1024
        row["int8_agreement"] = result.verification["int8"]["top1_agreement"]
        predictions = tflite_predict(result.tflite["int8"], x_test)
        row["accuracy_int8"] = float(np.mean(np.argmax(predictions, -1) == y_test))
    return row


def format_report(rows):
    """Formats `compression_report` rows as a Markdown table.

    Args:
        rows: The list of dicts returned by `compression_report`.

    Returns:
        The table as a string, one line per model; missing values show `-`.

    Example:

    ```python
    print(keras_kd.format_report(rows))
    ```
    """
    header = [title for _, title, _ in _REPORT_COLUMNS]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in rows:
        cells = [
            "-" if row.get(key) is None else fmt.format(row[key])
            for key, _, fmt in _REPORT_COLUMNS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_report(rows, path=None):
    """Plots `compression_report` rows: file size, latency and accuracy per model.

    Sizes and latencies use a log scale, since teacher and student differ by
    orders of magnitude.

    Args:
        rows: The list of dicts returned by `compression_report`.
        path: Image file to save the figure to. Defaults to `None`, not saved.

    Returns:
        The `matplotlib.figure.Figure`.

    Raises:
        ImportError: if matplotlib is not installed.

    Example:

    ```python
    keras_kd.plot_report(rows, "compression.png")
    ```
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "Plotting the report needs matplotlib: `pip install matplotlib`."
        ) from error
    names = [row["model"] for row in rows]
    panels = (
        ("File size (KB)", ("saved_model_kb", "tflite_float32_kb", "tflite_int8_kb")),
        ("Latency, batch 1 (ms)", ("keras_ms", "litert_float32_ms", "litert_int8_ms")),
        ("Test accuracy", ("accuracy", "accuracy_int8")),
    )
    titles = {key: title for key, title, _ in _REPORT_COLUMNS}
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    positions = np.arange(len(names))
    for axis, (title, keys) in zip(axes, panels):
        width = 0.8 / len(keys)
        for offset, key in enumerate(keys):
            values = [np.nan if row.get(key) is None else row[key] for row in rows]
            axis.bar(positions + offset * width, values, width, label=titles[key])
        axis.set_xticks(positions + 0.4 - width / 2, names, rotation=15)
        axis.set_title(title)
        if title != "Test accuracy":
            axis.set_yscale("log")  # the teacher is orders of magnitude larger
        axis.legend(fontsize="small")
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure
