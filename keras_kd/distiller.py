"""`Distiller`: a `keras.Model` that trains a student to match a frozen teacher."""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_kd import augmentation as kd_augmentation
from keras_kd import feature_losses as kd_feature_losses
from keras_kd import features as kd_features
from keras_kd import losses as kd_losses
from keras_kd.caching import attach_teacher_logits, split_cached_inputs

_TEACHER_OUTPUTS = ("logits", "probabilities")
_PROBE_SIZE = 16
# Rows this close to summing to one, with no negative entry, are probabilities.
_SUM_TO_ONE_ATOL = 1e-3
_MIN_PROBABILITY = 1e-12


def _check_model(model, role):
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`{role}` must be a `keras.Model` (Sequential, Functional or "
            f"subclassed), got {type(model).__name__}: {model!r}."
        )


def _output_layer(model):
    """The layer that produces a Functional/Sequential model's output, or None."""
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    if not outputs or len(outputs) != 1:
        return None
    history = getattr(outputs[0], "_keras_history", None)
    return history[0] if history else None


def _ends_in_softmax(model):
    layer = _output_layer(model)
    if layer is None:
        return False
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) == "softmax"


def _num_classes(model):
    """The static size of a model's last output axis, or None if unknown."""
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    if not outputs or len(outputs) != 1:
        return None
    return outputs[0].shape[-1]


def _looks_like_probabilities(values):
    values = np.asarray(values, dtype=np.float64)
    if values.ndim < 1 or values.size == 0 or values.shape[-1] < 2:
        return False
    sums = values.sum(axis=-1)
    return bool(values.min() >= 0.0 and np.allclose(sums, 1.0, atol=_SUM_TO_ONE_ATOL))


def _softmax_message(role):
    fix = (
        "Pass a model that outputs logits (for example rebuild it with "
        "`activation=None` on the last layer, or take the output of the layer "
        "before the softmax)"
    )
    if role == "teacher":
        fix += (
            ", or declare the outputs with "
            "`Distiller(student, teacher, teacher_outputs='probabilities')`"
        )
    return (
        f"The {role} outputs probabilities (a softmax head), but logits are "
        f"expected. {fix}."
    )


def _per_example(values, batch_size):
    """Brings a loss function's output to shape `(batch,)`, float32."""
    values = ops.cast(values, "float32")
    rank = len(values.shape)
    if rank == 0:
        return ops.broadcast_to(values, (batch_size,))
    if rank > 1:
        return ops.mean(values, axis=tuple(range(1, rank)))
    return values


def _serialize_model(model):
    """Serializes a sub-model without its own compile state.

    The distiller's optimizer trains the student; an optimizer left over from
    compiling the teacher or the student on their own would be restored empty
    and only produce warnings on `load_model`.
    """
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)
    return config


def _call_unreduced(loss_fn, y_true, y_pred):
    if isinstance(loss_fn, keras.losses.Loss):
        return loss_fn.call(y_true, y_pred)
    return loss_fn(y_true, y_pred)


def _probe_batch(x):
    """A few examples of the transfer set, to check models and data eagerly.

    Returns `None` when the data cannot be peeked at without consuming it (a
    Python generator). Raises `ValueError` when the data is empty.
    """
    if isinstance(x, tf.data.Dataset):
        for batch in x.take(1):
            inputs, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
            return keras.tree.map_structure(lambda a: a[:_PROBE_SIZE], inputs)
        raise ValueError(
            "The dataset passed to `fit` is empty: it yielded no batch. Check "
            "the pipeline (a `filter`, `take` or `skip` may remove everything)."
        )
    if isinstance(x, keras.utils.PyDataset):
        if len(x) == 0:
            raise ValueError("The `PyDataset` passed to `fit` is empty (len 0).")
        inputs, _, _ = keras.utils.unpack_x_y_sample_weight(x[0])
        return keras.tree.map_structure(lambda a: a[:_PROBE_SIZE], inputs)
    if x is None:
        raise ValueError("`fit` needs data: got `x=None`.")
    leaves = keras.tree.flatten(x)
    if leaves and all(hasattr(leaf, "shape") for leaf in leaves):
        if any(leaf.shape[0] == 0 for leaf in leaves):
            raise ValueError(
                "The data passed to `fit` is empty: "
                f"inputs with shapes {[tuple(leaf.shape) for leaf in leaves]}."
            )
        return keras.tree.map_structure(lambda a: a[:_PROBE_SIZE], x)
    return None


def _tf_variable(variable):
    """The `tf.Variable` behind a Keras variable (itself on other backends)."""
    return getattr(variable, "value", variable)


def _outside_scope(strategy, variables):
    """Paths of the variables that `strategy` did not create."""
    return [
        getattr(v, "path", getattr(v, "name", "?"))
        for v in variables
        if not strategy.extended.variable_created_in_scope(_tf_variable(v))
    ]


def _scope_message(subject, strategy, paths):
    name = type(strategy).__name__
    return (
        f"{subject} created outside the scope of the `{name}` the distiller "
        f"trains under ({', '.join(paths[:3])}{', ...' if len(paths) > 3 else ''}). "
        "Create the teacher, the student and the Distiller, and call "
        "`compile`, inside one `with strategy.scope():` block, and call `fit` "
        "with the same strategy (for example load a saved teacher with "
        "`keras.saving.load_model` inside the scope)."
    )


def _in_multi_worker_mode(strategy):
    return (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    )


def _first_local_value(value):
    """The first local replica's component of a distributed value, else `value`."""
    strategy = tf.distribute.get_strategy()
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def _split_unlabeled(y):
    """Returns `(labels, mask)`: sparse integer labels below 0 mark no label.

    `mask` is 1.0 for labeled and 0.0 for unlabeled examples, and unlabeled
    labels are replaced by 0 so that any label loss stays finite; `mask` is
    `None` for other labels (one-hot, float), which are all taken as given.
    """
    if y is None or not isinstance(y, (tf.Tensor, np.ndarray)):
        return y, None
    if not keras.backend.standardize_dtype(y.dtype).startswith("int"):
        return y, None
    labeled = ops.greater_equal(y, 0)
    mask = ops.cast(labeled, "float32")
    if len(mask.shape) > 1:
        mask = ops.reshape(mask, (ops.shape(mask)[0], -1))[:, 0]
    return ops.where(labeled, y, ops.zeros_like(y)), mask


def _resolve_student_loss(loss_fn):
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


def _resolve_distillation_loss(loss_fn, temperature):
    if loss_fn is None:
        return kd_losses.KDLoss(temperature=temperature)
    if isinstance(loss_fn, str):
        return keras.losses.get(loss_fn)
    if not callable(loss_fn):
        raise ValueError(
            "`distillation_loss_fn` must be a Keras loss (for example "
            "`keras.losses.KLDivergence()`), a loss function or its name, or "
            f"None for keras_kd's stable tempered KL; got {loss_fn!r}."
        )
    return loss_fn


def _resolve_augmentation(augmentation):
    """A single layer for `augmentation`: a layer, a model or a list of them."""
    if augmentation is None or isinstance(augmentation, keras.layers.Layer):
        return augmentation
    if isinstance(augmentation, (list, tuple)) and all(
        isinstance(layer, keras.layers.Layer) for layer in augmentation
    ):
        if not augmentation:
            return None
        return keras.Sequential(list(augmentation), name="augmentation")
    raise ValueError(
        "`augmentation` must be None, a Keras layer or model (for example "
        "`keras.layers.RandomTranslation(0.1, 0.1)` or a `keras.Sequential` "
        f"of preprocessing layers) or a list of layers; got {augmentation!r}."
    )


def _cache_message(source):
    return (
        f"{source} cannot be combined with `augmentation` or `mixup_alpha`: "
        "the teacher must see the same randomly augmented inputs as the "
        "student, and cached logits belong to the un-augmented images. Train "
        "online (drop the cache: `Distiller.fit(x, y)` runs the teacher on "
        "every batch), or build the Distiller without augmentation."
    )


def _feature_cache_message(source):
    return (
        f"{source} cannot be combined with `feature_losses`: they compare the "
        "teacher's intermediate layers, which only an online teacher computes. "
        "Train online (`Distiller.fit(x, y)` runs the teacher on every batch), "
        "or compile without `feature_losses`."
    )


def _resolve_feature_losses(feature_losses):
    if feature_losses is None:
        return []
    if isinstance(feature_losses, kd_feature_losses.FeatureLoss):
        return [feature_losses]
    if isinstance(feature_losses, (list, tuple)) and all(
        isinstance(loss, kd_feature_losses.FeatureLoss) for loss in feature_losses
    ):
        return list(feature_losses)
    raise ValueError(
        "`feature_losses` must be None or a list of keras_kd feature losses "
        "(`keras_kd.losses.HintLoss`, `AttentionTransfer`, `RKD`, "
        f"`SimilarityPreserving`, or a `FeatureLoss` subclass); got {feature_losses!r}."
    )


def _example_weights(sample_weight, batch_size, mixup):
    """`(weight, mixed_weight)`, float32 `(batch,)`: per example, and per mix.

    The label loss weighs each share of a mixed example by its own weight;
    the terms computed on the mixed image (distillation, features) use
    `mixed_weight`, the mix of the two.
    """
    weight = ops.ones((batch_size,), "float32")
    if sample_weight is not None:
        weight = _per_example(sample_weight, batch_size)
    if mixup is None:
        return weight, weight
    return weight, kd_augmentation.mix_per_example(weight, *mixup)


def _adapter_shape(adapter):
    """`(rank of the features, input width, output width)` of an adapter."""
    kernel_shape = tuple(int(d) for d in adapter.kernel.shape)
    return (2 if len(kernel_shape) == 2 else 4, kernel_shape[-2], kernel_shape[-1])


def _check_alpha(alpha):
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ValueError(f"`alpha` must be a number in [0, 1], got {alpha!r}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(
            "`alpha` must be in [0, 1]: it weighs the student's label loss, "
            "and `1 - alpha` the distillation loss. "
            f"Got alpha={alpha!r}."
        )


@keras.saving.register_keras_serializable(package="keras_kd")
class Distiller(keras.Model):
    """Trains a student to match a frozen teacher's softened outputs.

    The loss minimised by `fit` is, per example,

    `alpha * student_loss(y, s) + (1 - alpha) * T² * KL(softmax(t/T) || softmax(s/T))`

    plus the student's own regularization losses (`student.losses`), with `t`
    the teacher's logits, `s` the student's logits and `T` the temperature.
    The KL runs from the teacher (target) to the student; the T² factor keeps
    the soft-target gradients at the same scale for every T (Hinton et al.).

    The teacher is frozen (`teacher.trainable` is set to `False`), runs with
    `training=False` outside the gradient tape, and its weights never change.
    `evaluate`, `predict` and `__call__` use the student only.

    Per-example losses are reduced over the global batch, weighted by
    `sample_weight` as in Keras (`sum(loss * weight) / batch_size`), so that
    training on several replicas gives the same result as on one device.
    `fit` logs `loss` (the total), `student_loss` (mean label loss over the
    labeled examples), `distillation_loss` (the T²-scaled KL) and every
    compiled metric, computed on the student's predictions.

    Feature and relation distillation: `compile(feature_losses=[...])` adds
    terms that compare intermediate layers of both models, so that the loss
    becomes

    `alpha * label + (1 - alpha) * T² * KL + sum_i weight_i * feature_i`

    with `feature_i` the value of the i-th loss (`keras_kd.losses.HintLoss`,
    `AttentionTransfer`, `RKD`, `SimilarityPreserving`) on the outputs of its
    `teacher_layer_name` and `student_layer_name`. Per-example terms (hints,
    attention transfer) are weighted by `sample_weight` and averaged over the
    global batch like the KL; batch-level terms (RKD, similarity-preserving)
    are one value per replica batch, averaged over the replicas, without
    sample weights. Each model still runs once per step (a multi-output view
    of Functional and Sequential models; subclassed models implement
    `call_with_features`, see `keras_kd.features`). `HintLoss` adapters
    (`feature_adapters`) belong to the distiller and train with the student;
    the student never contains them. Each term is logged under its loss's
    `name`.

    `fit(x)` without labels trains on the soft targets alone: each example
    contributes `(1 - alpha) * T² * KL`. With sparse integer labels, a label
    below 0 (say -1) marks an unlabeled example in a partly labeled set: it
    contributes no label loss, only the distillation term, and is left out of
    the training metrics.

    Consistent augmentation ("function matching"): with `augmentation`,
    every training batch goes once through the augmentation (with
    `training=True`), and the teacher and the student both see the same
    augmented images; with `mixup_alpha`, the (augmented) batch is then mixed
    with a permutation of itself, `x' = lam * x + (1 - lam) * x[partners]`
    with `lam ~ Beta(a, a)` drawn once per batch, and again both models see
    `x'`. The label loss becomes `lam * L(y, s) + (1 - lam) *
    L(y[partners], s)`; the part of an unlabeled example (or partner)
    carries no label loss, only the distillation term on the mixed image.
    Sample weights are mixed the same way. Training metrics use the label of
    the larger share (`lam >= 0.5`: the example's own). `evaluate`, `predict`
    and `__call__` never augment. Both need the teacher online: a teacher
    cache (`fit(..., teacher_logits=...)` or a cached dataset) raises
    `ValueError`. With `jit_compile=True` the augmentation layers must
    themselves compile with XLA (`RandomFlip`, `RandomCrop`, `GaussianNoise`
    do; `RandomTranslation`, `RandomRotation` and `RandomZoom` do not, in
    TensorFlow 2.21); `jit_compile="auto"` checks this. Under a
    `tf.distribute` strategy, create the augmentation in the strategy's
    scope with the models.

    Args:
        student: `keras.Model` to train. Must output logits.
        teacher: Trained `keras.Model` with the same number of outputs
            classes. Must output logits unless `teacher_outputs` says
            otherwise.
        teacher_outputs: `"logits"` or `"probabilities"`. With
            `"probabilities"`, the teacher's outputs are turned into logits
            with `log(p)` (which `softmax` maps back to `p`). Defaults to
            `"logits"`.
        augmentation: Keras preprocessing layer, list of layers or model
            applied to each training batch before both models (for example
            `keras.layers.RandomTranslation(0.1, 0.1)`); it is not trained.
            Defaults to `None`.
        mixup_alpha: Concentration `a > 0` of the `Beta(a, a)` mixup weight,
            or `None` for no mixup. Needs floating-point inputs. Defaults to
            `None`.
        name: Model name. Defaults to `"distiller"`.

    Raises:
        ValueError: if a model is not a `keras.Model`, the student is the
            teacher, the class counts differ, a model ends in a softmax,
            `teacher_outputs` is unknown, `augmentation` is not a layer, or
            `mixup_alpha` is not a number > 0.

    Example:

    ```python
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer=keras.optimizers.Adam(),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
        alpha=0.1,
        temperature=10,
    )
    distiller.fit(x_train, y_train, epochs=3)
    distiller.evaluate(x_test, y_test)
    ```

    Consistent augmentation and mixup (the teacher runs on every batch):

    ```python
    distiller = keras_kd.Distiller(
        student=student,
        teacher=teacher,
        augmentation=keras.layers.RandomTranslation(0.1, 0.1),
        mixup_alpha=0.2,
    )
    ```

    Reference:
        Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network",
        2015, https://arxiv.org/abs/1503.02531

        Beyer, Zhai, Royer, Markeeva, Anil, Kolesnikov, "Knowledge
        distillation: A good teacher is patient and consistent", 2022,
        https://arxiv.org/abs/2106.05237
    """

    def __init__(
        self,
        student,
        teacher,
        teacher_outputs="logits",
        augmentation=None,
        mixup_alpha=None,
        name="distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        augmentation = _resolve_augmentation(augmentation)
        kd_augmentation.check_mixup_alpha(mixup_alpha)
        _check_model(student, "student")
        _check_model(teacher, "teacher")
        if student is teacher:
            raise ValueError(
                "`student` and `teacher` are the same model object. Distill "
                "into a new model (for example `keras.models.clone_model`)."
            )
        if teacher_outputs not in _TEACHER_OUTPUTS:
            raise ValueError(
                f"`teacher_outputs` must be one of {_TEACHER_OUTPUTS}, got "
                f"{teacher_outputs!r}."
            )
        if teacher_outputs == "logits" and _ends_in_softmax(teacher):
            raise ValueError(_softmax_message("teacher"))
        if _ends_in_softmax(student):
            raise ValueError(_softmax_message("student"))
        student_classes, teacher_classes = _num_classes(student), _num_classes(teacher)
        if None not in (student_classes, teacher_classes):
            self._check_class_counts(student_classes, teacher_classes)

        self.student = student
        self.teacher = teacher
        self.teacher_outputs = teacher_outputs
        self.teacher.trainable = False
        self.augmentation = augmentation
        if augmentation is not None:
            augmentation.trainable = False
        self.mixup_alpha = None if mixup_alpha is None else float(mixup_alpha)
        # Drawn from NumPy's global generator, which `keras.utils.set_random_seed`
        # seeds: runs with different seeds mix differently, a resumed run alike.
        self._mixup_seed = np.int64(np.random.randint(2**31 - 1))
        self._kd_trackers = (
            keras.metrics.Mean(name="student_loss"),
            keras.metrics.Mean(name="distillation_loss"),
        )
        self._evaluating = False
        # Adapters are trained with the student but never belong to it; keyed
        # by `feature_adapter_<index of the feature loss>`.
        self.feature_adapters = {}
        self.feature_losses = []
        self._feature_plan = None
        self.alpha = 0.1
        self.temperature = 3.0
        self.student_loss_fn = _resolve_student_loss(None)
        self.distillation_loss_fn = _resolve_distillation_loss(None, self.temperature)
        # The distiller owns no variables of its own: it is built once its
        # models are, which lets `save` and `compile_from_config` restore
        # the optimizer.
        self.built = True

    @staticmethod
    def _check_class_counts(student_classes, teacher_classes):
        if student_classes != teacher_classes:
            raise ValueError(
                f"The teacher outputs {teacher_classes} classes and the student "
                f"{student_classes}: they must output the same classes, in the "
                "same order."
            )

    def compile(
        self,
        optimizer="adam",
        metrics=None,
        student_loss_fn=None,
        distillation_loss_fn=None,
        alpha=0.1,
        temperature=None,
        feature_losses=None,
        **kwargs,
    ):
        """Configures the distiller for training.

        The signature is the keras.io "Knowledge Distillation" example's, so
        code written for it runs unchanged.

        Args:
            optimizer: Optimizer for the student's weights. Defaults to
                `"adam"`.
            metrics: Metrics computed on the student's predictions against the
                labels. Defaults to `None`.
            student_loss_fn: Label loss, called as `fn(y, student_logits)`.
                Defaults to
                `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`.
            distillation_loss_fn: Distillation loss. `None` uses
                `keras_kd.losses.KDLoss`, a tempered KL computed from
                log-softmax in float32. A loss with a `takes_logits = True`
                attribute (every `keras_kd.losses` class) gets the raw
                logits and applies its own temperature; one with
                `needs_labels = True` is called as
                `loss.call(teacher_logits, student_logits, labels=...)` with
                the sparse label, or the teacher's top class for unlabeled
                examples and one-hot labels. Any other loss, such
                as `keras.losses.KLDivergence()`, is called as in the keras.io
                example, `fn(softmax(t/T), softmax(s/T))`, and multiplied by
                T². Defaults to `None`.
            alpha: Weight of the student (label) loss; `1 - alpha` weighs the
                distillation loss. Defaults to `0.1`.
            temperature: Softmax temperature T > 0. Defaults to `3.0` (or the
                `temperature` of a `keras_kd` loss passed as
                `distillation_loss_fn`).
            feature_losses: List of `keras_kd.losses.FeatureLoss`
                (`HintLoss`, `AttentionTransfer`, `RKD`,
                `SimilarityPreserving`), each naming a teacher and a student
                layer and adding `loss.weight * value` to the total loss,
                next to the label and logits terms. Compiling builds the
                models' multi-output views, checks layer names and shapes
                (for subclassed models: on the first batch of `fit`), and
                creates `HintLoss` adapters anew. Needs the teacher online:
                no teacher-logits cache. Defaults to `None`.
            **kwargs: Passed to `keras.Model.compile` (`weighted_metrics`,
                `jit_compile`, `steps_per_execution`, `run_eagerly`).

        Raises:
            ValueError: for `alpha` outside [0, 1], `temperature <= 0`, a
                non-callable loss, `loss=` (use `student_loss_fn`), a
                `temperature` that contradicts the distillation loss's own,
                or, for `feature_losses`, a loss that is not a `FeatureLoss`,
                an unknown layer name (the message lists the model's layers),
                a subclassed model without `call_with_features`, or feature
                shapes the loss cannot compare.

        Example:

        ```python
        distiller.compile(
            optimizer="adam",
            alpha=0.1,
            temperature=4.0,
            feature_losses=[
                keras_kd.losses.HintLoss("t_conv2", "s_conv2"),  # adapter if needed
                keras_kd.losses.AttentionTransfer("t_conv1", "s_conv1"),
                keras_kd.losses.RKD("t_hidden", "s_hidden", weight=0.5),
            ],
        )
        ```
        """
        if kwargs.pop("loss", None) is not None:
            raise ValueError(
                "`Distiller.compile` takes `student_loss_fn` for the label loss "
                "and `distillation_loss_fn` for the teacher term, not `loss`."
            )
        kwargs.pop("loss_weights", None)
        _check_alpha(alpha)
        own_temperature = getattr(distillation_loss_fn, "temperature", None)
        takes_logits = getattr(distillation_loss_fn, "takes_logits", False)
        if takes_logits and own_temperature is not None:
            if temperature is not None and temperature != own_temperature:
                raise ValueError(
                    f"`temperature={temperature!r}` contradicts the "
                    f"distillation loss's own temperature {own_temperature!r}. "
                    "Set it in one place only."
                )
            temperature = own_temperature
        if temperature is None:
            temperature = 3.0
        kd_losses._check_temperature(temperature)

        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.student_loss_fn = _resolve_student_loss(student_loss_fn)
        self.distillation_loss_fn = _resolve_distillation_loss(
            distillation_loss_fn, self.temperature
        )
        self._compile_features(_resolve_feature_losses(feature_losses))
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def _compile_features(self, feature_losses):
        self.feature_adapters.clear()
        self.feature_losses = feature_losses
        self._feature_plan = None
        if not feature_losses:
            return
        plan = kd_features.FeaturePlan(feature_losses, self.student, self.teacher)
        self._build_adapters(plan.static_adapter_widths())
        self._feature_plan = plan

    def _build_adapters(self, widths):
        """Creates the adapters `{index: (student_shape, width)}` that are missing."""
        created = False
        for index, (student_shape, width) in widths.items():
            name = kd_features.adapter_name(index)
            adapter = self.feature_adapters.get(name)
            if adapter is not None and _adapter_shape(adapter) == (
                len(student_shape),
                student_shape[-1],
                width,
            ):
                continue
            with self.distribute_strategy.scope():
                self.feature_adapters[name] = kd_features.make_adapter(
                    index, student_shape, width
                )
            created = True
        if created:
            # Saving addresses the adapters by their order: keep it by index.
            ordered = sorted(
                self.feature_adapters.items(),
                key=lambda item: int(item[0].rsplit("_", 1)[1]),
            )
            self.feature_adapters.clear()
            self.feature_adapters.update(dict(ordered))

    def call(self, inputs, training=None):
        inputs, _ = split_cached_inputs(inputs)
        return self.student(inputs, training=training)

    def teacher_logits(self, x):
        """The teacher's logits (float32) for a batch, as the losses see them."""
        return self._as_teacher_logits(self.teacher(x, training=False))

    def _as_teacher_logits(self, outputs):
        logits = ops.cast(outputs, "float32")
        if self.teacher_outputs == "probabilities":
            logits = ops.log(ops.maximum(logits, _MIN_PROBABILITY))
        return ops.stop_gradient(logits)

    def _distillation_per_example(
        self, teacher_logits, student_logits, labels=None, label_mask=None
    ):
        loss_fn = self.distillation_loss_fn
        if getattr(loss_fn, "needs_labels", False):
            # Losses built around the true class (DKD) get the label where
            # there is one and the teacher's top class elsewhere.
            target = ops.argmax(teacher_logits, axis=-1)
            if labels is not None:
                labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
                target = ops.cast(target, "int32")
                if label_mask is not None:
                    labels = ops.where(ops.cast(label_mask, "bool"), labels, target)
                target = labels
            values = loss_fn.call(teacher_logits, student_logits, labels=target)
        elif getattr(loss_fn, "takes_logits", False):
            values = _call_unreduced(loss_fn, teacher_logits, student_logits)
        else:
            temperature = self.temperature
            values = _call_unreduced(
                loss_fn,
                ops.softmax(teacher_logits / temperature, axis=-1),
                ops.softmax(student_logits / temperature, axis=-1),
            ) * (temperature**2)
        return _per_example(values, ops.shape(student_logits)[0])

    def _loss_terms(
        self, y, y_pred, teacher_logits, sample_weight, label_mask, mixup=None
    ):
        """Per-replica sums of the weighted label and distillation losses.

        Returns `(student_sum, labeled_count, distillation_sum, local_count)`,
        all float32 scalars; dividing by a batch size gives means. Examples
        whose `label_mask` is 0 contribute no label loss. With `mixup =
        (lam, partners)`, example `i` is the mix of `i` (share `lam`) and
        `partners[i]`: each share carries its own label loss, label mask and
        sample weight.
        """
        student_logits = ops.cast(y_pred, "float32")
        batch_size = ops.shape(student_logits)[0]
        weight, distillation_weight = _example_weights(sample_weight, batch_size, mixup)
        local_count = ops.cast(batch_size, "float32")

        sparse_labels, sparse_mask = (
            (y, label_mask) if label_mask is not None else (None, None)
        )
        if mixup is not None:
            lam, partners = mixup
            if sparse_labels is not None:
                sparse_labels = kd_augmentation.dominant(sparse_labels, lam, partners)
                sparse_mask = kd_augmentation.dominant(sparse_mask, lam, partners)
        distillation = self._distillation_per_example(
            teacher_logits, student_logits, sparse_labels, sparse_mask
        )
        distillation_sum = ops.sum(distillation * distillation_weight)
        if y is None:
            return ops.zeros(()), ops.zeros(()), distillation_sum, local_count

        def label_loss(labels):
            return _per_example(
                _call_unreduced(self.student_loss_fn, labels, student_logits),
                batch_size,
            )

        mask = ops.ones((batch_size,), "float32") if label_mask is None else label_mask
        student = label_loss(y) * mask * weight
        if mixup is None:
            labeled_count = local_count if label_mask is None else ops.sum(label_mask)
            return ops.sum(student), labeled_count, distillation_sum, local_count
        partner_student = label_loss(ops.take(y, partners, axis=0)) * ops.take(
            mask * weight, partners, axis=0
        )
        student_sum = ops.sum(lam * student + (1.0 - lam) * partner_student)
        labeled_count = ops.sum(kd_augmentation.mix_per_example(mask, lam, partners))
        return student_sum, labeled_count, distillation_sum, local_count

    def _feature_terms(
        self, plan, teacher_features, student_features, sample_weight, mixup
    ):
        """`(logs, example_sum, batch_sum)` of the feature losses on one replica.

        `example_sum` is the weighted sum over examples of the per-example
        terms, `batch_sum` the weighted sum of the batch-level terms; `logs`
        holds `(value, count)` per loss for its tracker, unweighted.
        """
        values = plan.values(teacher_features, student_features, self.feature_adapters)
        batch_size = ops.shape(student_features[None])[0]
        _, mixed_weight = _example_weights(sample_weight, batch_size, mixup)
        local_count = ops.cast(batch_size, "float32")
        logs, example_sum, batch_sum = [], ops.zeros(()), ops.zeros(())
        for loss, value in zip(plan.losses, values):
            if loss.batch_level:
                batch_sum += loss.weight * value
                logs.append((value, ops.ones(())))
            else:
                total = ops.sum(_per_example(value, batch_size) * mixed_weight)
                example_sum += loss.weight * total
                logs.append((total / local_count, local_count))
        return logs, example_sum, batch_sum

    def _adapter_variables(self):
        return [
            variable
            for adapter in self.feature_adapters.values()
            for variable in adapter.trainable_variables
        ]

    def _regularization_loss(self):
        if not self.student.losses:
            return ops.zeros(())
        return ops.cast(ops.sum(self.student.losses), "float32")

    @property
    def _augments(self):
        return self.augmentation is not None or self.mixup_alpha is not None

    def _mixup_draw(self, batch_size):
        """`(lam, partners)` for this step; seeded by the step counter."""
        seed = tf.stack(
            [tf.cast(self.optimizer.iterations, "int64"), tf.constant(self._mixup_seed)]
        )
        return kd_augmentation.sample_mixup(batch_size, self.mixup_alpha, seed)

    def augment(self, x):
        """The training-time view of a batch: augmented, then mixed.

        Returns `(x, mixup)`, with `mixup = (lam, partners)` or `None`.
        """
        if self.augmentation is not None:
            x = self.augmentation(x, training=True)
        if self.mixup_alpha is None:
            return x, None
        batch_size = ops.shape(keras.tree.flatten(x)[0])[0]
        lam, partners = self._mixup_draw(batch_size)
        return kd_augmentation.mix_inputs(x, lam, partners), (lam, partners)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y, label_mask = _split_unlabeled(y)
        x, teacher_logits = split_cached_inputs(x)
        if teacher_logits is not None and self._augments:
            raise ValueError(_cache_message("Cached teacher logits"))
        plan = self._feature_plan
        if teacher_logits is not None and plan is not None:
            raise ValueError(_feature_cache_message("Cached teacher logits"))
        x, mixup = self.augment(x)
        if plan is not None:
            teacher_outputs, teacher_features = plan.teacher(x, training=False)
            teacher_logits = self._as_teacher_logits(teacher_outputs)
        elif teacher_logits is None:
            teacher_logits = self.teacher_logits(x)
        teacher_logits = ops.stop_gradient(ops.cast(teacher_logits, "float32"))

        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            if plan is None:
                y_pred = self.student(x, training=True)
            else:
                y_pred, student_features = plan.student(x, training=True)
            student_sum, labeled, distillation_sum, local_count = self._loss_terms(
                y, y_pred, teacher_logits, sample_weight, label_mask, mixup
            )
            weighted_sum = (
                self.alpha * student_sum + (1.0 - self.alpha) * distillation_sum
            )
            feature_logs, example_sum, batch_sum = [], ops.zeros(()), ops.zeros(())
            if plan is not None:
                feature_logs, example_sum, batch_sum = self._feature_terms(
                    plan, teacher_features, student_features, sample_weight, mixup
                )
            regularization = self._regularization_loss()
            global_count = local_count
            if replicas > 1:
                global_count = tf.distribute.get_replica_context().all_reduce(
                    tf.distribute.ReduceOp.SUM, local_count
                )
            # Each replica's share of the global-batch mean; the optimizer sums
            # the replicas' gradients. Batch-level terms are one value per
            # replica: their share is the mean over replicas.
            replica_loss = (weighted_sum + example_sum) / global_count + (
                regularization + batch_sum
            ) / replicas
            scaled_loss = self.optimizer.scale_loss(replica_loss)

        variables = self.student.trainable_variables + self._adapter_variables()
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply(gradients, variables)

        student_tracker, distillation_tracker = self._kd_trackers
        self._loss_tracker.update_state(
            (weighted_sum + example_sum) / local_count + regularization + batch_sum,
            sample_weight=local_count,
        )
        for tracker, (value, count) in zip(
            () if plan is None else plan.trackers, feature_logs
        ):
            tracker.update_state(value, sample_weight=count)
        student_tracker.update_state(
            ops.divide_no_nan(student_sum, labeled), sample_weight=labeled
        )
        distillation_tracker.update_state(
            distillation_sum / local_count, sample_weight=local_count
        )
        if y is not None:
            if mixup is not None:
                y = kd_augmentation.dominant(y, *mixup)
                if label_mask is not None:
                    label_mask = kd_augmentation.dominant(label_mask, *mixup)
                if sample_weight is not None:
                    sample_weight = kd_augmentation.dominant(sample_weight, *mixup)
            self._compile_metrics_update(y, y_pred, sample_weight, label_mask)
        return self._replica_logs(self.get_metrics_result())

    def _replica_logs(self, logs):
        """Shapes one replica's logs for Keras' cross-replica reduction.

        Across workers, Keras 3 reduces each log with
        `strategy.reduce("MEAN", value, axis=0)`, which rejects scalars
        (tensorflow/tensorflow#72388). A vector of one element per replica
        reduces to the same mean over replicas as on a single machine.
        """
        if not _in_multi_worker_mode(tf.distribute.get_strategy()):
            return logs
        return {key: ops.reshape(value, (1,)) for key, value in logs.items()}

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, _ = split_cached_inputs(x)
        if y is None:
            raise ValueError(
                "`evaluate` scores the student against labels, but the data "
                "has none. Pass `(x, y)`."
            )
        y_pred = self.student(x, training=False)
        student_logits = ops.cast(y_pred, "float32")
        batch_size = ops.shape(student_logits)[0]
        student = _per_example(
            _call_unreduced(self.student_loss_fn, y, student_logits), batch_size
        )
        if sample_weight is not None:
            student = student * _per_example(sample_weight, batch_size)
        self._loss_tracker.update_state(
            ops.mean(student) + self._regularization_loss(),
            sample_weight=ops.cast(batch_size, "float32"),
        )
        self._compile_metrics_update(y, y_pred, sample_weight)
        return self._replica_logs(self.get_metrics_result())

    def _compile_metrics_update(self, y, y_pred, sample_weight, label_mask=None):
        """Updates the compiled metrics on the labeled examples only.

        Under XLA, which cannot drop rows, the mask becomes a sample weight:
        `weighted_metrics` stay exact, plain `metrics` count unlabeled rows.
        """
        if self._compile_metrics is None:
            return
        if label_mask is not None and self.jit_compile:
            if sample_weight is not None:
                label_mask = label_mask * _per_example(sample_weight, ops.shape(y)[0])
            sample_weight = label_mask
        elif label_mask is not None:
            keep = ops.cast(label_mask, "bool")
            y, y_pred = tf.boolean_mask(y, keep), tf.boolean_mask(y_pred, keep)
            if sample_weight is not None:
                sample_weight = tf.boolean_mask(sample_weight, keep)
        self._compile_metrics.update_state(y, y_pred, sample_weight)

    @property
    def metrics(self):
        metrics = super().metrics
        if self._compile_metrics is not None and not self._compile_metrics.built:
            # `fit(x)` without labels never builds the compiled metrics: they
            # have nothing to score, so they are left out of the logs.
            metrics = [m for m in metrics if m is not self._compile_metrics]
        if self._evaluating:
            return [m for m in metrics if not any(m is t for t in self._kd_trackers)]
        if self._feature_plan is not None:
            metrics = metrics + list(self._feature_plan.trackers)
        return metrics

    def fit(self, x=None, y=None, *args, teacher_logits=None, **kwargs):
        """Trains the student; see `keras.Model.fit`.

        `teacher_logits`, an array from `keras_kd.cache_teacher_outputs(teacher,
        x)`, replaces the teacher's forward pass: each example is trained
        against its own row, whatever the shuffling. Defaults to `None`, the
        teacher runs on every batch (needed under random augmentation).

        Before training, a few examples go through both models once, eagerly,
        so that empty data, mismatched class counts and softmax outputs fail
        here with a clear `ValueError` rather than deep inside TensorFlow.
        With `feature_losses`, this pass also checks the feature names and
        shapes of subclassed models and builds their `HintLoss` adapters.
        `y=None` (and datasets without labels) trains on soft targets alone.
        """
        if teacher_logits is not None:
            if self._augments:
                raise ValueError(_cache_message("`teacher_logits`"))
            if self._feature_plan is not None:
                raise ValueError(_feature_cache_message("`teacher_logits`"))
            x = attach_teacher_logits(x, teacher_logits)
        self.check_distribution()
        self.check_transfer_data(x)
        return super().fit(x, y, *args, **kwargs)

    def check_distribution(self):
        """Raises `ValueError` if the student or optimizer has another strategy.

        The student's variables and the optimizer (created by `compile`) must
        belong to the strategy `fit` runs under; otherwise TensorFlow fails
        inside the first step with an unrelated message. A teacher created
        outside the scope is only read, which `MirroredStrategy` and
        `MultiWorkerMirroredStrategy` handle (from host memory); a TPU
        cannot read it, so under `TPUStrategy` it is an error too.
        """
        strategy = self.distribute_strategy
        paths = _outside_scope(strategy, self.student.variables)
        if paths:
            raise ValueError(
                _scope_message("The student's variables were", strategy, paths)
            )
        if isinstance(strategy, tf.distribute.TPUStrategy):
            paths = _outside_scope(strategy, self.teacher.variables)
            if paths:
                raise ValueError(
                    _scope_message("The teacher's variables were", strategy, paths)
                )
        if self.compiled and self.optimizer is not None:
            paths = _outside_scope(strategy, [self.optimizer.iterations])
            if paths:
                raise ValueError(
                    _scope_message(
                        "The optimizer (made by `compile`) was", strategy, paths
                    )
                )

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3 averages the first distributed batch with one
        # `strategy.reduce` call on the whole `(x, y, sample_weight)` structure,
        # which `MultiWorkerMirroredStrategy` rejects; building only needs the
        # shapes, which the first local replica's batch has.
        if iterator is not None and self._distribute_strategy is not None:
            for _, _, it in iterator:
                with self.distribute_strategy.scope():
                    data_batch = keras.tree.map_structure(_first_local_value, next(it))
                break
        return super()._maybe_symbolic_build(data_batch=data_batch)

    def check_transfer_data(self, x):
        """Raises `ValueError` if `x` is empty or the models do not fit it.

        With `feature_losses`, also checks the features of a few examples and
        builds the `HintLoss` adapters that the static shapes could not
        (subclassed models); call it on one batch before `fit` when `fit`
        gets a Python generator, which cannot be read ahead.
        """
        probe = _probe_batch(x)
        if probe is None or isinstance(
            tf.distribute.get_strategy(), tf.distribute.TPUStrategy
        ):
            return
        inputs, teacher_logits = split_cached_inputs(probe)
        if teacher_logits is not None and self._augments:
            raise ValueError(_cache_message("A dataset of cached teacher logits"))
        plan = self._feature_plan
        if teacher_logits is not None and plan is not None:
            raise ValueError(
                _feature_cache_message("A dataset of cached teacher logits")
            )
        if self.augmentation is not None:
            inputs = self.augmentation(inputs, training=True)
        if plan is not None:
            teacher_logits, teacher_features = plan.teacher(inputs, training=False)
            student_logits, student_features = plan.student(inputs, training=False)
            self._build_adapters(
                plan.adapter_widths(teacher_features, student_features)
            )
        elif teacher_logits is None:
            teacher_logits = self.teacher(inputs, training=False)
        if self.teacher_outputs == "logits" and _looks_like_probabilities(
            teacher_logits
        ):
            raise ValueError(_softmax_message("teacher"))
        if plan is None:
            student_logits = self.student(inputs, training=False)
        if _looks_like_probabilities(student_logits):
            raise ValueError(_softmax_message("student"))
        self._check_class_counts(student_logits.shape[-1], teacher_logits.shape[-1])

    def evaluate(self, *args, **kwargs):
        """Evaluates the student alone (the teacher is not run).

        Reports the student's label loss (plus its regularization losses) and
        the compiled metrics, as `student.evaluate` would.
        """
        self._evaluating = True
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self._evaluating = False

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "student": _serialize_model(self.student),
                "teacher": _serialize_model(self.teacher),
                "teacher_outputs": self.teacher_outputs,
                "augmentation": None
                if self.augmentation is None
                else _serialize_model(self.augmentation),
                "mixup_alpha": self.mixup_alpha,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for role in ("student", "teacher", "augmentation"):
            if config.get(role) is None:
                continue
            config[role] = keras.saving.deserialize_keras_object(
                config[role], custom_objects=custom_objects
            )
        return cls(**config)

    def get_compile_config(self):
        if not self.compiled:
            return {}
        serialize = keras.saving.serialize_keras_object
        config = {
            "optimizer": serialize(self.optimizer),
            "metrics": serialize(self._compile_config.config.get("metrics")),
            "weighted_metrics": serialize(
                self._compile_config.config.get("weighted_metrics")
            ),
            "student_loss_fn": serialize(self.student_loss_fn),
            "distillation_loss_fn": serialize(self.distillation_loss_fn),
            "alpha": self.alpha,
            "temperature": self.temperature,
            "steps_per_execution": self.steps_per_execution,
            "jit_compile": self.jit_compile,
        }
        if self.feature_losses:
            config["feature_losses"] = serialize(self.feature_losses)
            # Adapters built from the first batch (subclassed models) cannot be
            # rebuilt by `compile`: their shapes travel with the config.
            config["feature_adapter_shapes"] = {
                name: list(_adapter_shape(adapter))
                for name, adapter in self.feature_adapters.items()
            }
        return config

    def compile_from_config(self, config):
        config = dict(config)
        adapter_shapes = config.pop("feature_adapter_shapes", None) or {}
        config = {
            key: keras.saving.deserialize_keras_object(value)
            if isinstance(value, (dict, list))
            else value
            for key, value in config.items()
        }
        self.compile(**config)
        self._build_adapters(
            {
                int(name.rsplit("_", 1)[1]): (
                    (None,) * (rank - 1) + (input_width,),
                    output_width,
                )
                for name, (rank, input_width, output_width) in adapter_shapes.items()
            }
        )
        if self.built:
            self.optimizer.build(self.trainable_variables)
