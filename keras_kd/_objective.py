"""The Distiller's objective on logits: label and distillation sums per replica.

Pure functions on `keras.ops` over outputs `(batch, ..., classes)`; the
reduction rule (which normalizer, which weights) is `keras_kd._training`'s.
"""

from typing import NamedTuple

from keras import ops

from keras_kd import augmentation as kd_augmentation
from keras_kd._training import (
    at_positions,
    call_unreduced,
    example_weights,
    normalizer,
    position_weights,
)
from keras_kd.losses import DistillationLoss


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
        labels = kd_augmentation.dominant(labels, *mixup)
        mask = kd_augmentation.dominant(mask, *mixup)
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
    per-example weight `(batch,)` of the feature terms. With `mixup =
    (lam, partners)`, position `i` mixes example `i` (share `lam`) with
    `partners[i]`: each share carries its own label, mask and weight.
    """
    logits = ops.cast(y_pred, "float32")
    weights, per_position = position_weights(sample_weight, logits)
    count = normalizer(weights, per_position)

    def mix(values):
        if mixup is None:
            return values
        return kd_augmentation.mix_per_example(values, *mixup)

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
        lam, partners = mixup
        partner_share = ops.take(own, partners, axis=0)
        partner = label_loss(ops.take(y, partners, axis=0)) * partner_share
        label = lam * label + (1.0 - lam) * partner
    labeled = ops.sum(mix(own if per_position else mask))
    return LogitTerms(ops.sum(label), labeled, distillation_sum, count, example_weight)
