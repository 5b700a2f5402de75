"""A CI-style scenario for the pull budget: N pipelines pull the same tags through hubcache while
a tag changes now and then; how many counted pulls (manifest GETs) reach Docker Hub. Used by
tests/e2e/test_budget.py and scripts/pull-budget."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .clients import skopeo_copy


@dataclass
class BudgetResult:
    pipelines: int
    pulls: int  # image pulls the pipelines made
    tag_changes: int  # distinct tag -> digest values seen (first push and every move)
    counted: dict[str, int]  # counted pulls at the upstream, by account

    @property
    def spent(self) -> int:
        return sum(self.counted.values())

    def line(self) -> str:
        return (f"{self.pipelines} pipelines x {self.pulls // self.pipelines} tags = {self.pulls} pulls through hubcache, "
                f"{self.tag_changes} distinct tag values: counted pulls spent = {self.spent} {self.counted}")


def write_credentials(path: Path, accounts: dict[str, str]) -> Path:
    path.write_text("".join(f'[[accounts]]\nusername = "{u}"\ntoken = "{p}"\n' for u, p in accounts.items()))
    os.chmod(path, 0o600)
    return path


def run(upstream, hub, certs: Path, work: Path, pipelines: int = 10, move_every: int = 4) -> BudgetResult:
    """Each pipeline pulls library/app:1 and library/db:1; app:1 moves every `move_every` pipelines."""
    tags = ["library/budget-app", "library/budget-db"]
    seed = 50_000
    for name in tags:
        upstream.push_image(name, "1", [(200_000, seed)])
        seed += 1
    changes = len(tags)
    upstream.reset_pulls()
    pulls = 0
    for p in range(pipelines):
        if p and p % move_every == 0:
            upstream.push_image(tags[0], "1", [(200_000, seed)])
            seed += 1
            changes += 1
        for name in tags:
            res = skopeo_copy(f"docker.io/{name}:1", work / f"p{p}-{name.split('/')[1]}", proxy=hub.url, cert_dir=certs)
            if res.returncode:
                raise RuntimeError(f"pipeline {p}: pull of {name}:1 failed: {res.stderr}")
            pulls += 1
    return BudgetResult(pipelines, pulls, changes, upstream.pulls_by_account())
