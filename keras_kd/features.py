"""Intermediate features for `Distiller.compile(feature_losses=...)`.

Each model runs once per step and returns its logits together with the
outputs of the named layers:

- Functional and Sequential models (built with `keras.Input`): a
  multi-output view, `keras.Model(model.inputs, [model.output,
  layer.output, ...])`, that shares every layer and weight with the model.
  A layer inside a nested model (a backbone) is named by its path,
  `"backbone/conv3_block4_out"`; see `keras_kd._layer_paths`.
- Subclassed models: they implement the protocol
  `call_with_features(inputs, training=False)`, which returns
  `(logits, {layer_name: tensor})` from one forward pass, for example:

  ```python
  class Student(keras.Model):
      def __init__(self):
          super().__init__()
          self.hidden = keras.layers.Dense(32, activation="relu", name="hidden")
          self.head = keras.layers.Dense(10, name="logits")

      def call_with_features(self, inputs, training=False):
          hidden = self.hidden(inputs)
          return self.head(hidden), {"hidden": hidden}

      def call(self, inputs, training=False):
          return self.call_with_features(inputs, training)[0]
  ```

A layer name of `None` means the model's output (its logits), which needs
neither. Adapters (the learnable maps of `HintLoss`) live here too; they are
owned by the Distiller (`distiller.feature_adapters`), train with the
student, and are never part of it.

Reduction: per-example terms (hints, attention transfer) are weighted by
`sample_weight` and averaged over the global batch like the KL; batch-level
terms (RKD, similarity-preserving) are one value per replica batch, averaged
over the replicas, without sample weights. The Distiller's loss becomes

`alpha * label + (1 - alpha) * T² * KL + sum_i weight_i * feature_i`.
"""

import keras
from keras import ops

from keras_kd import _layer_paths, _models, _training
from keras_kd import losses as kd_losses

PROTOCOL = "call_with_features"
_ADAPTER_PREFIX = "feature_adapter_"


def _protocol_message(model, role, names):
    return (
        f"The {role} {model.name!r} is a subclassed model, so layer outputs "
        f"{names} cannot be read from its graph. Implement the feature "
        f"protocol on it: a method `{PROTOCOL}(inputs, training=False)` that "
        "returns `(logits, {layer_name: tensor})` from one forward pass (see "
        "`keras_kd.features`), or build it as a Functional or Sequential "
        "model that starts with `keras.Input`."
    )


class FeatureSource:
    """Runs one model once and returns `(logits, {layer_name: features})`.

    `features[None]` is the model's output. Raises `ValueError` at
    construction for an unknown layer name or a subclassed model without the
    protocol, and at call time for a protocol model that does not return a
    requested name.
    """

    def __init__(self, model, names, role):
        self.model, self.role = model, role
        self.names = list(dict.fromkeys(name for name in names if name is not None))
        self.view = None
        self.static_shapes = None
        self.uses_protocol = bool(self.names) and callable(
            getattr(model, PROTOCOL, None)
        )
        outputs = _models.graph_outputs(model)
        if outputs is not None and len(outputs) == 1:
            self.static_shapes = {None: tuple(outputs[0].shape)}
        if not self.names or self.uses_protocol:
            return
        if outputs is None:
            raise ValueError(_protocol_message(model, role, self.names))
        if len(outputs) != 1:
            raise ValueError(
                f"The {role} {model.name!r} has {len(outputs)} outputs; feature "
                "distillation needs a model with one output, its logits."
            )
        paths = _layer_paths.layer_paths(model)
        unknown = [name for name in self.names if name not in paths]
        if unknown:
            raise ValueError(
                f"The {role} {model.name!r} has no layer named "
                f"{', '.join(map(repr, unknown))}. Its layers (and, by "
                "path, those of the models nested in it) are: "
                f"{', '.join(map(repr, paths))}."
            )
        inputs, outputs, tensors = _layer_paths.feature_tensors(model, self.names)
        for name in self.names:
            self.static_shapes[name] = tuple(tensors[name].shape)
        self.view = keras.Model(
            _layer_paths.model_inputs(inputs),
            [outputs[0], *(tensors[name] for name in self.names)],
            name=f"{model.name}_features",
        )

    def __call__(self, x, training):
        if self.view is not None:
            outputs = self.view(x, training=training)
            logits, features = outputs[0], dict(zip(self.names, outputs[1:]))
        elif self.uses_protocol:
            logits, returned = getattr(self.model, PROTOCOL)(x, training=training)
            features = self._pick(returned)
        else:
            logits, features = self.model(x, training=training), {}
        features[None] = logits
        return logits, features

    def _pick(self, returned):
        if not isinstance(returned, dict):
            raise ValueError(
                f"`{self.model.name}.{PROTOCOL}` must return `(logits, "
                f"{{layer_name: tensor}})`; its second item is a "
                f"{type(returned).__name__}."
            )
        missing = [name for name in self.names if name not in returned]
        if missing:
            raise ValueError(
                f"`{self.model.name}.{PROTOCOL}` returned no features named "
                f"{', '.join(map(repr, missing))} (asked for by the {self.role} "
                f"layer names of the feature losses). It returned: "
                f"{', '.join(map(repr, returned)) or 'nothing'}."
            )
        return {name: returned[name] for name in self.names}


def adapter_name(index):
    return f"{_ADAPTER_PREFIX}{index}"


def make_adapter(index, student_shape, width):
    """A float32 `Dense` (2-D) or 1x1 `Conv2D` (4-D) adapter, built.

    Created under the distiller's strategy scope by the caller; float32 so
    that feature losses stay float32 under mixed precision.
    """
    student_shape = (None, *student_shape[1:])
    if len(student_shape) == 2:
        layer = keras.layers.Dense(width, dtype="float32", name=adapter_name(index))
    else:
        layer = keras.layers.Conv2D(width, 1, dtype="float32", name=adapter_name(index))
    layer.build(student_shape)
    return layer


def adapter_shape(adapter):
    """`(rank of the features, input width, output width)` of an adapter."""
    kernel_shape = tuple(int(d) for d in adapter.kernel.shape)
    return (2 if len(kernel_shape) == 2 else 4, kernel_shape[-2], kernel_shape[-1])


def build_adapters(adapters, widths):
    """Adds the adapters of `widths` that `adapters` lacks, in index order.

    `widths` maps a feature loss's index to `(student_shape, width)`; an
    adapter of another shape is replaced.
    """
    created = False
    for index, (student_shape, width) in widths.items():
        name = adapter_name(index)
        adapter = adapters.get(name)
        wanted = (len(student_shape), student_shape[-1], width)
        if adapter is not None and adapter_shape(adapter) == wanted:
            continue
        adapters[name] = make_adapter(index, student_shape, width)
        created = True
    if created:
        # Saving addresses the adapters by their order: keep it by index.
        ordered = sorted(adapters.items(), key=lambda item: _adapter_index(item[0]))
        adapters.clear()
        adapters.update(dict(ordered))


def trainable_variables(adapters):
    """The trainable variables of a dict of adapters, in its order."""
    return [v for adapter in adapters.values() for v in adapter.trainable_variables]


def _adapter_index(name):
    return int(name.rsplit("_", 1)[1])


def adapter_widths_from_shapes(shapes):
    """`{index: (student_shape, width)}` from saved `adapter_shape`s by name."""
    return {
        _adapter_index(name): ((None,) * (rank - 1) + (input_width,), output_width)
        for name, (rank, input_width, output_width) in shapes.items()
    }


def resolve_feature_losses(feature_losses):
    if feature_losses is None:
        return []
    if isinstance(feature_losses, kd_losses.FeatureLoss):
        return [feature_losses]
    if isinstance(feature_losses, (list, tuple)) and all(
        isinstance(loss, kd_losses.FeatureLoss) for loss in feature_losses
    ):
        return list(feature_losses)
    raise ValueError(
        "`feature_losses` must be None or a list of keras_kd feature losses "
        "(`keras_kd.losses.HintLoss`, `AttentionTransfer`, `RKD`, "
        f"`SimilarityPreserving`, or a `FeatureLoss` subclass); got {feature_losses!r}."
    )


class FeaturePlan:
    """The feature losses of one `compile`, with both models' sources.

    Held by the Distiller outside Keras' tracking: the views share the
    models' layers and must not be saved or counted twice.
    """

    def __init__(self, losses, student, teacher):
        self.losses = losses
        self.student = FeatureSource(
            student, [loss.student_layer_name for loss in losses], "student"
        )
        self.teacher = FeatureSource(
            teacher, [loss.teacher_layer_name for loss in losses], "teacher"
        )
        self.log_names = []
        for loss in losses:
            name, suffix = loss.name, 2
            while name in self.log_names:
                name, suffix = f"{loss.name}_{suffix}", suffix + 1
            self.log_names.append(name)
        self.trackers = [keras.metrics.Mean(name=name) for name in self.log_names]

    def static_adapter_widths(self):
        """`{index: width}` of the adapters the static shapes call for.

        Validates every loss whose two feature shapes are known before
        training (Functional/Sequential models) and raises its `ValueError`.
        """
        widths = {}
        if self.student.static_shapes is None or self.teacher.static_shapes is None:
            return widths
        for index, loss in enumerate(self.losses):
            teacher_shape = self.teacher.static_shapes.get(loss.teacher_layer_name)
            student_shape = self.student.static_shapes.get(loss.student_layer_name)
            if teacher_shape is None or student_shape is None:
                continue
            width = loss.check_shapes(teacher_shape, student_shape)
            if width is not None:
                widths[index] = (student_shape, width)
        return widths

    def adapter_widths(self, teacher_features, student_features):
        """`{index: (student_shape, width)}` for concrete or traced features."""
        widths = {}
        for index, loss in enumerate(self.losses):
            width = loss.check_shapes(
                tuple(teacher_features[loss.teacher_layer_name].shape),
                tuple(student_features[loss.student_layer_name].shape),
            )
            if width is not None:
                widths[index] = (
                    tuple(student_features[loss.student_layer_name].shape),
                    width,
                )
        return widths

    def values(self, teacher_features, student_features, adapters):
        """One float32 tensor per loss: `(batch,)`, or a scalar if batch-level."""
        values = []
        for index, loss in enumerate(self.losses):
            teacher = ops.stop_gradient(
                ops.cast(teacher_features[loss.teacher_layer_name], "float32")
            )
            student = ops.cast(student_features[loss.student_layer_name], "float32")
            width = loss.check_shapes(tuple(teacher.shape), tuple(student.shape))
            adapter = adapters.get(adapter_name(index))
            if width is not None and adapter is None:
                raise ValueError(
                    f"{loss.describe()} needs an adapter to width {width}, which "
                    "is built from the first batch before training, but `fit` "
                    "could not read a batch ahead (a Python generator). Call "
                    "`distiller.check_transfer_data(x_batch)` once before `fit`, "
                    "or pass arrays or a `tf.data.Dataset`."
                )
            if width is not None:
                student = adapter(student)
            values.append(ops.cast(loss.call(teacher, student), "float32"))
        return values

    def terms(self, teacher_features, student_features, adapters, example_weight):
        """`(logs, example_sum, batch_sum)` of the feature losses on one replica.

        `example_sum` is the weighted sum over examples of the per-example
        terms, `batch_sum` the weighted sum of the batch-level terms; `logs`
        holds `(value, count)` per loss for its tracker, unweighted.
        """
        values = self.values(teacher_features, student_features, adapters)
        batch_size = ops.shape(example_weight)[0]
        local_count = ops.cast(batch_size, "float32")
        logs, example_sum, batch_sum = [], ops.zeros(()), ops.zeros(())
        for loss, value in zip(self.losses, values):
            if loss.batch_level:
                batch_sum += loss.weight * value
                logs.append((value, ops.ones(())))
            else:
                per_example = _training.per_example(value, batch_size)
                total = ops.sum(per_example * example_weight)
                example_sum += loss.weight * total
                logs.append((total / local_count, local_count))
        return logs, example_sum, batch_sum
