"""The two base types of keras_kd's losses: on logits, and on features."""

import keras

from keras_kd._validation import check_nonnegative


def check_layer_name(value, name):
    if value is not None and not (isinstance(value, str) and value):
        raise ValueError(
            f"`{name}` must be a layer name (a non-empty str) or None for the "
            f"model's output, got {value!r}."
        )


@keras.saving.register_keras_serializable(package="keras_kd")
class DistillationLoss(keras.losses.Loss):
    """The base of the losses that compare teacher and student logits.

    `call(teacher_logits, student_logits)` receives the raw logits
    `(batch, ..., classes)` and returns one value per position; the loss
    applies its own temperature and T² factor, and `keras_kd.Distiller`
    uses its `temperature`. A subclass with `needs_labels = True` is called
    as `call(teacher_logits, student_logits, labels=...)` with the class at
    each position: the label where there is one, the teacher's top class
    elsewhere. Any loss that is not a `DistillationLoss` (for example
    `keras.losses.KLDivergence()`) receives `softmax(t/T), softmax(s/T)` and
    is multiplied by T², as in the keras.io example.
    """

    needs_labels = False
    temperature = None


class FeatureLoss(keras.losses.Loss):
    """Base class of the losses `Distiller.compile(feature_losses=...)` takes.

    A feature loss compares the output of the teacher's layer
    `teacher_layer_name` with the output of the student's layer
    `student_layer_name` (`None`: the model's output, its logits; a layer of
    a nested model by its path, `"backbone/conv3_block4_out"`), and is
    added to the total loss as `weight * value`. `call(teacher_features,
    student_features)` returns per-example values `(batch,)`, or one scalar
    for a batch-level loss (`batch_level = True`).

    Subclasses may override `check_shapes`, called with the static feature
    shapes before training, to raise `ValueError` or ask for an adapter.
    """

    batch_level = False

    def __init__(
        self,
        teacher_layer_name=None,
        student_layer_name=None,
        weight=1.0,
        reduction="sum_over_batch_size",
        name=None,
        dtype="float32",
    ):
        check_layer_name(teacher_layer_name, "teacher_layer_name")
        check_layer_name(student_layer_name, "student_layer_name")
        weight = check_nonnegative(weight)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        self.weight = weight

    def describe(self):
        """`Name(teacher_layer_name=..., student_layer_name=...)`, for messages."""
        return (
            f"{type(self).__name__}(teacher_layer_name={self.teacher_layer_name!r}, "
            f"student_layer_name={self.student_layer_name!r})"
        )

    def check_shapes(self, teacher_shape, student_shape):
        """Validates the static feature shapes (batch axis included).

        Returns the width of the adapter to put on the student's features,
        or `None` for no adapter. Raises `ValueError` for shapes the loss
        cannot compare.
        """
        return None

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "teacher_layer_name": self.teacher_layer_name,
                "student_layer_name": self.student_layer_name,
                "weight": self.weight,
            }
        )
        return config
