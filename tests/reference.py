"""Hand computations with the math module and numpy: the tests' yardstick."""

import math

import numpy as np


def softmax(row, temperature=1.0):
    exps = [math.exp(v / temperature) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def kd(teacher_row, student_row, temperature):
    """T² * KL(softmax(t/T) || softmax(s/T)) = T² * sum_c p_t log(p_t / p_s)."""
    p_t = softmax(teacher_row, temperature)
    p_s = softmax(student_row, temperature)
    return temperature**2 * sum(a * math.log(a / b) for a, b in zip(p_t, p_s))


def cross_entropy(label, student_row):
    """-log softmax(s)[label]."""
    return -math.log(softmax(student_row)[label])


def matmul(rows, kernel):
    return [
        [sum(r[k] * kernel[k][j] for k in range(len(r))) for j in range(len(kernel[0]))]
        for r in rows
    ]


# --- Feature and relation losses, with numpy and explicit loops --------------


def hint(teacher, student):
    """Per example: mean over the features of (t - s)²."""
    diff = np.asarray(teacher, "float64") - np.asarray(student, "float64")
    return (diff**2).reshape(len(diff), -1).mean(axis=1)


def attention_map(features, p=2):
    """normalize(vec(mean_c |a|^p)) per example, NHWC."""
    maps = (np.abs(np.asarray(features, "float64")) ** p).mean(axis=-1)
    maps = maps.reshape(len(maps), -1)
    return maps / np.linalg.norm(maps, axis=1, keepdims=True)


def attention_transfer(teacher, student, p=2):
    return ((attention_map(student, p) - attention_map(teacher, p)) ** 2).mean(axis=1)


def smooth_l1(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def rkd_distance(teacher, student):
    """Mean over all b² ordered pairs of huber(psi_s - psi_t), psi = d / mean d."""

    def psi(e):
        e = np.asarray(e, "float64").reshape(len(e), -1)
        b = len(e)
        d = [[math.dist(e[i], e[j]) for j in range(b)] for i in range(b)]
        mean = sum(d[i][j] for i in range(b) for j in range(b) if i != j) / (
            b * (b - 1)
        )
        return [[v / mean for v in row] for row in d]

    t, s = psi(teacher), psi(student)
    b = len(t)
    return sum(smooth_l1(s[i][j] - t[i][j]) for i in range(b) for j in range(b)) / (
        b * b
    )


def rkd_angle(teacher, student):
    """Mean over all b³ triplets of huber(cos_s - cos_t), cos at vertex i.

    Loops over every triplet, with no shortcut; a zero difference (j or k
    equal to i, or two equal examples) has cosine 0.
    """

    def cosines(e):
        e = np.asarray(e, "float64").reshape(len(e), -1)
        b = len(e)
        out = {}
        for i in range(b):
            for j in range(b):
                for k in range(b):
                    u, v = e[j] - e[i], e[k] - e[i]
                    norms = np.linalg.norm(u) * np.linalg.norm(v)
                    # A zero difference has no direction: cosine 0.
                    out[i, j, k] = float(u @ v / norms) if norms else 0.0
        return out

    t, s = cosines(teacher), cosines(student)
    return sum(smooth_l1(s[key] - t[key]) for key in t) / len(t)


def similarity_preserving(teacher, student):
    """||G~_t - G~_s||_F² / b², G = F F^T with L2-normalized rows."""

    def gram(f):
        f = np.asarray(f, "float64").reshape(len(f), -1)
        g = f @ f.T
        return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)

    b = len(teacher)
    return float(((gram(teacher) - gram(student)) ** 2).sum() / (b * b))


# --- Decoupled KD, in float64 ---------------------------------------------------


def log_softmax64(logits, temperature=1.0):
    """log softmax(z / T) on the last axis, in float64."""
    z = np.asarray(logits, "float64") / temperature
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def dkd(teacher_row, student_row, label, alpha, beta, temperature):
    """T² * (alpha * TCKD + beta * NCKD) for one example, in float64."""
    others = [c for c in range(len(teacher_row)) if c != label]

    def log_parts(row):
        log_p = log_softmax64(row, temperature)
        if log_p[label] < -math.log(2):
            return log_p[label], math.log1p(-math.exp(log_p[label]))
        rest = log_p[others]
        top = rest.max()
        return log_p[label], top + math.log(np.exp(rest - top).sum())

    (log_t, log_t_rest), (log_s, log_s_rest) = (
        log_parts(teacher_row),
        log_parts(student_row),
    )
    tckd = math.exp(log_t) * (log_t - log_s) + math.exp(log_t_rest) * (
        log_t_rest - log_s_rest
    )
    q_t = log_softmax64(np.asarray(teacher_row, "float64")[others], temperature)
    q_s = log_softmax64(np.asarray(student_row, "float64")[others], temperature)
    nckd = float(np.sum(np.exp(q_t) * (q_t - q_s)))
    return temperature**2 * (alpha * tckd + beta * nckd)


# --- Logit standardization and DIST, in float64 with the statistics module ----


def standardize(row, epsilon=1e-7):
    """(z - mean) / (sample std + epsilon), the authors' torch `std` (N - 1)."""
    import statistics

    mean, std = statistics.fmean(row), statistics.stdev(row)
    return [(v - mean) / (std + epsilon) for v in row]


def pearson(a, b):
    """cos(a - mean a, b - mean b) with 1e-8 added to the norms' product."""
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    da, db = [v - ma for v in a], [v - mb for v in b]
    dot = sum(x * y for x, y in zip(da, db))
    na, nb = math.sqrt(sum(x * x for x in da)), math.sqrt(sum(y * y for y in db))
    return dot / (na * nb + 1e-8)


def dist(teacher, student, beta, gamma, temperature):
    """DIST over a batch: T² (beta mean_i (1 - rho rows) + gamma mean_c (...))."""
    p_t = [softmax(row, temperature) for row in teacher]
    p_s = [softmax(row, temperature) for row in student]
    inter = [1 - pearson(s, t) for s, t in zip(p_s, p_t)]
    columns = range(len(p_t[0]))
    intra = [
        1 - pearson([row[c] for row in p_s], [row[c] for row in p_t]) for c in columns
    ]
    total = beta * sum(inter) / len(inter) + gamma * sum(intra) / len(intra)
    return temperature**2 * total


# --- Token divergences (language models), float64 numpy ---------------------


def token_divergence(teacher, student, divergence, beta, temperature):
    """T² * D per position: forward KL, reverse KL or TRL's JSD(beta)."""
    lt, ls = log_softmax64(teacher, temperature), log_softmax64(student, temperature)
    return temperature**2 * divergence_of_log_probs(lt, ls, divergence, beta)


def top_k_divergence(teacher, student, k, divergence, beta, temperature, rest):
    """T² * D on the teacher's top-k tokens and, for "bucket", the rest's mass."""
    lt, ls = log_softmax64(teacher, temperature), log_softmax64(student, temperature)
    top = np.argsort(-lt, axis=-1)[..., :k]
    pt, ps = (np.take_along_axis(np.exp(lp), top, -1) for lp in (lt, ls))
    if rest == "bucket":
        pt = np.concatenate([pt, 1 - pt.sum(-1, keepdims=True)], -1)
        ps = np.concatenate([ps, 1 - ps.sum(-1, keepdims=True)], -1)
    else:
        pt, ps = pt / pt.sum(-1, keepdims=True), ps / ps.sum(-1, keepdims=True)
    value = divergence_of_log_probs(np.log(pt), np.log(ps), divergence, beta)
    return temperature**2 * value


def divergence_of_log_probs(lt, ls, divergence, beta):
    """D(p_t, p_s) on the last axis, in float64."""
    pt, ps = np.exp(lt), np.exp(ls)
    if divergence == "jsd" and beta == 0.0:
        divergence = "forward_kl"
    if divergence == "jsd" and beta == 1.0:
        divergence = "reverse_kl"
    if divergence == "forward_kl":
        value = (pt * (lt - ls)).sum(-1)
    elif divergence == "reverse_kl":
        value = (ps * (ls - lt)).sum(-1)
    else:
        log_m = np.logaddexp(np.log(beta) + lt, np.log(1 - beta) + ls)
        value = beta * (pt * (lt - log_m)).sum(-1) + (1 - beta) * (
            ps * (ls - log_m)
        ).sum(-1)
    return value
