"""Which jobs of a plan a run folder has finished: its manifest says done and its file is there.

A manifest of up to WHOLE rows is read in one query (fastest; about 350 MiB per million rows).
A larger one is looked up a chunk of jobs at a time (about 3 s more per million jobs), and only
the listings of the most recently used image folders are kept either way, so a plan of ten
million jobs is diffed against its manifest in bounded memory.
"""

from __future__ import annotations

import gc
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import islice

from farm.jobs import Job, Slot
from farm.manifest import Manifest, Seen
from farm.outputs import RunFolder

WHOLE = 1_000_000  # manifest rows read at once; above, looked up a chunk at a time
CHUNK = 10_000  # jobs looked up per query
LISTINGS = 64  # image folders (10,000 names each) whose listings are kept


class Finished:
    def __init__(self, folder: RunFolder, manifest: Manifest | None, run_id: int | None = None):
        """`manifest` None: nothing is finished. `run_id`: the run that is handing jobs out; a
        job it has already claimed counts as not finished, so that handing it out again is
        noticed (and skipped) by Manifest.claim, as a job the plan reaches twice."""
        self.folder, self.manifest, self.run_id = folder, manifest, run_id
        self._listings: OrderedDict[str, frozenset[str]] = OrderedDict()
        self._shard, self._names = None, frozenset()  # the listing looked at last
        self._rows = manifest.lookup() if manifest and manifest.size() <= WHOLE else None

    def mark(self, jobs: Iterable[Job]) -> Iterator[tuple[Job, str, Seen | None]]:
        """Each job with its state (done, failed the last time it was tried, or pending) and,
        when it is not done, its manifest row if it has one."""
        jobs, present, run_id = iter(jobs), self._present, self.run_id
        while chunk := list(islice(jobs, CHUNK)):
            found = (self._rows if self._rows is not None else
                     self.manifest.lookup([job.id for job in chunk]) if self.manifest else {})
            for job in chunk:
                seen = found.get(job.id)
                if seen is None:
                    yield job, "pending", None
                    continue
                status = seen[0]
                if status == "done":
                    if (run_id is None or seen[2] != run_id) and present(seen[1]):
                        yield job, "done", None
                        continue
                    status = "pending"
                elif status == "queued":
                    status = "pending"
                yield job, status, Seen(*seen)

    def pending(self, jobs: Iterable[Job]) -> Iterator[tuple[Job, Slot | None]]:
        """The jobs still to render, each with the slot it must be rendered at: where it sat
        when it was rendered before (its file since lost), else None (anywhere)."""
        for job, status, seen in self.mark(jobs):
            if status != "done":
                yield job, seen.slot if seen is not None and seen.status == "done" else None

    def all_done(self, jobs: Iterable[Job]) -> bool:
        """Whether every job is done; stops at the first chunk with one that is not."""
        return all(status == "done" for _, status, _ in self.mark(jobs))

    def _present(self, path: str) -> bool:
        """One directory listing per image folder, not a stat per file (a plan's jobs mostly
        come a folder at a time)."""
        shard, _, name = path.rpartition("/")
        if shard != self._shard:
            self._shard, self._names = shard, self._listing(shard)
        return name in self._names

    def _listing(self, shard: str) -> frozenset[str]:
        if shard in self._listings:
            self._listings.move_to_end(shard)
        else:
            try:
                with os.scandir(self.folder.root / shard) as entries:
                    names = frozenset(e.name for e in entries if e.is_file())
            except FileNotFoundError:
                names = frozenset()
            self._listings[shard] = names
            if len(self._listings) > LISTINGS:
                self._listings.popitem(last=False)
        return self._listings[shard]


@contextmanager
def paused_gc() -> Iterator[None]:
    """Python's cycle collector off for a pass over a whole plan (run.survey): it makes no
    cycles, and with a manifest's rows held the collector would scan them again and again
    (about a third of the pass's time at a million jobs)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
