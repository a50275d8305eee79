"""`pdsim plan-worker`: join a study that `plan --storage URL` created and simulate its trials."""

from __future__ import annotations

import os
import time

from planner.plan import PlanRequest, load_profile, make_search
from planner.search import storage_url
from profiler.errors import InputError

MAX_WAIT_S = 86400.0  # a day: a worker may be queued before `plan` creates the study, never forever


def join_study(storage: str, name: str, wait_s: float = 60.0, max_units: int | None = None) -> int:
    """Run trials of study ``name`` until it holds its budget of simulated units; returns how many this
    process simulated (at most ``max_units``). Waits up to ``wait_s`` for `plan` to create the study and
    store its question."""
    import optuna  # noqa: PLC0415

    if not 0 <= wait_s <= MAX_WAIT_S:  # NaN too: it would wait forever
        raise InputError(f"must be between 0 and {MAX_WAIT_S:g} seconds, got {wait_s!r}", where="--wait")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            study = optuna.load_study(study_name=name, storage=storage_url(storage))
            if "request" in study.user_attrs:
                break
        except KeyError:
            pass
        except (ValueError, ImportError, optuna.exceptions.StorageInternalError) as e:
            raise InputError(f"cannot open study storage: {e}", where=f"--storage {storage}") from None
        if time.monotonic() > deadline:
            raise InputError(f"no study {name!r} with a plan request in {storage} after {wait_s:g} s; start it with "
                             f"`pdsim plan ... --storage {storage} --study {name}`")
        time.sleep(0.5)
    req = PlanRequest.from_dict(study.user_attrs["request"])
    search = make_search(req, load_profile(req.profile))
    study = search.study(storage, name, sampler_seed=(req.seed + os.getpid()) % 2**32)
    search.run(study, max_units)
    return len(search.evaluations)
