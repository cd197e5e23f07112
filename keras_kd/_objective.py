"""The Distiller's objective on logits: label and distillation sums per replica.

Pure functions on `keras.ops` over outputs `(batch, ..., classes)`; the
reduction rule (which normalizer, which weights) is `keras_kd._training`'s.
"""

from typing import NamedTuple

import keras
from keras import ops

from keras_kd import _distribute
from keras_kd._training import (
    DEFAULT_TEMPERATURE,
    at_positions,
    call_unreduced,
    example_weights,
    normalizer,
    position_weights,
)
from keras_kd.losses import DistillationLoss, KDLoss


def _needs_labels(loss_fn):
    return isinstance(loss_fn, DistillationLoss) and loss_fn.needs_labels


class LogitTerms(NamedTuple):
    """One replica's sums, and the normalizer shares that turn them into means."""

    label_sum: object  # sum of w * mask * label loss over the positions
    labeled: object  # the label term's share of its normalizer
    distillation_sum: object  # sum of w * distillation loss
    count: object  # both terms' share of the normalizer: sum(w) or positions
    example_weight: object  # (batch,): the feature terms' per-example weights


def distillation_values(loss_fn, temperature, teacher_logits, student_logits, targets):
    """The distillation loss at each position, T² included.

    A `keras_kd.losses.DistillationLoss` gets the raw logits (and, with
    `needs_labels`, the class `targets` per position); any other loss
    (`keras.losses.KLDivergence()`) `fn(softmax(t/T), softmax(s/T)) * T²`.
    """
    if _needs_labels(loss_fn):
        values = loss_fn.call(teacher_logits, student_logits, labels=targets)
    elif isinstance(loss_fn, DistillationLoss):
        values = call_unreduced(loss_fn, teacher_logits, student_logits)
    else:
        values = call_unreduced(
            loss_fn,
            ops.softmax(teacher_logits / temperature, axis=-1),
            ops.softmax(student_logits / temperature, axis=-1),
        ) * (temperature**2)
    return at_positions(values, student_logits)


def label_targets(teacher_logits, labels, mask, mixup):
    """The class at each position for label-aware losses (DKD).

    The label where there is one (under mixup, the larger share's), the
    teacher's top class elsewhere.
    """
    target = ops.cast(ops.argmax(teacher_logits, axis=-1), "int32")
    if mask is None:
        return target
    if mixup is not None:
        labels, mask = mixup.dominant(labels), mixup.dominant(mask)
    labels = ops.reshape(ops.cast(labels, "int32"), ops.shape(target))
    return ops.where(ops.cast(mask, "bool"), labels, target)


def logit_terms(distiller, y, y_pred, teacher_logits, sample_weight, label_mask, mixup):
    """This replica's sums of the label and distillation terms.

    `distiller` supplies `student_loss_fn`, `distillation_loss_fn` and
    `temperature`; the rest is the step's batch.

    Returns `LogitTerms(label_sum, labeled, distillation_sum, count,
    example_weight)`:
    the weighted sums over positions, the label term's and both terms'
    shares of the normalizer (see `keras_kd._training`), and the
    per-example weight `(batch,)` of the feature terms. With `mixup`, a
    `keras_kd.augmentation.MixupDraw`, position `i` mixes example `i` (share
    `lam`) with `partners[i]`: each share carries its own label, mask and
    weight.
    """
    logits = ops.cast(y_pred, "float32")
    weights, per_position = position_weights(sample_weight, logits)
    count = normalizer(weights, per_position)

    def mix(values):
        return values if mixup is None else mixup.mix(values)

    mask = label_mask
    if mask is not None:
        mask = at_positions(mask, logits, "label mask")
    targets = None
    if _needs_labels(distiller.distillation_loss_fn):
        targets = label_targets(teacher_logits, y, mask, mixup)
    distillation = distillation_values(
        distiller.distillation_loss_fn,
        distiller.temperature,
        teacher_logits,
        logits,
        targets,
    )
    distillation_sum = ops.sum(distillation * mix(weights))
    example_weight = example_weights(mix(weights))
    if y is None:
        zero = ops.zeros(())
        return LogitTerms(zero, zero, distillation_sum, count, example_weight)

    def label_loss(labels):
        values = call_unreduced(distiller.student_loss_fn, labels, logits)
        return at_positions(values, logits)

    if mask is None:
        mask = ops.ones_like(weights)
    own = mask * weights
    label = label_loss(y) * own
    if mixup is not None:
        partner = label_loss(mixup.partner(y)) * mixup.partner(own)
        label = mixup.lam * label + (1.0 - mixup.lam) * partner
    labeled = ops.sum(mix(own if per_position else mask))
    return LogitTerms(ops.sum(label), labeled, distillation_sum, count, example_weight)


def resolve_distillation_loss(loss_fn, temperature):
    """`(loss, temperature)` for `Distiller.compile`'s two arguments.

    A `keras_kd` loss brings its own temperature, which `temperature` may
    repeat but not contradict; `None` is `KDLoss` at `temperature` (3 by
    default); a Keras loss or its name is called on tempered softmaxes.
    """
    own = getattr(loss_fn, "temperature", None)
    if isinstance(loss_fn, DistillationLoss) and own is not None:
        if temperature is not None and temperature != own:
            raise ValueError(
                f"`temperature={temperature!r}` contradicts the distillation "
                f"loss's own temperature {own!r}. Set it in one place only."
            )
        temperature = own
    if temperature is None:
        temperature = DEFAULT_TEMPERATURE
    if loss_fn is None:
        return KDLoss(temperature=temperature), temperature
    if isinstance(loss_fn, str):
        return keras.losses.get(loss_fn), temperature
    if not callable(loss_fn):
        raise ValueError(
            "`distillation_loss_fn` must be a Keras loss (for example "
            "`keras.losses.KLDivergence()`), a loss function or its name, or "
            f"None for keras_kd's stable tempered KL; got {loss_fn!r}."
        )
    return loss_fn, temperature


def examples(example_weight):
    """The number of examples on this replica, float32."""
    return ops.cast(ops.shape(example_weight)[0], "float32")


def total_loss(alpha, terms, example_sum, per_batch):
    """`(replica_loss, logged_loss)`: this replica's share, and its own mean.

    `alpha * label + (1 - alpha) * distillation` over the positions, plus
    the per-example feature sum `example_sum` over the examples, plus the
    batch-level terms `per_batch` (regularization, RKD, SP). Each replica
    divides by the global normalizers and the optimizer sums the replicas'
    gradients; batch-level terms are one value per replica, so their share
    is the mean over replicas.
    """
    logit_sum = alpha * terms.label_sum + (1.0 - alpha) * terms.distillation_sum
    count = examples(terms.example_weight)
    replica_loss = (
        ops.divide_no_nan(logit_sum, _distribute.global_sum(terms.count))
        + example_sum / _distribute.global_sum(count)
        + per_batch / _distribute.num_replicas()
    )
    logged = ops.divide_no_nan(logit_sum, terms.count) + example_sum / count
    return replica_loss, logged + per_batch
