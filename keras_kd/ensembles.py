"""Teachers made of several models: ensembles and label-space merging.

Both are `keras.Model`s whose output is a vector of normalized
log-probabilities over the student's classes. Log-probabilities are valid
logits (`softmax(log p) = p`), so either model plugs into
`keras_kd.Distiller(student, teacher=...)` with the default
`teacher_outputs="logits"`, and into `keras_kd.cache_teacher_outputs`. The
teachers are combined at temperature 1; the distiller's temperature T then
softens the combined distribution (`softmax(log p / T)`).
"""

import keras
import numpy as np
from keras import ops

from keras_kd import _models, _training, merging

_COMBINE = ("logits", "log_probabilities")


def _check_teachers(teachers):
    if isinstance(teachers, keras.Model) or not isinstance(teachers, (list, tuple)):
        raise ValueError(
            f"`teachers` must be a list of `keras.Model`s, got {teachers!r}."
        )
    if not teachers:
        raise ValueError("`teachers` is empty: pass at least one `keras.Model`.")
    for index, teacher in enumerate(teachers):
        if not isinstance(teacher, keras.Model):
            raise ValueError(
                f"`teachers[{index}]` must be a `keras.Model`, got "
                f"{type(teacher).__name__}: {teacher!r}."
            )
        if _models.ends_in_softmax(teacher):
            raise ValueError(
                f"`teachers[{index}]` ({teacher.name}) ends in a softmax; the "
                "teachers must output logits. Rebuild its last layer with "
                "`activation=None`."
            )
    if len({id(teacher) for teacher in teachers}) != len(teachers):
        raise ValueError("`teachers` lists the same model object more than once.")
    return list(teachers)


def _check_weights(weights, count):
    if weights is None:
        return [1.0] * count
    if isinstance(weights, (str, bytes)) or not hasattr(weights, "__len__"):
        raise ValueError(f"`weights` must be a list of numbers, got {weights!r}.")
    weights = list(weights)
    if len(weights) != count:
        raise ValueError(
            f"`weights` has {len(weights)} entries for {count} teachers; pass one "
            "weight per teacher."
        )
    for weight in weights:
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float, np.number))
            or not 0.0 <= weight < float("inf")
        ):
            raise ValueError(f"`weights` must be finite numbers >= 0, got {weights!r}.")
    if sum(weights) <= 0:
        raise ValueError(f"`weights` must not all be zero, got {weights!r}.")
    return [float(weight) for weight in weights]


def _check_logits_width(logits, expected, index):
    width = logits.shape[-1]
    if width is not None and expected is not None and width != expected:
        raise ValueError(
            f"`teachers[{index}]` outputs {width} values, but {expected} were "
            "expected (its class map's length, or the first teacher's width)."
        )


@keras.saving.register_keras_serializable(package="keras_kd")
class TeacherEnsemble(keras.Model):
    """Several teachers as one: the log of their weighted average probability.

    `output = log(sum_k w_k * softmax(logits_k)) `, with the weights
    normalized to sum to 1, computed as
    `logsumexp_k(log w_k + log_softmax(logits_k))` in float32. This is the
    ensemble's distribution in probability space (the arithmetic mean, not
    the average of the logits), returned as normalized log-probabilities,
    which `keras_kd.Distiller` takes as the teacher's logits: the student is
    then distilled towards `softmax(log p / T)`.

    The teachers may differ in architecture; each must take the same inputs
    and output logits over the same classes, in the same order. They always
    run with `training=False` semantics decided by the caller (the Distiller
    passes `training=False`). For teachers with different label sets, use
    `keras_kd.LabelMergingTeacher`.

    Args:
        teachers: List of trained `keras.Model`s that output logits.
        weights: One non-negative weight per teacher (normalized to sum to 1).
            Defaults to `None`, equal weights.
        name: Model name. Defaults to `"teacher_ensemble"`.
        **kwargs: Passed to `keras.Model`.

    Raises:
        ValueError: for an empty or non-model `teachers`, a teacher ending in
            a softmax, teachers with different output widths, or bad
            `weights`.

    Example:

    ```python
    ensemble = keras_kd.TeacherEnsemble([cnn_teacher, mlp_teacher], weights=[2, 1])
    distiller = keras_kd.Distiller(student=student, teacher=ensemble)
    distiller.compile(optimizer="adam", alpha=0.1, temperature=4.0)
    distiller.fit(x_train, y_train, epochs=5)
    ```

    Reference:
        Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network",
        2015 (section 3, distilling an ensemble), https://arxiv.org/abs/1503.02531
    """

    def __init__(self, teachers, weights=None, name="teacher_ensemble", **kwargs):
        super().__init__(name=name, **kwargs)
        self.teachers = _check_teachers(teachers)
        # `weights` is a read-only `keras.Model` property (its variables).
        self.teacher_weights = _check_weights(weights, len(self.teachers))
        widths = {_models.num_classes(t) for t in self.teachers} - {None}
        if len(widths) > 1:
            raise ValueError(
                "The teachers output different numbers of classes "
                f"({[_models.num_classes(t) for t in self.teachers]}); an ensemble "
                "averages distributions over the same classes. Use "
                "`keras_kd.LabelMergingTeacher` for different label sets."
            )
        self.num_classes = widths.pop() if widths else None
        total = sum(self.teacher_weights)
        self._log_weights = [
            float(np.log(w / total)) if w > 0 else -np.inf for w in self.teacher_weights
        ]
        # No variables of its own: built once its teachers are.
        self.built = True

    def call(self, inputs, training=None):
        terms = []
        expected = self.num_classes
        for index, (teacher, log_weight) in enumerate(
            zip(self.teachers, self._log_weights)
        ):
            if log_weight == -np.inf:
                continue
            logits = ops.cast(teacher(inputs, training=training), "float32")
            _check_logits_width(logits, expected, index)
            expected = expected or logits.shape[-1]
            terms.append(ops.log_softmax(logits, axis=-1) + log_weight)
        return ops.logsumexp(ops.stack(terms, axis=0), axis=0)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "teachers": [_training.serialize_model(t) for t in self.teachers],
                "weights": list(self.teacher_weights),
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**_training.deserialize_models(config, ["teachers"], custom_objects))


def _check_class_maps(class_maps, teachers, num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"`num_classes` must be an int >= 2, got {num_classes!r}.")
    if num_classes < 2:
        raise ValueError(f"`num_classes` must be an int >= 2, got {num_classes!r}.")
    if isinstance(class_maps, (str, bytes)) or not isinstance(
        class_maps, (list, tuple)
    ):
        raise ValueError(
            "`class_maps` must be a list with one list of student class indices "
            f"per teacher, got {class_maps!r}."
        )
    if len(class_maps) != len(teachers):
        raise ValueError(
            f"`class_maps` has {len(class_maps)} entries for {len(teachers)} "
            "teachers; pass one class map per teacher."
        )
    maps = []
    for index, (class_map, teacher) in enumerate(zip(class_maps, teachers)):
        try:
            entries = [int(c) for c in class_map]
        except (TypeError, ValueError):
            raise ValueError(
                f"`class_maps[{index}]` must be a list of int class indices, got "
                f"{class_map!r}."
            ) from None
        if any(int(c) != c for c in class_map):
            raise ValueError(
                f"`class_maps[{index}]` must hold integers, got {class_map!r}."
            )
        if not entries:
            raise ValueError(f"`class_maps[{index}]` is empty.")
        bad = [c for c in entries if not 0 <= c < num_classes]
        if bad:
            raise ValueError(
                f"`class_maps[{index}]` has entries {bad} outside [0, "
                f"{num_classes}) (`num_classes={num_classes}`)."
            )
        if len(set(entries)) != len(entries):
            raise ValueError(
                f"`class_maps[{index}]` lists a student class twice: {entries}. "
                "Each teacher output maps to a different student class."
            )
        width = _models.num_classes(teacher)
        if width is not None and width != len(entries):
            raise ValueError(
                f"`class_maps[{index}]` has {len(entries)} entries but "
                f"`teachers[{index}]` ({teacher.name}) outputs {width} classes; "
                "map every teacher output to one student class."
            )
        maps.append(entries)
    covered = set().union(*maps)
    missing = sorted(set(range(num_classes)) - covered)
    if missing:
        raise ValueError(
            f"No teacher covers the student classes {missing} (of "
            f"`num_classes={num_classes}`): every student class must appear in "
            "at least one class map, or the student gets no target for it."
        )
    return maps


def _check_offsets(class_offsets, num_classes):
    if class_offsets is None:
        return np.zeros((num_classes,), "float32")
    offsets = np.asarray(class_offsets, dtype="float32")
    if offsets.shape != (num_classes,) or not np.all(np.isfinite(offsets)):
        raise ValueError(
            f"`class_offsets` must be {num_classes} finite numbers (one per "
            f"student class), got {class_offsets!r}."
        )
    return offsets


@keras.saving.register_keras_serializable(package="keras_kd")
class LabelMergingTeacher(keras.Model):
    """Teachers trained on different label sets, merged into one teacher.

    Teacher `k` outputs logits `z_k` over its own classes; `class_maps[k][j]`
    is the student class of its output `j`. Each student class `c` takes the
    weighted *mean* of the scores of the teachers that cover it, and the
    result is normalized over the student's `num_classes` classes:

    `log p[c] = m[c] - logsumexp_c'(m[c'])`, with
    `m[c] = sum_{k covers c} w_k e_k[c] / sum_{k covers c} w_k`,

    where the score `e_k` depends on `combine`:

    - `combine="logits"` (default): `e_k = z_k`, the raw logits. For
      disjoint label sets this is the softmax of the concatenated logits, so
      a teacher's overall logit level (its `logsumexp`, the negative "energy"
      of Liu et al. 2020, usually higher on images of classes it was trained
      on) says how likely its own set is. Assumes the teachers' logits are on
      comparable scales (similar architectures and training recipes).
    - `combine="log_probabilities"`: `e_k = log_softmax(z_k)`, each teacher's
      distribution `q_k` given that the class is one of its own; the merge
      is a normalized weighted geometric mean (a product of experts averaged
      in log space). Invariant to each teacher's logit offset, so safe for
      teachers of any scale, but with K disjoint sets it gives
      `p[c] = q_k[c] / K`: every set gets mass 1/K, and only the teachers'
      relative confidence tells the student which set an image belongs to.
      On the MNIST 0-4 / 5-9 split (3 seeds, benchmarks/methods.py) both
      merged teachers scored about 78% on the test set, but students
      distilled without labels reached 65% from this one and 78% from
      `"logits"`: near-ties between the two halves are hard to imitate.

    Choices common to both, and why:

    - A class covered by one teacher takes that teacher's score. A teacher
      says nothing about classes outside its set: it is left out of their
      average, not counted as zero probability (which would make every
      class impossible for some teacher).
    - A class covered by several teachers takes the weighted mean of their
      scores, not the sum: summing (a plain product of experts) would
      penalize, or with logits reward, a class for being covered twice. The
      mean in log space lets a teacher that knows the alternatives veto a
      class another teacher picks out of ignorance: a teacher trained on
      {2, 3} that sees a 3 gives class 2 a low score, which pulls down the
      other teacher's confident but uninformed 2.

    Teachers may differ in architecture and in width; all take the same
    inputs. The output is normalized log-probabilities (valid logits), for
    `keras_kd.Distiller(student, teacher=merged)` with a student of
    `num_classes` outputs, with labels or without (`fit(x)`).

    Args:
        teachers: List of trained `keras.Model`s that output logits.
        class_maps: One list per teacher: `class_maps[k][j]` is the student
            class (in `[0, num_classes)`) of teacher `k`'s output `j`. Every
            student class must be covered by at least one teacher.
        num_classes: Number of student classes, >= 2.
        weights: One non-negative weight per teacher (its say on the classes
            it shares with others). Defaults to `None`, equal weights.
        combine: `"logits"` or `"log_probabilities"`, the per-teacher score
            averaged, as above. Defaults to `"logits"`.
        class_offsets: `num_classes` numbers `b` added to the merged scores
            before the normalization, `log p[c] = m[c] + b[c] - logsumexp(m +
            b)`; `calibrate` sets them by prior matching on a transfer set.
            Defaults to `None`, zeros.
        name: Model name. Defaults to `"label_merging_teacher"`.
        **kwargs: Passed to `keras.Model`.

    Raises:
        ValueError: for class-map entries outside `[0, num_classes)` or
            repeated within a map, a class map whose length is not the
            teacher's output width, student classes no teacher covers, a
            number of class maps or weights that is not the number of
            teachers, an unknown `combine`, or bad teachers.

    Example:

    ```python
    # animals: outputs [cat, dog]; fruit: outputs [apple, banana].
    merged = keras_kd.LabelMergingTeacher(
        [animals, fruit], class_maps=[[0, 1], [2, 3]], num_classes=4
    )
    distiller = keras_kd.Distiller(student=student, teacher=merged)
    distiller.compile(optimizer="adam", temperature=2.0)
    distiller.fit(x_unlabeled, epochs=5)  # no labels needed
    ```

    Reference:
        Vongkulbhisal, Vinayavekhin, Visentini-Scarzanella, "Unifying
        Heterogeneous Classifiers with Distillation", CVPR 2019,
        https://arxiv.org/abs/1904.06062 (the conditional reading of partial
        classifiers); Liu, Wang, Owens, Li, "Energy-based Out-of-distribution
        Detection", NeurIPS 2020, https://arxiv.org/abs/2010.03759 (logit
        level as in-distribution evidence).
    """

    def __init__(
        self,
        teachers,
        class_maps,
        num_classes,
        weights=None,
        combine="logits",
        class_offsets=None,
        name="label_merging_teacher",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if combine not in _COMBINE:
            raise ValueError(f"`combine` must be one of {_COMBINE}, got {combine!r}.")
        self.combine = combine
        self.teachers = _check_teachers(teachers)
        self.class_maps = _check_class_maps(class_maps, self.teachers, num_classes)
        self.num_classes = int(num_classes)
        self.teacher_weights = _check_weights(weights, len(self.teachers))
        coverage = np.zeros((self.num_classes,), "float64")
        self._placements = []
        for class_map, weight in zip(self.class_maps, self.teacher_weights):
            placement = np.zeros((len(class_map), self.num_classes), "float32")
            placement[np.arange(len(class_map)), class_map] = weight
            self._placements.append(placement)
            coverage[class_map] += weight
        if np.any(coverage <= 0):
            missing = np.flatnonzero(coverage <= 0).tolist()
            raise ValueError(
                f"The student classes {missing} are covered only by teachers of "
                f"weight 0 (`weights={weights!r}`); give them a positive weight."
            )
        self._coverage = coverage.astype("float32")
        # A variable, read at run time: `calibrate` changes it after `predict`
        # and `fit` may have traced the model.
        self._offsets = self.add_weight(
            shape=(self.num_classes,),
            initializer=keras.initializers.Constant(
                _check_offsets(class_offsets, self.num_classes)
            ),
            trainable=False,
            name="class_offsets",
        )
        self.built = True

    def load_own_variables(self, store):
        """Loads `class_offsets`; a file of keras_kd 0.1 has none: keep zeros."""
        if len(store.keys()) == 0:
            return
        super().load_own_variables(store)

    @property
    def class_offsets(self):
        """The per-class offsets `b` (float32 array)."""
        return keras.ops.convert_to_numpy(self._offsets)

    def calibrate(self, x, class_priors=None, batch_size=1000):
        """Sets `class_offsets` so that the transfer set gets `class_priors`.

        Prior matching (`keras_kd.merging.match_priors`) on the merged
        teacher's outputs for the unlabeled `x`: afterwards the teacher's
        mean probability of each class over `x` is its prior (uniform for
        `None`). Corrects teachers whose logits run at different levels;
        for targets on `x` itself, `keras_kd.merging.merged_targets` also
        propagates them over similar inputs.

        Returns:
            The offsets (a float32 array), also kept in `class_offsets`.
        """
        self._offsets.assign(np.zeros((self.num_classes,), "float32"))
        scores = self.predict(x, batch_size=batch_size, verbose=0)
        _, offsets = merging.match_priors(scores, class_priors)
        self._offsets.assign(offsets.astype("float32"))
        return self.class_offsets

    def call(self, inputs, training=None):
        total = None
        for index, (teacher, class_map, placement) in enumerate(
            zip(self.teachers, self.class_maps, self._placements)
        ):
            logits = ops.cast(teacher(inputs, training=training), "float32")
            _check_logits_width(logits, len(class_map), index)
            if self.combine == "log_probabilities":
                logits = ops.log_softmax(logits, axis=-1)
            # `placement` holds w_k at [j, class_map[j]]: the product puts
            # w_k e_k[j] in its student column and 0 elsewhere.
            placed = ops.matmul(logits, placement)
            total = placed if total is None else total + placed
        merged = total / ops.convert_to_tensor(self._coverage) + self._offsets
        return ops.log_softmax(merged, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "teachers": [_training.serialize_model(t) for t in self.teachers],
                "class_maps": [list(m) for m in self.class_maps],
                "num_classes": self.num_classes,
                "weights": list(self.teacher_weights),
                "combine": self.combine,
                "class_offsets": self.class_offsets.tolist(),
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**_training.deserialize_models(config, ["teachers"], custom_objects))
