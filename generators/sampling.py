"""Drawing key-concept combinations from syllabi, the way GLAN makes homework questions.

- basic: one class session, 1-5 of its key concepts;
- hard: two sessions of the same syllabus, 2-5 concepts with at least one from each.

Draws are reproducible for a seed and a graph state. By default they prefer concepts and
combinations no instruction covers yet, and a job never draws the same combination twice.
The graph is traversed lazily: subjects are drawn first, then only their syllabi are read.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from graph.model import stable_hash
from graph.store import ConceptView, SessionView

MAX_CONCEPTS = 5
#: tries for a combination not seen before, per draw, before giving the draw up
MAX_TRIES = 30


class Strategy(StrEnum):
    BASIC = "basic"
    HARD = "hard"
    MIXED = "mixed"


def combo_key(concept_ids: Iterable[str]) -> str:
    """The identity of a combination: order does not matter."""
    return stable_hash("combo", *sorted(concept_ids))


@dataclass(frozen=True)
class Sample:
    subject_id: str
    strategy: Strategy
    session_ids: tuple[str, ...]  # in syllabus order; the last is "learned up to"
    concept_ids: tuple[str, ...]

    @property
    def combo_key(self) -> str:
        return combo_key(self.concept_ids)


@dataclass
class _Subject:
    """A syllabus being sampled, with its coverage kept up to date as samples are accepted,
    so that preferring uncovered concepts costs O(sessions) per draw, not O(concepts)."""

    id: str
    sessions: list[SessionView]
    covered: dict[str, int] = field(default_factory=dict)  # concept id -> instructions
    owner: dict[str, str] = field(default_factory=dict)  # concept id -> session id
    uncovered: dict[str, int] = field(default_factory=dict)  # session id -> concepts left
    left: int = 0  # concepts of the subject no instruction covers yet

    @classmethod
    def of(cls, subject_id: str, sessions: list[SessionView]) -> _Subject:
        covered = {c.id: c.covered for s in sessions for c in s.concepts}
        owner = {c.id: s.id for s in sessions for c in s.concepts}
        uncovered = {s.id: sum(1 for c in s.concepts if covered[c.id] == 0) for s in sessions}
        return cls(subject_id, sessions, covered, owner, uncovered, sum(uncovered.values()))

    def cover(self, concept_ids: Iterable[str]) -> None:
        for c in concept_ids:
            if self.covered.get(c, 0) == 0:
                self.uncovered[self.owner[c]] -= 1
                self.left -= 1
            self.covered[c] = self.covered.get(c, 0) + 1


SyllabusLoader = Callable[[Sequence[str]], Mapping[str, list[SessionView]]]


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
        existing_keys: Iterable[str] = (),
        basic_ratio: float = 0.5,
    ) -> None:
        if not 0.0 <= basic_ratio <= 1.0:
            raise ValueError("basic_ratio must be between 0 and 1")
        self.rng = random.Random(seed)
        self.load = load
        self.prefer_uncovered = prefer_uncovered
        self.basic_ratio = basic_ratio
        self.existing = set(existing_keys)
        self.drawn: set[str] = set()
        self.all_ids = sorted(s for s, (n, _) in subjects.items() if n > 0)
        self.open_ids = [s for s in self.all_ids if subjects[s][1] < subjects[s][0]]
        self._open = set(self.open_ids)
        self._cache: dict[str, _Subject] = {}
        self.given_up = 0

    def _subjects(self, ids: Sequence[str]) -> list[_Subject]:
        missing = [i for i in dict.fromkeys(ids) if i not in self._cache]
        if missing:
            loaded = self.load(missing)
            for sid in missing:
                sessions = [s for s in loaded.get(sid, []) if s.concepts]
                self._cache[sid] = _Subject.of(sid, sessions)
        return [self._cache[i] for i in ids]

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
        out: list[Sample] = []
        # Read the syllabi of a first round of subjects in one batch, then top up as needed.
        picks = self._pick_subject_ids(n)
        self._subjects(picks)
        misses = 0
        while len(out) < n and self.all_ids:
            sid = picks[len(out) + misses] if len(out) + misses < len(picks) else None
            if sid is None or (self.prefer_uncovered and self.open_ids and sid not in self._open):
                sid = self._pick_subject_ids(1)[0]  # the pre-drawn subject is fully covered
            subject = self._subjects([sid])[0]
            chosen = self._strategy(strategy)
            if chosen is Strategy.HARD and len(subject.sessions) < 2 and strategy is Strategy.MIXED:
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
        if len(subject.sessions) < needed:
            return None
        fallback: Sample | None = None
        for attempt in range(MAX_TRIES):
            prefer = self.prefer_uncovered and attempt < MAX_TRIES // 2
            if strategy is Strategy.BASIC:
                sample = self._basic(subject, prefer)
            else:
                sample = self._hard(subject, prefer)
            key = sample.combo_key
            if key in self.drawn:
                continue
            if key in self.existing and self.prefer_uncovered:
                fallback = fallback or sample
                continue
            return self._accept(subject, sample)
        if fallback is not None:
            return self._accept(subject, fallback)
        return None

    def _accept(self, subject: _Subject, sample: Sample) -> Sample:
        self.drawn.add(sample.combo_key)
        subject.cover(sample.concept_ids)
        if self.prefer_uncovered and subject.left == 0 and subject.id in self._open:
            self._open.discard(subject.id)
            self.open_ids.remove(subject.id)
        return sample

    def _ordered(
        self, subject: _Subject, concepts: Sequence[ConceptView], prefer: bool
    ) -> list[ConceptView]:
        """Concepts in random order, the uncovered ones first when preferring them."""
        shuffled = list(concepts)
        self.rng.shuffle(shuffled)
        if prefer:
            shuffled.sort(key=lambda c: subject.covered.get(c.id, 0) > 0)
        return shuffled

    def _session(
        self, subject: _Subject, options: Sequence[SessionView], prefer: bool
    ) -> SessionView:
        if prefer:
            fresh = [s for s in options if subject.uncovered[s.id] > 0]
            if fresh:
                return self.rng.choice(fresh)
        return self.rng.choice(list(options))

    def _basic(self, subject: _Subject, prefer: bool) -> Sample:
        session = self._session(subject, subject.sessions, prefer)
        k = self.rng.randint(1, min(MAX_CONCEPTS, len(session.concepts)))
        chosen = self._ordered(subject, session.concepts, prefer)[:k]
        return self._sample(subject, Strategy.BASIC, [session], chosen)

    def _hard(self, subject: _Subject, prefer: bool) -> Sample:
        first = self._session(subject, subject.sessions, prefer)
        second = self._session(subject, [s for s in subject.sessions if s.id != first.id], prefer)
        pool_size = len(first.concepts) + len(second.concepts)
        k = self.rng.randint(2, min(MAX_CONCEPTS, pool_size))
        a = self._ordered(subject, first.concepts, prefer)
        b = self._ordered(subject, second.concepts, prefer)
        chosen = [a[0], b[0]]
        rest = self._ordered(subject, a[1:] + b[1:], prefer)
        chosen += rest[: k - 2]
        return self._sample(subject, Strategy.HARD, [first, second], chosen)

    @staticmethod
    def _sample(
        subject: _Subject,
        strategy: Strategy,
        sessions: Sequence[SessionView],
        concepts: Sequence[ConceptView],
    ) -> Sample:
        ordered_sessions = sorted(sessions, key=lambda s: (s.position, s.id))
        rank = {s.id: i for i, s in enumerate(ordered_sessions)}
        owner = {c.id: s.id for s in ordered_sessions for c in s.concepts}
        ordered = sorted(concepts, key=lambda c: (rank[owner[c.id]], c.position, c.id))
        return Sample(
            subject.id,
            strategy,
            tuple(s.id for s in ordered_sessions),
            tuple(c.id for c in ordered),
        )
