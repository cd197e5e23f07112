"""KerasHub task models as teacher and student, built from config (issue #14).

No download: the backbones are tiny and random. The losses are checked
against float64 by hand on padded batches, on every backend.
"""

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd.losses import TokenDivergence
from tests import reference

keras_hub = pytest.importorskip("keras_hub")

VOCAB, LENGTH = 40, 8
RNG = np.random.default_rng(0)
PADDING = np.array([[1] * 8, [1] * 5 + [0] * 3, [1] * 2 + [0] * 6, [1] * 7 + [0]])
TOKEN_IDS = (RNG.integers(1, VOCAB, size=(4, LENGTH)) * PADDING).astype("int32")


def backbone_config(layers, hidden, name, vocabulary_size=VOCAB):
    """A tiny transformer's config; dropout 0, as the student trains with
    `training=True` and the hand computations run the models in inference."""
    return dict(
        vocabulary_size=vocabulary_size,
        num_layers=layers,
        num_heads=2,
        hidden_dim=hidden,
        intermediate_dim=2 * hidden,
        max_sequence_length=LENGTH,
        dropout=0.0,
        name=f"{name}_backbone",
    )


def causal_lm(layers, hidden, name, vocabulary_size=VOCAB):
    keras.utils.set_random_seed(len(name))
    config = backbone_config(layers, hidden, name, vocabulary_size)
    backbone = keras_hub.models.GPT2Backbone(**config)
    embedding = backbone.token_embedding.embeddings  # also the tied LM head
    embedding.assign(embedding * 30.0)  # logits of order 1, not float32 noise
    return keras_hub.models.GPT2CausalLM(
        backbone=backbone, preprocessor=None, name=name
    )


def text_classifier(layers, hidden, name):
    keras.utils.set_random_seed(len(name))
    backbone = keras_hub.models.BertBackbone(**backbone_config(layers, hidden, name))
    model = keras_hub.models.BertTextClassifier(
        backbone=backbone, num_classes=3, preprocessor=None, dropout=0.0, name=name
    )
    head = model.layers[-1]  # logits of order 1, not lost in float32 noise
    head.kernel.assign(head.kernel * 30.0)
    return model


def numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x), "float64")


def one_frozen_step(distiller, x, y):
    history = distiller.fit(x, y, batch_size=len(y), shuffle=False, verbose=0)
    return {key: values[-1] for key, values in history.history.items()}


@pytest.mark.parametrize("divergence, chunk_size", [("forward_kl", None), ("jsd", 8)])
def test_a_causal_lm_distils_into_a_smaller_one_over_real_tokens(
    divergence, chunk_size
):
    teacher, student = causal_lm(2, 16, "teacher"), causal_lm(1, 8, "student")
    x = {"token_ids": TOKEN_IDS, "padding_mask": PADDING.astype("int32")}
    y = np.roll(TOKEN_IDS, -1, axis=1)  # next token
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    loss = TokenDivergence(divergence, beta=0.5, temperature=2.0, chunk_size=chunk_size)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.0), alpha=0.5, distillation_loss_fn=loss
    )
    logs = one_frozen_step(distiller, x, y)
    t, s = numpy(teacher(x)), numpy(student(x))
    w = PADDING.astype("float64")
    per_token = reference.token_divergence(t, s, divergence, 0.5, 2.0)
    label = -np.take_along_axis(reference.log_softmax64(s), y[..., None], -1)[..., 0]
    assert logs["distillation_loss"] == pytest.approx(
        (per_token * w).sum() / w.sum(), rel=1e-4
    )
    assert logs["student_loss"] == pytest.approx((label * w).sum() / w.sum(), rel=1e-4)
    assert abs(logs["student_loss"] - label.mean()) > 1e-3  # padding is left out


def test_a_causal_lm_student_learns_from_its_teacher_and_the_teacher_stays():
    teacher, student = causal_lm(2, 16, "teacher"), causal_lm(1, 8, "student")
    before = [w.copy() for w in teacher.get_weights()]
    x = {"token_ids": TOKEN_IDS, "padding_mask": PADDING.astype("int32")}
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        alpha=0.0,
        distillation_loss_fn=TokenDivergence("reverse_kl", chunk_size=8),
    )
    history = distiller.fit(x, np.roll(TOKEN_IDS, -1, 1), epochs=8, verbose=0)
    losses = history.history["distillation_loss"]
    assert losses[-1] < 0.8 * losses[0]
    for a, b in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_text_classifier_distils_per_example_whatever_the_padding():
    teacher, student = (
        text_classifier(2, 16, "teacher"),
        text_classifier(1, 8, "student"),
    )
    x = {
        "token_ids": TOKEN_IDS,
        "padding_mask": PADDING.astype("int32"),
        "segment_ids": np.zeros_like(TOKEN_IDS),
    }
    y = np.array([0, 1, 2, 1])
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), alpha=0.5, temperature=2.0)
    logs = one_frozen_step(distiller, x, y)
    t, s = numpy(teacher(x)), numpy(student(x))
    kd = np.mean([reference.kd(a, b, 2.0) for a, b in zip(t, s)])
    assert logs["distillation_loss"] == pytest.approx(kd, rel=1e-4)


def test_causal_lms_with_different_vocabularies_are_rejected():
    teacher = causal_lm(1, 8, "teacher")
    student = causal_lm(1, 8, "student", vocabulary_size=VOCAB + 2)
    with pytest.raises(ValueError, match=r"outputs 40 classes and the student 42"):
        keras_kd.Distiller(student=student, teacher=teacher)


def test_a_hint_names_a_layer_inside_each_keras_hub_backbone():
    # Both classifiers pool to width 16, so the hint needs no adapter: it is
    # the mean squared difference of the backbones' pooled outputs.
    teacher = text_classifier(2, 16, "teacher")
    student = text_classifier(1, 16, "student")
    x = {
        "token_ids": TOKEN_IDS,
        "padding_mask": PADDING.astype("int32"),
        "segment_ids": np.zeros_like(TOKEN_IDS),
    }
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    hint = keras_kd.losses.HintLoss(
        "teacher_backbone/pooled_dense", "student_backbone/pooled_dense", adapter=False
    )
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.0), alpha=0.5, feature_losses=[hint]
    )
    logs = one_frozen_step(distiller, x, np.array([0, 1, 2, 1]))
    pooled_t = numpy(teacher.backbone(x)["pooled_output"])
    pooled_s = numpy(student.backbone(x)["pooled_output"])
    want = reference.hint(pooled_t, pooled_s).mean()
    assert want > 1e-3
    assert logs["hint_loss"] == pytest.approx(want, rel=1e-4)
    with pytest.raises(ValueError, match="student_backbone/pooled_dense"):
        wrong = keras_kd.losses.HintLoss(
            "teacher_backbone/pooled_dense", "student_backbone/no_such_layer"
        )
        distiller.compile(optimizer="sgd", feature_losses=[wrong])


WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film"]


def classifier_with_preprocessor(name, vocabulary=WORDS):
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=LENGTH
    )
    backbone = keras_hub.models.BertBackbone(
        **backbone_config(1, 8, name, vocabulary_size=len(vocabulary))
    )
    return keras_hub.models.BertTextClassifier(
        backbone=backbone, num_classes=2, preprocessor=preprocessor, name=name
    )


def test_own_preprocessors_are_not_run_strings_are_refused_with_the_fix():
    teacher = classifier_with_preprocessor("teacher")
    student = classifier_with_preprocessor("student")
    texts, labels = (
        np.array(["good film", "bad film", "good", "bad"]),
        np.array([1, 0, 1, 0]),
    )
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer="adam")
    with pytest.raises(ValueError, match=r"string inputs.*student\.preprocessor"):
        distiller.fit(texts, labels, verbose=0)
    # The fix the message gives: preprocess once, with the shared preprocessor.
    x = keras.tree.map_structure(
        keras.ops.convert_to_numpy, student.preprocessor(texts)
    )
    history = distiller.fit(x, labels, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_tokenizers_with_other_vocabularies_are_rejected_at_construction():
    teacher = classifier_with_preprocessor("teacher")
    swapped = WORDS[:5] + ["bad", "good", "film"]  # same size, ids 5 and 6 swapped
    student = classifier_with_preprocessor("student", vocabulary=swapped)
    with pytest.raises(ValueError, match="first differ at id 5"):
        keras_kd.Distiller(student=student, teacher=teacher)
