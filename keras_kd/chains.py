"""Teacher-assistant chains: distill teacher -> assistant(s) -> student in one call."""

import collections

import keras
import tensorflow as tf

from keras_kd.caching import cache_teacher_outputs
from keras_kd.distiller import Distiller

ChainStage = collections.namedtuple("ChainStage", ["teacher", "student", "history"])
ChainStage.__doc__ = """One stage of `keras_kd.distill_chain`.

Attributes:
    teacher: The model distilled from in this stage (the original teacher,
        then each trained assistant in turn).
    student: The model trained in this stage (an assistant, or the final
        student), trained in place.
    history: The `keras.callbacks.History` of the stage's `Distiller.fit`.
"""


def _per_stage(value, name, count):
    """`value` for every stage: a list of `count` values, or one value for all."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(
                f"`{name}` has {len(value)} entries for {count} stages; pass one "
                "value for all stages or one per stage."
            )
        return list(value)
    return [value] * count


def _fresh_optimizer(optimizer):
    """A new optimizer per stage: one optimizer cannot train two models."""
    if callable(optimizer) and not isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer()
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer.__class__.from_config(optimizer.get_config())
    return keras.optimizers.get(optimizer)


def distill_chain(
    teacher,
    assistants_and_student,
    x,
    y=None,
    *,
    epochs=10,
    batch_size=None,
    optimizer="adam",
    alpha=0.1,
    temperature=None,
    distillation_loss_fn=None,
    student_loss_fn=None,
    metrics=None,
    cache_teacher=True,
    fit_kwargs=None,
):
    """Distills a teacher into a student through teacher assistants, in order.

    Stage `i` trains `assistants_and_student[i]` with a `keras_kd.Distiller`
    whose teacher is the model trained in stage `i - 1` (the original
    `teacher` for stage 0). Each stage's loss is the Distiller's:
    `alpha * student_loss(y, s) + (1 - alpha) * distillation_loss(t, s)`, by
    default `T² * KL(softmax(t/T) || softmax(s/T))`. A teacher assistant of
    intermediate size bridges a capacity gap too large for the student to
    follow the teacher directly (Mirzadeh et al.).

    Every stage gets a new optimizer built from `optimizer` and the same
    transfer set `(x, y)` (`y=None` trains on soft targets alone; sparse
    labels below 0 mark unlabeled examples). Models are trained in place; on
    return their `trainable` flags are as before the call (each Distiller
    freezes its teacher while it runs).

    Args:
        teacher: The trained `keras.Model` at the top of the chain (logits).
        assistants_and_student: List of `keras.Model`s (logits), the
            assistants from largest to smallest, then the student.
        x: Transfer-set inputs (arrays or a `tf.data.Dataset`, as for
            `Distiller.fit`).
        y: Labels, or `None`. Defaults to `None`.
        epochs: Epochs per stage: one int, or a list with one per stage.
            Defaults to `10`.
        batch_size: Passed to `fit` for array inputs. Defaults to `None`
            (Keras' 32).
        optimizer: Optimizer name, instance (copied for each stage from its
            config) or zero-argument factory. Defaults to `"adam"`.
        alpha: Weight of the label loss, one value or one per stage.
            Defaults to `0.1`.
        temperature: Distillation temperature, one value or one per stage.
            Defaults to `None` (the Distiller's 3.0, or the loss's own).
        distillation_loss_fn: Passed to `Distiller.compile` for every stage.
            Defaults to `None` (`keras_kd.KDLoss`).
        student_loss_fn: Passed to `Distiller.compile`. Defaults to `None`.
        metrics: Metric names or a zero-argument factory returning new metric
            objects (metric objects cannot be shared between models).
            Defaults to `None`.
        cache_teacher: For array inputs, run each stage's teacher once with
            `keras_kd.cache_teacher_outputs` instead of on every batch (exact
            when `x` is not augmented). Defaults to `True`.
        fit_kwargs: Extra `Distiller.fit` arguments for every stage
            (`validation_data`, `callbacks`, `verbose`, ...). Defaults to
            `None`.

    Returns:
        A list of `keras_kd.ChainStage(teacher, student, history)`, one per
        stage, in order.

    Raises:
        ValueError: for an empty chain, non-model entries, a model appearing
            twice, or per-stage lists of the wrong length.

    Example:

    ```python
    stages = keras_kd.distill_chain(
        teacher, [assistant, student], x_train, y_train, epochs=5, temperature=4.0
    )
    stages[-1].student.evaluate(x_test, y_test)
    ```

    Reference:
        Mirzadeh, Farajtabar, Li, Levine, Matsukawa, Ghasemzadeh, "Improved
        Knowledge Distillation via Teacher Assistant", AAAI 2020,
        https://arxiv.org/abs/1902.03393
    """
    if isinstance(assistants_and_student, keras.Model) or not isinstance(
        assistants_and_student, (list, tuple)
    ):
        raise ValueError(
            "`assistants_and_student` must be a list of `keras.Model`s (the "
            f"assistants, then the student), got {assistants_and_student!r}."
        )
    chain = [teacher, *assistants_and_student]
    if len(chain) < 2:
        raise ValueError(
            "`assistants_and_student` is empty: pass at least the student."
        )
    for index, model in enumerate(chain):
        if not isinstance(model, keras.Model):
            role = "teacher" if index == 0 else f"assistants_and_student[{index - 1}]"
            raise ValueError(
                f"`{role}` must be a `keras.Model`, got {type(model).__name__}."
            )
    if len({id(model) for model in chain}) != len(chain):
        raise ValueError(
            "The same model object appears twice in the chain; each stage "
            "trains a different model."
        )
    stages = len(assistants_and_student)
    epochs = _per_stage(epochs, "epochs", stages)
    alphas = _per_stage(alpha, "alpha", stages)
    temperatures = _per_stage(temperature, "temperature", stages)
    fit_kwargs = dict(fit_kwargs or {})
    for key in ("x", "y", "epochs", "batch_size", "teacher_logits"):
        if key in fit_kwargs:
            raise ValueError(
                f"`fit_kwargs` must not set `{key}`: it is an argument of "
                "`distill_chain`."
            )
    if metrics is not None and not callable(metrics):
        if any(isinstance(m, keras.metrics.Metric) for m in metrics):
            raise ValueError(
                "Metric objects cannot be shared between the stages' models: "
                "pass metric names or a zero-argument factory."
            )
    # Arrays only: datasets and generators may augment, and a cache would pair
    # the logits with other images.
    cache = cache_teacher and all(
        hasattr(leaf, "shape") and not isinstance(leaf, tf.data.Dataset)
        for leaf in keras.tree.flatten(x)
    )

    trainable = [model.trainable for model in chain]
    results = []
    try:
        for stage in range(stages):
            stage_teacher, stage_student = chain[stage], chain[stage + 1]
            distiller = Distiller(student=stage_student, teacher=stage_teacher)
            distiller.compile(
                optimizer=_fresh_optimizer(optimizer),
                metrics=metrics() if callable(metrics) else metrics,
                student_loss_fn=student_loss_fn,
                distillation_loss_fn=distillation_loss_fn,
                alpha=alphas[stage],
                temperature=temperatures[stage],
            )
            teacher_logits = None
            if cache:
                teacher_logits = cache_teacher_outputs(stage_teacher, x)
            history = distiller.fit(
                x,
                y,
                epochs=epochs[stage],
                batch_size=batch_size,
                teacher_logits=teacher_logits,
                **fit_kwargs,
            )
            results.append(ChainStage(stage_teacher, stage_student, history))
    finally:
        for model, flag in zip(chain, trainable):
            model.trainable = flag
    return results
