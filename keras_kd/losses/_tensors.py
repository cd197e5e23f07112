"""Tensor helpers shared by the feature and relation losses; float32 throughout."""

from keras import ops


def float32(x):
    return ops.cast(ops.convert_to_tensor(x), "float32")


def flatten(x):
    """`(batch, ...)` to `(batch, features)`, float32."""
    x = float32(x)
    return ops.reshape(x, (ops.shape(x)[0], -1))


def l2_normalize(x, axis=-1):
    """`x / ||x||` along `axis`; a zero vector stays zero, with zero gradient.

    Dead ReLU units make zero rows common (an empty attention map, two
    examples with equal features); dividing by a small epsilon instead would
    give them gradients of order 1/epsilon.
    """
    squared = ops.sum(ops.square(x), axis=axis, keepdims=True)
    positive = ops.greater(squared, 0.0)
    norm = ops.sqrt(ops.where(positive, squared, 1.0))
    return ops.where(positive, x / norm, 0.0)


def static_shape(shape):
    return tuple(None if d is None else int(d) for d in shape)


def pooling_factors(teacher_hw, student_hw, what: str) -> tuple:
    """`(teacher_factors, student_factors)`: integer pooling per spatial axis.

    On each axis the larger size is pooled to the smaller by their ratio (1
    for the smaller one). Unknown sizes count as equal. Raises `ValueError`
    when a ratio is not an integer.
    """
    teacher_factors, student_factors = [], []
    for t, s in zip(teacher_hw, student_hw):
        if None in (t, s) or t == s:
            teacher_factors.append(1)
            student_factors.append(1)
            continue
        large, small = max(t, s), min(t, s)
        if large % small:
            raise ValueError(
                f"{what} pools the larger feature map to the smaller's spatial "
                f"sizes, which must divide each other; got teacher "
                f"{tuple(teacher_hw)} and student {tuple(student_hw)} (H, W). "
                "Pick layers whose resolutions differ by an integer factor."
            )
        teacher_factors.append(t // small)
        student_factors.append(s // small)
    return tuple(teacher_factors), tuple(student_factors)


def average_pool(x, factors):
    """Average pooling of NHWC `x` by integer `factors` (fh, fw), stride = size."""
    fh, fw = factors
    if (fh, fw) == (1, 1):
        return x
    _, height, width, channels = x.shape
    blocks = ops.reshape(x, (-1, height // fh, fh, width // fw, fw, channels))
    return ops.mean(blocks, axis=(2, 4))


def match_spatial(teacher, student, what: str):
    """NHWC teacher and student maps pooled to the smaller (H, W) of the two.

    As the attention-transfer reference code does (RepDistiller's
    `adaptive_avg_pool2d` of the larger map to the smaller's size), here for
    sizes that divide each other: each `k x k` block of the larger map is
    averaged.
    """
    teacher, student = float32(teacher), float32(student)
    teacher_factors, student_factors = pooling_factors(
        static_shape(teacher.shape[1:3]), static_shape(student.shape[1:3]), what
    )
    return average_pool(teacher, teacher_factors), average_pool(
        student, student_factors
    )


def after(tensor, previous):
    """`tensor`, computed only once `previous` is (TensorFlow graphs).

    TensorFlow's executor runs independent ops concurrently: chunks of a
    computation meant to bound memory would all be in flight at once. JAX
    and PyTorch run them in program order already.
    """
    import keras

    if previous is None or keras.backend.backend() != "tensorflow":
        return tensor
    import tensorflow as tf

    with tf.control_dependencies([previous]):
        return tf.identity(tensor)
