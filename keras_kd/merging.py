"""Targets for label merging, decided on the unlabeled transfer set itself.

Teachers trained on different label sets (`keras_kd.LabelMergingTeacher`)
are each confident on inputs of classes they never saw, so a merged teacher
often picks the wrong teacher for an input (on the MNIST 0-4 / 5-9 split,
22% of the test digits). Two corrections use only the unlabeled transfer
set `x` and an assumption on its class frequencies:

1. **Prior matching** (`match_priors`): per-class offsets `b` such that the
   adjusted distribution `p'(c|x) = softmax(log p(c|x) + b_c)` has, averaged
   over the transfer set, the class shares `pi` the user expects (uniform by
   default). This is the label-shift correction of Saerens, Latinne and
   Decaestecker (2002) with the target prior given rather than estimated; the
   fixed point `b_c <- b_c - log(mean_x p'(c|x) / pi_c)` is reached in a few
   dozen steps. A teacher whose logits run higher than the other's stops
   winning every close call.
2. **Propagation over the transfer set** (`propagate`): each example's
   target is pulled towards those of its `k` nearest neighbours (cosine
   similarity of its `features`, by default its flattened input),

   `P <- alpha * mean_{j in kNN(i)} P_j + (1 - alpha) * P0_i`,

   iterated to its fixed point `P* = (1 - alpha) (I - alpha S)^-1 P0` with
   `S` the row-normalized kNN graph (Zhou, Bousquet, Lal, Weston, Schoelkopf,
   "Learning with Local and Global Consistency", NeurIPS 2004). Inputs that
   look alike get the same teacher: a "9" that the 0-4 teacher claims
   confidently is outvoted by the 9s around it that the 5-9 teacher claims.

`merged_targets` chains both (priors, propagation, priors again) and returns
log-probabilities for `Distiller.fit(x, teacher_logits=targets)`: the student
learns from corrected targets and generalizes to new inputs. The
propagation is transductive (it corrects the targets of `x`, not the teacher
on other inputs); `LabelMergingTeacher.calibrate` applies prior matching to
the teacher itself.

Assumptions, stated where a user can override them: the transfer set's class
shares are `class_priors` (uniform unless given); inputs close in `features`
mostly share a class (true of digit pixels; for natural images pass teacher
embeddings instead of pixels).
"""

import numpy as np

from keras_kd._validation import check_fraction

_PRIOR_TOLERANCE = 1e-6
_PROPAGATION_TOLERANCE = 1e-6
_NEIGHBOUR_CHUNK = 1024
_MIN_PROBABILITY = 1e-12


def log_softmax(values, axis=-1):
    """`values - logsumexp(values)` along `axis`, in float64."""
    values = np.asarray(values, dtype=np.float64)
    shifted = values - np.max(values, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def check_priors(class_priors, num_classes):
    """`class_priors` as float64 shares summing to 1; uniform for `None`."""
    if class_priors is None:
        return np.full((num_classes,), 1.0 / num_classes)
    message = (
        f"`class_priors` must hold {num_classes} positive class shares (one per "
        f"class), or be None for uniform shares; got {class_priors!r}."
    )
    try:
        priors = np.asarray(class_priors, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if priors.shape != (num_classes,) or not np.all(priors > 0):
        raise ValueError(message)
    return priors / priors.sum()


def match_priors(log_probs, class_priors=None, max_iterations=1000):
    """Per-class offsets that give the transfer set the expected class shares.

    Finds `b` with `mean_x softmax(log_probs[x] + b) = class_priors` by the
    fixed point `b <- b - log(mean_x softmax(log_probs + b) / class_priors)`
    (Saerens et al. 2002, with the target prior given).

    Args:
        log_probs: `(examples, classes)` log-probabilities (or logits).
        class_priors: Expected share of each class in the transfer set, or
            `None` for uniform.
        max_iterations: Bound on the fixed-point steps. Defaults to 1000.

    Returns:
        `(adjusted, offsets)`: the adjusted log-probabilities (float64) and
        the offsets `b` (float64, mean 0).

    Example:

    ```python
    adjusted, b = keras_kd.merging.match_priors(np.log([[0.9, 0.1], [0.6, 0.4]]))
    np.exp(adjusted).mean(0)  # [0.5, 0.5]
    ```
    """
    log_probs = np.asarray(log_probs, dtype=np.float64)
    if log_probs.ndim != 2 or len(log_probs) == 0:
        raise ValueError(
            "`log_probs` must be a non-empty (examples, classes) array, got "
            f"shape {log_probs.shape}."
        )
    priors = check_priors(class_priors, log_probs.shape[1])
    offsets = np.zeros_like(priors)
    for _ in range(max_iterations):
        shares = np.exp(log_softmax(log_probs + offsets, axis=-1)).mean(axis=0)
        step = np.log(np.maximum(shares, _MIN_PROBABILITY) / priors)
        offsets -= step
        if np.max(np.abs(step)) < _PRIOR_TOLERANCE:
            break
    offsets -= offsets.mean()
    return log_softmax(log_probs + offsets, axis=-1), offsets


def nearest_neighbours(features, k):
    """`(examples, k)` indices of each example's `k` most cosine-similar others.

    Computed in chunks of rows, so that memory grows as `examples * chunk`,
    not `examples ** 2`.
    """
    features = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    if not isinstance(k, (int, np.integer)) or not 1 <= k < len(features):
        raise ValueError(
            f"`neighbours` must be an int in [1, {len(features) - 1}] (fewer "
            f"than the {len(features)} examples), got {k!r}."
        )
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    unit = features / np.maximum(norms, _MIN_PROBABILITY)
    neighbours = np.empty((len(unit), k), dtype=np.int64)
    for start in range(0, len(unit), _NEIGHBOUR_CHUNK):
        rows = np.arange(start, min(start + _NEIGHBOUR_CHUNK, len(unit)))
        similarity = unit[rows] @ unit.T
        similarity[np.arange(len(rows)), rows] = -np.inf  # not its own neighbour
        top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        neighbours[rows] = top
    return neighbours


def propagate(probs, neighbours, alpha=0.9, max_iterations=200):
    """Spreads targets over the kNN graph: `P* = (1 - a) (I - a S)^-1 P0`.

    Iterates `P <- a * mean_{j in neighbours[i]} P_j + (1 - a) * P0_i` to its
    fixed point (Zhou et al. 2004).

    Args:
        probs: `(examples, classes)` probabilities `P0`.
        neighbours: `(examples, k)` neighbour indices (`nearest_neighbours`).
        alpha: Weight `a` in [0, 1) of the neighbours against the example's
            own target. Defaults to 0.9.
        max_iterations: Bound on the steps. Defaults to 200.

    Returns:
        The propagated `(examples, classes)` probabilities (float64; rows sum
        to 1).
    """
    alpha = check_fraction(alpha, "alpha", "the neighbours' weight")
    if alpha >= 1.0:
        raise ValueError(
            f"`alpha` must be in [0, 1) (1 ignores the teachers), got {alpha!r}."
        )
    start = np.asarray(probs, dtype=np.float64)
    neighbours = np.asarray(neighbours)
    if neighbours.ndim != 2 or len(neighbours) != len(start):
        raise ValueError(
            f"`neighbours` must be an ({len(start)}, k) index array, got shape "
            f"{neighbours.shape}."
        )
    current = start
    for _ in range(max_iterations):
        updated = alpha * current[neighbours].mean(axis=1) + (1.0 - alpha) * start
        converged = np.max(np.abs(updated - current)) < _PROPAGATION_TOLERANCE
        current = updated
        if converged:
            break
    return current


def merged_targets(
    teacher,
    x,
    class_priors=None,
    neighbours=5,
    alpha=0.9,
    features=None,
    batch_size=1000,
):
    """Corrected soft targets of a merged teacher on the transfer set `x`.

    `log p = teacher(x)`; prior matching, propagation over the `neighbours`
    nearest examples of `x` (in `features`), prior matching again. Train the
    student with `Distiller.fit(x, teacher_logits=targets)`.

    Args:
        teacher: A model whose outputs are logits over the student's classes
            (a `keras_kd.LabelMergingTeacher`, or any teacher).
        x: The unlabeled transfer set, an array.
        class_priors: Expected class shares in `x`; `None` for uniform.
        neighbours: `k` of the kNN graph; `0` skips the propagation (prior
            matching alone). Defaults to 5.
        alpha: Weight of the neighbours (see `propagate`). Defaults to 0.9.
        features: `(examples, ...)` array the neighbours are found in.
            Defaults to `None`, the flattened inputs `x`.
        batch_size: Batch size of the teacher's predictions. Defaults to 1000.

    Returns:
        float32 `(examples, classes)` log-probabilities.

    Example:

    ```python
    merged = keras_kd.LabelMergingTeacher([low, high], [[0, 1, 2, 3, 4],
                                          [5, 6, 7, 8, 9]], num_classes=10)
    targets = keras_kd.merging.merged_targets(merged, x_unlabeled)
    distiller = keras_kd.Distiller(student, merged)
    distiller.compile(optimizer="adam", temperature=1.0)
    distiller.fit(x_unlabeled, teacher_logits=targets, epochs=10)
    ```
    """
    x = np.asarray(x)
    logits = teacher.predict(x, batch_size=batch_size, verbose=0)
    adjusted, _ = match_priors(logits, class_priors)
    if neighbours:
        features = x if features is None else np.asarray(features)
        if len(features) != len(x):
            raise ValueError(
                f"`features` has {len(features)} rows for {len(x)} examples of "
                "`x`: pass one row per example."
            )
        graph = nearest_neighbours(features, neighbours)
        spread = propagate(np.exp(adjusted), graph, alpha)
        adjusted, _ = match_priors(
            np.log(np.maximum(spread, _MIN_PROBABILITY)), class_priors
        )
    return adjusted.astype("float32")
