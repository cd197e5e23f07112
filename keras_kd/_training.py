"""What every keras_kd trainer shares: labels, per-position weights, metrics, config.

Outputs are logits of shape `(batch, ..., classes)`: `(batch, C)` for a
classifier, `(batch, time, C)` for tokens, `(batch, H, W, C)` for pixels. Every
label and distillation term is computed per *position* (`(batch, ...)`), and
reduced with one rule:

- per-position weights, a `sample_weight` of shape `(batch, ...)` equal to
  the positions' (a padding mask `(batch, time)`, a pixel mask): the exact
  weighted mean `sum(loss * w) / sum(w)` over the global batch, so that
  padding never counts;
- per-example weights, `(batch,)` or `(batch, 1)`, or none: Keras'
  `sum_over_batch_size` convention, `sum(loss * w) / positions` with
  `positions` the number of positions in the global batch (the batch size for
  a classifier).

A sparse label below 0 (say -1) at any position means "no label there": the
position gets no label loss, the distillation term only, and is left out of
the training metrics.
"""

import keras
from keras import ops

from keras_kd import _distribute, _steps
from keras_kd._validation import check_fraction, check_temperature

# The temperature of `Distiller.compile` when neither it nor its loss sets one.
DEFAULT_TEMPERATURE = 3.0


def split_unlabeled(y):
    """Returns `(labels, mask)`: sparse integer labels below 0 mark no label.

    `mask` (float32, the labels' shape) is 1.0 where there is a label and 0.0
    elsewhere, and missing labels are replaced by 0 so that any label loss
    stays finite; `mask` is `None` for other labels (one-hot, float, nested
    structures), which are all taken as given.
    """
    if not is_sparse(y):
        return y, None
    labeled = ops.greater_equal(y, 0)
    return ops.where(labeled, y, ops.zeros_like(y)), ops.cast(labeled, "float32")


def is_sparse(y) -> bool:
    """Whether `y` is a tensor or array of integer class indices."""
    if y is None or not hasattr(y, "dtype") or not hasattr(y, "shape"):
        return False
    return keras.backend.standardize_dtype(y.dtype).startswith("int")


def _static_positions(logits) -> tuple:
    return tuple(logits.shape[:-1])


def at_positions(values, logits, what: str = "loss"):
    """Brings `values` (a loss or a weight) to the positions `(batch, ...)`.

    A scalar or a per-example `(batch,)` / `(batch, 1)` value is broadcast to
    every position of its example; a value with one more axis than the
    positions (a per-class loss) is averaged over it.

    Raises:
        ValueError: when the static shapes show that `values` is not laid
            out like the positions of `logits`.
    """
    values = ops.cast(values, "float32")
    positions = _static_positions(logits)
    rank, target = len(values.shape), len(positions)
    if rank == 2 and values.shape[1] == 1 and target >= 2:
        values, rank = ops.reshape(values, (-1,)), 1  # `(batch, 1)`: per example
    elif rank == target + 1:
        values, rank = ops.mean(values, axis=-1), target
    if rank == target:
        _check_dims(values.shape, positions, what, logits.shape)
        return values
    if rank > 1:
        raise ValueError(_layout_message(what, values.shape, logits.shape))
    for _ in range(target - max(rank, 1)):
        values = ops.expand_dims(values, -1)
    return ops.broadcast_to(values, ops.shape(logits)[:-1])


def _check_dims(shape, positions, what, logits_shape):
    for got, expected in zip(shape, positions):
        if None not in (got, expected) and got != expected:
            raise ValueError(_layout_message(what, shape, logits_shape))


def _layout_message(what, shape, logits_shape):
    return (
        f"The {what} has shape {tuple(shape)}, which does not match outputs of "
        f"shape {tuple(logits_shape)}: expected one value per example "
        f"`(batch,)` or one per position `{tuple(logits_shape[:-1])}` (the "
        "outputs without their last, class axis)."
    )


PADDING_MASK = "padding_mask"


def padding_weights(x, sample_weight, logits):
    """`sample_weight`, or the inputs' `padding_mask` for per-token logits.

    KerasHub text models take `{"token_ids": ..., "padding_mask": ...}`.
    Without a `sample_weight`, logits `(batch, time, vocab)` are weighted by
    `x["padding_mask"]` `(batch, time)`, so that padded tokens count in no
    loss and no metric; an explicit `sample_weight` wins (KerasHub's
    preprocessors pass the labels' padding as one). Logits with one position
    per example (a classifier) ignore the mask: the model pools with it.

    Raises:
        ValueError: for per-token logits whose time axis is not the mask's.
    """
    if sample_weight is not None or not isinstance(x, dict) or PADDING_MASK not in x:
        return sample_weight
    if len(logits.shape) != 3:
        return None
    mask = x[PADDING_MASK]
    if tuple(mask.shape[1:]) != tuple(logits.shape[1:2]):
        raise ValueError(
            f"The inputs' `{PADDING_MASK}` has shape {tuple(mask.shape)} but the "
            f"logits {tuple(logits.shape)}: the mask can only weigh logits "
            "`(batch, time, vocab)` of the same length. Pass the positions' "
            "weights as `sample_weight` `(batch, time)`."
        )
    return ops.cast(mask, "float32")


def position_weights(sample_weight, logits):
    """`(weights, per_position)`: float32 weights at the positions.

    `per_position` is True when `sample_weight` gives one weight per position
    of outputs with more than one position per example (a `(batch, time)`
    padding mask for `(batch, time, vocab)` logits): the reduction is then
    `sum(loss * w) / sum(w)`.
    """
    if sample_weight is None:
        return ops.ones(ops.shape(logits)[:-1], "float32"), False
    rank, target = len(sample_weight.shape), len(logits.shape) - 1
    per_position = target >= 2 and rank == target
    weights = at_positions(sample_weight, logits, what="sample_weight")
    return weights, per_position


def normalizer(weights, per_position: bool, mask=None):
    """This replica's share of the denominator: `sum(w)` or the positions.

    With `mask` (1 where a position counts), `sum(w * mask)` or the number of
    positions that count.
    """
    if mask is None:
        if per_position:
            return ops.sum(weights)
        return ops.cast(ops.size(weights), "float32")
    if per_position:
        return ops.sum(weights * mask)
    return ops.sum(mask)


def per_example(values, batch_size):
    """One float32 value per example `(batch,)`: the mean over its positions."""
    values = ops.cast(values, "float32")
    rank = len(values.shape)
    if rank == 0:
        return ops.broadcast_to(values, (batch_size,))
    if rank > 1:
        return ops.mean(values, axis=tuple(range(1, rank)))
    return values


def example_weights(weights):
    """Per-example weights `(batch,)`: the mean weight of each example."""
    return per_example(weights, ops.shape(weights)[0])


def call_unreduced(loss_fn, y_true, y_pred):
    """The loss per position, without the Loss object's own reduction."""
    if isinstance(loss_fn, keras.losses.Loss):
        return loss_fn.call(y_true, y_pred)
    return loss_fn(y_true, y_pred)


def resolve_student_loss(loss_fn):
    if loss_fn is None:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if isinstance(loss_fn, str):
        return keras.losses.get(loss_fn)
    if not callable(loss_fn):
        raise ValueError(
            "`student_loss_fn` must be a Keras loss (a `keras.losses.Loss`, a "
            f"loss function or its name), got {loss_fn!r}."
        )
    return loss_fn


def serialize_model(model):
    """Serializes a sub-model without its own compile state.

    The trainer's optimizer trains the student; an optimizer left over from
    compiling a sub-model on its own would be restored empty and only produce
    warnings on `load_model`.
    """
    if model is None:
        return None
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)
    return config


def portable_config(config):
    """`config` with backend-specific Keras modules renamed to public ones.

    Optimizers made on PyTorch serialize under their backend's module
    (`keras.src.backend.torch.optimizers.torch_sgd`), which TensorFlow and
    JAX cannot load; `keras.optimizers` names the same class on every
    backend, so a file saved on one backend loads on the others.
    """
    if isinstance(config, list):
        return [portable_config(value) for value in config]
    if not isinstance(config, dict):
        return config
    config = {key: portable_config(value) for key, value in config.items()}
    module = str(config.get("module", ""))
    if module.startswith("keras.src.backend.") and ".optimizers." in module:
        config["module"] = "keras.optimizers"
    return config


def deserialize_models(config, roles, custom_objects=None):
    """A copy of `config` whose `roles` (models or lists of models) are built."""
    config = dict(config)

    def build(value):
        return keras.saving.deserialize_keras_object(
            value, custom_objects=custom_objects
        )

    for role in roles:
        value = config.get(role)
        if value is None:
            continue
        config[role] = (
            [build(v) for v in value] if isinstance(value, list) else build(value)
        )
    return config


def regularization_loss(models):
    """`sum(model.losses)` over `models`, float32 (0 when there are none)."""
    losses = [loss for model in models for loss in model.losses]
    if not losses:
        return ops.zeros(())
    return ops.cast(ops.sum(losses), "float32")


@keras.saving.register_keras_serializable(package="keras_kd")
class Trainer(keras.Model):
    """The base of `Distiller` and `MutualLearning`: what `fit` needs of both.

    A subclass sets `_label_model` (the model that `evaluate` and `__call__`
    use), `_trained_models` (whose `losses` regularize), `_train_trackers`
    (logs of training only) and implements `train_step`.
    """

    _alpha_meaning = "it weighs the label loss, and `1 - alpha` the teacher term"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._evaluating = False
        self.alpha = 0.1
        self.temperature = DEFAULT_TEMPERATURE
        self.student_loss_fn = resolve_student_loss(None)

    def _compile_common(self, student_loss_fn, alpha, temperature, kwargs):
        """Checks and sets what every trainer compiles; returns Keras' kwargs."""
        if kwargs.pop("loss", None) is not None:
            raise ValueError(
                f"`{type(self).__name__}.compile` takes `student_loss_fn` for the "
                "label loss, not `loss`."
            )
        if kwargs.pop("loss_weights", None) is not None:
            raise ValueError(
                "`loss_weights` is not used by keras_kd trainers: `alpha` weighs "
                "the label loss against the teacher term, and each feature loss "
                "has its own `weight`."
            )
        self.alpha = check_fraction(alpha, "alpha", self._alpha_meaning)
        self.temperature = check_temperature(temperature)
        self.student_loss_fn = resolve_student_loss(student_loss_fn)
        return kwargs

    @property
    def _label_model(self):
        raise NotImplementedError

    @property
    def _trained_models(self):
        raise NotImplementedError

    @property
    def _train_trackers(self):
        return ()

    def _regularization_loss(self):
        return regularization_loss(self._trained_models)

    def _strategy_bound_variables(self, strategy) -> list:
        """`(subject, variables)` that must belong to `strategy`."""
        return [
            (f"The variables of {model.name!r} were", model.variables)
            for model in self._trained_models
        ]

    def check_distribution(self) -> None:
        """Raises `ValueError` if a trained model or the optimizer has another strategy.

        The trained variables and the optimizer (created by `compile`) must
        belong to the strategy `fit` runs under; otherwise TensorFlow fails
        inside the first step with an unrelated message.
        """
        if not _distribute.on_tensorflow():
            return
        strategy = self.distribute_strategy
        bound = self._strategy_bound_variables(strategy)
        if self.compiled and self.optimizer is not None:
            bound.append(
                ("The optimizer (made by `compile`) was", [self.optimizer.iterations])
            )
        for subject, variables in bound:
            _distribute.check_variables(strategy, variables, subject)

    def _update_metrics(self, y, y_pred, sample_weight, label_mask=None):
        """Updates the compiled metrics on the labeled positions only.

        Unlabeled positions weigh 0 in every metric: plain `metrics` are
        weighted by the label mask, `weighted_metrics` by the mask times the
        sample weight. That is the same as dropping those positions, on every
        backend and under XLA.
        """
        metrics = self._compile_metrics
        if metrics is None:
            return
        if label_mask is None:
            metrics.update_state(y, y_pred, sample_weight)
            return
        mask = at_positions(label_mask, y_pred, "label mask")
        weight = mask
        if sample_weight is not None:
            weight = mask * at_positions(sample_weight, y_pred, "sample_weight")
        if not metrics.built:
            metrics.build(y, y_pred)
        for group, weights in (
            (metrics._flat_metrics, mask),
            (metrics._flat_weighted_metrics, weight),
        ):
            for metric in group:
                if metric:
                    metric.update_state(y, y_pred, weights)

    def train_step(self, *args):
        """One step of `fit`: `(data)`, or `(state, data)` on JAX.

        The subclass computes it in three backend-agnostic parts, `_prepare`,
        `_loss` and `_record`; `keras_kd._steps` takes the gradient on each
        backend.
        """
        return _steps.train_step(self, *args)

    def test_step(self, *args):
        """One step of `evaluate`: `(data)`, or `(state, data)` on JAX."""
        return _steps.evaluation_step(self, *args)

    @property
    def _trained_variables(self) -> list:
        """The variables that the gradients of `_loss` go to."""
        return [v for model in self._trained_models for v in model.trainable_variables]

    def _prepare(self, data):
        raise NotImplementedError

    def _loss(self, prepared):
        raise NotImplementedError

    def _record(self, prepared, outcome):
        raise NotImplementedError

    def _evaluate(self, data):
        """Scores `_label_model` on a batch: its label loss and the metrics."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x = self._evaluation_inputs(x)
        if y is None:
            raise ValueError(
                f"`evaluate` scores {self._label_model.name!r} against labels, but "
                "the data has none. Pass `(x, y)`."
            )
        y, label_mask = split_unlabeled(y)
        y_pred = self._label_model(x, training=False)
        sample_weight = padding_weights(x, sample_weight, y_pred)
        logits = ops.cast(y_pred, "float32")
        weights, per_position = position_weights(sample_weight, logits)
        label = at_positions(call_unreduced(self.student_loss_fn, y, logits), logits)
        mask = None
        if label_mask is not None:
            mask = at_positions(label_mask, logits, "label mask")
            label = label * mask
        # The mean over the labeled positions.
        count = normalizer(weights, per_position, mask)
        self._loss_tracker.update_state(
            ops.divide_no_nan(ops.sum(label * weights), count)
            + regularization_loss([self._label_model]),
            sample_weight=count,
        )
        self._update_metrics(y, y_pred, sample_weight, label_mask)
        return _distribute.replica_logs(self.get_metrics_result())

    def _evaluation_inputs(self, x):
        return x

    @property
    def metrics(self):
        metrics = super().metrics
        if self._compile_metrics is not None and not self._compile_metrics.built:
            # `fit(x)` without labels never builds the compiled metrics: they
            # have nothing to score, so they are left out of the logs.
            metrics = [m for m in metrics if m is not self._compile_metrics]
        trackers = list(self._train_trackers)
        metrics = [m for m in metrics if not any(m is t for t in trackers)]
        return metrics if self._evaluating else metrics + trackers

    def evaluate(self, *args, **kwargs):
        """Evaluates the label model alone; see `keras.Model.evaluate`.

        Reports its label loss (plus its regularization losses) and the
        compiled metrics, as its own `evaluate` would.
        """
        self._evaluating = True
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self._evaluating = False

    def fit(self, *args, **kwargs):
        """Trains; see `keras.Model.fit`."""
        _steps.build_optimizer(self)
        return super().fit(*args, **kwargs)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Keras' `compute_metrics`, which builds them; with no labels, nothing.

        Keras builds the compiled metrics through it before the first step
        (on JAX and PyTorch); without labels they have nothing to score and
        stay unbuilt, as they do on TensorFlow.
        """
        if y is None:
            return self.get_metrics_result()
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        local = _distribute.first_local_batch(self, iterator)
        if local is not None:
            data_batch = local
        return super()._maybe_symbolic_build(data_batch=data_batch)

    def _own_compile_config(self) -> dict:
        return {}

    def get_compile_config(self):
        if not self.compiled:
            return {}
        serialize = keras.saving.serialize_keras_object
        config = {
            "optimizer": portable_config(serialize(self.optimizer)),
            "metrics": serialize(self._compile_config.config.get("metrics")),
            "weighted_metrics": serialize(
                self._compile_config.config.get("weighted_metrics")
            ),
            "student_loss_fn": serialize(self.student_loss_fn),
            "alpha": self.alpha,
            "temperature": self.temperature,
            "steps_per_execution": self.steps_per_execution,
            "jit_compile": self.jit_compile,
        }
        config.update(self._own_compile_config())
        return config

    # Compile-config keys that `compile` does not take: state it cannot
    # rebuild, handed to `_restore_compile_state` after `compile`.
    _compile_state_keys = ()

    def _restore_compile_state(self, state: dict) -> None:
        pass

    def compile_from_config(self, config):
        config = dict(config)
        state = {key: config.pop(key, None) for key in self._compile_state_keys}
        config = {
            key: keras.saving.deserialize_keras_object(value)
            if isinstance(value, (dict, list))
            else value
            for key, value in config.items()
        }
        self.compile(**config)
        self._restore_compile_state(state)
        if self.built:
            self.optimizer.build(self.trainable_variables)
