"""The `tf.distribute` specifics of the trainers, in one place.

Losses are reduced over the global batch: each replica divides its weighted
sum by the global normalizer (`global_sum` of the replicas' normalizers), and
the optimizer sums the replicas' gradients, so that N replicas give the
result of one device.

On JAX and PyTorch there are no replicas here: under `keras.distribution`
(JAX) the step is one program over the global batch, which XLA shards, so
every function below is the identity (one replica, no strategy).
"""

import contextlib

import keras
import tensorflow as tf
from keras import ops


def on_tensorflow() -> bool:
    """Whether Keras runs on TensorFlow, the one backend with `tf.distribute`."""
    return keras.backend.backend() == "tensorflow"


def scope(model: keras.Model):
    """The scope of the strategy `model` trains under (none off TensorFlow)."""
    if not on_tensorflow():
        return contextlib.nullcontext()
    return model.distribute_strategy.scope()


def on_tpu() -> bool:
    """Whether the current strategy is a `TPUStrategy`."""
    return on_tensorflow() and is_tpu(tf.distribute.get_strategy())


def num_replicas() -> int:
    """Replicas in sync under the current strategy (1 outside any)."""
    if not on_tensorflow():
        return 1
    return tf.distribute.get_strategy().num_replicas_in_sync


def global_sum(value):
    """`value` summed over the replicas in sync (itself on one replica)."""
    if num_replicas() == 1:
        return value
    return tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, value
    )


def in_multi_worker_mode(strategy) -> bool:
    return (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    )


def replica_logs(logs: dict) -> dict:
    """Shapes one replica's logs for Keras' cross-replica reduction.

    Across workers, Keras 3 reduces each log with
    `strategy.reduce("MEAN", value, axis=0)`, which rejects scalars
    (tensorflow/tensorflow#72388). A vector of one element per replica
    reduces to the same mean over replicas as on a single machine.
    """
    if not on_tensorflow() or not in_multi_worker_mode(tf.distribute.get_strategy()):
        return logs
    return {key: ops.reshape(value, (1,)) for key, value in logs.items()}


def first_local_value(value):
    """The first local replica's component of a distributed value, else `value`."""
    strategy = tf.distribute.get_strategy()
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def first_local_batch(model: keras.Model, iterator):
    """The first local replica's batch of a distributed `iterator`, or None.

    Keras 3 averages the first distributed batch with one `strategy.reduce`
    call on the whole `(x, y, sample_weight)` structure, which
    `MultiWorkerMirroredStrategy` rejects; building a model only needs the
    shapes, which the first local replica's batch has.
    """
    if not on_tensorflow() or iterator is None or model._distribute_strategy is None:
        return None
    for _, _, it in iterator:
        with model.distribute_strategy.scope():
            return keras.tree.map_structure(first_local_value, next(it))
    return None


def _tf_variable(variable):
    """The `tf.Variable` behind a Keras variable (itself on other backends)."""
    return getattr(variable, "value", variable)


def outside_scope(strategy, variables) -> list:
    """Paths of the variables that `strategy` did not create."""
    return [
        getattr(v, "path", getattr(v, "name", "?"))
        for v in variables
        if not strategy.extended.variable_created_in_scope(_tf_variable(v))
    ]


def scope_message(subject: str, strategy, paths: list) -> str:
    name = type(strategy).__name__
    return (
        f"{subject} created outside the scope of the `{name}` the model "
        f"trains under ({', '.join(paths[:3])}{', ...' if len(paths) > 3 else ''}). "
        "Create the models (teacher, students) and the trainer, and call "
        "`compile`, inside one `with strategy.scope():` block, and call `fit` "
        "with the same strategy (for example load a saved teacher with "
        "`keras.saving.load_model` inside the scope)."
    )


def check_variables(strategy, trained_variables, subject: str) -> None:
    """`ValueError` if some of `trained_variables` belong to another strategy."""
    paths = outside_scope(strategy, trained_variables)
    if paths:
        raise ValueError(scope_message(subject, strategy, paths))


def is_tpu(strategy) -> bool:
    return isinstance(strategy, tf.distribute.TPUStrategy)
