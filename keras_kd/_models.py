"""What keras_kd reads off a model: its output layer, class count, softmax head."""

import keras
import numpy as np

# Rows this close to summing to one, with no negative entry, are probabilities.
_SUM_TO_ONE_ATOL = 1e-3
_ROWS_CHECKED = 64


def check_model(model, role: str) -> None:
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`{role}` must be a `keras.Model` (Sequential, Functional or "
            f"subclassed), got {type(model).__name__}: {model!r}."
        )


def graph_outputs(model):
    """The outputs of a Functional/Sequential model, or None if it has none."""
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    if not outputs or not all(hasattr(o, "_keras_history") for o in outputs):
        return None
    return list(outputs)


def _single_output(model):
    outputs = graph_outputs(model)
    return outputs[0] if outputs and len(outputs) == 1 else None


def ends_in_softmax(model) -> bool:
    """Whether a graph model's single output comes from a softmax."""
    output = _single_output(model)
    if output is None:
        return False
    layer = output._keras_history[0]
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) == "softmax"


def num_classes(model):
    """The static size of a graph model's last output axis, or None if unknown."""
    output = _single_output(model)
    return None if output is None else output.shape[-1]


def looks_like_probabilities(values) -> bool:
    """Whether the first rows of `values` (`_ROWS_CHECKED` positions) sum to one.

    Only those rows go to float64: a probe batch of a language model holds
    `(examples, time, vocab)` logits, far too many to copy whole.
    """
    if len(values.shape) < 1 or values.shape[-1] < 2:
        return False
    rows = keras.ops.reshape(values, (-1, values.shape[-1]))[:_ROWS_CHECKED]
    values = np.asarray(keras.ops.convert_to_numpy(rows), dtype=np.float64)
    if values.size == 0:
        return False
    sums = values.sum(axis=-1)
    return bool(values.min() >= 0.0 and np.allclose(sums, 1.0, atol=_SUM_TO_ONE_ATOL))


def softmax_message(role: str) -> str:
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


def check_class_counts(student_classes, teacher_classes) -> None:
    """`ValueError` unless both models output the same number of classes."""
    if student_classes != teacher_classes:
        raise ValueError(
            f"The teacher outputs {teacher_classes} classes and the student "
            f"{student_classes}: they must output the same classes, in the "
            "same order (for language models: the same vocabulary, from one "
            "tokenizer; distilling across tokenizers is not supported)."
        )


def check_pair(student, teacher, teacher_gives_logits: bool) -> None:
    """What the graphs tell before any data: two distinct models of logits.

    `ValueError` if either is not a `keras.Model`, the student is the
    teacher, a model that must give logits ends in a softmax, or the static
    class counts differ.
    """
    check_model(student, "student")
    check_model(teacher, "teacher")
    if student is teacher:
        raise ValueError(
            "`student` and `teacher` are the same model object. Distill "
            "into a new model (for example `keras.models.clone_model`)."
        )
    if teacher_gives_logits and ends_in_softmax(teacher):
        raise ValueError(softmax_message("teacher"))
    if ends_in_softmax(student):
        raise ValueError(softmax_message("student"))
    classes = (num_classes(student), num_classes(teacher))
    if None not in classes:
        check_class_counts(*classes)
    check_shared_tokenizer(student, teacher)


def _vocabulary(model):
    """The vocabulary of a KerasHub task's own tokenizer, or None."""
    tokenizer = getattr(getattr(model, "preprocessor", None), "tokenizer", None)
    get_vocabulary = getattr(tokenizer, "get_vocabulary", None)
    return None if get_vocabulary is None else list(get_vocabulary())


def check_shared_tokenizer(student, teacher) -> None:
    """`ValueError` if both models carry tokenizers with other vocabularies.

    Token id `i` must mean the same token to both models, or matching their
    distributions is wrong even when the vocabulary sizes agree.
    """
    vocabularies = _vocabulary(student), _vocabulary(teacher)
    if None in vocabularies or vocabularies[0] == vocabularies[1]:
        return
    student_tokens, teacher_tokens = vocabularies
    first = next(
        (
            i
            for i, pair in enumerate(zip(student_tokens, teacher_tokens))
            if len(set(pair)) > 1
        ),
        min(len(student_tokens), len(teacher_tokens)),
    )
    raise ValueError(
        "The teacher's and the student's tokenizers have different "
        f"vocabularies ({len(teacher_tokens)} and {len(student_tokens)} tokens; "
        f"they first differ at id {first}): token ids would mean different "
        "tokens to the two models. Distil between models that share one "
        "tokenizer; distilling across tokenizers is not supported."
    )


def check_outputs(student_logits, teacher_logits, teacher_gives_logits: bool):
    """What a probe batch tells: logits, not probabilities, of equal widths."""
    if teacher_gives_logits and looks_like_probabilities(teacher_logits):
        raise ValueError(softmax_message("teacher"))
    if looks_like_probabilities(student_logits):
        raise ValueError(softmax_message("student"))
    check_class_counts(student_logits.shape[-1], teacher_logits.shape[-1])
