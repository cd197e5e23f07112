"""Distil a causal language model on Shakespeare: token-level divergences and
a top-k teacher cache against a dense one.

The corpus is 42 works of Shakespeare (`keras_kd.datasets.load_shakespeare`);
whole works are held out (`julius_caesar` and `macbeth` for validation,
`tempest` and `twelfth_night` for test). A WordPiece vocabulary of about
4,000 tokens is learned on the training works (KerasHub's
`compute_word_piece_vocabulary`); each line becomes its tokens and a
line-break token, and the token stream is cut into sequences of 128.

The teacher, a KerasHub `GPT2CausalLM` built from config (4 layers, hidden
256, 4.2M parameters), is trained here and saved to `--teacher-path`. The
student (2 layers, hidden 128, 0.93M parameters, 22% of the teacher) is
trained on the first `--student-sequences` training sequences in each way
of `--methods`:

- `scratch`: next-token cross-entropy alone;
- `forward_kl`, `reverse_kl`, `jsd`: `TokenDivergence` against a dense
  float16 cache of the teacher's logits (on disk, `--cache-dir`);
- `top_k_8`, `top_k_32`: the same forward KL against a top-k cache
  (`cache_teacher_outputs(top_k=k)`, rest bucket); `top_k_32_renormalized`
  renormalizes over the k tokens instead.

Every student has the same label term (`alpha`). Validation and test
perplexity (`exp` of the mean next-token cross-entropy), the caches' sizes
and a generated sample per method are printed and, with `--output`, written
as JSON.

    python examples/distill_language_model.py --seeds 0 1 2 \\
        --output artifacts/language_model.json
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _text_training import (  # noqa: E402
    BATCH_SIZE,
    adamw,
    keras_hub_module,
    record,
    shuffled_batches,
)

import keras_kd  # noqa: E402
from keras_kd.losses import TokenDivergence  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DATA = os.path.join(ROOT, "..", "shared", "data", "shakespeare_42_works.tar.xz")
ARTIFACTS = os.path.join(ROOT, "artifacts", "language_model")
SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
RESERVED = ["[PAD]", "[UNK]", "[BOS]", "[NL]"]
NEWLINE = RESERVED.index("[NL]")
# method: (divergence, top_k, rest)
METHODS = {
    "scratch": None,
    "forward_kl": ("forward_kl", None, None),
    "reverse_kl": ("reverse_kl", None, None),
    "jsd": ("jsd", None, None),
    "top_k_8": ("forward_kl", 8, "bucket"),
    "top_k_32": ("forward_kl", 32, "bucket"),
    "top_k_32_renormalized": ("forward_kl", 32, "renormalize"),
}


def lines_of(works):
    return [
        line for text in works.values() for line in text.splitlines() if line.strip()
    ]


def word_piece_tokenizer(train_works, vocabulary_size, path):
    """A WordPiece tokenizer learned on the training works (cased), saved."""
    keras_hub = keras_hub_module()
    if not os.path.exists(path):
        lines = tf.data.Dataset.from_tensor_slices(lines_of(train_works)).batch(1000)
        vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
            lines,
            vocabulary_size=vocabulary_size,
            lowercase=False,
            strip_accents=False,
            reserved_tokens=RESERVED,
        )
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("\n".join(vocabulary))
    with open(path, encoding="utf-8") as handle:
        vocabulary = handle.read().split("\n")
    return keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary, lowercase=False, strip_accents=False
    )


def token_stream(works, tokenizer):
    """The works' lines as one int32 stream, each line ended by `[NL]`."""
    pieces = []
    for ids in tokenizer(lines_of(works)):
        pieces += [np.asarray(ids, "int32"), np.array([NEWLINE], "int32")]
    return np.concatenate(pieces)


def sequences(stream, length):
    """`(x, y)`: non-overlapping windows of `length` tokens and the next ones."""
    count = (len(stream) - 1) // length
    windows = stream[: count * length + 1]
    ids = np.stack(
        [windows[i * length : i * length + length + 1] for i in range(count)]
    )
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones_like(ids[:, :-1])}
    return x, ids[:, 1:]


def causal_lm(vocabulary_size, layers, hidden, length, name, seed):
    keras_hub = keras_hub_module()
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocabulary_size,
        num_layers=layers,
        num_heads=max(2, hidden // 64),
        hidden_dim=hidden,
        intermediate_dim=4 * hidden,
        max_sequence_length=length,
        dropout=0.1,
        name=f"{name}_backbone",
    )
    return keras_hub.models.GPT2CausalLM(
        backbone=backbone, preprocessor=None, name=name
    )


def perplexity(model, x, y):
    """`exp` of the mean next-token cross-entropy over every position."""
    model.compile(loss=SCE)
    logs = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    return float(np.exp(logs["loss"]))


def trained_teacher(args, vocabulary_size, train):
    if os.path.exists(args.teacher_path):
        return keras.saving.load_model(args.teacher_path)
    teacher = causal_lm(vocabulary_size, 4, 256, args.length, "teacher", seed=0)
    teacher.compile(
        adamw(args.teacher_learning_rate, args.teacher_epochs, len(train[1]), 0.05), SCE
    )
    teacher.fit(
        shuffled_batches(train, 0), epochs=args.teacher_epochs, verbose=args.verbose
    )
    teacher.save(args.teacher_path)
    return teacher


def teacher_caches(args, teacher, x):
    """`{method: cache}` for the distilled methods asked for, each built once."""
    caches, built = {}, {}
    for method in args.methods:
        if METHODS[method] is None:
            continue
        _, k, _ = METHODS[method]
        if k not in built:
            directory = os.path.join(args.cache_dir, f"top_{k}" if k else "dense")
            built[k] = keras_kd.cache_teacher_outputs(
                teacher,
                x,
                batch_size=64,
                dtype="float16",
                directory=directory,
                top_k=k,
                temperature=args.temperature if k else None,
                verbose=0,
            )
        caches[method] = built[k]
    return caches


def trained_student(args, method, teacher, cache, vocabulary_size, train, seed):
    student = causal_lm(vocabulary_size, 2, 128, args.length, "student", seed)
    fit = dict(epochs=args.epochs, verbose=args.verbose)
    optimizer = adamw(args.learning_rate, args.epochs, len(train[1]), 0.05)
    if METHODS[method] is None:
        student.compile(optimizer, SCE)
        student.fit(shuffled_batches(train, seed), **fit)
        return student
    divergence, _, rest = METHODS[method]
    loss = TokenDivergence(
        divergence, beta=0.5, temperature=args.temperature, top_k_rest=rest or "bucket"
    )
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer=optimizer, alpha=args.alpha, distillation_loss_fn=loss)
    distiller.fit(*train, teacher_logits=cache, batch_size=BATCH_SIZE, **fit)
    return student


def sample(model, tokenizer, prompt_ids, length, seed):
    """A continuation of `prompt_ids`, top-k sampled (k = 10), as text."""
    keras_hub = keras_hub_module()
    model.compile(sampler=keras_hub.samplers.TopKSampler(k=10, seed=seed))
    token_ids = np.zeros((1, length), "int32")
    token_ids[0, : len(prompt_ids)] = prompt_ids
    mask = np.zeros((1, length), "bool")
    mask[0, : len(prompt_ids)] = True
    out = model.generate(
        {"token_ids": token_ids, "padding_mask": mask},
        max_length=length,
        stop_token_ids=None,
    )
    ids = np.asarray(out["token_ids"])[0][np.asarray(out["padding_mask"])[0]]
    lines, line = [], []
    for token in ids.tolist() + [NEWLINE]:
        if token != NEWLINE:
            line.append(token)
            continue
        text = tokenizer.detokenize([line])[0] if line else ""
        lines.append(text.decode() if isinstance(text, bytes) else str(text))
        line = []
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DATA)
    parser.add_argument(
        "--teacher-path", default=os.path.join(ARTIFACTS, "teacher.keras")
    )
    parser.add_argument("--cache-dir", default=os.path.join(ARTIFACTS, "caches"))
    parser.add_argument("--vocabulary-size", type=int, default=4096)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--teacher-learning-rate", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=2, help="student epochs")
    parser.add_argument("--student-sequences", type=int, default=3000)
    parser.add_argument(
        "--teacher-sequences", type=int, default=None, help="default: all"
    )
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument(
        "--methods", nargs="+", choices=list(METHODS), default=list(METHODS)
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--output", default=None)
    parser.add_argument("--verbose", type=int, default=2)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    train_works, validation_works, test_works = keras_kd.datasets.load_shakespeare(
        args.data
    )
    vocabulary_path = os.path.join(os.path.dirname(args.teacher_path), "vocabulary.txt")
    tokenizer = word_piece_tokenizer(train_works, args.vocabulary_size, vocabulary_path)
    vocabulary_size = tokenizer.vocabulary_size()
    train, validation, test = (
        sequences(token_stream(works, tokenizer), args.length)
        for works in (train_works, validation_works, test_works)
    )
    teacher_train = keras.tree.map_structure(
        lambda a: a[: args.teacher_sequences], train
    )
    teacher = trained_teacher(args, vocabulary_size, teacher_train)
    subset = keras.tree.map_structure(lambda a: a[: args.student_sequences], train)
    results = {
        "config": vars(args),
        "vocabulary_size": vocabulary_size,
        "sequences": {
            "train": len(train[1]),
            "student": len(subset[1]),
            "validation": len(validation[1]),
            "test": len(test[1]),
        },
        "teacher": {
            "params": teacher.count_params(),
            "val_ppl": perplexity(teacher, *validation),
            "test_ppl": perplexity(teacher, *test),
        },
        "runs": [],
    }
    print(results["teacher"], results["sequences"], flush=True)
    caches = teacher_caches(args, teacher, subset[0])
    results["cache_bytes_per_token"] = {
        method: int(cache.nbytes) / subset[1].size for method, cache in caches.items()
    }
    # A prompt from the middle of a held-out play: 16 tokens of dialogue.
    prompt = validation[0]["token_ids"][len(validation[1]) // 2][:16]
    for seed in args.seeds:
        for method in args.methods:
            student = trained_student(
                args, method, teacher, caches.get(method), vocabulary_size, subset, seed
            )
            run = dict(
                seed=seed,
                method=method,
                params=student.count_params(),
                val_ppl=perplexity(student, *validation),
                test_ppl=perplexity(student, *test),
            )
            if seed == args.seeds[0]:
                run["sample"] = sample(student, tokenizer, prompt, 64, seed)
            record(results, run, args.output)
    return results


if __name__ == "__main__":
    main()
