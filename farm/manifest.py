"""The manifest: an SQLite database (WAL) with one row per job the run folder has seen.

One process writes (the driver of a render); any number may read while it runs. A job is
done when its row says 'done' and its file is present. Rows are created as 'queued' when a job
is handed to a worker, so that its file path is fixed before anything is written: a render
killed half-way and started again writes each image to the same place, exactly once.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import NamedTuple

from farm.jobs import Job, Result, Slot
from farm.scorers import Score, Scorer

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,     -- Job.id: content hash of what decides the pixels
    seq         INTEGER NOT NULL UNIQUE,  -- order of first claim; decides the file name
    path        TEXT NOT NULL,        -- relative to the run folder
    status      TEXT NOT NULL CHECK (status IN ('queued', 'done', 'failed')),
    pixel_hash  TEXT,                 -- sha256 of the decoded RGB pixels
    params      TEXT NOT NULL,        -- Job.to_dict() as JSON
    attempts    INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    seconds     REAL,                 -- this image's share of its batch's wall time
    batch_size  INTEGER,
    position    INTEGER,              -- index within that batch
    worker      TEXT,
    scheduler   TEXT,                 -- JSON: the diffusers scheduler class and its full config
    provenance  TEXT,                 -- JSON: device, dtype, farm/torch/diffusers/transformers
    run_id      INTEGER,              -- the run that last recorded it
    claimed_run INTEGER,              -- the run that last handed it out
    updated_at  TEXT
);
CREATE INDEX IF NOT EXISTS failed_jobs ON jobs (seq) WHERE status = 'failed';
CREATE INDEX IF NOT EXISTS done_by_run ON jobs (run_id, seq) WHERE status = 'done';
CREATE TABLE IF NOT EXISTS scores (    -- a score belongs to pixels and a scorer, never to a job
    pixel_hash  TEXT NOT NULL,
    scorer      TEXT NOT NULL,        -- aesthetic | clip | nsfw | phash (farm/scorers.py)
    identity    TEXT NOT NULL,        -- the scorer's: its models' hashes, farm's scoring version
    subject     TEXT NOT NULL,        -- what it read besides the pixels (a caption's hash) or ''
    value       TEXT NOT NULL,        -- JSON: its columns, e.g. {"aesthetic": 5.61}
    scored_at   TEXT NOT NULL,
    PRIMARY KEY (pixel_hash, identity, subject)
);
CREATE TABLE IF NOT EXISTS scorers (   -- what each scorer identity was: for dataset cards
    identity    TEXT PRIMARY KEY,
    scorer      TEXT NOT NULL,
    model       TEXT                  -- the reference it was given (hub id, path, tiny)
);
CREATE TABLE IF NOT EXISTS duplicates ( -- the last farm dedup: every image it grouped
    id          TEXT PRIMARY KEY,     -- the job's id
    dup_group   INTEGER NOT NULL,     -- the file number (seq) of its group's first image
    distance    INTEGER NOT NULL      -- the --max-distance it was grouped with
);
CREATE TABLE IF NOT EXISTS writer (    -- the render writing now: a second one is refused
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    heartbeat   REAL NOT NULL         -- seconds since the epoch, renewed while it runs
);
CREATE TABLE IF NOT EXISTS generation ( -- counts every transaction that changed the jobs
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    value       INTEGER NOT NULL,
    context     INTEGER               -- 1: a job's params say how its prompt was made (a
);                                    -- template, a file's columns, a caption); NULL: unknown
INSERT OR IGNORE INTO generation (id, value, context)
    VALUES (1, 0, CASE WHEN EXISTS (SELECT 1 FROM jobs) THEN NULL ELSE 0 END);
CREATE TABLE IF NOT EXISTS seals (     -- the last plan found all done (farm/seals.py)
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    key         TEXT NOT NULL,        -- what decides the plan's jobs, hashed
    generation  INTEGER NOT NULL,     -- the jobs' generation then
    sources     TEXT NOT NULL,        -- JSON: the files the plan read (path, size, mtime)
    folders     TEXT NOT NULL,        -- JSON: each image folder's modification time then
    counts      TEXT NOT NULL,        -- JSON: planned, done, failed, repeats
    sealed_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id          INTEGER PRIMARY KEY,
    started_at  TEXT NOT NULL,
    ended_at    TEXT,
    recipe      TEXT NOT NULL,        -- the resolved recipe, as YAML
    planned     INTEGER NOT NULL,     -- jobs in the plan of this run
    rendered    INTEGER,
    skipped     INTEGER,
    failed      INTEGER,
    seconds     REAL
);
"""


class Seen(NamedTuple):
    """A job's manifest row, as the diff against a plan needs it."""

    status: str  # queued | done | failed
    path: str
    claimed_run: int | None  # the run that last handed it out
    batch_size: int | None  # the call it was last rendered in
    position: int | None

    @property
    def slot(self) -> Slot | None:
        """Where a job that was rendered sat in its call: a re-render goes there again."""
        return Slot.of(self._asdict()) if self.batch_size else None


CHUNK = 10_000  # jobs looked up per query
CONTEXT_MARKS = ('"template":', '"fields":', '"caption":')  # in params: how a prompt was made


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ManifestDamaged(RuntimeError):
    """A manifest SQLite cannot read: the images still say everything (farm rebuild)."""


class SecondWriter(RuntimeError):
    """Another render, maybe on another machine, is writing this run folder now."""


HEARTBEAT_SECONDS = 10.0  # how often a render says it is still writing
STALE_SECONDS = 60.0  # a writer silent this long has stopped (killed, its machine gone)


class ManifestUnwritable(RuntimeError):
    """The manifest cannot be written (a full disk, a read-only folder): the run must stop."""


UNWRITABLE = ("disk is full", "readonly database", "disk I/O error")


class Manifest:
    """A run folder's SQLite manifest, and all the SQL that reads or writes it.

    One row per job (its id, the file path it was given, its status queued / done / failed,
    its pixel hash, attempts, error, the batch size and position it was rendered at, and its
    `params`: the job's `farm` record), one per run (the composed recipe, counts, times), and
    the writer's claim. The driver is its only writer; readers (status, exports, grids) open
    it read-only while a render goes on (WAL). Everything it holds can be rebuilt from the
    images (farm rebuild).
    """

    def __init__(self, path: Path, readonly: bool = False):
        self.path, self.readonly = Path(path), readonly
        try:
            if readonly:
                self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
                self.db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            else:
                self.db = sqlite3.connect(self.path, timeout=30)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across kills
                self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                raise
            raise ManifestDamaged(f"{self.path} cannot be read ({e}); the images carry their "
                                  f"own records: rebuild it with farm rebuild {self.path.parent}"
                                  ) from None

    @contextmanager
    def _writing(self, jobs: bool = False) -> Iterator[None]:
        """One transaction; a disk that refuses it is ManifestUnwritable, saying what to do.
        `jobs`: it changes the jobs table, and counts one more generation (a seal made before
        no longer holds)."""
        try:
            with self.db:
                if jobs:
                    self.db.execute("UPDATE generation SET value = value + 1")
                yield
        except sqlite3.OperationalError as e:
            if not any(words in str(e) for words in UNWRITABLE):
                raise
            raise ManifestUnwritable(f"could not record in {self.path}: {e}") from None

    def insert_done(self, rows: Iterable[dict]) -> int:
        """Rows of finished images as farm rebuild reads them back from the files."""
        count = 0
        with self._writing(jobs=True):
            for row in rows:
                self._with_context((row["params"],))
                self.db.execute(
                    "INSERT INTO jobs (id, seq, path, status, pixel_hash, params, attempts, "
                    "batch_size, position, scheduler, provenance, updated_at) VALUES (?, ?, ?, "
                    "'done', ?, ?, ?, ?, ?, ?, ?, ?)",
                    (row["id"], row["seq"], row["path"], row["pixel_hash"], row["params"],
                     row.get("attempts") or 1, row["batch_size"], row["position"],
                     row["scheduler"], row["provenance"], now()))
                count += 1
        return count

    def insert_runs(self, runs: Iterable[dict]) -> None:
        """Runs as farm rebuild reads them back (the old manifest's, or runs/run-NNNN.yaml)."""
        with self._writing():
            for run in runs:
                self.db.execute(
                    "INSERT INTO runs (id, started_at, ended_at, recipe, planned, rendered, "
                    "skipped, failed, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    tuple(run.get(k) for k in ("id", "started_at", "ended_at", "recipe",
                                               "planned", "rendered", "skipped", "failed",
                                               "seconds")))

    def runs(self) -> list[dict]:
        cursor = self.db.execute("SELECT * FROM runs ORDER BY id")
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor]

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # one writer at a time, where file locks do not reach (some network filesystems) --------------

    def claim_writer(self) -> None:
        """Say that this process writes the run folder now; refuse if another render said so
        within STALE_SECONDS and is not a dead process of this machine."""
        me = (socket.gethostname(), os.getpid())
        with self._writing():
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute("SELECT host, pid, heartbeat FROM writer").fetchone()
            if row and tuple(row[:2]) != me:
                host, pid, heartbeat = row
                age = time.time() - heartbeat
                gone = host == me[0] and not _alive(pid)
                if age < STALE_SECONDS and not gone:
                    raise SecondWriter(
                        f"another farm render, on {host} (pid {pid}), is writing "
                        f"{self.path.parent} (it said so {max(age, 0):.0f} s ago); two at once "
                        "would claim the same jobs. If it has stopped, run again in "
                        f"{STALE_SECONDS - age:.0f} s")
            self.db.execute("INSERT OR REPLACE INTO writer (id, host, pid, heartbeat) "
                            "VALUES (1, ?, ?, ?)", (*me, time.time()))

    def release_writer(self) -> None:
        with self._writing():
            self.db.execute("DELETE FROM writer WHERE host = ? AND pid = ?",
                            (socket.gethostname(), os.getpid()))

    @staticmethod
    @contextmanager
    def heartbeats(path: Path) -> Iterator[None]:
        """Renew this process's writer claim every HEARTBEAT_SECONDS from a thread (with its
        own connection) while the block runs, however long a batch or a model load takes."""
        stop = threading.Event()

        def beat() -> None:
            db = sqlite3.connect(path, timeout=30)
            try:
                while not stop.wait(HEARTBEAT_SECONDS):
                    try:
                        with db:
                            db.execute("UPDATE writer SET heartbeat = ? WHERE host = ? AND "
                                       "pid = ?", (time.time(), socket.gethostname(),
                                                   os.getpid()))
                    except sqlite3.Error:  # a full disk: the render finds out and stops
                        pass
            finally:
                db.close()

        thread = threading.Thread(target=beat, name="farm-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def lookup(self, ids: list[str] | None = None) -> dict[str, tuple]:
        """What this folder knows of those of `ids` it has seen (of every job when None), as
        the fields of a Seen (plain tuples: a plan's diff reads millions); one query whatever
        their number (the ids travel as one JSON array)."""
        query = "SELECT id, status, path, claimed_run, batch_size, position FROM jobs"
        rows = self.db.execute(query) if ids is None else self.db.execute(
            query + " WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(ids),))
        return {row[0]: row[1:] for row in rows}

    def size(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]

    def claim(self, jobs: Iterable[Job], path_for: Callable[[int, Job], str],
              run_id: int) -> list[str | None]:
        """Mark jobs as queued by this run and return their paths: the old one if seen before,
        else a new one; None for a job this run has already handed out (a plan can reach the
        same job twice, e.g. two templates that expand to the same prompt)."""
        paths: list[str | None] = []
        jobs = list(jobs)
        stamp = now()
        with self._writing(jobs=True):
            (top,) = self.db.execute("SELECT COALESCE(MAX(seq), -1) FROM jobs").fetchone()
            seen = {row[0]: row[1:] for row in self.db.execute(  # one query for the batch
                "SELECT id, path, claimed_run FROM jobs WHERE id IN "
                "(SELECT value FROM json_each(?))", (json.dumps([job.id for job in jobs]),))}
            fresh, again = [], []
            for job in jobs:
                found = seen.get(job.id)
                if found and found[1] == run_id:
                    paths.append(None)
                elif found:
                    again.append((run_id, stamp, job.id))
                    seen[job.id] = (found[0], run_id)  # the same job twice in one batch: once
                    paths.append(found[0])
                else:
                    top += 1
                    path = path_for(top, job)
                    fresh.append((job.id, top, path, json.dumps(job.to_dict(),
                                                                ensure_ascii=False),
                                  run_id, stamp))
                    seen[job.id] = (path, run_id)
                    paths.append(path)
            self.db.executemany("UPDATE jobs SET status = 'queued', claimed_run = ?, "
                                "updated_at = ? WHERE id = ?", again)
            self.db.executemany(
                "INSERT INTO jobs (id, seq, path, status, params, claimed_run, updated_at) "
                "VALUES (?, ?, ?, 'queued', ?, ?, ?)", fresh)
            if any(job.context for job in jobs):
                self._with_context(row[3] for row in fresh)
        return paths

    def record(self, results: Iterable[Result], run_id: int,
               attempts: Mapping[str, int] | None = None) -> None:
        """Store what workers report; called only after their files are in place.
        `attempts` says how many tries each job took in this run (default one)."""
        attempts = attempts or {}
        stamp = now()
        with self._writing(jobs=True):
            for r in results:
                self.db.execute(
                    "UPDATE jobs SET status = ?, pixel_hash = ?, error = ?, seconds = ?, "
                    "batch_size = ?, position = ?, worker = ?, scheduler = ?, provenance = ?, "
                    "run_id = ?, updated_at = ?, attempts = attempts + ? WHERE id = ?",
                    ("done" if r.ok else "failed", r.pixel_hash, r.error, r.seconds,
                     r.batch_size, r.position, r.worker, r.scheduler, r.provenance, run_id,
                     stamp, attempts.get(r.job_id, 1), r.job_id),
                )
                if r.ok and r.scores:
                    self._store_scores((r.pixel_hash, score) for score in r.scores)

    # scores and near-duplicates (farm score, farm dedup, a recipe's score: key) ---------------

    def _has(self, table: str) -> bool:
        """Whether a table exists (a folder made before it, opened read-only, lacks it)."""
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                               (table,)).fetchone() is not None

    def add_scorers(self, scorers: Iterable[Scorer]) -> None:
        with self._writing():
            for s in scorers:
                self.db.execute("INSERT OR REPLACE INTO scorers (identity, scorer, model) "
                                "VALUES (?, ?, ?)", (s.identity, s.name, s.ref))

    def record_scores(self, scores: Iterable[tuple[str, Score]]) -> None:
        """(pixel hash, Score) pairs; one that exists already is replaced."""
        with self._writing():
            self._store_scores(scores)

    def _store_scores(self, scores: Iterable[tuple[str, Score]]) -> None:
        stamp = now()
        self.db.executemany(
            "INSERT OR REPLACE INTO scores (pixel_hash, scorer, identity, subject, value, "
            "scored_at) VALUES (?, ?, ?, ?, ?, ?)",
            ((pixel_hash, s.scorer, s.identity, s.subject, s.values, stamp)
             for pixel_hash, s in scores))

    def scored(self, identity: str) -> set[tuple[str, str]]:
        """(pixel hash, subject) of everything a scorer identity has scored here."""
        if not self._has("scores"):
            return set()
        return set(self.db.execute("SELECT pixel_hash, subject FROM scores WHERE identity = ?",
                                   (identity,)))

    def scores_for(self, pixel_hashes: list[str]) -> dict[str, list[tuple[str, str, str]]]:
        """(scorer, subject, value) of every score of those pixels, oldest first."""
        found: dict[str, list[tuple[str, str, str]]] = {}
        if not self._has("scores"):
            return found
        for pixel_hash, scorer, subject, value in self.db.execute(
                "SELECT pixel_hash, scorer, subject, value FROM scores WHERE pixel_hash IN "
                "(SELECT value FROM json_each(?)) ORDER BY scored_at, rowid",
                (json.dumps(pixel_hashes),)):
            found.setdefault(pixel_hash, []).append((scorer, subject, value))
        return found

    def scorer_names(self) -> set[str]:
        """The scorers that have scored any image here."""
        if not self._has("scores"):
            return set()
        return {row[0] for row in self.db.execute("SELECT DISTINCT scorer FROM scores")}

    def scorers(self) -> list[dict]:
        """Each scorer identity used here: its scorer, model and how many images it scored."""
        if not self._has("scorers"):
            return []
        cursor = self.db.execute(
            "SELECT s.scorer, s.model, s.identity, COUNT(c.pixel_hash) AS images FROM scorers s "
            "LEFT JOIN scores c ON c.identity = s.identity GROUP BY s.identity "
            "ORDER BY s.scorer, s.identity")
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor]

    def record_duplicates(self, groups: Mapping[str, int], distance: int) -> None:
        """Replace the last grouping with this one: job id -> its group's first file number."""
        with self._writing():
            self.db.execute("DELETE FROM duplicates")
            self.db.executemany("INSERT INTO duplicates (id, dup_group, distance) VALUES "
                                "(?, ?, ?)", ((i, g, distance) for i, g in groups.items()))

    def duplicates_for(self, ids: list[str]) -> dict[str, int]:
        if not self._has("duplicates"):
            return {}
        return dict(self.db.execute(
            "SELECT id, dup_group FROM duplicates WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(ids),)))

    def grouped(self) -> int:
        """How many images the last farm dedup grouped (0: never run)."""
        if not self._has("duplicates"):
            return 0
        return self.db.execute("SELECT COUNT(*) FROM duplicates").fetchone()[0]

    def has_context(self) -> bool:
        """Whether any recorded job says how its prompt was made (template, file columns) or
        carries a caption: remembered as they are recorded (a folder made before that is read
        once, and the answer kept when this connection may write)."""
        known = self.db.execute("SELECT context FROM generation").fetchone() \
            if self._has("generation") else None
        if known is not None and known[0] is not None:
            return bool(known[0])
        found = self.db.execute(
            "SELECT 1 FROM jobs WHERE params LIKE '%\"template\":%' OR params LIKE "
            "'%\"fields\":%' OR params LIKE '%\"caption\":%' LIMIT 1").fetchone() is not None
        if known is not None and not self.readonly:
            with self._writing():
                self.db.execute("UPDATE generation SET context = ?", (int(found),))
        return found

    def _with_context(self, params: Iterable[str]) -> None:
        """Remember that params with a prompt's context were recorded, if any were."""
        if any(key in p for p in params for key in CONTEXT_MARKS):
            self.db.execute("UPDATE generation SET context = 1 WHERE context IS NOT 1")

    def refresh(self, jobs: Iterable[Job]) -> int:
        """Bring the recorded params of jobs this folder has seen up to date with `jobs` (the
        same ids, so the same pixels; what differs is how the prompt was made or a model's
        reference); return how many changed."""
        changed = 0
        jobs = iter(jobs)
        with self._writing(jobs=True):
            while chunk := list(islice(jobs, CHUNK)):
                stored = dict(self.db.execute(
                    "SELECT id, params FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps([job.id for job in chunk]),)))
                for job in chunk:
                    params = json.dumps(job.to_dict(), ensure_ascii=False)
                    if job.id in stored and stored[job.id] != params:
                        self.db.execute("UPDATE jobs SET params = ? WHERE id = ?",
                                        (params, job.id))
                        self._with_context((params,))
                        changed += 1
        return changed

    def begin_run(self, recipe_yaml: str, planned: int, after: int = 0) -> int:
        """Record a run's start; its number follows every run recorded here and `after` (the
        highest number of the folder's runs/ records), so that no number is used twice."""
        with self._writing():
            (last,) = self.db.execute("SELECT COALESCE(MAX(id), 0) FROM runs").fetchone()
            cursor = self.db.execute(
                "INSERT INTO runs (id, started_at, recipe, planned) VALUES (?, ?, ?, ?)",
                (max(last, after) + 1, now(), recipe_yaml, planned))
        return int(cursor.lastrowid)

    def end_run(self, run_id: int, rendered: int, skipped: int, failed: int,
                seconds: float) -> None:
        with self._writing():
            self.db.execute(
                "UPDATE runs SET ended_at = ?, rendered = ?, skipped = ?, failed = ?, seconds = ? "
                "WHERE id = ?", (now(), rendered, skipped, failed, seconds, run_id))

    def generation(self) -> int:
        """How many transactions have changed the jobs (-1: a folder made before it counted)."""
        if not self._has("generation"):
            return -1
        row = self.db.execute("SELECT value FROM generation").fetchone()
        return row[0] if row else -1

    def seal(self, key: str) -> dict | None:
        """The seal of the plan with this key, if the last one sealed was it."""
        if not self._has("seals"):
            return None
        cursor = self.db.execute("SELECT * FROM seals WHERE key = ?", (key,))
        row = cursor.fetchone()
        return dict(zip([c[0] for c in cursor.description], row)) if row else None

    def write_seal(self, key: str, sources: str, folders: str, counts: str) -> None:
        """Seal a plan found all done, as of the jobs' generation now (replacing the last)."""
        with self._writing():
            self.db.execute(
                "INSERT OR REPLACE INTO seals (id, key, generation, sources, folders, counts, "
                "sealed_at) VALUES (1, ?, (SELECT value FROM generation), ?, ?, ?, ?)",
                (key, sources, folders, counts, now()))

    def last_run(self) -> dict | None:
        cursor = self.db.execute("SELECT * FROM runs ORDER BY id DESC LIMIT 1")
        row = cursor.fetchone()
        return dict(zip([c[0] for c in cursor.description], row)) if row else None

    def counts(self) -> dict[str, int]:
        """How many rows have each status."""
        counts = {"queued": 0, "done": 0, "failed": 0}
        counts.update(self.db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status"))
        return counts

    def failures(self) -> Iterator[tuple[str, str, str]]:
        """(id, path, error) of every failed job."""
        yield from self.db.execute(
            "SELECT id, path, error FROM jobs WHERE status = 'failed' ORDER BY seq")

    ORDERS = {
        "file": "seq",  # the order files were numbered in
        "finished": "run_id, seq",  # by the run that made them: what a later run adds comes last
    }

    def done(self, order: str = "file") -> Iterator[dict]:
        """Every row whose job is done, as a dict, streamed by one cursor (never held)."""
        cursor = self.db.execute(
            f"SELECT * FROM jobs WHERE status = 'done' ORDER BY {self.ORDERS[order]}")
        names = [c[0] for c in cursor.description]
        for values in cursor:
            yield dict(zip(names, values))

    def done_files(self) -> Iterator[tuple[str, str]]:
        """(path, pixel hash) of every done row, in file order, streamed."""
        yield from self.db.execute(
            "SELECT path, pixel_hash FROM jobs WHERE status = 'done' ORDER BY seq")

    def done_seqs(self) -> array:
        """The file number of every done row, in order (8 bytes each)."""
        return array("q", (seq for (seq,) in self.db.execute(
            "SELECT seq FROM jobs WHERE status = 'done' ORDER BY seq")))

    def done_at(self, seqs: list[int]) -> Iterator[dict]:
        """The done rows of these file numbers, as done() gives them, in file order."""
        cursor = self.db.execute(
            "SELECT * FROM jobs WHERE status = 'done' AND seq IN (SELECT value FROM json_each(?)) "
            "ORDER BY seq", (json.dumps(seqs),))
        names = [c[0] for c in cursor.description]
        for values in cursor:
            yield dict(zip(names, values))

    def rows(self) -> Iterator[dict]:
        """Every row, whatever its status, in the order the folder numbered them, params
        decoded; streamed by one cursor."""
        cursor = self.db.execute("SELECT * FROM jobs ORDER BY seq")
        names = [c[0] for c in cursor.description]
        for values in cursor:
            row = dict(zip(names, values))
            row["params"] = json.loads(row["params"]) if row["params"] else {}
            yield row

    def first_path(self) -> str | None:
        """The path of the first job this folder numbered (its file type is the folder's)."""
        row = self.db.execute("SELECT path FROM jobs ORDER BY seq LIMIT 1").fetchone()
        return row[0] if row else None

    def job(self, job_id: str) -> dict | None:
        cursor = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))
        row = cursor.fetchone()
        return dict(zip([c[0] for c in cursor.description], row)) if row else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
