"""Drawing key-concept combinations from syllabi, the way GLAN makes homework questions.

- basic: one class session, 1-5 of its key concepts;
- hard: two sessions of the same syllabus, 2-5 concepts with at least one from each.

Draws are reproducible for a seed and a graph state. By default they prefer concepts and
combinations no instruction covers yet, and a job never draws the same combination twice.
A question job splits its samples evenly over the subjects with a syllabus (shares, then
Sampler.draw_shares), so that a subject whose syllabus arrives later can be given the same
share. The graph is traversed lazily: only the syllabi of subjects drawn from are read
(unless a job draws over most of its subjects: see plan_sampler).

A job can ask for coverage instead of a count (CoveragePlanner, plan_coverage): exactly the
samples that bring every approved concept of its scope to a number of questions, thinnest
first, never asking a combination twice. The space these draws come from is counted in
graph/combinations.py.
"""

from __future__ import annotations

import gc
import math
import random
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import chain, combinations

import numpy as np

from graph.combinations import MAX_CONCEPTS
from graph.errors import InvalidInput
from graph.model import stable_hash
from graph.records import Ids, KeySet, SyllabusIndex
from graph.store import Store

#: tries for a combination not seen before, per draw, before giving the draw up
MAX_TRIES = 30
#: combinations a coverage plan tries in order for a short concept before random ones
CANDIDATES = 64
#: draws of a subject that find no new combination before draw_shares gives it up
MAX_SHARE_MISSES = 3
#: a job drawing at least this many samples per subject of its scope reads every syllabus
#: of the scope before drawing (see plan_sampler)
WHOLE_READ_DRAWS = 0.5


class Strategy(StrEnum):
    BASIC = "basic"
    HARD = "hard"
    MIXED = "mixed"


def combo_key(concept_ids: Iterable[str]) -> str:
    """The identity of a combination: order does not matter."""
    return stable_hash("combo", *sorted(concept_ids))


@dataclass(frozen=True, slots=True)
class Sample:
    subject_id: str
    strategy: Strategy
    session_ids: tuple[str, ...]  # in syllabus order; the last is "learned up to"
    concept_ids: tuple[str, ...]
    #: combo_key(concept_ids), which the sampler computes to test a draw before making it
    combo_key: str


class _Subject:
    """A syllabus being sampled: its sessions are `first` up to `first + n` in the
    sampler's lists, and preferring uncovered concepts costs O(sessions) per draw, not
    O(concepts), because each session keeps count of its uncovered concepts."""

    __slots__ = ("id", "first", "n", "fresh", "left")

    def __init__(self, subject_id: str, first: int, n: int, uncovered: Sequence[int]) -> None:
        self.id = subject_id
        self.first = first
        self.n = n
        #: the sessions with concepts no instruction covers yet
        self.fresh = [i for i in range(first, first + n) if uncovered[i]]
        #: concepts of the subject no instruction covers yet
        self.left = sum(uncovered[first : first + n])


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cycle collector while building many small acyclic containers: each of its
    passes would walk every object built so far."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


SyllabusLoader = Callable[[Sequence[str]], SyllabusIndex]


class Sampler:
    """Draws samples over the subjects of a scope.

    `subjects` maps subject ids to (concepts, covered concepts) as the store counts them;
    `load` reads the syllabi of a few subjects at a time.
    """

    def __init__(
        self,
        subjects: Mapping[str, tuple[int, int]],
        load: SyllabusLoader,
        *,
        seed: int,
        prefer_uncovered: bool = True,
        existing_keys: KeySet | Iterable[str] = (),
        taken_keys: Iterable[str] = (),
        basic_ratio: float = 0.5,
    ) -> None:
        if not 0.0 <= basic_ratio <= 1.0:
            raise ValueError("basic_ratio must be between 0 and 1")
        self.rng = random.Random(seed)
        self.load = load
        self.prefer_uncovered = prefer_uncovered
        self.basic_ratio = basic_ratio
        #: asked already: avoided while preferring uncovered combinations, else allowed
        self.existing: KeySet | set[str] = (
            existing_keys if isinstance(existing_keys, KeySet) else set(existing_keys)
        )
        #: never drawn: what this sampler drew, and taken_keys (a job's plan so far); 8
        #: bytes a key (a set of their strings took 110 MB per 1M draws)
        self.drawn = KeySet(taken_keys)
        self.all_ids = sorted(s for s, (n, _) in subjects.items() if n > 0)
        self.open_ids = [s for s in self.all_ids if subjects[s][1] < subjects[s][0]]
        self._open = set(self.open_ids)
        self._cache: dict[str, _Subject] = {}
        self.given_up = 0
        # The syllabi read so far, flat and in syllabus order (as SyllabusIndex has them):
        # a sample is drawn as indices into these. Ids and arrays of machine integers, not
        # lists of Python objects: a whole GLAN-scale store's 1.9M concepts took 300 MB so.
        self.session_ids = Ids()
        self.concept_start = array("q", [0])  # session i's concepts: [start[i], start[i + 1])
        self.uncovered = array("q")  # per session, its concepts no instruction covers
        self.concept_ids = Ids()
        self.session_of = array("q")  # per concept, its session
        self.covered = array("q")  # per concept, the instructions covering it

    def _subjects(self, ids: Sequence[str]) -> list[_Subject]:
        missing = [i for i in dict.fromkeys(ids) if i not in self._cache]
        if missing:
            self._add(self.load(missing))
            for sid in missing:  # a subject with no approved concepts has no sessions
                self._cache.setdefault(sid, _Subject(sid, 0, 0, self.uncovered))
        return [self._cache[i] for i in ids]

    def _add(self, index: SyllabusIndex) -> None:
        """Append the syllabi of a read to the lists, and make their subjects."""
        sessions, concepts = len(self.session_ids), len(self.concept_ids)
        starts = np.asarray(index.concept_start, dtype=np.int64)
        sizes = np.diff(starts)
        covered = np.asarray(index.covered, dtype=np.int64)
        fresh = (covered == 0).astype(np.int64)
        self.session_ids.extend(index.session_ids)
        self.concept_start.frombytes((starts[1:] + concepts).tobytes())
        if len(sizes):
            self.uncovered.frombytes(np.add.reduceat(fresh, starts[:-1]).tobytes())
        self.concept_ids.extend(index.concept_ids)
        self.session_of.frombytes(np.repeat(np.arange(len(sizes)) + sessions, sizes).tobytes())
        self.covered.frombytes(covered.tobytes())
        bounds = index.session_start
        for i, sid in enumerate(index.subject_ids):
            first = sessions + bounds[i]
            self._cache[sid] = _Subject(sid, first, bounds[i + 1] - bounds[i], self.uncovered)

    def _pick_subject_ids(self, k: int) -> list[str]:
        pool = self.open_ids if self.prefer_uncovered and self.open_ids else self.all_ids
        return [self.rng.choice(pool) for _ in range(k)] if pool else []

    def _strategy(self, strategy: Strategy) -> Strategy:
        if strategy is Strategy.MIXED:
            return Strategy.BASIC if self.rng.random() < self.basic_ratio else Strategy.HARD
        return strategy

    def draw(self, n: int, strategy: Strategy = Strategy.MIXED) -> list[Sample]:
        """Up to n samples with distinct combinations (fewer only when the scope runs out)."""
        if n < 0:
            raise ValueError("n must be 0 or more")
        # A large draw builds millions of small containers with no cycles among them; each
        # pass of the cycle collector meanwhile would walk all of them.
        with _collector_paused():
            return self._draw(n, strategy)

    def draw_shares(
        self, shares: Mapping[str, int], strategy: Strategy = Strategy.MIXED
    ) -> list[Sample]:
        """Per subject, up to its share of samples with distinct combinations, subject by
        subject in id order (fewer for a subject only when it runs out of combinations)."""
        if any(k < 0 for k in shares.values()):
            raise ValueError("a share must be 0 or more")
        with _collector_paused():
            wanted = sorted(s for s, k in shares.items() if k > 0)
            out: list[Sample] = []
            for subject in self._subjects(wanted):  # their syllabi, in one read
                got = misses = 0
                while got < shares[subject.id] and misses < MAX_SHARE_MISSES:
                    chosen = self._strategy(strategy)
                    if chosen is Strategy.HARD and subject.n < 2 and strategy is Strategy.MIXED:
                        chosen = Strategy.BASIC
                    sample = self._draw_one(subject, chosen)
                    if sample is None:
                        misses += 1
                        self.given_up += 1
                        continue
                    out.append(sample)
                    got += 1
            return out

    def _draw(self, n: int, strategy: Strategy) -> list[Sample]:
        out: list[Sample] = []
        # Read the syllabi of a first round of subjects in one batch, then top up as needed.
        picks = self._pick_subject_ids(n)
        self._subjects(picks)
        misses = 0
        while len(out) < n and self.all_ids:
            sid = picks[len(out) + misses] if len(out) + misses < len(picks) else None
            if sid is None or (self.prefer_uncovered and self.open_ids and sid not in self._open):
                sid = self._pick_subject_ids(1)[0]  # the pre-drawn subject is fully covered
            subject = self._cache.get(sid) or self._subjects([sid])[0]
            chosen = self._strategy(strategy)
            if chosen is Strategy.HARD and subject.n < 2 and strategy is Strategy.MIXED:
                chosen = Strategy.BASIC  # a one-session syllabus can only give basic samples
            sample = self._draw_one(subject, chosen)
            if sample is None:
                misses += 1
                self.given_up += 1
                if misses > max(10 * n, 1000):
                    break  # the scope has no fresh combinations left
                continue
            out.append(sample)
        return out

    def _draw_one(self, subject: _Subject, strategy: Strategy) -> Sample | None:
        needed = 2 if strategy is Strategy.HARD else 1
        if subject.n < needed:
            return None
        pick = self._basic if strategy is Strategy.BASIC else self._hard
        drawn, existing, prefer_uncovered = self.drawn, self.existing, self.prefer_uncovered
        fallback: tuple[str, list[int]] | None = None
        for attempt in range(MAX_TRIES):
            picked = pick(subject, prefer_uncovered and attempt < MAX_TRIES // 2)
            key = self._key(picked)
            if key in drawn:
                continue
            if key in existing and prefer_uncovered:
                fallback = fallback or (key, picked)
                continue
            return self._accept(subject, strategy, key, picked)
        if fallback is not None:
            return self._accept(subject, strategy, *fallback)
        return None

    def _key(self, picked: list[int]) -> str:
        """combo_key of the picked concepts."""
        ids = self.concept_ids
        return combo_key([ids[c] for c in picked])

    def _accept(self, subject: _Subject, strategy: Strategy, key: str, picked: list[int]) -> Sample:
        self.drawn.add(key)
        covered, uncovered, session_of = self.covered, self.uncovered, self.session_of
        for c in picked:
            if covered[c] == 0:
                si = session_of[c]
                uncovered[si] -= 1
                subject.left -= 1
                if uncovered[si] == 0:
                    subject.fresh.remove(si)
            covered[c] += 1
        if self.prefer_uncovered and subject.left == 0 and subject.id in self._open:
            self._open.discard(subject.id)
            self.open_ids.remove(subject.id)
        # in syllabus order, which is the order of the lists
        ordered = sorted(picked)
        ids, concept_ids = self.session_ids, self.concept_ids
        return Sample(
            subject.id,
            strategy,
            tuple([ids[si] for si in dict.fromkeys([session_of[c] for c in ordered])]),
            tuple([concept_ids[c] for c in ordered]),
            key,
        )

    # The draws below take their randomness from rng.random() alone: the library's integer
    # helpers cost several Python calls each, which at 100k draws was most of the time.
    # Sessions and concepts are indices into the sampler's lists.

    def _below(self, n: int) -> int:
        """An integer in [0, n)."""
        return int(self.rng.random() * n)

    def _some(self, pool: list[int], k: int) -> list[int]:
        """k items of the pool, at random (a partial shuffle of a copy)."""
        pool, rand, m = pool[:], self.rng.random, len(pool)
        for i in range(k):
            j = i + int(rand() * (m - i))
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]

    def _session(self, subject: _Subject, prefer: bool, other_than: int = -1) -> int:
        """A session: one with concepts left uncovered when preferring them."""
        fresh = subject.fresh
        if prefer and other_than in fresh:
            if len(fresh) > 1:
                i, skip = self._below(len(fresh) - 1), fresh.index(other_than)
                return fresh[i + (i >= skip)]
        elif prefer and fresh:
            return fresh[self._below(len(fresh))]
        other = other_than - subject.first if other_than >= 0 else -1
        i = self._below(subject.n - (other >= 0))
        return subject.first + i + (0 <= other <= i)

    def _concepts(self, si: int) -> list[int]:
        return list(range(self.concept_start[si], self.concept_start[si + 1]))

    def _pick(self, pool: list[int], k: int, prefer: bool) -> list[int]:
        """k concepts of the pool at random, the uncovered ones first when preferring them."""
        if not prefer:
            return self._some(pool, k)
        covered = self.covered
        fresh = [c for c in pool if covered[c] == 0]
        if len(fresh) >= k:
            return self._some(fresh, k)
        stale = [c for c in pool if covered[c]]
        return fresh + self._some(stale, k - len(fresh))

    def _basic(self, subject: _Subject, prefer: bool) -> list[int]:
        pool = self._concepts(self._session(subject, prefer))
        k = 1 + self._below(min(MAX_CONCEPTS, len(pool)))
        return self._pick(pool, k, prefer)

    def _hard(self, subject: _Subject, prefer: bool) -> list[int]:
        first = self._session(subject, prefer)
        second = self._session(subject, prefer, other_than=first)
        a, b = self._concepts(first), self._concepts(second)
        k = 2 + self._below(min(MAX_CONCEPTS, len(a) + len(b)) - 1)
        # at least one concept of each session, then any of the rest
        heads = self._pick(a, 1, prefer) + self._pick(b, 1, prefer)
        rest = [c for c in a + b if c not in heads]
        return heads + self._pick(rest, k - 2, prefer)


def plan_sampler(
    store: Store,
    subject_ids: Sequence[str],
    n: int,
    *,
    seed: int,
    prefer_uncovered: bool = True,
    basic_ratio: float = 0.5,
    taken_keys: Iterable[str] = (),
) -> Sampler:
    """The sampler for a job of n samples over these subjects, which avoids the combinations
    asked about there already.

    Drawing reads the syllabi of the subjects it picks; n draws pick about 1 - e^(-n/s) of s
    subjects. From n = s / 2 on (WHOLE_READ_DRAWS), that is most of them, so every syllabus
    is read first in one read, and the counts of concepts per subject come from it, not
    from a read of their own that would count coverage all over again."""
    index: SyllabusIndex | None = None
    if n < WHOLE_READ_DRAWS * len(subject_ids):
        stats = store.syllabi.concept_stats(subject_ids)
    else:
        index = store.syllabi.index(subject_ids)
        stats = concept_counts(index)
    sampler = Sampler(
        stats,
        store.syllabi.index,
        seed=seed,
        prefer_uncovered=prefer_uncovered,
        existing_keys=store.syllabi.combo_keys(list(stats)),
        taken_keys=taken_keys,
        basic_ratio=basic_ratio,
    )
    if index is not None:
        sampler._add(index)
    return sampler


def concept_counts(index: SyllabusIndex) -> dict[str, tuple[int, int]]:
    """Per subject of the index: (concepts, concepts an instruction covers), what
    Syllabi.concept_stats counts."""
    starts = np.asarray(index.concept_start, dtype=np.int64)
    bounds = np.asarray(index.session_start, dtype=np.int64)
    covered = np.r_[0, np.cumsum(np.asarray(index.covered, dtype=np.int64) > 0)]
    first, end = starts[bounds[:-1]], starts[bounds[1:]]
    counts = zip((end - first).tolist(), (covered[end] - covered[first]).tolist(), strict=True)
    return dict(zip(index.subject_ids, counts, strict=True))


def shares(n: int, subject_ids: Iterable[str], seed: int) -> dict[str, int]:
    """How many of n samples each subject gets: n split evenly over the subjects, the
    remainder one each to the subjects first in an order drawn from the seed.

    It depends only on n, the seed and the set of subjects, never on what was drawn, so a
    job's plan can be checked against it later: a subject that is new to the set gets
    the share a plan drawn now would give it. And a subject of a smaller set never has
    a smaller share than in a larger set that holds it (its rank among fewer subjects
    can only rise), so subjects joining the set never leave an earlier one short."""
    ids = sorted(set(subject_ids))
    if not ids:
        return {}
    each, rest = divmod(n, len(ids))
    ranked = sorted(ids, key=lambda s: stable_hash("share", str(seed), s))
    return {s: each + (i < rest) for i, s in enumerate(ranked)}


# ---------------------------------------------------------------------- coverage as a target


@dataclass
class CoveragePlan:
    """What a coverage target asks for (see CoveragePlanner): the samples, in the order they
    were drawn (thinnest first), and how the scope's approved concepts stand."""

    samples: list[Sample] = field(default_factory=list)
    #: questions each concept should be covered by
    target: int = 1
    #: approved concepts in scope
    concepts: int = 0
    #: of them, at the target before the plan (counting questions planned and not yet asked)
    reached_before: int = 0
    #: the concepts the plan is to bring to the target (all below it, or as many as a share
    #: asks for)
    wanted: int = 0
    #: at the target once the plan is asked
    reached: int = 0
    #: wanted concepts no new combination could bring to the target with the strategy (a
    #: small session whose combinations were all asked; any concept of a one-session
    #: syllabus under the hard strategy)
    short: int = 0

    def per_subject(self) -> Counter[str]:
        return Counter(s.subject_id for s in self.samples)


class CoveragePlanner:
    """Plans exactly the samples that bring approved concepts to `target` questions each.

    Concepts count the questions already asked about them and those planned and not yet
    asked (`planned`). Work goes in passes: pass t raises every concept still at t questions
    to t + 1, so the thinnest concepts of the whole scope are served first; within a pass,
    the subjects whose concepts stand furthest from the target come first. Each sample takes
    up to MAX_CONCEPTS concepts still short of the pass, from the session with the most of
    them (basic), or from the two with the most (hard: at least one of each; a concept of
    another session joins when only one has any left); `mixed` chooses per sample,
    basic_ratio basic, and a one-session syllabus gives basic samples only. So a sample
    never covers fewer concepts than it could, and the plan is as short as its strategy
    allows.

    A combination asked before (`asked`, and those this plan drew) is never drawn again:
    another one holding the same first short concept is tried, up to MAX_TRIES, else that
    concept is given up (counted `short`). With `until_share`, the plan stops once that
    share of the approved concepts is at the target: the concepts it raises are taken
    subject by subject, thinnest first. Deterministic for a seed and an index."""

    def __init__(
        self,
        index: SyllabusIndex,
        *,
        target: int,
        seed: int,
        strategy: Strategy = Strategy.MIXED,
        basic_ratio: float = 0.5,
        until_share: float | None = None,
        asked: KeySet | Iterable[str] = (),
        planned: Mapping[str, int] | None = None,
    ) -> None:
        if target < 1:
            raise InvalidInput("the questions per concept must be 1 or more")
        if until_share is not None and not 0.0 < until_share <= 1.0:
            raise InvalidInput("the share of concepts to cover must be above 0 and at most 1")
        if not 0.0 <= basic_ratio <= 1.0:
            raise InvalidInput("basic_ratio must be between 0 and 1")
        self.index = index
        self.target = target
        self.seed = seed
        self.rng = random.Random(seed)
        self.strategy = strategy
        self.basic_ratio = basic_ratio
        self.until_share = until_share
        self.taken: KeySet | set[str] = asked.copy() if isinstance(asked, KeySet) else set(asked)
        # machine integers, not lists of Python ones: at GLAN scale 1.9M of each
        self.count = array("q", np.asarray(index.covered, dtype=np.int64).tobytes())
        if planned:
            for c, concept in enumerate(index.concept_ids):
                self.count[c] += planned.get(concept, 0)
        n = len(index.session_ids)
        sizes: np.ndarray = np.diff(np.asarray(index.concept_start, dtype=np.int64))
        self.session_of = array("q", np.repeat(np.arange(n, dtype=np.int64), sizes).tobytes())
        #: concepts the plan means to raise (1) or not (0); given up ones leave it
        self.wanted = bytearray((np.frombuffer(self.count, dtype=np.int64) < target).tobytes())
        self.given_up = 0

    # ------------------------------------------------------------------ the plan

    def plan(self) -> CoveragePlan:
        with _collector_paused():
            return self._plan()

    def _plan(self) -> CoveragePlan:
        ix, target = self.index, self.target
        result = CoveragePlan(target=target, concepts=len(self.count))
        result.reached_before = sum(k >= target for k in self.count)
        order = self._subject_order()
        if self.until_share is not None:
            self._want_share(order)
        result.wanted = sum(self.wanted)
        low = min((k for k, w in zip(self.count, self.wanted, strict=True) if w), default=target)
        for t in range(low, target):
            for i in order:
                first, end = ix.session_start[i], ix.session_start[i + 1]
                if first < end:
                    self._subject_pass(i, first, end, t, result.samples)
        result.reached = sum(k >= target for k in self.count)
        result.short = (
            sum(k < target for k, w in zip(self.count, self.wanted, strict=True) if w)
            + self.given_up
        )
        return result

    def _subject_order(self) -> list[int]:
        """Subjects by how far their concepts stand from the target (least met first),
        then in an order drawn from the seed."""
        ix, target = self.index, self.target
        starts = np.asarray(ix.concept_start, dtype=np.int64)
        bounds = np.asarray(ix.session_start, dtype=np.int64)
        first, end = starts[bounds[:-1]], starts[bounds[1:]]
        met = np.minimum(np.asarray(self.count, dtype=np.int64), target)
        sums = np.r_[0, np.cumsum(met)]
        sizes = np.maximum(end - first, 1)
        share = ((sums[end] - sums[first]) / (sizes * target)).tolist()
        seed = str(self.seed)
        return sorted(
            range(len(ix.subject_ids)),
            key=lambda i: (share[i], stable_hash("coverage", seed, ix.subject_ids[i])),
        )

    def _want_share(self, order: Sequence[int]) -> None:
        """Keep wanted only as many concepts below the target as until_share needs, taken
        subject by subject in `order`, each subject's in syllabus order."""
        assert self.until_share is not None
        ix, count, target = self.index, self.count, self.target
        total = len(count)
        need = math.ceil(self.until_share * total - 1e-9) - sum(k >= target for k in count)
        keep = bytearray(total)
        for i in order:
            if need <= 0:
                break
            lo = ix.concept_start[ix.session_start[i]]
            hi = ix.concept_start[ix.session_start[i + 1]]
            for c in range(lo, hi):
                if need > 0 and count[c] < target:
                    keep[c] = 1
                    need -= 1
        self.wanted = keep

    def _subject_pass(self, subject: int, first: int, end: int, t: int, out: list[Sample]) -> None:
        """Samples raising every wanted concept of a subject still at t questions (or fewer:
        one given up earlier stays given up)."""
        ix, count, wanted, rand = self.index, self.count, self.wanted, self.rng.random
        due: dict[int, list[int]] = {}
        #: each session's concepts in an order drawn for this pass: how ties are broken
        shuffled: dict[int, list[int]] = {}
        for s in range(first, end):
            mixed = list(range(ix.concept_start[s], ix.concept_start[s + 1]))
            for i in range(len(mixed) - 1, 0, -1):  # rng.shuffle, without its slow helper
                j = int(rand() * (i + 1))
                mixed[i], mixed[j] = mixed[j], mixed[i]
            shuffled[s] = mixed
            found = [c for c in mixed if wanted[c] and count[c] <= t]
            if found:
                due[s] = found
        sessions = end - first
        while due:
            chosen = self.strategy
            if chosen is Strategy.MIXED:
                chosen = Strategy.BASIC if self.rng.random() < self.basic_ratio else Strategy.HARD
                if sessions < 2:
                    chosen = Strategy.BASIC
            if chosen is Strategy.HARD and sessions < 2:
                for waiting in due.values():  # a one-session syllabus has no hard samples
                    self._give_up(waiting)
                return
            sample, touched = self._draw(subject, first, end, due, shuffled, chosen)
            if sample is not None:
                out.append(sample)
            # concepts covered now, or given up, leave their sessions' lists
            for s in touched:
                if s in due:
                    due[s] = [c for c in due[s] if wanted[c] and count[c] <= t]
                    if not due[s]:
                        del due[s]

    def _give_up(self, concepts: Iterable[int]) -> None:
        for c in concepts:
            if self.wanted[c]:
                self.wanted[c] = 0
                self.given_up += 1

    def _draw(
        self,
        subject: int,
        first: int,
        end: int,
        due: Mapping[int, list[int]],
        shuffled: Mapping[int, list[int]],
        strategy: Strategy,
    ) -> tuple[Sample | None, set[int]]:
        """One sample for the most short-handed session(s), or None when no new combination
        holds its first short concept (that concept is then given up); and the sessions
        whose concepts it changed.

        The sample takes short concepts first, then fills up to MAX_CONCEPTS with the least
        covered others of its session(s): a full sample raises what later passes would
        have to. When that combination was asked, others holding the same first concept
        are tried, those with the most short concepts and then the most concepts first
        (CANDIDATES of them), then random ones (MAX_TRIES)."""
        ranked = sorted(due, key=lambda s: (-len(due[s]), s))
        a = ranked[0]
        sessions = [a]
        if strategy is Strategy.HARD:  # with the one with the fewest: it is finished first
            sessions.append(ranked[-1] if len(ranked) > 1 else self._other_session(first, end, a))
        short = self._short_first(due, sessions)
        head = short[0]
        ix, session_of = self.index, self.session_of
        waiting = set(short)
        others = [c for s in sessions for c in shuffled[s] if c not in waiting]
        others.sort(key=self.count.__getitem__)  # the least covered first, ties as shuffled
        variants = (self._variant(head, first, end, a, strategy) for _ in range(MAX_TRIES))
        for picked in chain(self._candidates(short, others, sessions), variants):
            if picked is None:
                continue
            key = combo_key([ix.concept_ids[c] for c in picked])
            if key not in self.taken:
                sample = self._accept(subject, strategy, picked, key)
                return sample, {session_of[c] for c in picked}
        self._give_up([head])
        return None, {a}

    @staticmethod
    def _short_first(due: Mapping[int, list[int]], sessions: list[int]) -> list[int]:
        """The short concepts of the sample's sessions, those it takes first leading: of a
        hard sample's two sessions, as many of the second's (the one with fewer) as leave
        room for one of the first's, and the first's filling the rest."""
        in_a, in_b = due[sessions[0]], due.get(sessions[-1], []) if len(sessions) > 1 else []
        k = min(MAX_CONCEPTS, len(in_a) + len(in_b))
        nb = min(len(in_b), k - 1)
        na = k - nb
        return in_a[:na] + in_b[:nb] + in_a[na:] + in_b[nb:]

    def _candidates(
        self, short: list[int], others: list[int], sessions: list[int]
    ) -> Iterator[list[int]]:
        """Combinations holding short[0], of short concepts and others, the most short ones
        first, then the most concepts, each in the order of the lists; for a hard sample
        only those touching both sessions."""
        head, rest = short[0], short[1:]
        need = set(sessions) if len(sessions) > 1 else None
        session_of, budget = self.session_of, CANDIDATES
        for s in range(min(MAX_CONCEPTS, len(short)), 0, -1):
            for pad in range(min(MAX_CONCEPTS - s, len(others)), -1, -1):
                for d in combinations(rest, s - 1):
                    for p in combinations(others, pad):
                        budget -= 1
                        if budget < 0:
                            return
                        picked = [head, *d, *p]
                        if need is None or {session_of[c] for c in picked} == need:
                            yield picked

    def _other_session(self, first: int, end: int, other_than: int) -> int:
        i = int(self.rng.random() * (end - first - 1))
        return first + i + (first + i >= other_than)

    def _variant(
        self, head: int, first: int, end: int, a: int, strategy: Strategy
    ) -> list[int] | None:
        """Another combination holding `head`, drawn at random: of its session alone
        (basic), or with a concept of another session at least (hard)."""
        ix, rand = self.index, self.rng.random
        own = [c for c in range(ix.concept_start[a], ix.concept_start[a + 1]) if c != head]
        if strategy is Strategy.BASIC:
            k = int(rand() * min(MAX_CONCEPTS, len(own) + 1))  # besides the head
            return [head, *self.rng.sample(own, k)]
        if end - first < 2:
            return None
        b = self._other_session(first, end, a)
        theirs = list(range(ix.concept_start[b], ix.concept_start[b + 1]))
        partner = theirs[int(rand() * len(theirs))]
        rest = [c for c in own + theirs if c != partner]
        k = int(rand() * (min(MAX_CONCEPTS, len(rest) + 2) - 1))  # besides head and partner
        return [head, partner, *self.rng.sample(rest, k)]

    def _accept(self, subject: int, strategy: Strategy, picked: list[int], key: str) -> Sample:
        self.taken.add(key)
        for c in picked:
            self.count[c] += 1
        ordered = sorted(picked)
        ix, session_of = self.index, self.session_of
        return Sample(
            ix.subject_ids[subject],
            strategy,
            tuple(ix.session_ids[s] for s in dict.fromkeys(session_of[c] for c in ordered)),
            tuple(ix.concept_ids[c] for c in ordered),
            key,
        )


def plan_coverage(
    store: Store,
    subject_ids: Sequence[str],
    *,
    target: int,
    seed: int,
    strategy: Strategy = Strategy.MIXED,
    basic_ratio: float = 0.5,
    until_share: float | None = None,
    planned: Iterable[Sequence[str]] = (),
    taken: Iterable[str] = (),
) -> CoveragePlan:
    """The samples that bring every approved concept of these subjects to `target`
    questions (or `until_share` of them): one read of their syllabi with coverage and of
    the combinations asked there, then CoveragePlanner. `planned`: the concept ids of each
    sample planned before and not asked yet, which count as asked; `taken`: combinations
    planned before (asked or not), never drawn again."""
    index = store.syllabi.index(subject_ids)
    asked = store.syllabi.combo_keys(subject_ids)
    asked.update(taken)
    pending: Counter[str] = Counter()
    for concepts in planned:
        pending.update(concepts)
    planner = CoveragePlanner(
        index,
        target=target,
        seed=seed,
        strategy=strategy,
        basic_ratio=basic_ratio,
        until_share=until_share,
        asked=asked,
        planned=pending,
    )
    return planner.plan()
