"""Shared studies: several processes fill one Optuna study (SQLite file, PostgreSQL server) and `plan`
resumes from it without simulating those units again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from needs import require

from planner.cli import app, run_app
from planner.plan import PlanRequest, open_study

ARGS = dict(model="llama-3.1-8b", isl=1000, osl=100, ttft_ms=400, tpot_ms=25, gpus=2, trials=2)
CLI = ["--model", "llama-3.1-8b", "--isl", "1000", "--osl", "100", "--ttft", "400", "--tpot", "25", "--gpus", "2",
       "--trials", "2", "--quiet"]


def postgres_url() -> str:
    url = os.environ.get("PDSIM_TEST_POSTGRES")
    require(url is not None, "a PostgreSQL server", "set PDSIM_TEST_POSTGRES=postgresql://user:pw@host/db; "
            ".ci/run starts one and sets it")
    return url


def workers(st, storage: str, study: str, n: int = 2) -> list[str]:
    """``n`` plan-worker processes, each started once the one before has taken a trial (SQLite cannot lock
    the queue of enqueued trials against two processes popping it at the same instant: optuna#4621)."""
    pdsim = str(Path(sys.executable).parent / "pdsim")
    cmd = [pdsim, "plan-worker", "--storage", storage, "--study", study, "--wait", "60", "--units", "1"]
    procs = []
    for i in range(n):
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + 60
        while len([t for t in st.get_trials(deepcopy=False) if "key" in t.user_attrs]) <= i:
            assert time.monotonic() < deadline and procs[-1].poll() in (None, 0), "worker took no trial"
            time.sleep(0.1)
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        outs.append(out)
    return outs


def shared_study_fills_and_resumes(storage: str, study: str, tmp_path) -> None:
    search, st = open_study(PlanRequest(**ARGS), storage, study)
    assert st.user_attrs["request"]["isl"] == 1000
    outs = workers(st, storage, study)  # each simulates at most 1 of the study's 2 units: both must take part
    known = search.known(st)
    assert len(known) == 2
    pids = {row["worker_pid"] for row in known.values()}
    assert len(pids) == 2, f"both workers should have simulated units, got {outs}"
    assert sorted(outs) == [f"plan-worker {study}: simulated 1 unit\n"] * 2
    # plan resumes the filled study: every unit it reports was simulated by the workers
    code = run_app(app, ["plan", *CLI, "--storage", storage, "--study", study, "--out", str(tmp_path)])
    assert code == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert {r["key"] for r in plan["evaluated"]} == set(known)
    run = json.loads((tmp_path / "run.json").read_text())  # which process simulated what: run.json, not plan.json
    assert {u["worker_pid"] for u in run["units"].values()} == pids
    assert plan["recommendation"]["met"]


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(tmp_path):
    shared_study_fills_and_resumes(f"sqlite:///{tmp_path / 'study.db'}", "shared", tmp_path)


@pytest.mark.slow
def test_same_study_on_postgresql(tmp_path):
    url = postgres_url()
    import optuna

    from planner.search import storage_url

    name = f"pdsim-test-{uuid.uuid4().hex[:8]}"
    try:
        shared_study_fills_and_resumes(url, name, tmp_path)
    finally:
        optuna.delete_study(study_name=name, storage=storage_url(url))


def test_worker_without_study_says_so(tmp_path, capsys):
    code = run_app(app, ["plan-worker", "--storage", f"sqlite:///{tmp_path / 'none.db'}", "--study", "absent",
                         "--wait", "0.5"])
    err = capsys.readouterr().err
    assert code == 2 and "no study 'absent'" in err


def test_a_study_refuses_another_question(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'q.db'}"
    open_study(PlanRequest(**ARGS), storage, "mine")
    code = run_app(app, ["plan", *CLI, "--tpot", "30", "--storage", storage, "--study", "mine", "--out",
                         str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "holds another question" in err
