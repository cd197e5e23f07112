"""Hand computations with the math module, the yardstick the tests check against."""

import math


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
