"""A fresh clone stands alone: in a folder with nothing beside it, the README's plan command runs (with a small
--trials) and every config check finds its files. Tests what is committed (git clone of HEAD)."""

import os
import re
import shlex
import subprocess
import sys

from needs import REPO

from planner.check import find_checks, load_check


def readme_plan_args() -> list[str]:
    """The flags of the README's first `plan` command (the main job a newcomer runs first)."""
    text = (REPO / "README.md").read_text()
    cmd = re.search(r"\.venv/bin/plan (.+)", text)
    assert cmd, "README.md shows no `.venv/bin/plan ...` command"
    return shlex.split(cmd.group(1).strip().rstrip("`"))


def test_the_readme_plan_command_runs_in_a_clone_with_nothing_beside_it(tmp_path):
    clone = tmp_path / "alone" / "pdsim"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(clone)}
    out = tmp_path / "plan-out"
    args = [*readme_plan_args(), "--trials", "2", "--quiet", "--out", str(out)]
    run = subprocess.run([sys.executable, "-c", "import planner, sys; assert planner.__file__.startswith(sys.argv[1]);"
                          "from planner.cli import plan_main; sys.argv[1:] = sys.argv[2:]; plan_main()",
                          str(clone), *args], cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("plan: ") and "Recommendation:" in run.stdout
    assert (out / "plan.json").exists() and (out / "report.html").exists()
    checks = find_checks([clone / "configs"])
    assert len(checks) >= 5
    for path in checks:  # every trace, deployment and length file a config names is in the clone
        load_check(path)
