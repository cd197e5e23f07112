"""`MutualLearning`: two or more students that teach each other while training."""

from collections.abc import Callable

import keras
from keras import ops

from keras_kd import _distribute, _training
from keras_kd import losses as kd_losses


@keras.saving.register_keras_serializable(package="keras_kd")
class MutualLearning(_training.Trainer):
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
    contribute the KL term only. Outputs may have any rank (`(batch, time,
    vocab)` too), and the terms are reduced per position as in
    `keras_kd.Distiller` (`sum(loss * w) / sum(w)` for a per-position
    `sample_weight`, Keras' `sum_over_batch_size` otherwise), over the global
    batch, so several replicas give the one-device result; each
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

    def __init__(self, students: list, name: str = "mutual_learning", **kwargs) -> None:
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
        self._student_trackers = tuple(
            (
                keras.metrics.Mean(name=f"student_{k}_loss"),
                keras.metrics.Mean(name=f"mutual_{k}_loss"),
            )
            for k in range(len(self.students))
        )
        self.alpha = 0.5
        self.temperature = 1.0
        self.built = True

    _alpha_meaning = "it weighs each student's label loss, and `1 - alpha` the KL"

    def compile(
        self,
        optimizer: str | keras.optimizers.Optimizer = "adam",
        metrics: list | None = None,
        student_loss_fn: str | Callable | None = None,
        alpha: float = 0.5,
        temperature: float = 1.0,
        **kwargs,
    ) -> None:
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
            **kwargs: Passed to `keras.Model.compile` (`weighted_metrics`,
                `jit_compile`, `steps_per_execution`, `run_eagerly`).

        Raises:
            ValueError: for `alpha` outside [0, 1], `temperature <= 0`, `loss=`,
                `loss_weights=` or a non-callable `student_loss_fn`.
        """
        kwargs = self._compile_common(student_loss_fn, alpha, temperature, kwargs)
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def call(self, inputs, training=None):
        return self.students[0](inputs, training=training)

    @property
    def _label_model(self):
        return self.students[0]

    @property
    def _trained_models(self):
        return self.students

    @property
    def _train_trackers(self):
        return tuple(tracker for pair in self._student_trackers for tracker in pair)

    def _mutual_terms(self, all_logits, y, sample_weight, label_mask):
        """Per-student weighted sums `(label_sum, kl_sum)`, plus normalizers.

        Returns `(terms, labeled, count)`: `count` is this replica's share of
        the normalizer (see `keras_kd._training`), `labeled` the label term's.
        """
        first = all_logits[0]
        weights, per_position = _training.position_weights(sample_weight, first)
        mask = ops.ones_like(weights)
        if label_mask is not None:
            mask = _training.at_positions(label_mask, first, "label mask")
        temperature = self.temperature
        log_probs = [kd_losses.tempered_log_softmax(s, temperature) for s in all_logits]
        probs = [ops.stop_gradient(ops.exp(lp)) for lp in log_probs]
        total = sum(probs[1:], probs[0])
        terms = []
        for k, (logits, log_p) in enumerate(zip(all_logits, log_probs)):
            target = (total - probs[k]) / (len(all_logits) - 1)
            # 0 log 0 = 0: classes the others rule out contribute nothing.
            log_target = ops.log(ops.maximum(target, 1e-30))
            kl = ops.sum(target * (log_target - log_p), axis=-1) * temperature**2
            label = _training.at_positions(
                _training.call_unreduced(self.student_loss_fn, y, logits), logits
            )
            terms.append((ops.sum(label * mask * weights), ops.sum(kl * weights)))
        labeled = _training.normalizer(weights, per_position, mask)
        return terms, labeled, _training.normalizer(weights, per_position)

    def _prepare(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if y is None:
            raise ValueError(
                "`MutualLearning.fit` needs labels: with none, the students can "
                "agree on any prediction. Pass `(x, y)`; sparse labels below 0 "
                "mark unlabeled examples."
            )
        y, label_mask = _training.split_unlabeled(y)
        return x, y, sample_weight, label_mask

    def _loss(self, prepared):
        x, y, sample_weight, label_mask = prepared
        all_logits = [ops.cast(s(x, training=True), "float32") for s in self.students]
        sample_weight = _training.padding_weights(x, sample_weight, all_logits[0])
        terms, labeled, count = self._mutual_terms(
            all_logits, y, sample_weight, label_mask
        )
        weighted_sum = sum(
            self.alpha * label_sum + (1.0 - self.alpha) * kl_sum
            for label_sum, kl_sum in terms
        )
        regularization = self._regularization_loss()
        # Each replica's share of the global-batch mean; the optimizer sums
        # the replicas' gradients.
        replica_loss = (
            ops.divide_no_nan(weighted_sum, _distribute.global_sum(count))
            + regularization / _distribute.num_replicas()
        )
        logged_loss = ops.divide_no_nan(weighted_sum, count) + regularization
        outcome = (all_logits[0], sample_weight, terms, labeled, count, logged_loss)
        return replica_loss, outcome

    def _record(self, prepared, outcome):
        _, y, _, label_mask = prepared
        first_logits, sample_weight, terms, labeled, count, logged_loss = outcome
        self._loss_tracker.update_state(logged_loss, sample_weight=count)
        for (label_tracker, kl_tracker), (label_sum, kl_sum) in zip(
            self._student_trackers, terms
        ):
            label_tracker.update_state(
                ops.divide_no_nan(label_sum, labeled), sample_weight=labeled
            )
            kl_tracker.update_state(
                ops.divide_no_nan(kl_sum, count), sample_weight=count
            )
        self._update_metrics(y, first_logits, sample_weight, label_mask)
        return _distribute.replica_logs(self.get_metrics_result())

    def fit(self, *args, **kwargs):
        """Trains the students together; see `keras.Model.fit`.

        Raises `ValueError` first if a student's variables or the optimizer
        were created under another `tf.distribute` strategy.
        """
        self.check_distribution()
        return super().fit(*args, **kwargs)

    def get_config(self):
        config = super().get_config()
        config["students"] = [_training.serialize_model(s) for s in self.students]
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**_training.deserialize_models(config, ["students"], custom_objects))
