"""Layers named by path in nested graph models: `"backbone/conv3_block4_out"`.

A Functional or Sequential model can hold another one as a layer, as a
`keras.applications` or KerasHub backbone inside a classifier. A path names
a layer of the outer model (`"logits"`) or, through the names of the nested
models, a layer inside one (`"backbone/conv3_block4_out"`, at any depth).
`layer_paths(model)` lists the valid paths.

`feature_tensors(model, paths)` returns symbolic inputs, the model's outputs
and the paths' outputs in one graph, sharing every layer and weight with
`model`, for a multi-output view of it:

- top-level names only: the model's own inputs and outputs and each layer's
  `output` (its first call), as `keras.Model(model.inputs, [model.output,
  layer.output])` would take them;
- a path into a nested model: the inner layer's output lives in the nested
  model's own graph, on the nested model's inputs. The outer graph is then
  replayed on new inputs (`keras.models.clone_model` with every layer
  reused, or the layer chain of a Sequential model), with the nested model
  replaced by a view of itself that also returns the inner layer. The
  nested model still runs once per call; nothing is recomputed.
"""

import keras

SEPARATOR = "/"


def is_graph_model(layer) -> bool:
    """Whether `layer` is a Functional or Sequential model with a graph."""
    if not isinstance(layer, keras.Model):
        return False
    try:
        return bool(layer.outputs)
    except (AttributeError, ValueError):
        return False


def model_inputs(inputs):
    """A single input as a tensor (as a model takes it), several as a list."""
    return inputs[0] if len(inputs) == 1 else inputs


def layer_paths(model) -> list:
    """Every valid path of `model`: its layers, then the nested models' paths."""
    paths = []
    for layer in model.layers:
        paths.append(layer.name)
        if is_graph_model(layer):
            paths.extend(f"{layer.name}{SEPARATOR}{p}" for p in layer_paths(layer))
    return paths


def _split(paths):
    """`(top-level names, {nested model name: [paths inside it]})`."""
    own, nested = [], {}
    for path in paths:
        head, _, rest = path.partition(SEPARATOR)
        if rest:
            nested.setdefault(head, []).append(rest)
        else:
            own.append(path)
    return own, nested


def feature_tensors(model, paths):
    """`(inputs, outputs, {path: tensor})` of a graph model, in one graph.

    Raises:
        ValueError: for a layer that has no output in the graph (never
            called), or, in a replayed graph, one called more than once.
    """
    own, nested = _split(paths)
    if not nested:
        return model.inputs, model.outputs, {name: _output(model, name) for name in own}
    return _replayed(model, set(own), nested)


def _output(model, name):
    try:
        return model.get_layer(name).output
    except (AttributeError, ValueError) as error:
        raise ValueError(
            f"The output of the layer {name!r} is not defined in the graph of "
            f"{model.name!r} ({error}). Pick a layer that is called in the model."
        ) from None


def _replayed(model, own, nested):
    captured = {}

    def call(layer, *args, **kwargs):
        if layer.name in nested:
            outputs, inner = _call_nested(layer, nested[layer.name], args, kwargs)
            captured.update(inner)
        else:
            outputs = layer(*args, **kwargs)
        if layer.name in own:
            if layer.name in captured:
                raise ValueError(
                    f"The layer {layer.name!r} is called more than once in "
                    f"{model.name!r}: its output is ambiguous. Pick a layer "
                    "that is called once."
                )
            captured[layer.name] = outputs
        return outputs

    if isinstance(model, keras.Sequential):
        first = model.inputs[0]
        inputs = [keras.Input(batch_shape=first.shape, dtype=first.dtype)]
        x = inputs[0]
        for layer in model.layers:
            x = call(layer, x)
        outputs = [x]
    else:
        replay = keras.models.clone_model(
            model, clone_function=lambda layer: layer, call_function=call
        )
        inputs, outputs = replay.inputs, replay.outputs
    missing = [name for name in [*own, *nested] if not _is_captured(name, captured)]
    if missing:
        raise ValueError(
            f"The layers {missing} are not called in the graph of {model.name!r}."
        )
    return inputs, outputs, captured


def _is_captured(name, captured):
    return any(path.split(SEPARATOR)[0] == name for path in captured)


def _call_nested(layer, paths, args, kwargs):
    """`layer(*args)` through a view that also returns `paths` inside it."""
    inputs, outputs, inner = feature_tensors(layer, paths)
    view = keras.Model(
        model_inputs(inputs), [*outputs, *inner.values()], name=f"{layer.name}_view"
    )
    results = view(*args, **kwargs)
    structure = layer.compute_output_spec(*args, **kwargs)
    count = len(outputs)
    outputs = keras.tree.pack_sequence_as(structure, results[:count])
    return outputs, {
        f"{layer.name}{SEPARATOR}{path}": tensor
        for path, tensor in zip(inner, results[count:])
    }
