"""Profile on disk: save, load, merge runs, and one clear error for anything that is not a profile."""

import json
import sys

import pytest
from test_profile_costmodel import synthetic_profile

from planner.cli import app, run_app
from profiler.device import cpu_identity, device_identity, nvidia_identity
from profiler.errors import InputError
from profiler.profile import META_FILE, SCHEMA_VERSION, TABLE_FILE, load_profile


@pytest.fixture
def saved(tmp_path):
    d = tmp_path / "prof"
    synthetic_profile().save(d)
    return d


def test_round_trip_keeps_every_row_and_the_schema_version(saved):
    p = load_profile(saved)
    assert len(p.table) == len(synthetic_profile().table)
    assert p.configs() == [("tiny", "fp32", 1)]
    meta = json.loads((saved / META_FILE).read_text())
    assert meta["schema_version"] == SCHEMA_VERSION and meta["pdsim_version"]
    assert set(p.table.columns) >= {"op", "tokens", "batch", "seq_len", "ctx_len", "bytes", "path", "dtype", "tp",
                                    "median_s", "p10_s", "p90_s", "repeats"}


def test_runs_of_other_configs_merge_and_a_rerun_replaces_its_rows(saved):
    synthetic_profile(tp=2).save(saved)
    p = load_profile(saved)
    assert p.configs() == [("tiny", "fp32", 1), ("tiny", "fp32", 2)]
    assert len(p.runs) == 2
    synthetic_profile(tp=2).save(saved)
    assert len(load_profile(saved).table) == len(p.table)  # replaced, not doubled


def test_other_schema_version_is_refused(saved):
    meta = json.loads((saved / META_FILE).read_text())
    (saved / META_FILE).write_text(json.dumps({**meta, "schema_version": 99}))
    with pytest.raises(InputError, match=r"schema version 99, this pdsim reads version 1"):
        load_profile(saved)


def test_a_directory_that_is_not_a_profile(tmp_path):
    with pytest.raises(InputError, match="not a profile directory"):
        load_profile(tmp_path)


def test_a_file_is_not_a_profile(saved):
    with pytest.raises(InputError, match="a profile is a directory"):
        load_profile(saved / TABLE_FILE)


def test_an_unknown_name_says_no_profile_is_bundled_yet():
    with pytest.raises(InputError, match=r"no bundled profile of that name \(bundled: "):
        load_profile("no-such-gpu")


def test_a_broken_table_names_file_and_line(saved):
    lines = (saved / TABLE_FILE).read_text().splitlines()
    cols = lines[0].split(",")
    bad = lines[3].split(",")
    bad[cols.index("median_s")] = "-1"
    lines[3] = ",".join(bad)
    (saved / TABLE_FILE).write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"profile.csv: line 4: median_s must be a positive"):
        load_profile(saved)


def test_missing_columns_are_named(saved):
    (saved / TABLE_FILE).write_text("model,op,tokens\ntiny,qkv,1\n")
    with pytest.raises(InputError, match=r"missing columns \['batch'"):
        load_profile(saved)


def test_cli_reports_a_bad_profile_in_one_line(saved, capsys):
    meta = json.loads((saved / META_FILE).read_text())
    (saved / META_FILE).write_text(json.dumps({**meta, "schema_version": 0}))
    assert run_app(app, ["profile", "--verify", str(saved)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pdsim: error:") and "schema version 0" in err and "\n" not in err


def test_cli_unknown_model_is_one_line(tmp_path, capsys):
    assert run_app(app, ["profile", "--model", "no-such-model", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pdsim: error: unknown model 'no-such-model'") and "\n" not in err


def test_cli_refuses_what_cannot_be_profiled_here(tmp_path, capsys):
    assert run_app(app, ["profile", "--model", "deepseek-v3", "--out", str(tmp_path / "p")]) == 2
    assert "MLA" in capsys.readouterr().err
    assert run_app(app, ["profile", "--model", "tiny", "--dtype", "fp8", "--out", str(tmp_path / "p")]) == 2
    assert "fp8" in capsys.readouterr().err
    assert run_app(app, ["profile", "--model", "tiny"]) == 2
    assert "--out" in capsys.readouterr().err
    assert run_app(app, ["profile", "--model", "tiny", "--device", "cuda", "--out", str(tmp_path / "p")]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert run_app(app, ["profile", "--model", "tiny", "--clock", "cpu", "--threads", "2", "--out",
                         str(tmp_path / "p")]) == 2
    assert "--threads 1" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()  # nothing written on bad input


def test_cpu_identity_without_a_gpu_driver():
    ident = device_identity("cpu")
    assert ident["kind"] == "cpu" and ident["cores"] >= 1 and ident["memory_bytes"] > 0 and ident["name"]
    assert cpu_identity()["name"] == ident["name"]


def test_missing_pynvml_is_not_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml now raises ImportError
    assert nvidia_identity() is None
