"""The grade cache: the project's equivalence, one grading per distinct pair, a versioned file on disk,
and a timeout on every call (a slow or stuck grader never hangs the run)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from certaindex.evaluation.grading import CACHE_FORMAT, CACHE_VERSION, TIMEOUT, GradeCache, equivalence_id, run_jobs

CALLS_FILE = "calls.txt"


def counting_grader(job):
    """A fake grader that logs each call to a file (calls happen in worker processes)."""
    kind, a, b = job
    with open(os.environ["GRADER_LOG"], "a") as fh:
        fh.write(f"{kind}|{a}|{b}\n")
    return a.strip() == b.strip() if kind == "eq" else a.strip()


def slow_grader(job):
    """A fake grader that hangs (in Python) on one answer."""
    if job[1] == "hang":
        time.sleep(60)
    return job[0] != "eq" or job[1] == job[2]


def stuck_grader(job):
    """A fake grader that hangs where the timer cannot reach it (it ignores SIGALRM)."""
    if job[1] == "stuck":
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        time.sleep(60)
    return job[0] != "eq" or job[1] == job[2]


def test_project_equivalence_grades_pairs_and_keys(tmp_path):
    cache = GradeCache(tmp_path / "g.json")
    stats = cache.grade([("\\frac{1}{2}", "0.5"), ("x = 3", "3"), ("4", "5")], ["\\dfrac12", "1/2", "7"], workers=1)
    assert stats.graded == 6 and stats.timeouts == 0
    assert cache.correct("\\frac{1}{2}", "0.5") and cache.correct("x = 3", "3") and not cache.correct("4", "5")
    assert not cache.correct(None, "5")
    assert cache.key("\\dfrac12") == cache.key("1/2") != cache.key("7")
    assert cache.key(None) is None


def test_each_distinct_pair_is_graded_once_and_the_file_is_reused(tmp_path, monkeypatch):
    log = tmp_path / CALLS_FILE
    monkeypatch.setenv("GRADER_LOG", str(log))
    path = tmp_path / "cache" / "grades.json"
    cache = GradeCache.load(path)
    assert not cache.equal and cache.note is None
    pairs = [("3", "3"), ("3", "3"), ("4", "3")]
    stats = cache.grade(pairs, ["3", "3", " 4"], grader=counting_grader, workers=2)
    assert (stats.graded, stats.cached) == (4, 0)
    assert sorted(log.read_text().splitlines()) == ["eq|3|3", "eq|4|3", "key| 4|", "key|3|"]
    cache.save()
    data = json.loads(path.read_text())
    assert data["format"] == CACHE_FORMAT and data["version"] == CACHE_VERSION and data["equivalence"] == equivalence_id()

    again = GradeCache.load(path)
    stats = again.grade(pairs + [("5", "3")], ["3"], grader=counting_grader)
    assert (stats.graded, stats.cached) == (1, 3)  # only the new pair is graded
    assert log.read_text().splitlines()[-1] == "eq|5|3"
    assert again.correct("3", "3") and not again.correct("4", "3") and again.key(" 4") == "4"


def test_a_cache_of_other_answer_rules_is_ignored(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"format": CACHE_FORMAT, "version": 1, "equivalence": "older", "equal": [["1", "2", True]]}))
    cache = GradeCache.load(path)
    assert not cache.equal and "other answer rules" in cache.note
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a certaindex grade cache"):
        GradeCache.load(path)
    path.write_text("{broken")
    assert "unreadable" in GradeCache.load(path).note


def test_a_slow_call_times_out_and_grades_as_not_equal(tmp_path):
    cache = GradeCache(tmp_path / "g.json")
    started = time.monotonic()
    stats = cache.grade([("hang", "hang"), ("1", "1")], ["hang"], grader=slow_grader, timeout_s=0.5, workers=2)
    assert time.monotonic() - started < 20
    assert stats.timeouts == 2
    assert not cache.correct("hang", "hang")  # would be equal, but timed out
    assert cache.key("hang") is None
    assert cache.correct("1", "1")
    assert any("hang" in t for t in cache.timeouts)


def test_a_worker_stuck_beyond_the_timer_is_killed_and_the_rest_still_graded():
    jobs = [("eq", "stuck", "stuck")] + [("eq", str(i), str(i)) for i in range(6)]
    started = time.monotonic()
    results = run_jobs(jobs, grader=stuck_grader, timeout_s=0.5, workers=2)
    assert time.monotonic() - started < 20
    assert results[("eq", "stuck", "stuck")] is TIMEOUT
    assert all(results[("eq", str(i), str(i))] is True for i in range(6))


def keyless_grader(job):
    """A fake grader that finds no key for any answer (as canonical_answer does for unreadable text)."""
    return None


def test_a_grader_answering_none_is_a_result_not_a_timeout():
    jobs = [("key", f"junk{i}", "") for i in range(4)]
    results = run_jobs(jobs, grader=keyless_grader, timeout_s=30, workers=2)
    assert all(results[job] is None for job in jobs)  # before: each waited out the 61 s hard limit as TIMEOUT


def dying_grader(job):
    """A fake grader whose process dies on one answer (as a crash in C would end it)."""
    if job[1] == "die":
        os._exit(3)
    return job[0] != "eq" or job[1] == job[2]


def test_a_worker_that_dies_mid_job_counts_as_timed_out_and_the_rest_are_graded():
    jobs = [("eq", str(i), str(i)) for i in range(3)] + [("eq", "die", "die")] + [("eq", str(i), "x") for i in range(4)]
    results = run_jobs(jobs, grader=dying_grader, timeout_s=30, workers=2)
    assert results[("eq", "die", "die")] is TIMEOUT  # no answer came, well before the 61 s hard limit
    assert all(results[("eq", str(i), str(i))] is True for i in range(3))
    assert all(results[("eq", str(i), "x")] is False for i in range(4))


_BROKEN = False


def fragile_grader(job):
    """A fake grader whose state breaks when a call is cut short (like an import interrupted by the timer)."""
    global _BROKEN
    if _BROKEN:
        return "broken"
    if job[1] == "hang":
        try:
            time.sleep(60)
        finally:
            _BROKEN = True
    return "ok"


def test_jobs_after_a_timeout_run_in_fresh_workers():
    jobs = [("key", "a", ""), ("key", "hang", "")] + [("key", f"x{i}", "") for i in range(5)]
    results = run_jobs(jobs, grader=fragile_grader, timeout_s=0.5, workers=1)
    assert results[("key", "hang", "")] is TIMEOUT
    assert [results[j] for j in jobs if j[1] != "hang"] == ["ok"] * 6
