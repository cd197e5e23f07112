"""A view cache: the teacher's outputs on K augmented views per example, once.

Consistent augmentation ("function matching") needs the teacher on every
step, because every step draws new augmented inputs. FKD (Shen & Xing, "A
Fast Knowledge Distillation Framework for Visual Recognition", ECCV 2022) and
ReLabel (Yun et al., CVPR 2021) record instead, once, K augmented views of
each training example with the teacher's soft labels on each; training then
draws one recorded view per example and epoch, with exactly the teacher
targets of that view. The teacher runs K times per example in all, whatever
the number of epochs.

`cache_teacher_views(teacher, x, augmentation, num_views=K)` builds a
`ViewCache`; `ViewCache.dataset(x, y)` is a `tf.data.Dataset` for
`Distiller.fit`:

```python
views = keras_kd.cache_teacher_views(
    teacher, x_train, keras_kd.views.ShiftFlip(max_shift=3), num_views=16
)
distiller.fit(views.dataset(x_train, y_train, batch_size=64), epochs=80)
```

What is stored per example and view:

- with `ShiftFlip` (pad-and-crop or sub-pixel translation with zero fill,
  and an optional horizontal flip): its three parameters `(dy, dx, flip)` as
  float16, 6 bytes, and the view is rebuilt from `x` when drawn;
- with any other augmentation (a Keras preprocessing layer, or a function of
  a batch): the augmented pixels, as float16;
- the teacher's logits, as float16 (or float32).

Each epoch, every example gets one of its K views, drawn uniformly at random
and independently per example and epoch (NumPy's generator seeded with
`(seed, epoch)`: reproducible from `seed`, new draws every epoch). Mixup is
not applied on recorded views: the teacher is not linear, so the mixed
targets of two views are not the teacher's targets on their mix
(`Distiller(mixup_alpha=...)` with a cache stays a `ValueError`).
"""

import hashlib
import itertools
import json
import math
import os

import keras
import numpy as np
import tensorflow as tf

from keras_kd._validation import check_positive_int
from keras_kd.caching import (
    INPUTS_KEY,
    TEACHER_LOGITS_KEY,
    check_cache_dtype,
    teacher_logits_function,
)

_META = "views.json"
_ARRAYS = ("logits", "params", "pixels")
_FINGERPRINT_ROWS = 64


def shift_flip_tensors(images, params):
    """`ShiftFlip`'s views in TensorFlow: `images` `(n, h, w, c)`, `params` `(n, 3)`.

    The flip, then `ImageProjectiveTransformV3` (bilinear, zero fill), the op
    behind `keras.ops.image.affine_transform` and `RandomTranslation`: each
    output pixel `(y, x)` reads the input at `(y - dy, x - dx)`.
    """
    images = tf.cast(images, tf.float32)
    params = tf.cast(params, tf.float32)
    flipped = tf.reshape(params[:, 2] > 0, (-1, 1, 1, 1))
    images = tf.where(flipped, tf.reverse(images, axis=[2]), images)
    count = tf.shape(images)[0]
    ones, zeros = tf.ones((count,)), tf.zeros((count,))
    transforms = tf.stack(
        [ones, zeros, -params[:, 1], zeros, ones, -params[:, 0], zeros, zeros], axis=1
    )
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


class ShiftFlip:
    """Pad-and-crop or sub-pixel translations and horizontal flips, recordable.

    A view of image `x` (height, width, channels) with parameters `(dy, dx,
    flip)` is `x` mirrored left-right if `flip`, then moved down by `dy` and
    right by `dx` pixels, the uncovered border filled with zeros (for whole
    pixels, a random crop of the zero-padded image). A fractional shift
    interpolates bilinearly between the four whole-pixel shifts around it,
    `sum (1 - |dy - a|)(1 - |dx - b|) shift(x, a, b)` over `a` in
    `{floor dy, floor dy + 1}`, `b` likewise (what
    `keras.layers.RandomTranslation(fill_mode="constant")` does). `dy`, `dx`
    are uniform in `[-max_shift, max_shift]`: integers, or reals with
    `subpixel=True`; `flip` is drawn with probability 1/2 when `flip=True`.
    The parameters are stored as float16, 6 bytes a view. CIFAR's standard
    augmentation is `ShiftFlip(4, flip=True)`; `RandomTranslation(0.1, 0.1)`
    on 28-pixel MNIST is `ShiftFlip(2.8, subpixel=True)`.

    Args:
        max_shift: Largest shift in pixels, a number in [0, 127] (an int
            unless `subpixel`).
        flip: Whether to draw horizontal flips. Defaults to `False`.
        subpixel: Draw real-valued shifts. Defaults to `False`.
    """

    def __init__(self, max_shift, flip: bool = False, subpixel: bool = False) -> None:
        kind = (int, float) if subpixel else (int,)
        if (
            isinstance(max_shift, bool)
            or not isinstance(max_shift, kind)
            or not 0 <= max_shift <= 127
        ):
            accepted = "a number" if subpixel else "an int (or `subpixel=True`)"
            raise ValueError(
                f"`max_shift` must be {accepted} in [0, 127], got {max_shift!r}."
            )
        self.max_shift = max_shift
        self.flip = bool(flip)
        self.subpixel = bool(subpixel)

    def draw(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """`(count, 3)` float16 parameters `(dy, dx, flip)`."""
        if self.subpixel:
            shifts = rng.uniform(-self.max_shift, self.max_shift, size=(count, 2))
        else:
            shifts = rng.integers(-self.max_shift, self.max_shift + 1, size=(count, 2))
        flips = (
            rng.integers(0, 2, size=(count, 1)) if self.flip else np.zeros((count, 1))
        )
        return np.concatenate([shifts, flips], axis=1).astype(np.float16)

    @staticmethod
    def apply(images: np.ndarray, params: np.ndarray) -> np.ndarray:
        """The float32 views of `images` `(n, h, w, c)` under `params` `(n, 3)`."""
        return shift_flip_tensors(np.asarray(images), np.asarray(params)).numpy()

    def get_config(self) -> dict:
        return {
            "max_shift": self.max_shift,
            "flip": self.flip,
            "subpixel": self.subpixel,
        }


def fingerprint(x: np.ndarray) -> str:
    """A hash of `x`'s shape, dtype and a strided sample of its rows."""
    x = np.asarray(x)
    step = max(1, len(x) // _FINGERPRINT_ROWS)
    digest = hashlib.sha256(repr((x.shape, str(x.dtype))).encode())
    digest.update(np.ascontiguousarray(x[::step]).tobytes())
    return digest.hexdigest()[:16]


class ViewCache:
    """The teacher's logits on `num_views` recorded views of each example.

    Built by `cache_teacher_views`, or loaded from its directory with
    `ViewCache.load`. `logits` has shape `(examples, num_views, classes)`;
    `params` `(examples, num_views, 3)` (with `ShiftFlip`) or `pixels`
    `(examples, num_views, ...)` (other augmentations) holds the views.
    """

    def __init__(self, logits, params=None, pixels=None, shift_flip=None, source=""):
        self.logits, self.params, self.pixels = logits, params, pixels
        self.shift_flip = shift_flip
        self.source = source  # `fingerprint` of the `x` the cache was built on

    @property
    def num_examples(self) -> int:
        return int(self.logits.shape[0])

    @property
    def num_views(self) -> int:
        return int(self.logits.shape[1])

    @property
    def nbytes(self) -> int:
        """The cache's size in bytes (logits plus views)."""
        arrays = (self.logits, self.params, self.pixels)
        return int(sum(a.nbytes for a in arrays if a is not None))

    def bytes_per_example(self) -> float:
        """The size per training example, all its views included."""
        return self.nbytes / self.num_examples

    def _stored(self, x, indices, views):
        """`(images, params)`: stored pixels and None, or `x` and its params."""
        if self.pixels is not None:
            return np.asarray(self.pixels[indices, views], np.float32), None
        return (
            np.asarray(x[indices], np.float32),
            np.asarray(self.params[indices, views], np.float32),
        )

    def views_of(self, x, indices, views):
        """The recorded views `views` of the examples `indices` of `x`."""
        images, params = self._stored(x, indices, views)
        return images if params is None else ShiftFlip.apply(images, params)

    def check_source(self, x) -> None:
        """`ValueError` unless `x` is the data the cache was built on."""
        if len(x) != self.num_examples or fingerprint(x) != self.source:
            raise ValueError(
                f"The view cache was built for other data ({self.num_examples} "
                f"examples, fingerprint {self.source}); `x` has {len(x)} "
                f"(fingerprint {fingerprint(x)}). Rebuild it with "
                "`keras_kd.cache_teacher_views(teacher, x, ...)`."
            )

    def dataset(self, x, y=None, sample_weight=None, batch_size=64, seed=None):
        """Batches of one recorded view per example, with its teacher logits.

        Each pass over the dataset (each epoch of `fit`) shuffles the
        examples and gives each one of its views, uniformly at random, from
        NumPy's generator seeded with `(seed, pass number)`: reproducible
        from `seed` whatever TensorFlow's global seed, new draws every epoch.
        The batches are `({inputs, teacher logits}, y, sample_weight)` in the
        structure `Distiller.fit` reads.
        """
        x = np.asarray(x)
        self.check_source(x)
        if sample_weight is not None and y is None:
            raise ValueError("`sample_weight` needs `y`: pass the labels too.")
        extras = []
        for name, values in (("y", y), ("sample_weight", sample_weight)):
            if values is not None and len(values) != self.num_examples:
                raise ValueError(
                    f"`{name}` has {len(values)} rows for the cache's "
                    f"{self.num_examples} examples."
                )
            extras.append(None if values is None else np.asarray(values))
        check_positive_int(batch_size, "batch_size")
        if seed is None:
            seed = int(np.random.randint(2**31 - 1))
        passes = itertools.count()

        def batches():
            rng = np.random.default_rng((seed, next(passes)))
            order = rng.permutation(self.num_examples)
            views = rng.integers(0, self.num_views, size=self.num_examples)
            for start in range(0, self.num_examples, batch_size):
                index = np.sort(order[start : start + batch_size])
                view = views[index]
                inputs, params = self._stored(x, index, view)
                if params is None:  # pixels: `pack` leaves them as they are
                    params = np.zeros((len(index), 3), np.float32)
                logits = np.asarray(self.logits[index, view], np.float32)
                yield (inputs, params, logits) + tuple(
                    e[index] for e in extras if e is not None
                )

        signature = (
            tf.TensorSpec((None,) + x.shape[1:], tf.float32),
            tf.TensorSpec((None, 3), tf.float32),
            tf.TensorSpec((None, self.logits.shape[-1]), tf.float32),
        ) + tuple(
            tf.TensorSpec((None,) + e.shape[1:], tf.as_dtype(e.dtype))
            for e in extras
            if e is not None
        )
        rebuild = self.pixels is None  # by TensorFlow's kernel, in the pipeline

        def pack(inputs, params, logits, *rest):
            if rebuild:
                inputs = shift_flip_tensors(inputs, params)
            return ({INPUTS_KEY: inputs, TEACHER_LOGITS_KEY: logits},) + rest

        dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
        dataset = dataset.map(pack, num_parallel_calls=tf.data.AUTOTUNE)
        steps = -(-self.num_examples // batch_size)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(steps))
        return dataset.prefetch(tf.data.AUTOTUNE)

    def save(self, directory: str) -> None:
        """Writes the arrays (`.npy`) and what they were built for (`views.json`)."""
        os.makedirs(directory, exist_ok=True)
        for name in _ARRAYS:
            values = getattr(self, name)
            path = os.path.join(directory, f"{name}.npy")
            if values is not None and getattr(values, "filename", None) != path:
                np.save(path, np.asarray(values))
        meta = {
            "num_views": self.num_views,
            "source": self.source,
            "shift_flip": None
            if self.shift_flip is None
            else self.shift_flip.get_config(),
        }
        with open(os.path.join(directory, _META), "w") as handle:
            json.dump(meta, handle)

    @classmethod
    def load(cls, directory: str, num_views: int | None = None) -> "ViewCache":
        """The cache saved in `directory` (memory-mapped, read-only).

        `num_views`, if given, must be the cache's: a cache of another K is a
        `ValueError`.
        """
        with open(os.path.join(directory, _META)) as handle:
            meta = json.load(handle)
        if num_views is not None and num_views != meta["num_views"]:
            raise ValueError(
                f"The view cache in {directory!r} has {meta['num_views']} views "
                f"per example, not {num_views}: rebuild it with "
                f"`num_views={num_views}`."
            )
        arrays = {}
        for name in _ARRAYS:
            path = os.path.join(directory, f"{name}.npy")
            arrays[name] = (
                np.load(path, mmap_mode="r") if os.path.exists(path) else None
            )
        shift_flip = meta["shift_flip"]
        return cls(
            arrays["logits"],
            arrays["params"],
            arrays["pixels"],
            None if shift_flip is None else ShiftFlip(**shift_flip),
            meta["source"],
        )


def _augment_batch(augmentation, images, rng):
    """`(views, params)` of a batch: params for `ShiftFlip`, else pixels."""
    if isinstance(augmentation, ShiftFlip):
        params = augmentation.draw(len(images), rng)
        return ShiftFlip.apply(images, params), params
    if isinstance(augmentation, keras.layers.Layer):
        views = augmentation(images, training=True)
    else:
        views = augmentation(images)
    # Stored as float16: the teacher sees the rounded pixels the student will.
    views = keras.ops.convert_to_numpy(views).astype(np.float16)
    return views.astype(np.float32), None


def cache_teacher_views(
    teacher,
    x,
    augmentation,
    num_views=16,
    batch_size=256,
    dtype="float16",
    seed=None,
    directory=None,
    teacher_outputs="logits",
    verbose="auto",
):
    """Records `num_views` augmented views of each example and the teacher's logits.

    Args:
        teacher: The trained `keras.Model`.
        x: The training images, one numpy array `(examples, ...)`.
        augmentation: A `ShiftFlip` (parameters stored, 6 bytes a view), a
            Keras preprocessing layer or model (called with `training=True`),
            or a function of a batch (pixels stored, float16).
        num_views: K, the views per example. Defaults to 16.
        batch_size: Teacher inference batch size. Defaults to 256.
        dtype: `"float16"` or `"float32"` logits. Defaults to `"float16"`.
        seed: Seed of `ShiftFlip`'s draws. Defaults to `None`: NumPy's
            global generator.
        directory: Where to write the cache (`ViewCache.load` reads it
            back). Defaults to `None`, in memory.
        teacher_outputs: `"logits"` or `"probabilities"`, as for
            `Distiller`. Defaults to `"logits"`.
        verbose: `"auto"` or 1 shows a progress bar, 0 nothing.

    Returns:
        A `ViewCache`.
    """
    check_positive_int(num_views, "num_views")
    check_positive_int(batch_size, "batch_size")
    check_cache_dtype(dtype)
    x = np.asarray(x)
    if len(x) == 0:
        raise ValueError("`x` is empty: there is nothing to cache.")
    if not (isinstance(augmentation, ShiftFlip) or callable(augmentation)):
        raise ValueError(
            "`augmentation` must be a `keras_kd.views.ShiftFlip`, a Keras "
            f"preprocessing layer or a function of a batch, got {augmentation!r}."
        )
    rng = np.random.default_rng(seed if seed is not None else np.random.randint(2**31))
    logits_of = teacher_logits_function(teacher, teacher_outputs)
    steps = math.ceil(len(x) / batch_size)
    progress = keras.utils.Progbar(num_views * steps, verbose=0 if verbose == 0 else 1)
    logits = params = pixels = None
    for view in range(num_views):
        for start in range(0, len(x), batch_size):
            rows = slice(start, start + batch_size)
            views, drawn = _augment_batch(augmentation, x[rows], rng)
            batch_logits = np.asarray(logits_of(views), dtype)
            if logits is None:
                logits = np.empty((len(x), num_views, batch_logits.shape[-1]), dtype)
                if drawn is None:
                    pixels = np.empty((len(x), num_views) + views.shape[1:], np.float16)
                else:
                    params = np.empty((len(x), num_views, 3), np.float16)
            logits[rows, view] = batch_logits
            if drawn is None:
                pixels[rows, view] = views
            else:
                params[rows, view] = drawn
            progress.add(1)
    shift_flip = augmentation if isinstance(augmentation, ShiftFlip) else None
    cache = ViewCache(logits, params, pixels, shift_flip, fingerprint(x))
    if directory is not None:
        cache.save(directory)
        cache = ViewCache.load(directory)
    return cache
