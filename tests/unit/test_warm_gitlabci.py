"""What `hubcache warm` reads from a .gitlab-ci.yml: the images GitLab would pull, job by job."""

from __future__ import annotations

import fnmatch
import textwrap

import pytest

from hubcache.tools.warm.gitlabci import Found, GitLabCIError, Skipped, expand, images


def run(files: dict[str, str], extra: dict[str, str] | None = None, root: str = ".gitlab-ci.yml"):
    texts = {k: textwrap.dedent(v) for k, v in files.items()}

    def read(path: str) -> str:
        if path not in texts:
            raise FileNotFoundError(2, "No such file or directory", path)
        return texts[path]

    def glob(pattern: str) -> list[str]:
        return sorted(p for p in texts if fnmatch.fnmatch(p, pattern))

    return images(root, read, glob, extra)


def names(found: list[Found]) -> set[str]:
    return {f.image for f in found}


def test_image_and_services_in_both_forms_default_and_extends_through_hidden_jobs():
    found, skipped = run({".gitlab-ci.yml": """
        variables:
          PG_VERSION: "12.2"
          REDIS: redis
        default:
          image: alpine:3.19
          services:
            - name: docker:24-dind
              alias: docker
        .db:
          services:
            - postgres:${PG_VERSION}
            - name: $REDIS:7
        .tests:
          extends: .db
          image:
            name: python:3.12-slim
            entrypoint: [""]
        unit:
          extends: .tests
          script: [pytest]
        lint:
          script: [ruff]
        build:
          image: golang:1.22
          variables:
            PG_VERSION: "16"
          extends: .db
          script: [make]
    """})
    assert skipped == []
    by_job = {}
    for f in found:
        by_job.setdefault(f.origin, set()).add(f.image)
    assert by_job == {
        "job unit: image": {"python:3.12-slim"},
        "job unit: services": {"postgres:12.2", "redis:7"},
        "job lint: image": {"alpine:3.19"},
        "job lint: services": {"docker:24-dind"},
        "job build: image": {"golang:1.22"},
        "job build: services": {"postgres:16", "redis:7"},  # the job's own variable wins over the global one
    }


def test_hidden_jobs_alone_pull_nothing_and_unused_default_is_not_named():
    found, _ = run({".gitlab-ci.yml": """
        default:
          image: alpine:3
        .template:
          image: never:1
        only:
          image: used:1
          script: [x]
    """})
    assert names(found) == {"used:1"}


def test_local_includes_nested_wildcards_and_the_main_file_wins():
    found, skipped = run({
        ".gitlab-ci.yml": """
            include:
              - local: /ci/base.yml
              - 'ci/jobs/*.yml'
            variables:
              TAG: "2"
        """,
        "ci/base.yml": """
            include: ci/vars.yml
            variables:
              TAG: "1"
            .base:
              image: busybox:$TAG
        """,
        "ci/vars.yml": "variables:\n  OTHER: x\n",
        "ci/jobs/a.yml": "a:\n  extends: .base\n  script: [a]\n",
        "ci/jobs/b.yml": "b:\n  image: nginx:$OTHER\n  script: [b]\n",
    })
    assert names(found) == {"busybox:2", "nginx:x"}
    assert skipped == []


def test_remote_and_template_includes_are_reported_not_followed():
    found, skipped = run({".gitlab-ci.yml": """
        include:
          - remote: https://example.com/ci.yml
          - template: Auto-DevOps.gitlab-ci.yml
          - project: grp/ci
            file: /base.yml
        job:
          image: alpine:3
          script: [x]
    """})
    assert names(found) == {"alpine:3"}
    assert [s.reason.split()[0] for s in skipped] == ["remote", "template", "project"]


def test_reference_tags_nested_and_flattened_in_services():
    found, skipped = run({".gitlab-ci.yml": """
        .images:
          db: postgres:15
          svcs:
            - redis:7
            - name: memcached:1.6
        .more:
          svcs:
            - !reference [.images, svcs]
            - mysql:8
        job:
          image: !reference [.images, db]
          services:
            - !reference [.more, svcs]
            - rabbitmq:3
          script: [x]
    """})
    assert skipped == []
    assert names(found) == {"postgres:15", "redis:7", "memcached:1.6", "mysql:8", "rabbitmq:3"}


def test_unresolved_variables_are_skipped_with_their_names_and_extra_values_resolve_them():
    files = {".gitlab-ci.yml": """
        build:
          image: $CI_REGISTRY_IMAGE/builder:${CI_COMMIT_REF_SLUG}
          services: ["$$LITERAL"]
          script: [x]
    """}
    found, skipped = run(files)
    assert found == [Found("$LITERAL", "job build: services")]  # $$ is a literal $, not a variable
    assert skipped[0] == Skipped("$CI_REGISTRY_IMAGE/builder:${CI_COMMIT_REF_SLUG}", "job build: image",
                                 "unresolved $CI_REGISTRY_IMAGE, $CI_COMMIT_REF_SLUG")
    found, skipped = run(files, {"CI_REGISTRY_IMAGE": "registry.gitlab.com/g/p", "CI_COMMIT_REF_SLUG": "main"})
    assert names(found) == {"registry.gitlab.com/g/p/builder:main", "$LITERAL"}


def test_variables_in_variables_value_maps_expand_false_and_inherit():
    found, _ = run({".gitlab-ci.yml": """
        variables:
          REGISTRY: quay.io
          IMAGE: "${REGISTRY}/org/app"
          RAW:
            value: "$NOPE"
            expand: false
          VERSION:
            value: "1.0"
            description: the version
        default:
          image: alpine:3
        a:
          image: $IMAGE:$VERSION
          script: [x]
        b:
          inherit:
            default: false
            variables: [VERSION]
          image: $IMAGE:$VERSION
          script: [x]
        c:
          inherit:
            default: [services]
          script: [x]
        d:
          image: $RAW
          script: [x]
    """})
    assert {(f.origin, f.image) for f in found} == {("job a: image", "quay.io/org/app:1.0"), ("job d: image", "$NOPE")}


def test_parallel_matrix_gives_each_combination():
    found, _ = run({".gitlab-ci.yml": """
        test:
          image: python:$PY
          services: ["postgres:$PG"]
          parallel:
            matrix:
              - PY: ["3.11", "3.12"]
                PG: "15"
              - PY: "3.13"
                PG: ["16", "17"]
          script: [x]
    """})
    assert names(found) == {"python:3.11", "python:3.12", "python:3.13", "postgres:15", "postgres:16", "postgres:17"}


def test_anchors_and_merge_keys_and_the_old_top_level_image():
    found, _ = run({".gitlab-ci.yml": """
        image: ruby:3.3
        .common: &common
          services: [postgres:14]
        job:
          <<: *common
          script: [x]
    """})
    assert names(found) == {"ruby:3.3", "postgres:14"}


@pytest.mark.parametrize("files, message", [
    ({".gitlab-ci.yml": "a:\n  extends: .missing\n"}, "extends .missing, which is not a job"),
    ({".gitlab-ci.yml": ".a:\n  extends: .b\n.b:\n  extends: .a\nj:\n  extends: .a\n"}, "extends loops"),
    ({".gitlab-ci.yml": "include: x.yml\n", "x.yml": "include: .gitlab-ci.yml\n"}, "includes itself"),
    ({".gitlab-ci.yml": "include: nothere.yml\n"}, "nothere.yml (included by .gitlab-ci.yml): No such file"),
    ({".gitlab-ci.yml": "job: [unclosed\n"}, "not valid YAML"),
    ({".gitlab-ci.yml": "j:\n  image: !reference [.x, image]\n"}, "!reference ['.x', 'image']: '.x' not found"),
])
def test_pipelines_gitlab_would_refuse_are_errors_that_say_where(files, message):
    with pytest.raises(GitLabCIError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        run(files)


def test_expand():
    assert expand("a$X${Y}$$Z", {"X": ("1", True), "Y": ("$X$X", True)}) == ("a111$Z", [])
    assert expand("$A:$B", {}) == ("$A:$B", ["A", "B"])
