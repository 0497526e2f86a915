from farm.manifest import Manifest
from farm.outputs import RunFolder
from tests.helpers import CKPT, make_job, result


def test_claim_fixes_paths_once_and_record_marks_done(tmp_path):
    folder = RunFolder(tmp_path)
    jobs = [make_job(CKPT, seed=s) for s in range(3)]
    with Manifest(tmp_path / "m.sqlite") as m:
        paths = m.claim(jobs[:2], folder.image_path, run_id=1)
        assert paths == [folder.image_path(0, jobs[0]), folder.image_path(1, jobs[1])]
        assert m.counts() == {"queued": 2, "done": 0, "failed": 0}
        # the same run reaching a job twice gets no second path
        assert m.claim(jobs[1:2], folder.image_path, run_id=1) == [None]
        # claimed again by another run (a resume): same paths; a new job gets the next number
        again = m.claim(jobs, folder.image_path, run_id=2)
        assert again[:2] == paths and again[2] == folder.image_path(2, jobs[2])
        m.record([result(jobs[0], paths[0]), result(jobs[1], paths[1], ok=False)], run_id=1)
        assert m.counts() == {"queued": 1, "done": 1, "failed": 1}
        found = m.lookup([j.id for j in jobs] + ["unknown"])
        assert {k: v[:3] for k, v in found.items()} == {
            jobs[0].id: ("done", paths[0], 2), jobs[1].id: ("failed", paths[1], 2),
            jobs[2].id: ("queued", again[2], 2)}
        assert list(m.failures()) == [(jobs[1].id, paths[1], "boom")]
        row = m.job(jobs[1].id)
        assert row["attempts"] == 1 and row["error"] == "boom"


def test_a_reader_sees_progress_while_the_writer_is_open(tmp_path):
    jobs = [make_job(CKPT, seed=s) for s in range(2)]
    with Manifest(tmp_path / "m.sqlite") as writer:
        paths = writer.claim(jobs, RunFolder(tmp_path).image_path, run_id=1)
        writer.record([result(jobs[0], paths[0])], run_id=1)
        with Manifest(tmp_path / "m.sqlite", readonly=True) as reader:
            assert reader.counts()["done"] == 1


def test_runs_are_recorded(tmp_path):
    with Manifest(tmp_path / "m.sqlite") as m:
        run_id = m.begin_run("name: demo\n", planned=8)
        assert m.last_run()["ended_at"] is None
        m.end_run(run_id, rendered=6, skipped=2, failed=0, seconds=1.5)
        last = m.last_run()
        assert (last["id"], last["planned"], last["rendered"], last["recipe"]) == \
            (run_id, 8, 6, "name: demo\n")
        assert last["ended_at"] is not None


def test_whether_a_prompt_context_was_recorded_is_remembered(tmp_path):
    import sqlite3

    folder = RunFolder(tmp_path)
    plain = make_job(CKPT, seed=1)
    templated = make_job(CKPT, seed=2, context=(("template", "a {x}"), ("values", {"x": "y"})))
    path = tmp_path / "m.sqlite"
    with Manifest(path) as m:
        m.claim([plain], folder.image_path, run_id=1)
        assert not m.has_context()
        m.claim([templated], folder.image_path, run_id=1)
        assert m.has_context()
    # a manifest made before farm remembered it: read once, then kept
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE generation")
    with Manifest(path, readonly=True) as m:
        assert m.has_context() and m.generation() == -1
    with Manifest(path) as m:
        assert m.db.execute("SELECT context FROM generation").fetchone() == (None,)
        assert m.has_context()
        assert m.db.execute("SELECT context FROM generation").fetchone() == (1,)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM jobs WHERE id = ?", (templated.id,))
        db.execute("DROP TABLE generation")
    with Manifest(path) as m:
        assert not m.has_context()
        assert m.db.execute("SELECT context FROM generation").fetchone() == (0,)


def test_reading_finished_images_in_any_order_sorts_nothing(tmp_path):
    """Exports read the finished images in the order runs made them, status and verify read
    failures and files: each by an index, never by sorting the whole manifest (a temporary
    copy as large as it: 20 GB for ten million jobs)."""
    with Manifest(tmp_path / "m.sqlite") as m:
        queries = [f"SELECT * FROM jobs WHERE status = 'done' ORDER BY {order}"
                   for order in Manifest.ORDERS.values()]
        queries.append("SELECT id, path, error FROM jobs WHERE status = 'failed' ORDER BY seq")
        for query in queries:
            plan = " ".join(row[-1] for row in m.db.execute("EXPLAIN QUERY PLAN " + query))
            assert "USING INDEX" in plan and "TEMP B-TREE" not in plan, (query, plan)
