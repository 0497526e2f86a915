"""Curating a finished run: scores as columns (`farm score`) and groups of near-duplicates
(`farm dedup`). Both read the run folder's images and write only the manifest's own tables
(scores, duplicates), never an image; both may run again at any time and do only what is new.
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from farm import catalog, scorers
from farm.manifest import Manifest
from farm.scorers import Scorer, Work
from farm.schedule import Runtime, RuntimeUnavailable, WorkerLost

BATCH = 16  # images per scoring call


@dataclass
class Scored:
    """What a farm score did."""

    scorers: tuple[Scorer, ...]
    scored: int = 0  # images scored now
    already: int = 0  # images every scorer had scored before
    missing: int = 0  # recorded as done, but the file is gone
    failed: int = 0  # images whose batch failed (the error in `problem`)
    seconds: float = 0.0
    problem: str = ""

    @property
    def images_per_second(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Item:
    """An image to score: its file, pixels, caption, and the scorers it lacks."""

    path: str
    pixel_hash: str
    text: str
    needs: tuple[Scorer, ...]


def score(folder: Path, items: list[str], runtime: Runtime, batch: int = BATCH,
          report: bool = True) -> Scored:
    """Score every finished image the chosen scorers have not scored yet, recording each batch
    as it comes back: a killed scoring run resumes where it stopped. `report`: bring
    report.json's scores up to date after."""
    # 1. the scorers and the run folder, checked before any worker starts
    chosen = scorers.resolve_all(items, "--with")
    if not chosen:
        raise scorers.ScorerError(f"--with: name at least one scorer: {', '.join(scorers.KINDS)}")
    path = catalog.manifest_of(folder)
    with Manifest(path) as manifest:
        manifest.claim_writer()  # a render writing this folder now is refused (SecondWriter)
    outcome = Scored(chosen)
    try:
        with Manifest.heartbeats(path), Manifest(path) as manifest:
            manifest.add_scorers(chosen)
            # 2. what is left to score: each image (pixels and caption) once
            todo = list(_unscored(manifest, chosen, outcome))
            if todo:
                _run(folder, todo, manifest, runtime, batch, outcome)
    finally:
        with Manifest(path) as manifest:
            manifest.release_writer()
    if outcome.scored and report:
        refresh_report(folder)
    return outcome


def _unscored(manifest: Manifest, chosen: tuple[Scorer, ...],
              outcome: Scored) -> Iterator[Item]:
    done = {s.identity: manifest.scored(s.identity) for s in chosen}
    seen: set[tuple[str, str]] = set()
    for row in manifest.done():
        params = json.loads(row["params"])
        text = params.get("caption") or params["prompt"]
        if (row["pixel_hash"], text) in seen:
            continue
        seen.add((row["pixel_hash"], text))
        needs = tuple(s for s in chosen if (row["pixel_hash"], scorers.text_hash(text)
                                            if s.kind.text else "") not in done[s.identity])
        if needs:
            yield Item(row["path"], row["pixel_hash"], text, needs)
        else:
            outcome.already += 1


def _batches(folder: Path, todo: list[Item], size: int,
             outcome: Scored) -> Iterator[tuple[list[Item], Work]]:
    """Consecutive images that lack the same scorers, `size` at a time, with their files."""
    group: list[Item] = []

    def cut() -> tuple[list[Item], Work]:
        present = [(i, (folder / i.path).read_bytes()) for i in group
                   if (folder / i.path).is_file()]
        outcome.missing += len(group) - len(present)
        return [i for i, _ in present], Work(group[0].needs, tuple(b for _, b in present),
                                             tuple(i.text for i, _ in present))

    for item in todo:
        if group and (len(group) == size or item.needs != group[0].needs):
            yield cut()
            group = []
        group.append(item)
    if group:
        yield cut()


def _run(folder: Path, todo: list[Item], manifest: Manifest, runtime: Runtime, size: int,
         outcome: Scored) -> None:
    """Hand the batches to the runtime's workers (each keeps its scorers loaded), queue_depth
    at a time per worker; record what comes back."""
    from tqdm import tqdm

    from farm.outputs import RunFolder
    from farm.run import start_backend

    started = time.perf_counter()
    backend = start_backend(runtime, RunFolder(folder), "score")
    pending = deque(_batches(folder, todo, size, outcome))
    in_flight: dict = {}
    busy: Counter[str] = Counter()
    try:
        with tqdm(total=len(todo), desc="score", unit="img", dynamic_ncols=True) as bar:
            while pending or in_flight:
                for worker in backend.ready():
                    while busy[worker] < runtime.queue_depth and pending:
                        items, work = pending.popleft()
                        if not items:
                            continue
                        in_flight[backend.submit_scores(worker, work)] = (worker, items)
                        busy[worker] += 1
                if not in_flight:
                    if pending and not backend.starting():
                        raise RuntimeUnavailable("runtime: no worker is left to score with"
                                                 + (f" ({outcome.problem})" if outcome.problem
                                                    else ""))
                    if not pending:
                        break
                for handle, result in backend.wait(list(in_flight), timeout=5.0):
                    worker, items = in_flight.pop(handle)
                    busy[worker] -= 1
                    bar.update(len(items))
                    if isinstance(result, BaseException) and not isinstance(result, Exception):
                        raise result  # an interrupt: what came back so far is recorded
                    if isinstance(result, Exception):
                        outcome.failed += len(items)
                        outcome.problem = str(result)
                        if isinstance(result, WorkerLost) and backend.replaceable:
                            backend.replace(worker)
                        continue
                    manifest.record_scores((item.pixel_hash, s) for item, found
                                           in zip(items, result) for s in found)
                    outcome.scored += len(items)
    finally:
        outcome.seconds = time.perf_counter() - started
        backend.close()


def refresh_report(folder: Path) -> None:
    """Bring report.json's scores up to date (after farm score or farm dedup)."""
    from farm.outputs import RunFolder

    run_folder = RunFolder(folder)
    report = run_folder.read_report()
    if report is not None:
        report["scores"] = catalog.distribution(folder)
        run_folder.write_report(report)


# near-duplicates ---------------------------------------------------------------------------------

@dataclass
class Grouped:
    """What a farm dedup found."""

    images: int
    distance: int
    groups: list[list[tuple[int, str]]] = field(default_factory=list)  # [(seq, path)], >1 each
    seconds: float = 0.0

    @property
    def duplicates(self) -> int:
        """Images beyond the first of their group: what --unique leaves out."""
        return sum(len(g) - 1 for g in self.groups)


def dedup(folder: Path, max_distance: int = 4) -> Grouped:
    """Group the finished images whose perceptual hashes differ in at most `max_distance` bits
    (the same pixels always group); record every image's group (the file number of its first
    image). Images without a phash are hashed first (on this machine's CPU)."""
    if not 0 <= max_distance <= MAX_DISTANCE:
        raise catalog.CatalogError(f"--max-distance: got {max_distance}; expected 0 to "
                                   f"{MAX_DISTANCE} bits of the 64 of a perceptual hash")
    path = catalog.manifest_of(folder)
    score(folder, ["phash"], Runtime(kind="inline"), report=False)  # reported once, below
    started = time.perf_counter()
    rows = [(e.seq, e.id, e.path, e.pixel_hash, int(e.scores["phash"], 16))
            for e in catalog.entries(folder) if e.scores.get("phash")]
    roots = groups(
        [r[3] for r in rows], [r[4] for r in rows], max_distance)
    first: dict[int, int] = {}
    for (seq, *_), root in zip(rows, roots):
        first[root] = min(first.get(root, seq), seq)
    with Manifest(path) as manifest:
        manifest.record_duplicates({r[1]: first[root] for r, root in zip(rows, roots)},
                                   max_distance)
    members: dict[int, list[tuple[int, str]]] = {}
    for (seq, _, relative, *_), root in zip(rows, roots):
        members.setdefault(root, []).append((seq, relative))
    found = [sorted(m) for m in members.values() if len(m) > 1]
    refresh_report(folder)
    return Grouped(len(rows), max_distance, sorted(found), time.perf_counter() - started)


MAX_DISTANCE = 16  # beyond this, the hashes' bands are too short to prune the pairs compared


def groups(pixel_hashes: list[str], phashes: list[int], distance: int) -> list[int]:
    """Each image's group, as the index of one of its members (union-find), for images whose
    phashes are within `distance` bits, or whose pixels are the same.

    Multi-index hashing: cut each 64-bit hash into distance + 1 bands; two hashes within
    `distance` bits agree exactly on at least one band (pigeonhole), so only images that share
    a band's value are compared, never every pair."""
    import numpy as np

    parent = list(range(len(phashes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    same: dict[str, int] = {}
    for i, pixel_hash in enumerate(pixel_hashes):
        union(same.setdefault(pixel_hash, i), i)
    values, first, inverse = np.unique(np.array(phashes, dtype=np.uint64), return_index=True,
                                       return_inverse=True)
    for i, k in enumerate(inverse.ravel()):  # the same phash: one group (0 bits apart)
        union(int(first[k]), i)
    bands = distance + 1
    edges = [64 * k // bands for k in range(bands + 1)]
    for low, high in zip(edges, edges[1:]):
        keys = (values >> np.uint64(low)) & np.uint64((1 << (high - low)) - 1)
        order = np.argsort(keys, kind="stable")
        cuts = np.flatnonzero(np.diff(keys[order])) + 1
        for bucket in np.split(order, cuts):
            if len(bucket) < 2:
                continue
            members = values[bucket]
            rows = max(1, BLOCK // len(bucket))  # bounded memory for a crowded band value
            for start in range(0, len(bucket) - 1, rows):
                block = members[start:start + rows]
                near = _bits(block[:, None] ^ members[None, :]) <= distance
                for a, b in zip(*np.nonzero(near)):
                    if start + a < b:
                        union(int(first[bucket[start + a]]), int(first[bucket[b]]))
    return [find(i) for i in range(len(phashes))]


BLOCK = 1 << 21  # hash pairs compared at once (about 20 MB of work arrays)
_POPCOUNT = None


def _bits(x):
    """The number of set bits of each uint64 (a lookup table over its bytes)."""
    import numpy as np

    global _POPCOUNT
    if _POPCOUNT is None:
        _POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return _POPCOUNT[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1)
