"""What the two text examples share: KerasHub, shuffling, the schedule, and
recording results.

`distill_text_classifier.py` and `distill_language_model.py` import it from
their own folder (`python examples/<name>.py` puts `examples/` on the path).
"""

import json

import keras
import tensorflow as tf

BATCH_SIZE = 32


def keras_hub_module():
    """`keras_hub`, or an exit that says how to install it."""
    try:
        import keras_hub
    except ImportError as error:
        raise SystemExit(
            "This example needs KerasHub: pip install -e '.[hub]' safetensors"
        ) from error
    return keras_hub


def shuffled_batches(data, seed):
    """`data` as batches reshuffled every epoch.

    A KerasHub task's own `fit` on arrays batches them into a dataset in
    their given order and never shuffles (Keras warns that `shuffle=True` is
    ignored); the Distiller, a plain `keras.Model`, shuffles arrays itself.
    """
    return (
        tf.data.Dataset.from_tensor_slices(data)
        .shuffle(len(data[1]), seed=seed, reshuffle_each_iteration=True)
        .batch(BATCH_SIZE)
    )


def adamw(learning_rate, epochs, examples, warmup_fraction):
    """AdamW (weight decay 0.01): linear warm-up over `warmup_fraction` of
    the steps to `learning_rate`, then cosine decay to 0."""
    total = epochs * -(-examples // BATCH_SIZE)
    warmup = max(1, int(total * warmup_fraction))
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, total - warmup, warmup_target=learning_rate, warmup_steps=warmup
    )
    return keras.optimizers.AdamW(schedule, weight_decay=0.01)


def record(results, run, output):
    """Appends `run` to `results["runs"]`, prints it, and saves `results`."""
    results["runs"].append(run)
    print(run, flush=True)
    save(results, output)


def save(results, output):
    """Writes `results` as JSON to `output`, if given."""
    if output:
        with open(output, "w") as handle:
            json.dump(results, handle, indent=1)
