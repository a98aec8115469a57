"""The instructions under a path, read a bounded group at a time: what export, cleaning
and the report walk through.

Under most of the store's subjects, where the engine has node references, the instruction
table is read a range of a chunk at a time, in the order it was written
(`Instructions.details_in_range`): each read costs the same whatever the size of the store.

Else subjects are taken in order, in groups holding up to a chunk of instructions, and each
group is read walking down from its subjects (`Instructions.details_below`). A subject with more
instructions than a chunk is read a chunk at a time by id (`Instructions.details_of`). Either
way memory is that of one chunk, whatever the size of the store.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property

from graph.driver import batched
from graph.errors import WrongKind
from graph.model import CONCEPT, HIERARCHY, INSTRUCTION, SESSION, SUBJECT
from graph.records import InstructionDetail, NameIndex
from graph.store import Store

#: Instructions read at once (about 50 MB with their answers at this size). Large,
#: because a subject with more is read by id, and on the embedded engine each read by id
#: costs a scan of the tables it joins. With the ids of many chunks read at once
#: (IDS_PER_READ), 10,000 exported as fast as 20,000 at 10M pairs and held 90 MB less.
CHUNK = 10_000
#: Subjects whose instruction ids are listed at once (a few hundred thousand ids at most).
SUBJECTS_PER_BATCH = 2000
#: Instructions whose ids are read at once where the table is read a range at a time (about
#: 6 MB of ids). The embedded engine reads every instruction's id for any range: at 10M
#: pairs, reading the ids with each 20,000 instructions took 0.7 s of their 1.4 s of reads.
IDS_PER_READ = 200_000

Found = list[tuple[str, InstructionDetail]]


def iter_details(
    store: Store,
    path: str | None,
    *,
    chunk: int = CHUNK,
    links: bool = True,
    responses: bool = True,
    subjects_per_batch: int = SUBJECTS_PER_BATCH,
    ids_per_read: int = IDS_PER_READ,
) -> Iterator[Found]:
    """(subject id, instruction with its links) for each instruction under an approved path,
    a group at a time: in the order they were written under most of the store (see above),
    else subject by subject and by id within one. Without `links` or `responses`, those
    lists are left empty and not read."""
    if chunk < 1:
        raise ValueError("chunk must be at least 1")
    scope = store.taxonomy.scope(path)
    if scope is not None and scope.level > HIERARCHY.index(SUBJECT):
        raise WrongKind(f"{scope.path!r} is a {scope.kind.label}; choose a subject or above")
    subjects = store.taxonomy.ids_in_scope(scope, SUBJECT)
    if subjects and store.nodes.has_refs and store.nodes.hold_most(subjects):
        wanted = set(subjects)
        span = chunk * max(1, ids_per_read // chunk)
        for outer in store.nodes.ranges(INSTRUCTION, span):
            span_ids = store.instructions.ids_in_range(outer)
            # the span's parts past its last instruction hold none
            for lo in range(outer["lo"], min(span_ids.end, outer["hi"]), chunk):
                part = {"lo": lo, "hi": min(lo + chunk, outer["hi"])}
                read = store.instructions.details_in_range(
                    part, wanted, ids=span_ids, links=links, responses=responses
                )
                if read:
                    yield read
        return
    names = _NameIndexes(store) if links else None
    for subject_batch in batched(subjects, subjects_per_batch):
        by_subject = store.instructions.instructions_by_subject(subject_batch)
        for group in _groups(subject_batch, by_subject, chunk):
            if len(group) > 1 or len(by_subject[group[0]]) <= chunk:
                below = store.instructions.details_below(group, links=links, responses=responses)
                yield [(s, detail) for s in group for detail in below[s]]
                continue
            (subject,) = group
            for ids in batched(by_subject[subject], chunk):
                by_id = store.instructions.details_of(
                    ids,
                    names.concepts if names else None,
                    names.sessions if names else None,
                    links=links,
                    responses=responses,
                )
                yield [(subject, by_id[i]) for i in ids if i in by_id]


def _groups(
    subject_ids: Sequence[str], by_subject: Mapping[str, list[str]], size: int
) -> Iterator[list[str]]:
    """The subjects with instructions, in order, in groups of up to `size` instructions; a
    subject with more is a group of its own."""
    group: list[str] = []
    held = 0
    for subject in subject_ids:
        n = len(by_subject[subject])
        if not n:
            continue
        if group and held + n > size:
            yield group
            group, held = [], 0
        group.append(subject)
        held += n
    if group:
        yield group


class _NameIndexes:
    """The names of concepts and sessions (Instructions.name_index), read on first use: only the
    reads by id of large subjects need them, and reading them costs a scan of both tables."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @cached_property
    def concepts(self) -> NameIndex | None:
        return self.store.instructions.name_index(CONCEPT)

    @cached_property
    def sessions(self) -> NameIndex | None:
        return self.store.instructions.name_index(SESSION)
