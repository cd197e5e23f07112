"""`MutualLearning`: two or more students that teach each other while training."""

import keras
import tensorflow as tf
from keras import ops

from keras_kd import losses as kd_losses


def _check_alpha(alpha):
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ValueError(f"`alpha` must be a number in [0, 1], got {alpha!r}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(
            "`alpha` must be in [0, 1]: it weighs each student's label loss, "
            f"and `1 - alpha` the mutual KL term. Got alpha={alpha!r}."
        )


def _per_example(values, batch_size):
    values = ops.cast(values, "float32")
    rank = len(values.shape)
    if rank == 0:
        return ops.broadcast_to(values, (batch_size,))
    if rank > 1:
        return ops.mean(values, axis=tuple(range(1, rank)))
    return values


def _call_unreduced(loss_fn, y_true, y_pred):
    if isinstance(loss_fn, keras.losses.Loss):
        return loss_fn.call(y_true, y_pred)
    return loss_fn(y_true, y_pred)


def _split_unlabeled(y):
    """`(labels, mask)`: sparse integer labels below 0 mark unlabeled examples."""
    if not keras.backend.standardize_dtype(y.dtype).startswith("int"):
        return y, None
    labeled = ops.greater_equal(y, 0)
    mask = ops.cast(labeled, "float32")
    if len(mask.shape) > 1:
        mask = ops.reshape(mask, (ops.shape(mask)[0], -1))[:, 0]
    return ops.where(labeled, y, ops.zeros_like(y)), mask


def _serialize_model(model):
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)
    return config


@keras.saving.register_keras_serializable(package="keras_kd")
class MutualLearning(keras.Model):
    """Deep mutual learning: students trained together, each taught by the others.

    No pre-trained teacher. On every batch each student `k` minimizes

    `alpha * CE(y, s_k) + (1 - alpha) * T² * KL(p_others || p_k)`,

    `p_k = softmax(s_k / T)`, `p_others = mean_{l != k} softmax(s_l / T)`.

    The KL runs from the other students' average prediction (the target) to
    student `k`, as Hinton's does from the teacher. The targets are constants
    (`stop_gradient`): student `k`'s term moves student `k` only. All students
    are updated at once from the same forward pass, one pass each per step
    (the paper alternates the updates; the simultaneous form is the usual
    implementation). With two students this is exactly the paper's loss
    (with its 1:1 weights at `alpha = 0.5`, up to a factor 1/2); with more,
    the target is the average distribution, the "DML_e" variant, rather than
    the average of the pairwise KLs. `T = 1` is the paper's setting.

    `fit` needs labels (with no label at all the students can agree on
    anything); sparse integer labels below 0 mark unlabeled examples, which
    contribute the KL term only. Per-example losses are reduced as in
    `keras_kd.Distiller`: `sum(loss * sample_weight)` over the global batch
    divided by its size, so several replicas give the one-device result; each
    student's regularization losses are added. `fit` logs `loss` (the sum over
    students), `student_<k>_loss` (label loss), `mutual_<k>_loss` (the T²
    KL) per student, and the compiled metrics on the first student.

    `__call__`, `predict` and `evaluate` use the first student, `students[0]`
    (evaluate reports its label loss and the compiled metrics); evaluate the
    others directly (`keras_kd.MutualLearning` trains them in place).

    Args:
        students: List of two or more `keras.Model`s that output logits over
            the same classes (they may differ in architecture).
        name: Model name. Defaults to `"mutual_learning"`.
        **kwargs: Passed to `keras.Model`.

    Raises:
        ValueError: for fewer than two students, non-model entries or the
            same model twice.

    Example:

    ```python
    mutual = keras_kd.MutualLearning([mlp_a, mlp_b])
    mutual.compile(optimizer="adam", metrics=["accuracy"], alpha=0.5)
    mutual.fit(x_train, y_train, epochs=10)
    mutual.evaluate(x_test, y_test)  # students[0]
    ```

    Reference:
        Zhang, Xiang, Hospedales, Lu, "Deep Mutual Learning", CVPR 2018,
        https://arxiv.org/abs/1706.00384
    """

    def __init__(self, students, name="mutual_learning", **kwargs):
        super().__init__(name=name, **kwargs)
        if isinstance(students, keras.Model) or not isinstance(students, (list, tuple)):
            raise ValueError(
                f"`students` must be a list of `keras.Model`s, got {students!r}."
            )
        if len(students) < 2:
            raise ValueError(
                f"Mutual learning needs at least two students, got {len(students)}."
            )
        for index, student in enumerate(students):
            if not isinstance(student, keras.Model):
                raise ValueError(
                    f"`students[{index}]` must be a `keras.Model`, got "
                    f"{type(student).__name__}: {student!r}."
                )
        if len({id(s) for s in students}) != len(students):
            raise ValueError(
                "`students` lists the same model object twice; pass separate "
                "models (for example `keras.models.clone_model`)."
            )
        self.students = list(students)
        self._student_trackers = [
            (
                keras.metrics.Mean(name=f"student_{k}_loss"),
                keras.metrics.Mean(name=f"mutual_{k}_loss"),
            )
            for k in range(len(self.students))
        ]
        self.alpha = 0.5
        self.temperature = 1.0
        self.student_loss_fn = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True
        )
        self._evaluating = False
        self.built = True

    def compile(
        self,
        optimizer="adam",
        metrics=None,
        student_loss_fn=None,
        alpha=0.5,
        temperature=1.0,
        **kwargs,
    ):
        """Configures mutual learning.

        Args:
            optimizer: One optimizer for all the students' weights. Defaults
                to `"adam"`.
            metrics: Metrics on the first student's predictions. Defaults to
                `None`.
            student_loss_fn: Label loss, called as `fn(y, logits)`. Defaults to
                `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`.
            alpha: Weight of the label loss in [0, 1]; `1 - alpha` weighs the
                KL term. Defaults to `0.5` (the paper's equal weights).
            temperature: Softmax temperature T > 0 of the KL term. Defaults
                to `1.0` (the paper's).
            **kwargs: Passed to `keras.Model.compile`.

        Raises:
            ValueError: for `alpha` outside [0, 1], `temperature <= 0`, `loss=`
                or a non-callable `student_loss_fn`.
        """
        if kwargs.pop("loss", None) is not None:
            raise ValueError(
                "`MutualLearning.compile` takes `student_loss_fn` for the label "
                "loss, not `loss`."
            )
        _check_alpha(alpha)
        kd_losses._check_temperature(temperature)
        if student_loss_fn is None:
            student_loss_fn = keras.losses.SparseCategoricalCrossentropy(
                from_logits=True
            )
        elif isinstance(student_loss_fn, str):
            student_loss_fn = keras.losses.get(student_loss_fn)
        elif not callable(student_loss_fn):
            raise ValueError(
                "`student_loss_fn` must be a Keras loss or its name, got "
                f"{student_loss_fn!r}."
            )
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.student_loss_fn = student_loss_fn
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def call(self, inputs, training=None):
        return self.students[0](inputs, training=training)

    def _mutual_terms(self, all_logits, y, sample_weight, label_mask):
        """Per-student weighted sums `(label_sum, kl_sum)`, plus counts."""
        batch_size = ops.shape(all_logits[0])[0]
        weight = ops.ones((batch_size,), "float32")
        if sample_weight is not None:
            weight = _per_example(sample_weight, batch_size)
        temperature = self.temperature
        log_probs = [kd_losses.tempered_log_softmax(s, temperature) for s in all_logits]
        probs = [ops.stop_gradient(ops.exp(lp)) for lp in log_probs]
        count = len(all_logits)
        total = sum(probs[1:], probs[0])
        labeled = ops.cast(batch_size, "float32")
        if label_mask is not None:
            labeled = ops.sum(label_mask)
        terms = []
        for k, (logits, log_p) in enumerate(zip(all_logits, log_probs)):
            target = (total - probs[k]) / (count - 1)
            # 0 log 0 = 0: classes the others rule out contribute nothing.
            log_target = ops.log(ops.maximum(target, 1e-30))
            kl = ops.sum(target * (log_target - log_p), axis=-1) * temperature**2
            label = _per_example(
                _call_unreduced(self.student_loss_fn, y, logits), batch_size
            )
            if label_mask is not None:
                label = label * label_mask
            terms.append((ops.sum(label * weight), ops.sum(kl * weight)))
        return terms, labeled, ops.cast(batch_size, "float32")

    def _regularization_loss(self):
        losses = [loss for s in self.students for loss in s.losses]
        if not losses:
            return ops.zeros(())
        return ops.cast(ops.sum(losses), "float32")

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if y is None:
            raise ValueError(
                "`MutualLearning.fit` needs labels: with none, the students can "
                "agree on any prediction. Pass `(x, y)`; sparse labels below 0 "
                "mark unlabeled examples."
            )
        y, label_mask = _split_unlabeled(y)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            all_logits = [
                ops.cast(s(x, training=True), "float32") for s in self.students
            ]
            terms, labeled, local_count = self._mutual_terms(
                all_logits, y, sample_weight, label_mask
            )
            weighted_sum = sum(
                self.alpha * label_sum + (1.0 - self.alpha) * kl_sum
                for label_sum, kl_sum in terms
            )
            regularization = self._regularization_loss()
            global_count = local_count
            if replicas > 1:
                global_count = tf.distribute.get_replica_context().all_reduce(
                    tf.distribute.ReduceOp.SUM, local_count
                )
            # Each replica's share of the global-batch mean; the optimizer
            # sums the replicas' gradients.
            replica_loss = weighted_sum / global_count + regularization / replicas
            scaled_loss = self.optimizer.scale_loss(replica_loss)

        variables = [v for s in self.students for v in s.trainable_variables]
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply(gradients, variables)

        self._loss_tracker.update_state(
            weighted_sum / local_count + regularization, sample_weight=local_count
        )
        for (label_tracker, kl_tracker), (label_sum, kl_sum) in zip(
            self._student_trackers, terms
        ):
            label_tracker.update_state(
                ops.divide_no_nan(label_sum, labeled), sample_weight=labeled
            )
            kl_tracker.update_state(kl_sum / local_count, sample_weight=local_count)
        self._update_compiled_metrics(y, all_logits[0], sample_weight, label_mask)
        return self.get_metrics_result()

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if y is None:
            raise ValueError(
                "`evaluate` scores the first student against labels, but the "
                "data has none. Pass `(x, y)`."
            )
        logits = ops.cast(self.students[0](x, training=False), "float32")
        batch_size = ops.shape(logits)[0]
        label = _per_example(
            _call_unreduced(self.student_loss_fn, y, logits), batch_size
        )
        if sample_weight is not None:
            label = label * _per_example(sample_weight, batch_size)
        own = self.students[0].losses
        regularization = ops.cast(ops.sum(own), "float32") if own else ops.zeros(())
        self._loss_tracker.update_state(
            ops.mean(label) + regularization,
            sample_weight=ops.cast(batch_size, "float32"),
        )
        self._update_compiled_metrics(y, logits, sample_weight)
        return self.get_metrics_result()

    def _update_compiled_metrics(self, y, y_pred, sample_weight, label_mask=None):
        if self._compile_metrics is None:
            return
        if label_mask is not None and self.jit_compile:
            # XLA cannot drop rows: unlabeled rows get weight 0, exact for
            # `weighted_metrics`; plain `metrics` count them.
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
        if not self._evaluating:
            return metrics
        trackers = [m for pair in self._student_trackers for m in pair]
        return [m for m in metrics if not any(m is t for t in trackers)]

    def evaluate(self, *args, **kwargs):
        """Evaluates the first student alone; see `keras.Model.evaluate`."""
        self._evaluating = True
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self._evaluating = False

    def get_config(self):
        config = super().get_config()
        config["students"] = [_serialize_model(s) for s in self.students]
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["students"] = [
            keras.saving.deserialize_keras_object(s, custom_objects=custom_objects)
            for s in config["students"]
        ]
        return cls(**config)

    def get_compile_config(self):
        if not self.compiled:
            return {}
        serialize = keras.saving.serialize_keras_object
        return {
            "optimizer": serialize(self.optimizer),
            "metrics": serialize(self._compile_config.config.get("metrics")),
            "student_loss_fn": serialize(self.student_loss_fn),
            "alpha": self.alpha,
            "temperature": self.temperature,
        }

    def compile_from_config(self, config):
        config = {
            key: keras.saving.deserialize_keras_object(value)
            if isinstance(value, (dict, list))
            else value
            for key, value in config.items()
        }
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)
