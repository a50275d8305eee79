"""data/ holds the public files the project reads, each listed in data/SOURCES.md with its origin, licence and
sha256; nothing in the project reads a folder outside the repository."""

import hashlib
import re
import subprocess

from needs import DATA, REPO


def listed() -> dict[str, str]:
    """file (relative to data/) -> sha256, from the SOURCES.md table."""
    rows = re.findall(r"^\| (\S+) \|.*\| ([0-9a-f]{64}) \|$", (DATA / "SOURCES.md").read_text(), re.M)
    return dict(rows)


def test_every_data_file_is_listed_with_its_checksum():
    files = {str(p.relative_to(DATA)) for p in DATA.rglob("*") if p.is_file() and p.name != "SOURCES.md"}
    sums = listed()
    assert files and files == set(sums)
    for name, sha in sums.items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == sha, name


def test_no_tracked_file_reads_a_folder_beside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    code = [f for f in tracked.split() if f.endswith((".py", ".yaml", ".toml", ".sh", ".md")) and
            not f.startswith(".ci/") and (REPO / f).is_file()]
    sibling = "shared"  # the folder beside the checkout on the machines pdsim is built on
    offenders = [f for f in code if re.search(rf"\.\./{sibling}\b|/work/{sibling}\b", (REPO / f).read_text())]
    assert offenders == []
