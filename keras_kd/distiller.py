"""`Distiller`: a `keras.Model` that trains a student to match a frozen teacher."""

from collections.abc import Callable
from typing import NamedTuple

import keras
from keras import ops

from keras_kd import _distribute, _models, _objective, _probe, _training
from keras_kd import augmentation as kd_augmentation
from keras_kd import features as kd_features
from keras_kd import losses as kd_losses
from keras_kd import top_k as kd_top_k
from keras_kd.caching import (
    attach_teacher_logits,
    check_cache_compatible,
    split_cached_inputs,
)

_TEACHER_OUTPUTS = ("logits", "probabilities")
_MIN_PROBABILITY = 1e-12


class _Batch(NamedTuple):
    """A training batch after `Distiller._prepare`: what the losses read."""

    x: object
    y: object
    sample_weight: object
    label_mask: object
    mixup: object  # a `MixupDraw`, or None
    teacher_logits: object
    teacher_features: object


@keras.saving.register_keras_serializable(package="keras_kd")
class Distiller(_training.Trainer):
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

    Outputs may be `(batch, classes)`, `(batch, time, vocab)` or `(batch, H,
    W, classes)`: every term is computed per position, and reduced over the
    global batch as `keras_kd._training` documents: `sum(loss * w) / sum(w)`
    for a per-position `sample_weight` (a padding mask), `sum(loss * w) /
    positions` for per-example weights or none (Keras' convention), so that
    training on several replicas gives the same result as on one device.
    `fit` logs `loss` (the total), `student_loss` (mean label loss over the
    labeled positions), `distillation_loss` (the T²-scaled KL) and every
    compiled metric, computed on the student's predictions.

    Feature and relation distillation: `compile(feature_losses=[...])` adds
    `sum_i weight_i * feature_i` to the loss, each term comparing a teacher
    and a student layer (`keras_kd.losses.HintLoss`, `AttentionTransfer`,
    `RKD`, `SimilarityPreserving`), with each model still running once per
    step; `keras_kd.features` says how the layers are reached, how terms are
    reduced and where adapters live. Each term is logged under its `name`.

    `fit(x)` without labels trains on the soft targets alone: each example
    contributes `(1 - alpha) * T² * KL`. With sparse integer labels, a label
    below 0 (say -1) marks an unlabeled example (or position) in a partly
    labeled set: it contributes no label loss, only the distillation term,
    and is left out of the training metrics.

    Consistent augmentation ("function matching") and mixup: with
    `augmentation` and/or `mixup_alpha`, every training batch is augmented
    once, then mixed, and the teacher and the student both see the result;
    `keras_kd.augmentation` gives the formulas (how labels, unlabeled
    partners and sample weights mix, what the metrics score, which layers
    compile with XLA). `evaluate`, `predict` and `__call__` never augment.
    Both need the teacher online: a teacher cache raises `ValueError`.

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
        mixup_seed: Integer seed of the mixup draws (with the step counter:
            a resumed run draws as an uninterrupted one). Saved in the
            config. Defaults to `None`: drawn from NumPy's global generator,
            which `keras.utils.set_random_seed` seeds.
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
        student: keras.Model,
        teacher: keras.Model,
        teacher_outputs: str = "logits",
        augmentation: keras.layers.Layer | list | None = None,
        mixup_alpha: float | None = None,
        mixup_seed: int | None = None,
        name: str = "distiller",
        **kwargs,
    ) -> None:
        super().__init__(name=name, **kwargs)
        augmentation = kd_augmentation.resolve_augmentation(augmentation)
        if teacher_outputs not in _TEACHER_OUTPUTS:
            raise ValueError(
                f"`teacher_outputs` must be one of {_TEACHER_OUTPUTS}, got "
                f"{teacher_outputs!r}."
            )
        _models.check_pair(student, teacher, teacher_outputs == "logits")
        self.mixup = None
        if mixup_alpha is not None:
            self.mixup = kd_augmentation.Mixup(mixup_alpha, mixup_seed)
        self.student = student
        self.teacher = teacher
        self.teacher_outputs = teacher_outputs
        self.teacher.trainable = False
        self.augmentation = augmentation
        if augmentation is not None:
            augmentation.trainable = False
        self._kd_trackers = (
            keras.metrics.Mean(name="student_loss"),
            keras.metrics.Mean(name="distillation_loss"),
        )
        # Adapters are trained with the student but never belong to it; keyed
        # by `feature_adapter_<index of the feature loss>`.
        self.feature_adapters = {}
        self.feature_losses = []
        self._feature_plan = None
        self.distillation_loss_fn = kd_losses.KDLoss(temperature=self.temperature)
        # The distiller owns no variables of its own: it is built once its
        # models are, which lets `save` and `compile_from_config` restore
        # the optimizer.
        self.built = True

    @property
    def mixup_alpha(self) -> float | None:
        """The `Beta(a, a)` concentration of mixup, or `None`."""
        return None if self.mixup is None else self.mixup.alpha

    @property
    def mixup_seed(self) -> int | None:
        """The seed of the mixup draws, or `None` without mixup."""
        return None if self.mixup is None else self.mixup.seed

    def compile(
        self,
        optimizer: str | keras.optimizers.Optimizer = "adam",
        metrics: list | None = None,
        student_loss_fn: str | Callable | None = None,
        distillation_loss_fn: str | Callable | None = None,
        alpha: float = 0.1,
        temperature: float | None = None,
        feature_losses: list | None = None,
        **kwargs,
    ) -> None:
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
                log-softmax in float32. A
                `keras_kd.losses.DistillationLoss` (`KDLoss`, `DKD`, or your
                subclass) gets the raw logits and applies its own
                temperature; one with `needs_labels = True` is called as
                `loss.call(teacher_logits, student_logits, labels=...)` with
                the sparse label, or the teacher's top class for unlabeled
                positions and one-hot labels. Any other loss, such
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
        self.distillation_loss_fn, temperature = _objective.resolve_distillation_loss(
            distillation_loss_fn, temperature
        )
        kwargs = self._compile_common(student_loss_fn, alpha, temperature, kwargs)
        self._compile_features(kd_features.resolve_feature_losses(feature_losses))
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
        with _distribute.scope(self):
            kd_features.build_adapters(self.feature_adapters, widths)

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

    @property
    def _label_model(self):
        return self.student

    @property
    def _trained_models(self):
        return [self.student]

    @property
    def _train_trackers(self):
        plan = self._feature_plan
        return self._kd_trackers + (() if plan is None else tuple(plan.trackers))

    @property
    def _augments(self):
        return self.augmentation is not None or self.mixup is not None

    def augment(self, x):
        """The training-time view of a batch: augmented, then mixed.

        Returns `(x, mixup)`, with `mixup` a `keras_kd.augmentation.MixupDraw`
        or `None`.
        """
        if self.augmentation is not None:
            x = self.augmentation(x, training=True)
        if self.mixup is None:
            return x, None
        return self.mixup(x, self.optimizer.iterations)

    def _prepare(self, data):
        """The batch as both models see it, with the teacher's targets."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y, label_mask = _training.split_unlabeled(y)
        x, teacher_logits = split_cached_inputs(x)
        self._check_cacheable(teacher_logits is not None, "Cached teacher logits")
        x, mixup = self.augment(x)
        teacher_logits, teacher_features = self._teacher_pass(x, teacher_logits)
        sample_weight = _training.padding_weights(
            x, sample_weight, kd_top_k.positions_of(teacher_logits)
        )
        return _Batch(
            x, y, sample_weight, label_mask, mixup, teacher_logits, teacher_features
        )

    def _loss(self, batch):
        """`(replica_loss, outcome)`: the student's pass and every term."""
        y_pred, student_features = self._student_pass(batch.x)
        terms = _objective.logit_terms(
            self,
            batch.y,
            y_pred,
            batch.teacher_logits,
            batch.sample_weight,
            batch.label_mask,
            batch.mixup,
        )
        features = self._feature_terms(
            batch.teacher_features, student_features, terms.example_weight
        )
        replica_loss, logged_loss = self._total_loss(terms, features)
        return replica_loss, (y_pred, terms, features, logged_loss)

    def _record(self, batch, outcome):
        y_pred, terms, features, logged_loss = outcome
        self._update_trackers(logged_loss, terms, features)
        if batch.y is not None:
            self._update_metrics(
                *self._metric_view(
                    batch.y, y_pred, batch.sample_weight, batch.label_mask, batch.mixup
                )
            )
        return _distribute.replica_logs(self.get_metrics_result())

    @property
    def _trained_variables(self):
        return self.student.trainable_variables + kd_features.trainable_variables(
            self.feature_adapters
        )

    def _teacher_pass(self, x, cached_logits):
        """`(teacher_logits, teacher_features)`: float32 constants."""
        plan, features = self._feature_plan, None
        if plan is not None:
            outputs, features = plan.teacher(x, training=False)
            cached_logits = self._as_teacher_logits(outputs)
        elif cached_logits is None:
            cached_logits = self.teacher_logits(x)
        elif kd_top_k.is_top_k(cached_logits):
            return kd_top_k.as_tensors(cached_logits), features
        return ops.stop_gradient(ops.cast(cached_logits, "float32")), features

    def _student_pass(self, x):
        """`(student_outputs, student_features)`, in training mode."""
        if self._feature_plan is None:
            return self.student(x, training=True), None
        return self._feature_plan.student(x, training=True)

    def _feature_terms(self, teacher_features, student_features, example_weight):
        """`(logs, example_sum, batch_sum)`; see `FeaturePlan.terms`."""
        if self._feature_plan is None:
            return [], ops.zeros(()), ops.zeros(())
        return self._feature_plan.terms(
            teacher_features, student_features, self.feature_adapters, example_weight
        )

    def _total_loss(self, terms, features):
        """`(replica_loss, logged_loss)`; see `_objective.total_loss`."""
        _, example_sum, batch_sum = features
        per_batch = self._regularization_loss() + batch_sum
        return _objective.total_loss(self.alpha, terms, example_sum, per_batch)

    def _update_trackers(self, logged_loss, terms, features):
        self._loss_tracker.update_state(
            logged_loss, sample_weight=_objective.examples(terms.example_weight)
        )
        plan_trackers = (
            () if self._feature_plan is None else self._feature_plan.trackers
        )
        for tracker, (value, weight) in zip(plan_trackers, features[0]):
            tracker.update_state(value, sample_weight=weight)
        student_tracker, distillation_tracker = self._kd_trackers
        student_tracker.update_state(
            ops.divide_no_nan(terms.label_sum, terms.labeled),
            sample_weight=terms.labeled,
        )
        distillation_tracker.update_state(
            ops.divide_no_nan(terms.distillation_sum, terms.count),
            sample_weight=terms.count,
        )

    @staticmethod
    def _metric_view(y, y_pred, sample_weight, label_mask, mixup):
        """What the metrics score: under mixup, each mix's larger share."""
        if mixup is None:
            return y, y_pred, sample_weight, label_mask

        def dominant(values):
            return None if values is None else mixup.dominant(values)

        return dominant(y), y_pred, dominant(sample_weight), dominant(label_mask)

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
        self._check_cacheable(teacher_logits is not None, "`teacher_logits`")
        if isinstance(teacher_logits, kd_top_k.TopKTeacherOutputs):
            kd_top_k.check_top_k_training(
                teacher_logits,
                self.distillation_loss_fn,
                self.temperature,
                _models.num_classes(self.student),
            )
        if teacher_logits is not None:
            x = attach_teacher_logits(x, teacher_logits)
        self.check_distribution()
        self.check_transfer_data(x, y)
        return super().fit(x, y, *args, **kwargs)

    def _check_cacheable(self, cached, source):
        if cached:
            check_cache_compatible(
                source, self._augments, self._feature_plan is not None
            )

    def _strategy_bound_variables(self, strategy):
        """The student's variables; the teacher's too on a TPU.

        A teacher created outside the scope is only read, which
        `MirroredStrategy` and `MultiWorkerMirroredStrategy` handle (from
        host memory); a TPU cannot read it.
        """
        bound = [("The student's variables were", self.student.variables)]
        if _distribute.is_tpu(strategy):
            bound.append(("The teacher's variables were", self.teacher.variables))
        return bound

    def check_transfer_data(self, x, y=None) -> None:
        """Raises `ValueError` if the data is empty or the models do not fit it.

        A few examples go through the teacher and the student, eagerly: a
        model that fails on them is named with the input shapes; labels are
        checked against the class count and the outputs' positions (all of an
        array's labels, the first batch of a dataset's). With
        `feature_losses`, also checks the features and builds the `HintLoss`
        adapters that the static shapes could not (subclassed models); call
        it on one batch before `fit` when `fit` gets a Python generator,
        which cannot be read ahead.
        """
        probe = _probe.probe_batch(x, y)
        if probe is None or _distribute.on_tpu():
            return
        inputs, labels = probe
        inputs, teacher_logits = split_cached_inputs(inputs)
        self._check_cacheable(
            teacher_logits is not None, "A dataset of cached teacher logits"
        )
        if self.augmentation is not None:
            inputs = self.augmentation(inputs, training=True)
        plan = self._feature_plan
        teacher = self.teacher if plan is None else plan.teacher
        student = self.student if plan is None else plan.student
        if teacher_logits is None:
            teacher_logits = _probe.forward(teacher, inputs, "teacher")
        student_logits = _probe.forward(student, inputs, "student")
        if plan is not None:
            (teacher_logits, teacher_features) = teacher_logits
            (student_logits, student_features) = student_logits
            self._build_adapters(
                plan.adapter_widths(teacher_features, student_features)
            )
        if kd_top_k.is_top_k(teacher_logits):
            kd_top_k.check_top_k_batch(teacher_logits, student_logits)
        else:
            _models.check_outputs(
                student_logits, teacher_logits, self.teacher_outputs == "logits"
            )
        _probe.check_labels(labels, student_logits)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "student": _training.serialize_model(self.student),
                "teacher": _training.serialize_model(self.teacher),
                "teacher_outputs": self.teacher_outputs,
                "augmentation": _training.serialize_model(self.augmentation),
                "mixup_alpha": self.mixup_alpha,
                "mixup_seed": self.mixup_seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        roles = ("student", "teacher", "augmentation")
        return cls(**_training.deserialize_models(config, roles, custom_objects))

    def _own_compile_config(self):
        serialize = keras.saving.serialize_keras_object
        config = {"distillation_loss_fn": serialize(self.distillation_loss_fn)}
        if self.feature_losses:
            config["feature_losses"] = serialize(self.feature_losses)
            # Adapters built from the first batch (subclassed models) cannot be
            # rebuilt by `compile`: their shapes travel with the config.
            config["feature_adapter_shapes"] = {
                name: list(kd_features.adapter_shape(adapter))
                for name, adapter in self.feature_adapters.items()
            }
        return config

    _compile_state_keys = ("feature_adapter_shapes",)

    def _restore_compile_state(self, state):
        shapes = state["feature_adapter_shapes"] or {}
        self._build_adapters(kd_features.adapter_widths_from_shapes(shapes))
