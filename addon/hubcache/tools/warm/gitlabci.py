"""The images a `.gitlab-ci.yml` names, read as GitLab reads it.

Pure apart from the `read` and `glob` functions it is given for `include: local` (sources.py
gives ones over the repository's directory; the tests give dicts). What it understands:
`image:` and `services:` as strings and as `name:` maps, `default:` and the old top-level
`image:`/`services:`, `extends:` chains (through hidden `.jobs`, several parents, deep-merged as
GitLab merges them), `include: local` (strings, lists, maps, wildcards, nested), `!reference`
tags (nested), `inherit:`, YAML anchors and `<<` merge keys, global and job `variables` (plain and
`value:` maps, `expand: false`) in `$VAR` / `${VAR}` form and `parallel: matrix:` combinations.
Remote, project, template and component includes cannot be read here: they are reported, not
followed. A name that still holds a variable nobody set (`$CI_REGISTRY_IMAGE`) is skipped, with
the variable named.
"""

from __future__ import annotations

import itertools
import posixpath
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

# top-level keys that are not jobs (https://docs.gitlab.com/ee/ci/yaml/: global keywords, and
# the deprecated globals image, services, cache, before_script, after_script)
RESERVED = frozenset({"default", "include", "stages", "variables", "workflow", "image", "services", "cache",
                      "before_script", "after_script", "types", "spec"})
DEFAULT_KEYWORDS = ("image", "services")  # what `default:` gives a job that warm cares about
MAX_EXTENDS_DEPTH = 11  # GitLab's limit
MAX_REFERENCE_DEPTH = 10
MAX_INCLUDES = 150
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class GitLabCIError(ValueError):
    """The file is not a pipeline GitLab would run (bad YAML, an unknown `extends:` parent, a loop)."""


class Reference(tuple):
    """A `!reference [.job, key, ...]` tag, resolved after the includes are merged."""


@dataclass(frozen=True)
class Found:
    image: str  # the name with its variables expanded
    origin: str  # e.g. "job test: services"


@dataclass(frozen=True)
class Skipped:
    text: str  # as written, e.g. "$CI_REGISTRY_IMAGE/app:latest"
    origin: str
    reason: str


def _yaml() -> YAML:
    y = YAML(typ="safe", pure=True)
    y.constructor.add_constructor("!reference", lambda loader, node: Reference(loader.construct_sequence(node, deep=True)))
    return y


def parse_yaml(text: str, name: str) -> dict[str, Any]:
    """One CI file's content: the last document (a `spec:` header document comes first in components)."""
    try:
        docs = [d for d in _yaml().load_all(text) if d is not None]
    except YAMLError as e:
        raise GitLabCIError(f"{name}: not valid YAML: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    if not docs:
        return {}
    doc = docs[-1]
    if not isinstance(doc, dict):
        raise GitLabCIError(f"{name}: the top level is not a map of keywords and jobs")
    return doc


def deep_merge(base: Any, over: Any) -> Any:
    """GitLab's merge for `extends` and `include`: maps merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = deep_merge(base[k], v) if k in base else v
        return out
    return over


def _include_entries(value: Any) -> Iterator[tuple[str, str]]:
    """(kind, what) of each entry of `include:`: ("local", path) or ("remote", url), ...."""
    for entry in value if isinstance(value, list) else [value]:
        if isinstance(entry, str):
            yield ("remote", entry) if "://" in entry else ("local", entry)
        elif isinstance(entry, dict):
            for kind in ("local", "remote", "project", "template", "component"):
                if kind in entry:
                    yield kind, str(entry[kind]) + (f" {entry.get('file')}" if kind == "project" else "")
                    break


def load(path: str, read: Callable[[str], str], glob: Callable[[str], list[str]],
         notes: list[Skipped], seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The file at `path` (relative to the repository's root) with its local includes merged in,
    included first, the including file's own keys over them."""
    if path in seen:
        raise GitLabCIError(f"{path} includes itself ({' -> '.join((*seen, path))})")
    if len(seen) > MAX_INCLUDES:
        raise GitLabCIError(f"more than {MAX_INCLUDES} nested includes at {path}")
    try:
        text = read(path)
    except OSError as e:
        where = f" (included by {seen[-1]})" if seen else ""
        raise GitLabCIError(f"{path}{where}: {e.strerror or e}") from e
    doc = parse_yaml(text, path)
    merged: dict[str, Any] = {}
    for kind, what in _include_entries(doc.get("include", [])):
        if kind != "local":
            notes.append(Skipped(what, f"include in {path}", f"{kind} include not read (only local files are)"))
            continue
        local = posixpath.normpath(what.lstrip("/"))
        for one in glob(local) if any(c in local for c in "*?[") else [local]:
            merged = deep_merge(merged, load(one, read, glob, notes, (*seen, path)))
    own = {k: v for k, v in doc.items() if k != "include"}
    return deep_merge(merged, own)


def resolve_references(node: Any, config: dict[str, Any], depth: int = 0) -> Any:
    """`node` with every `!reference` replaced by what it points at in `config`; a list holding a
    referenced list takes its items (as GitLab flattens `script:` and `services:`)."""
    if isinstance(node, Reference):
        if depth >= MAX_REFERENCE_DEPTH:
            raise GitLabCIError(f"!reference {list(node)} nests deeper than {MAX_REFERENCE_DEPTH} levels")
        target: Any = config
        for key in node:
            if not isinstance(target, dict) or key not in target:
                raise GitLabCIError(f"!reference {list(node)}: {key!r} not found")
            target = target[key]
        return resolve_references(target, config, depth + 1)
    if isinstance(node, dict):
        return {k: resolve_references(v, config, depth) for k, v in node.items()}
    if isinstance(node, list):
        out: list[Any] = []
        for item in node:
            value = resolve_references(item, config, depth)
            out.extend(value if isinstance(item, Reference) and isinstance(value, list) else [value])
        return out
    return node


def resolve_extends(config: dict[str, Any]) -> dict[str, Any]:
    """Every job (hidden ones too) with its `extends:` parents merged under it, in order."""
    done: dict[str, Any] = {}

    def job(name: str, chain: tuple[str, ...]) -> dict[str, Any]:
        if name in done:
            return done[name]
        if name in chain:
            raise GitLabCIError(f"extends loops: {' -> '.join((*chain, name))}")
        if len(chain) >= MAX_EXTENDS_DEPTH:
            raise GitLabCIError(f"extends nests deeper than {MAX_EXTENDS_DEPTH} levels at {name}")
        body = config.get(name)
        if not isinstance(body, dict):
            raise GitLabCIError(f"{chain[-1]}: extends {name}, which is not a job" if chain else f"{name} is not a job")
        parents = body.get("extends", [])
        merged: dict[str, Any] = {}
        for parent in [parents] if isinstance(parents, str) else parents:
            merged = deep_merge(merged, job(str(parent), (*chain, name)))
        done[name] = deep_merge(merged, {k: v for k, v in body.items() if k != "extends"})
        return done[name]

    return {name: (job(name, ()) if name not in RESERVED and isinstance(body, dict) else body)
            for name, body in config.items()}


def _inherits(job: dict[str, Any], what: str, key: str) -> bool:
    """Whether `inherit: {what: ...}` lets the job take `key` from default / global variables."""
    rule = (job.get("inherit") or {}).get(what, True) if isinstance(job.get("inherit"), dict) else True
    return key in rule if isinstance(rule, list) else bool(rule)


def _variables(block: Any) -> dict[str, tuple[str, bool]]:
    """`variables:` -> {name: (value, expand)}; a `value:` map may say `expand: false`."""
    out: dict[str, tuple[str, bool]] = {}
    for k, v in (block or {}).items() if isinstance(block, dict) else []:
        if isinstance(v, dict):
            out[str(k)] = ("" if v.get("value") is None else str(v.get("value")), v.get("expand", True) is not False)
        else:
            out[str(k)] = ("" if v is None else str(v).lower() if isinstance(v, bool) else str(v), True)
    return out


def expand(text: str, variables: dict[str, tuple[str, bool]], depth: int = 0) -> tuple[str, list[str]]:
    """`text` with `$VAR` and `${VAR}` replaced (recursively, as GitLab expands variables in
    variables) and `$$` made `$`; also the names of variables that had no value."""
    missing: list[str] = []

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(2)
        if name not in variables:
            missing.append(name)
            return m.group(0)
        value, recurse = variables[name]
        if not recurse or depth >= 10:
            return value
        inner, more = expand(value, variables, depth + 1)
        missing.extend(more)
        return inner

    return _VAR.sub(one, text), missing


def _matrix(job: dict[str, Any]) -> list[dict[str, tuple[str, bool]]]:
    """The variables of each `parallel: matrix:` combination ([{}] for a job without one)."""
    parallel = job.get("parallel")
    rows = parallel.get("matrix") if isinstance(parallel, dict) else None
    if not isinstance(rows, list):
        return [{}]
    combos: list[dict[str, tuple[str, bool]]] = []
    for row in rows:
        if not isinstance(row, dict):
            continue
        keys = [str(k) for k in row]
        values = [v if isinstance(v, list) else [v] for v in row.values()]
        combos += [{k: (str(v), True) for k, v in zip(keys, combo, strict=True)} for combo in itertools.product(*values)]
    return combos or [{}]


def _names(value: Any) -> Iterator[str]:
    """The image names of an `image:` (string or `name:` map) or `services:` (a list of either)."""
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, list):
            yield from _names(item)
        elif isinstance(item, dict) and item.get("name") is not None:
            yield str(item["name"])
        elif isinstance(item, str | int | float) and not isinstance(item, bool):
            yield str(item)


def job_images(name: str, job: dict[str, Any], config: dict[str, Any],
               extra: dict[str, str]) -> Iterator[Found | Skipped]:
    """What job `name` pulls: its image and services, or those of `default:` (or the old globals)."""
    default = config["default"] if isinstance(config.get("default"), dict) else {}
    base: dict[str, tuple[str, bool]] = {}
    for k, v in _variables(config.get("variables")).items():
        if _inherits(job, "variables", k):
            base[k] = v
    base.update(_variables(job.get("variables")))
    for key in DEFAULT_KEYWORDS:
        if key in job:
            value = job[key]
        elif _inherits(job, "default", key) and key in default:
            value = default[key]
        else:
            value = config.get(key)
        for combo in _matrix(job):
            variables = {**base, **combo, **{k: (v, False) for k, v in extra.items()}}
            for text in _names(value):
                image, missing = expand(text, variables)
                origin = f"job {name}: {key}"
                if missing:
                    yield Skipped(text, origin, "unresolved " + ", ".join(f"${m}" for m in dict.fromkeys(missing)))
                elif not image.strip():
                    yield Skipped(text, origin, "empty after its variables were expanded")
                else:
                    yield Found(image.strip(), origin)


def images(path: str, read: Callable[[str], str], glob: Callable[[str], list[str]],
           extra: dict[str, str] | None = None) -> tuple[list[Found], list[Skipped]]:
    """Every image the pipeline at `path` pulls (job by job, hidden jobs left out), and what was
    skipped. `extra`: values for variables the file does not set (CI/CD settings, predefined ones),
    over the file's own, as GitLab ranks them."""
    notes: list[Skipped] = []
    raw = load(path, read, glob, notes)
    config = resolve_extends(resolve_references(raw, raw))
    found: list[Found] = []
    for name, job in config.items():
        if name in RESERVED or str(name).startswith(".") or not isinstance(job, dict):
            continue
        for item in job_images(str(name), job, config, extra or {}):
            if isinstance(item, Found):
                found.append(item)
            else:
                notes.append(item)
    return found, notes
