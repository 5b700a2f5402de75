"""What each SOURCE of `hubcache warm` names: a `.gitlab-ci.yml` (or a directory holding one), a
file listing images (one a line, `#` comments), or an image reference.

Reads files; the parsing is gitlabci.py's (pure). Images are checked as references here, so a
typo is reported before anything is pulled.
"""

from __future__ import annotations

import glob as globbing
from dataclasses import dataclass
from pathlib import Path

from hubcache.decide.routes import parse_reference
from hubcache.registries import image_name
from hubcache.tools.warm.gitlabci import GitLabCIError, Skipped, images

CI_FILE = ".gitlab-ci.yml"


@dataclass(frozen=True)
class Wanted:
    image: str  # as written (expanded), e.g. postgres:12.2
    origin: str  # where it was named: "ci/.gitlab-ci.yml job test: services", "list.txt:3", "argument"


class SourceError(ValueError):
    """A source that cannot be read at all (missing file, YAML GitLab would refuse)."""


def _repo_root(start: Path) -> Path:
    """The repository's root, which `include: local` paths are relative to: the nearest directory
    up from the CI file holding `.git`, else the CI file's own directory."""
    for d in (start, *start.parents):
        if (d / ".git").exists():
            return d
    return start


def from_gitlab(ci_file: Path, variables: dict[str, str]) -> tuple[list[Wanted], list[Skipped]]:
    root = _repo_root(ci_file.resolve().parent)
    rel = ci_file.resolve().relative_to(root).as_posix()

    def read(path: str) -> str:
        return (root / path).read_text()

    def glob(pattern: str) -> list[str]:
        return sorted(Path(p).relative_to(root).as_posix() for p in globbing.glob(str(root / pattern)))

    try:
        found, skipped = images(rel, read, glob, variables)
    except GitLabCIError as e:
        raise SourceError(f"{ci_file}: {e}") from e
    return [Wanted(f.image, f"{ci_file} {f.origin}") for f in found], \
        [Skipped(s.text, f"{ci_file} {s.origin}", s.reason) for s in skipped]


def from_list(path: Path) -> list[Wanted]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"{path}: {getattr(e, 'strerror', None) or e}") from e
    out = []
    for n, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if text:
            out.append(Wanted(text, f"{path}:{n}"))
    return out


def is_ci_file(path: Path) -> bool:
    return path.suffix in (".yml", ".yaml")


def read_source(source: str, variables: dict[str, str]) -> tuple[list[Wanted], list[Skipped]]:
    """The images one SOURCE names. A path that exists is read as a file; anything else must be
    an image reference."""
    path = Path(source)
    if path.is_dir():
        if not (path / CI_FILE).is_file():
            raise SourceError(f"{source}: a directory without a {CI_FILE}")
        return from_gitlab(path / CI_FILE, variables)
    if path.is_file():
        return from_gitlab(path, variables) if is_ci_file(path) else (from_list(path), [])
    if source.startswith(("/", "./", "../", "~")) or path.suffix in (".yml", ".yaml", ".txt", ".list"):
        raise SourceError(f"{source}: no such file or directory")
    return [Wanted(source, "argument")], []


def check(wanted: list[Wanted]) -> tuple[list[Wanted], list[Skipped]]:
    """The wanted images, each once (first origin kept), and those that are not image references
    (a failure of the warm-up, not a skip: someone wrote a name that no pull can take)."""
    good: dict[str, Wanted] = {}
    bad: list[Skipped] = []
    for w in wanted:
        try:
            parse_reference(w.image)
        except ValueError:
            bad.append(Skipped(w.image, w.origin, "not an image reference"))
            continue
        good.setdefault(canonical(w.image), w)
    return list(good.values()), bad


def canonical(image: str) -> str:
    """`postgres` and `docker.io/library/postgres:latest` are one image."""
    name, ref = parse_reference(image)
    ref = ref or "latest"
    return f"{image_name(name)}{'@' if ref.startswith('sha256:') else ':'}{ref}"
