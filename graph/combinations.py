"""The key-concept combination space: how many distinct combinations questions can be asked
about, as generators/sampling.py draws them.

- basic: one class session, 1 to MAX_CONCEPTS of its key concepts. A session of n concepts
  has sum over k = 1..5 of C(n, k) of them.
- hard: two sessions of one syllabus, 2 to MAX_CONCEPTS concepts with at least one from each
  (the sampler picks two distinct sessions, one concept of each, then any of the rest of
  both, up to 5 in all). A pair of sessions of a and b concepts has, for each size k = 2..5,
  C(a + b, k) - C(a, k) - C(b, k) such sets: those of the union not inside one session. A
  set names its two sessions, so the pairs' sets are disjoint and a subject's hard space
  is the sum over its pairs of sessions.

Both count approved concepts of approved sessions, the ones the sampler draws from. A
subject's space is its sessions' basic spaces plus its hard space. The hard space is
counted without visiting every pair: with P_i(x) = (1 + x)^(n_i) - 1, the sets of size k
touching exactly sessions i and j are the x^k coefficient of P_i P_j, and the sum over
pairs is that of ((sum P_i)^2 - sum P_i^2) / 2, truncated at degree 5: O(sessions).

A subject's space is kept on it as two int64 rollups (`split`): the whole space is
`hi * 2^31 + lo`, so sums of rollups over thousands of subjects stay exact integers in any
engine. A subject's space above 2^71 (a session of about 30,000 concepts) is counted as
2^71: figures that large are given as their log10 anyway.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from math import comb

#: concepts in one sampled combination, at most
MAX_CONCEPTS = 5
#: the low limb of a stored space: spaces are hi * 2^LIMB + lo
LIMB = 31
#: the largest high limb a subject stores: spaces beyond 2^(LIMB + 40) are counted as that
HI_CAP = 2**40 - 1
#: the largest int64: figures beyond it are given as log10 only
INT64_MAX = 2**63 - 1


def basic_space(n: int) -> int:
    """Distinct basic combinations of a session of n concepts: subsets of 1 to 5."""
    return sum(comb(n, k) for k in range(1, MAX_CONCEPTS + 1))


def _nonempty(n: int) -> list[int]:
    """Coefficients of (1 + x)^n - 1 up to x^5."""
    return [0] + [comb(n, k) for k in range(1, MAX_CONCEPTS + 1)]


def hard_space(sizes: Iterable[int]) -> int:
    """Distinct hard combinations of a syllabus whose sessions have these numbers of
    concepts: 2 to 5 concepts spanning exactly two sessions, at least one of each."""
    total = [0] * (MAX_CONCEPTS + 1)  # sum of P_i
    squares = [0] * (MAX_CONCEPTS + 1)  # sum of P_i^2
    for n in sizes:
        if n <= 0:
            continue
        p = _nonempty(n)
        for k in range(MAX_CONCEPTS + 1):
            total[k] += p[k]
            squares[k] += sum(p[i] * p[k - i] for i in range(k + 1))
    pairs = 0
    for k in range(2, MAX_CONCEPTS + 1):
        both = sum(total[i] * total[k - i] for i in range(k + 1))
        pairs += (both - squares[k]) // 2
    return pairs


def subject_space(sizes: Iterable[int]) -> int:
    """A subject's whole space: every session's basic combinations and its hard ones."""
    sizes = [n for n in sizes if n > 0]
    return sum(basic_space(n) for n in sizes) + hard_space(sizes)


def split(space: int) -> tuple[int, int]:
    """The two int64 rollups that hold a space: (hi, lo), saturated at HI_CAP."""
    hi, lo = space >> LIMB, space & ((1 << LIMB) - 1)
    if hi > HI_CAP:
        return HI_CAP, (1 << LIMB) - 1
    return hi, lo


def join(hi: int, lo: int) -> int:
    """The space held by two (possibly summed) limbs."""
    return (int(hi) << LIMB) + int(lo)


def log10(n: int) -> float | None:
    """log10 of a positive integer of any size (None for 0)."""
    return math.log10(n) if n > 0 else None


def share(used: int, space: int) -> float:
    """used / space, at most 1 (0 for an empty space). Combinations asked before their
    concepts were rejected still count as used, so `used` can exceed a shrunk space."""
    if space <= 0:
        return 0.0
    return min(1.0, used / space)
