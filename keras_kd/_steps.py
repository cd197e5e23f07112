"""One training step per Keras backend, around the trainers' shared loss code.

A trainer (`_training.Trainer`) computes its step in three backend-agnostic
parts, written against `keras.ops` and the models' variables:

- `_prepare(data)`: what needs no gradient (unpacking, augmentation, mixup,
  the teacher's forward pass);
- `_loss(prepared)`: `(loss, outcome)`, the loss this replica minimises and
  what the logs need;
- `_record(prepared, outcome)`: updates the loss trackers and metrics.

Each backend then takes the gradient of `_loss` with respect to
`trainer._trained_variables` in its own way, as in the Keras guides
"Customizing what happens in fit()":

- TensorFlow: a `tf.GradientTape` (under `tf.distribute`, per replica);
- JAX: `jax.value_and_grad` of a pure function of the trainable values, the
  rest of the state mapped in with a `keras.StatelessScope`, and
  `optimizer.stateless_apply`;
- PyTorch: `loss.backward()`, with the teacher's pass under `torch.no_grad()`.

Evaluation (`_evaluate(data)`, stateful) goes through `evaluation_step`,
which only JAX needs to wrap.
"""

import keras

from keras_kd._distribute import on_tensorflow


def train_step(trainer, *args):
    """`trainer.train_step`: `(data)`, or `(state, data)` on JAX."""
    name = keras.backend.backend()
    if name == "jax":
        return _jax_train_step(trainer, *args)
    if name == "torch":
        return _torch_train_step(trainer, *args)
    return _tensorflow_train_step(trainer, *args)


def evaluation_step(trainer, *args):
    """`trainer.test_step`: `(data)`, or `(state, data)` on JAX."""
    if keras.backend.backend() != "jax":
        return trainer._evaluate(*args)
    state, data = args
    trainable, non_trainable, metrics = state
    variables = (
        trainer.trainable_variables,
        trainer.non_trainable_variables,
        trainer.metrics_variables,
    )
    with _mapped(variables, state) as scope:
        logs = trainer._evaluate(data)
        metrics = _current(scope, trainer.metrics_variables)
    return logs, (trainable, non_trainable, metrics)


def _tensorflow_train_step(trainer, data):
    import tensorflow as tf

    prepared = trainer._prepare(data)
    with tf.GradientTape() as tape:
        loss, outcome = trainer._loss(prepared)
        scaled_loss = trainer.optimizer.scale_loss(loss)
    variables = trainer._trained_variables
    trainer.optimizer.apply(tape.gradient(scaled_loss, variables), variables)
    return trainer._record(prepared, outcome)


def _torch_train_step(trainer, data):
    import torch

    with torch.no_grad():
        prepared = trainer._prepare(data)
    trainer.zero_grad()
    loss, outcome = trainer._loss(prepared)
    trainer.optimizer.scale_loss(loss).backward()
    variables = trainer._trained_variables
    gradients = [variable.value.grad for variable in variables]
    with torch.no_grad():
        trainer.optimizer.apply(gradients, variables)
        return trainer._record(prepared, _without_gradient(outcome))


def _without_gradient(outcome):
    """`outcome` cut from the graph: the logs need its values only."""
    return keras.tree.map_structure(
        lambda value: None if value is None else keras.ops.stop_gradient(value),
        outcome,
    )


def _jax_train_step(trainer, state, data):
    import jax

    trainable, non_trainable, optimizer_values, metrics = state
    trained = _trained_positions(trainer)
    others = (
        trainer.non_trainable_variables,
        trainer.optimizer.variables,
        trainer.metrics_variables,
    )

    def scaled_loss(trained_values):
        values = (
            _replaced(trainable, trained, trained_values),
            non_trainable,
            optimizer_values,
            metrics,
        )
        with _mapped((trainer.trainable_variables,) + others, values) as scope:
            prepared = trainer._prepare(data)
            loss, outcome = trainer._loss(prepared)
            scaled = trainer.optimizer.scale_loss(loss)
            logs = trainer._record(prepared, _without_gradient(outcome))
            updated = [_current(scope, group) for group in (others[0], others[2])]
        return scaled, (logs, updated)

    gradient_fn = jax.value_and_grad(scaled_loss, has_aux=True)
    trained_values = [trainable[i] for i in trained]
    (_, (logs, (non_trainable, metrics))), gradients = gradient_fn(trained_values)
    trained_values, optimizer_values = trainer.optimizer.stateless_apply(
        optimizer_values, gradients, trained_values
    )
    trainable = _replaced(trainable, trained, trained_values)
    return logs, (trainable, non_trainable, optimizer_values, metrics)


def build_optimizer(trainer) -> None:
    """Builds the optimizer on the trained variables only (JAX, PyTorch).

    Keras' JAX and PyTorch trainers would build it on all
    `trainable_variables`, a teacher made trainable again included;
    TensorFlow builds it on the variables of the first `optimizer.apply`.
    """
    optimizer = getattr(trainer, "optimizer", None)
    if on_tensorflow() or optimizer is None or optimizer.built:
        return
    if all(model.built for model in trainer._trained_models):
        positions = _trained_positions(trainer)
        optimizer.build([trainer.trainable_variables[i] for i in positions])


def _trained_positions(trainer) -> list:
    """Indices in `trainable_variables` of the variables that are trained."""
    trained = {id(v) for v in trainer._trained_variables}
    return [i for i, v in enumerate(trainer.trainable_variables) if id(v) in trained]


def _replaced(values, positions, new_values) -> list:
    values = list(values)
    for i, value in zip(positions, new_values):
        values[i] = value
    return values


def _mapped(variable_groups, value_groups):
    """A `StatelessScope` in which each variable reads its given value."""
    mapping = [
        (variable, value)
        for variables, values in zip(variable_groups, value_groups)
        for variable, value in zip(variables, values)
    ]
    return keras.StatelessScope(state_mapping=mapping)


def _current(scope, variables) -> list:
    """The values `variables` hold in `scope` (assigned there, or as mapped)."""
    values = []
    for variable in variables:
        value = scope.get_current_value(variable)
        values.append(variable.value if value is None else value)
    return values
