"""Teacher-output caching: run the teacher once, distill from its stored logits.

When the transfer set has no random augmentation, the teacher's logits are the
same every epoch, and recomputing them is almost all of distillation's extra
cost. `cache_teacher_outputs` computes them in one batched inference pass;
`Distiller.fit(x, y, teacher_logits=...)` (arrays) or a cached dataset
(`tf.data`) then trains without running the teacher.

A cache is invalid when the inputs change between epochs (random
augmentation, random crops, dropout on inputs): the stored logits would belong
to other images. Use the online path (`Distiller.fit(x, y)`) then.
"""

import os

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_kd import top_k as kd_top_k
from keras_kd._distribute import on_tensorflow
from keras_kd._validation import check_positive_int, check_temperature

# Teacher logits computed ahead of training travel inside `x`, next to the
# inputs, so that they stay matched to their examples under any shuffling.
INPUTS_KEY = "keras_kd_inputs"
TEACHER_LOGITS_KEY = "keras_kd_teacher_logits"

_DTYPES = ("float32", "float16")


def check_cache_dtype(dtype):
    """`ValueError` unless `dtype` is a cache dtype (float32 or float16)."""
    if dtype not in _DTYPES:
        raise ValueError(
            f"`dtype` must be one of {_DTYPES} (float16 halves the cache's "
            f"memory; logits keep about 3 significant digits), got {dtype!r}."
        )


def teacher_logits_function(teacher, teacher_outputs="logits", jit_compile=False):
    """A function of a batch: the teacher's float32 logits, inference mode.

    Compiled per backend: on TensorFlow a `tf.function` (with XLA if
    `jit_compile`) that returns a tensor and also runs inside `tf.data`;
    elsewhere the teacher's own `predict_on_batch` (jitted on JAX, without
    gradients on PyTorch), which returns a NumPy array.
    """

    def logits(outputs):
        outputs = ops.cast(outputs, "float32")
        if teacher_outputs == "probabilities":
            outputs = ops.log(ops.maximum(outputs, 1e-12))
        return outputs

    if not on_tensorflow():
        return lambda x: ops.convert_to_numpy(
            logits(teacher.predict_on_batch(_as_numpy(x)))
        )

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def logits_of(x):
        return logits(teacher(x, training=False))

    return logits_of


def _as_numpy(structure):
    return keras.tree.map_structure(np.asarray, structure)


def _num_examples(x):
    leaves = keras.tree.flatten(x)
    if not leaves:
        raise ValueError("`x` holds no arrays.")
    sizes = {int(leaf.shape[0]) for leaf in leaves}
    if len(sizes) != 1:
        raise ValueError(f"The arrays in `x` have different lengths: {sorted(sizes)}.")
    return sizes.pop()


def cache_teacher_outputs(
    teacher,
    x,
    batch_size=256,
    dtype="float32",
    directory=None,
    teacher_outputs="logits",
    jit_compile="auto",
    verbose="auto",
    top_k=None,
    temperature=None,
):
    """Runs the teacher once over a transfer set and keeps its logits.

    For arrays (numpy, or a dict/list of them), returns the logits as an array
    of shape `(num_examples, ..., num_classes)` (`(num_examples, time,
    vocab)` for a language model), row `i` for example `i`; pass it to
    `Distiller.fit(x, y, teacher_logits=logits)`, which keeps every example
    with its own logits under Keras' shuffling. With `top_k=k`, keeps only
    the k largest tempered log-probabilities per position and their token
    ids, a `keras_kd.TopKTeacherOutputs` (see `keras_kd.top_k`), for
    `Distiller.fit(..., teacher_logits=cache)` with a `TokenDivergence` loss.

    For a finite `tf.data.Dataset` of batches (as passed to `fit`: `x`,
    `(x, y)` or `(x, y, sample_weight)`), returns a dataset of single
    examples, each carrying its inputs and the teacher's logits; shuffle and
    batch it, then pass it to `Distiller.fit`:

    ```python
    cached = keras_kd.cache_teacher_outputs(teacher, dataset)
    distiller.fit(cached.shuffle(10_000).batch(64), epochs=10)
    ```

    Never cache when the inputs are randomly augmented: the logits would be
    those of other images. The pass runs in inference mode (`training=False`).

    Args:
        teacher: The trained `keras.Model`.
        x: Arrays, or a finite, deterministic `tf.data.Dataset` of batches.
        batch_size: Inference batch size for arrays (a dataset keeps its own
            batching). Larger batches were no faster on CPU and cost memory
            (BENCHMARKS.md). Defaults to `256`.
        dtype: `"float32"` or `"float16"` (half the memory; relative error
            at most 2^-11 per logit). Defaults to `"float32"`.
        directory: Where to spill the cache to disk (`teacher_logits.npy` as a
            read-only memory map for arrays, a `tf.data` cache file for
            datasets). Defaults to `None`, in memory.
        teacher_outputs: `"logits"` or `"probabilities"`, as for
            `Distiller`. Defaults to `"logits"`.
        jit_compile: Compile the teacher's forward pass with XLA. `"auto"`
            does so when a GPU or TPU is present, as Keras does: on CPU, XLA
            measured no faster and adds seconds of compilation. Defaults to
            `"auto"`.
        verbose: `"auto"` or 1 shows a progress bar (as `predict` does),
            0 nothing. Defaults to `"auto"`.
        top_k: Keep the k most likely tokens per position (arrays only):
            float16 values, uint16 or int32 indices (`dtype` is for dense
            caches). Defaults to `None`, the dense logits.
        temperature: The T of a top-k cache's `log softmax(t / T)`, which the
            loss must use too. Defaults to `None`: 1.0 for a top-k cache; a
            dense cache stores raw logits and takes none.

    Returns:
        A numpy array (or memory map) of logits for arrays, or a
        `TopKTeacherOutputs`; a `tf.data.Dataset` of single examples for a
        dataset.

    Raises:
        ValueError: for an infinite or empty dataset, empty arrays, an
            unknown `dtype`, a bad `batch_size` or `top_k`, a top-k cache of
            a dataset, or a `temperature` without `top_k`.

    Example:

    ```python
    logits = keras_kd.cache_teacher_outputs(teacher, x_train, dtype="float16")
    distiller.fit(x_train, y_train, teacher_logits=logits, epochs=10)
    ```
    """
    if not isinstance(teacher, keras.Model):
        raise ValueError(f"`teacher` must be a `keras.Model`, got {teacher!r}.")
    check_cache_dtype(dtype)
    check_positive_int(batch_size, "batch_size")
    if teacher_outputs not in ("logits", "probabilities"):
        raise ValueError(
            "`teacher_outputs` must be 'logits' or 'probabilities', got "
            f"{teacher_outputs!r}."
        )
    if directory is not None:
        os.makedirs(directory, exist_ok=True)
    if jit_compile == "auto":
        jit_compile = any(
            device.device_type != "CPU" for device in tf.config.list_physical_devices()
        )
    logits_of = teacher_logits_function(teacher, teacher_outputs, bool(jit_compile))
    verbose = 0 if verbose == 0 else 1
    if top_k is not None:
        return _cache_top_k(
            x, logits_of, batch_size, directory, verbose, top_k, temperature
        )
    if temperature is not None:
        raise ValueError(
            "`temperature` sets a top-k cache's tempered log-probabilities; "
            "a dense cache stores the raw logits. Pass `top_k=k` too, or drop "
            f"`temperature` (got {temperature!r})."
        )
    if isinstance(x, tf.data.Dataset):
        return _cache_dataset(x, logits_of, dtype, directory, verbose)
    arrays = _cache_arrays(
        x, logits_of, batch_size, directory, verbose, {"teacher_logits": dtype}
    )
    return arrays["teacher_logits"]


def _cache_top_k(x, logits_of, batch_size, directory, verbose, top_k, temperature):
    """A `TopKTeacherOutputs` of arrays `x`: float16 values, small indices."""
    if isinstance(x, tf.data.Dataset):
        raise ValueError(
            "`top_k` caches arrays (numpy, or a dict/list of them); a "
            "`tf.data.Dataset` is not supported yet. Cache the dataset's "
            "arrays, or drop `top_k` for a dense dataset cache."
        )
    temperature = check_temperature(1.0 if temperature is None else temperature)
    check_positive_int(top_k, "top_k")
    vocabulary = {}  # the teacher's output width, read off the first batch

    def reduced(batch):
        logits = logits_of(batch)
        size = vocabulary.setdefault("size", int(logits.shape[-1]))
        log_probs, indices = kd_top_k.top_k_log_probs(logits, top_k, temperature)
        return {
            kd_top_k.LOG_PROBS_KEY: ops.convert_to_numpy(log_probs),
            kd_top_k.INDICES_KEY: ops.convert_to_numpy(indices).astype(
                kd_top_k.index_dtype(size)
            ),
        }

    # Values in float16; indices in the dtype `reduced` chose for the vocabulary.
    dtypes = {kd_top_k.LOG_PROBS_KEY: "float16", kd_top_k.INDICES_KEY: None}
    arrays = _cache_arrays(x, reduced, batch_size, directory, verbose, dtypes)
    return kd_top_k.TopKTeacherOutputs(
        arrays[kd_top_k.LOG_PROBS_KEY],
        arrays[kd_top_k.INDICES_KEY],
        temperature,
        vocabulary["size"],
    )


def _cache_arrays(x, outputs_of, batch_size, directory, verbose, dtypes):
    """`{name: array (num_examples, ...)}` of `outputs_of` over `x`'s batches.

    `outputs_of(batch)` returns an array, or a dict of arrays named as
    `dtypes`; each is stored in its dtype (`None`: the array's own), in
    memory or, with `directory`, as a read-only memory map `<name>.npy`.
    """
    count = _num_examples(x)
    if count == 0:
        raise ValueError("`x` is empty: there is nothing to cache.")
    progress = keras.utils.Progbar(-(-count // batch_size), verbose=verbose)
    out = None
    for start in range(0, count, batch_size):
        rows = slice(start, start + batch_size)
        batch = keras.tree.map_structure(lambda a, rows=rows: a[rows], x)
        outputs = outputs_of(batch)
        if not isinstance(outputs, dict):
            outputs = {name: outputs for name in dtypes}
        if out is None:
            out = {
                name: _empty(count, outputs[name], dtype, directory, name)
                for name, dtype in dtypes.items()
            }
        for name, array in out.items():
            array[start : start + len(outputs[name])] = np.asarray(outputs[name])
        progress.add(1)
    if directory is None:
        return out
    return {name: _reopened(array) for name, array in out.items()}


def _empty(count, first, dtype, directory, name):
    """An array for `count` rows like `first`'s, in memory or as `<name>.npy`."""
    shape = (count,) + tuple(first.shape[1:])
    dtype = np.asarray(first).dtype if dtype is None else dtype
    if directory is None:
        return np.empty(shape, dtype)
    path = os.path.join(directory, f"{name}.npy")
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def _reopened(memmap):
    """A written memory map, flushed and opened again read-only."""
    memmap.flush()
    path = memmap.filename
    del memmap
    return np.load(path, mmap_mode="r")


def _cache_dataset(dataset, logits_of, dtype, directory, verbose):
    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            "The dataset is infinite (it has a `repeat()`): a cache needs one "
            "finite pass. Cache the dataset before repeating it."
        )

    filename = "" if directory is None else os.path.join(directory, "teacher_cache")
    cached = _with_logits(dataset, logits_of, dtype).cache(filename)
    progress = keras.utils.Progbar(None, verbose=verbose, unit_name="example")
    count = 0
    for _ in cached:  # one pass fills the cache; later epochs only read it
        count += 1
        progress.update(count)
    progress.update(count, finalize=True)
    if count == 0:
        raise ValueError("The dataset is empty: there is nothing to cache.")
    return cached.apply(tf.data.experimental.assert_cardinality(count))


def _with_logits(dataset, logits_of, dtype):
    """The examples of `dataset`, each with the teacher's logits in its inputs.

    On TensorFlow the teacher runs inside the `tf.data` graph. Other backends
    cannot run in it: one eager pass collects the batches and their logits,
    held in memory (the inputs too) as a new dataset.
    """

    def pack(batch, logits):
        inputs, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        packed = {INPUTS_KEY: inputs, TEACHER_LOGITS_KEY: logits}
        return keras.utils.pack_x_y_sample_weight(packed, y, sample_weight)

    def inputs_of(batch):
        return keras.utils.unpack_x_y_sample_weight(batch)[0]

    if on_tensorflow():

        def attach(*batch):
            batch = batch[0] if len(batch) == 1 else batch
            return pack(batch, tf.cast(logits_of(inputs_of(batch)), dtype))

        return dataset.map(attach).unbatch()
    batches = [
        pack(batch, np.asarray(logits_of(inputs_of(batch)), dtype))
        for batch in dataset.as_numpy_iterator()
    ]
    if not batches:
        return dataset.unbatch()
    examples = keras.tree.map_structure(lambda *parts: np.concatenate(parts), *batches)
    return tf.data.Dataset.from_tensor_slices(examples)


def split_cached_inputs(x):
    """Returns `(inputs, teacher_logits)`; `teacher_logits` is `None` unless cached."""
    if isinstance(x, dict) and TEACHER_LOGITS_KEY in x:
        return x[INPUTS_KEY], x[TEACHER_LOGITS_KEY]
    return x, None


def attach_teacher_logits(x, teacher_logits):
    """Packs inputs and their cached logits into the structure `Distiller` reads.

    `Distiller.fit(x, y, teacher_logits=...)` calls this for you.

    Args:
        x: Arrays (numpy, or a dict/list of them).
        teacher_logits: Array `(num_examples, ..., num_classes)` from
            `cache_teacher_outputs`, or a `keras_kd.TopKTeacherOutputs`.

    Returns:
        A dict that Keras slices, shuffles and batches like any input dict.

    Raises:
        ValueError: if the lengths differ or `x` is a dataset.
    """
    if isinstance(x, tf.data.Dataset):
        raise ValueError(
            "`teacher_logits=` goes with arrays. For a `tf.data.Dataset`, build "
            "the cached dataset with `keras_kd.cache_teacher_outputs(teacher, "
            "dataset)` and pass that to `fit`."
        )
    if isinstance(teacher_logits, kd_top_k.TopKTeacherOutputs):
        teacher_logits = teacher_logits.as_batch_targets()
    elif not hasattr(teacher_logits, "shape"):
        teacher_logits = np.asarray(teacher_logits)
    rows = kd_top_k.positions_of(teacher_logits)
    if len(rows.shape) < 2:
        raise ValueError(
            "`teacher_logits` must have shape (num_examples, ..., num_classes), "
            f"got {tuple(rows.shape)}."
        )
    count = _num_examples(x)
    if rows.shape[0] != count:
        raise ValueError(
            f"`teacher_logits` has {rows.shape[0]} rows but `x` has "
            f"{count} examples: the cache was built for other data. Rebuild it "
            "with `keras_kd.cache_teacher_outputs(teacher, x)`."
        )
    return {INPUTS_KEY: x, TEACHER_LOGITS_KEY: teacher_logits}


def check_cache_compatible(source, augments, has_feature_losses):
    """`ValueError` if cached teacher outputs meet what needs the teacher online.

    Random augmentation and mixup change the inputs on every step, and
    feature losses read the teacher's intermediate layers: both need the
    teacher to run on the batch itself.
    """
    if augments:
        raise ValueError(
            f"{source} cannot be combined with `augmentation` or "
            "`mixup_alpha`: the teacher must see the same randomly augmented "
            "inputs as the student, and cached logits belong to the "
            "un-augmented images. Train online (drop the cache: "
            "`Distiller.fit(x, y)` runs the teacher on every batch), or "
            "build the Distiller without augmentation."
        )
    if has_feature_losses:
        raise ValueError(
            f"{source} cannot be combined with `feature_losses`: they compare "
            "the teacher's intermediate layers, which only an online teacher "
            "computes. Train online (`Distiller.fit(x, y)` runs the teacher "
            "on every batch), or compile without `feature_losses`."
        )
