"""The checks of a parent registry (hubcache_parent; docs/design.md, "A parent registry"), run where
hubcache runs: hubcache connects to its parent itself, directly.

Per parent, up to three lines: `parent reachable` (its name resolves; TCP, and TLS verified with
the usual trust plus --parent-ca, as hubcache_parent_ca adds it), `parent login` (GET /v2/: 200,
or 401 and then 200 with the login of --parent-credentials, Basic or a token of the parent's
realm as its challenge asks; the file must be 0600, and a plain-http parent gets no login) and,
with --image of a registry that has this parent, `parent pull` (a HEAD of that tag at the parent:
its proxy reaches the registry). The requests are hubcache's own code (hooks/parentprobe.py, which
asks through upstream/parent.Parent); what the answers mean is judged here, pure (`judge`), and no
secret is ever shown: the login file's content never, account names at most.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from hubcache import registries
from hubcache.hooks.parentprobe import CERTIFICATE, CONNECT, REFUSED, TIMEOUT, TLS, ParentFacts, Reply, probe
from hubcache.model import Kind, Route
from hubcache.registries import DOCKER_HUB
from hubcache.settings import Settings, parse_parent_prefix, parse_parents
from hubcache.tools.doctor.check import Check
from hubcache.tools.doctor.hub import PullTarget, pull_target

REACHABLE, LOGIN, PULL = "parent reachable", "parent login", "parent pull"
CA_FIX = "give hubcache_parent_ca the parent's CA, the one that signed its certificate (and this check --parent-ca FILE)"
LOGIN_FIX = ("give hubcache_parent_credentials a file (mode 0600) with the parent's own login, one line user:password "
             "(and this check --parent-credentials FILE)")


def parent_settings(registry: str, root: str, ca: str = "", login_file: str = "", prefix: str = "",
                    upstream_ca: str = "") -> Settings:
    """The settings hubcache would run with for this one parent (`upstream_ca`: its
    ssl_verify_upstream_trusted_ca; the doctor does not know hubcache_registries, so the
    parent's registry is added to the table)."""
    return Settings(registries=registries.parse([f"+{registry}"]), parent=((registry, root),), parent_ca=ca,
                    parent_credentials=login_file, parent_prefix=prefix, ssl_verify_upstream_trusted_ca=upstream_ca or None)


def manifest_route(target: PullTarget) -> Route:
    """The manifest request of a pull, as hubcache's routes name it."""
    stored = target.repository if target.registry == DOCKER_HUB else f"{target.registry}/{target.repository}"
    name = "" if target.registry == DOCKER_HUB else target.repository
    return Route(Kind.MANIFEST, stored, target.reference, registry=target.registry, name=name)


def judge(facts: ParentFacts, ca: str = "", login_file: str = "", image: PullTarget | None = None,
          found: bool | None = None) -> list[Check]:
    """The lines for one parent. `image`: the --image to HEAD there (None: not asked for);
    `found`: whether the test pull through hubcache found it (None: not known)."""
    where = f"{facts.root} ({facts.registry}'s parent)"
    reach = _reachable(facts, where, ca)
    if not reach.ok:
        out = [reach, Check(LOGIN, None, f"{where}: not checked, the parent is not reachable")]
        return out + ([Check(PULL, None, f"{where}: {image.image} not asked, the parent is not reachable")] if image else [])
    login = _login(facts, where, login_file)
    if image is None:
        return [reach, login]
    if facts.image is None:
        return [reach, login, Check(PULL, None, f"{where}: {image.image} not asked, the parent's login check failed")]
    return [reach, login, _pull(facts.image, where, image, facts.registry, found)]


def _reachable(facts: ParentFacts, where: str, ca: str) -> Check:
    url = urlsplit(facts.root)
    host, https = url.hostname or "", url.scheme == "https"
    port = url.port or (443 if https else 80)
    if facts.resolve_error:
        return Check(REACHABLE, False, f"{where}: {host} does not resolve ({facts.resolve_error})",
                     f"put {host} in this host's DNS (or /etc/hosts), or correct hubcache_parent")
    if facts.setup_error:
        return Check(REACHABLE, False, f"{where}: {facts.setup_error}",
                     "give hubcache_parent_ca (and --parent-ca) a readable PEM file: the parent's CA")
    a = facts.anonymous or Reply()
    addresses = host if facts.addresses == (host,) else f"{host} resolves to {', '.join(facts.addresses)}"
    if a.answered:
        how = ("TLS, certificate verified by the usual trust" + (f" and --parent-ca {ca}" if ca else "")) if https else \
            "plain http (no login is sent to it)"
        return Check(REACHABLE, True, f"{where}: {addresses}; port {port}: {how}")
    if a.cause == CERTIFICATE:
        if "hostname mismatch" in a.error.lower():
            return Check(REACHABLE, False, f"{where}: TLS with {host}:{port}: its certificate does not name {host} ({a.error})",
                         f"give the parent a certificate for {host}, or name the parent in hubcache_parent as its certificate does")
        trust = f"the usual trust and --parent-ca {ca}" if ca else "the usual trust (no --parent-ca given)"
        return Check(REACHABLE, False, f"{where}: TLS with {host}:{port}: its certificate is not trusted by {trust} "
                     f"({a.error})", CA_FIX)
    if a.cause == TLS:
        return Check(REACHABLE, False, f"{where}: TLS with {host}:{port} failed ({a.error})",
                     "check that the parent serves https on that port (a plain-http parent is http:// in hubcache_parent)")
    if a.cause in (CONNECT, TIMEOUT):
        return Check(REACHABLE, False, f"{where}: {addresses}; port {port}: {a.error}",
                     f"start the parent registry, or let this host reach {host}:{port} (hubcache connects to its "
                     "parent directly, never through an egress proxy)")
    return Check(REACHABLE, False, f"{where}: {a.error}", "check the parent registry's own log")


def _login(facts: ParentFacts, where: str, login_file: str) -> Check:
    a = facts.anonymous or Reply()
    if facts.login_error:
        if "plain http" in facts.login_error:
            fix = "serve the parent over https (https:// in hubcache_parent), or give it no login"
        elif "has mode" in facts.login_error:
            fix = f"chmod 600 {login_file}"
        else:
            fix = "put one line user:password in it, mode 0600"
        return Check(LOGIN, False, f"{where}: {facts.login_error} (hubcache does not start with it)", fix)
    if a.status == 200:
        unused = f" (the login in {login_file} is not needed)" if login_file else ""
        return Check(LOGIN, True, f"{where}: GET /v2/ 200, no login asked{unused}")
    if a.status != 401:
        return Check(LOGIN, False, f"{where}: GET /v2/ {a.status}: not what a registry answers",
                     "check that hubcache_parent is the root URL of a registry (https://HOST[:PORT]) and its own log")
    if not facts.challenge:
        shown = a.headers.get("www-authenticate", "")[:200] or "no WWW-Authenticate"
        return Check(LOGIN, False, f"{where}: GET /v2/ 401 with {shown}: no login hubcache can give (Basic, or "
                     "a Bearer realm over https)", "configure the parent's auth as htpasswd or a token realm over https")
    asked = "Basic" if facts.challenge == "basic" else f"a token of {facts.realm}"
    if not login_file:
        return Check(LOGIN, False, f"{where}: GET /v2/ 401: it asks for a login ({asked})", LOGIN_FIX)
    w = facts.with_login or Reply()
    first = f"{where}: GET /v2/ 401 ({asked})"
    refused = (f"put the parent's own login (its htpasswd user or token account, never a registry's) in "
               f"{login_file}, one line user:password")
    if w.status == 200:
        return Check(LOGIN, True, f"{first}, 200 with the login in {login_file}")
    if w.status in (401, 403):
        return Check(LOGIN, False, f"{first}; the parent refused the login in {login_file} ({w.status} with it)", refused)
    if w.cause == REFUSED:
        return Check(LOGIN, False, f"{first}; the parent refused the login in {login_file} ({w.error})", refused)
    if w.answered:
        return Check(LOGIN, False, f"{first}, {w.status} with the login in {login_file}", "check the parent's own log")
    return Check(LOGIN, False, f"{first}; with the login in {login_file}: {w.error}",
                 f"let this host reach the parent's token realm {facts.realm} (https, trusted as the parent is)"
                 if facts.challenge == "bearer" else "check the parent's own log")


def _pull(r: Reply, where: str, image: PullTarget, registry: str, found: bool | None) -> Check:
    """`found`: whether the test pull through hubcache found the image (None: not known)."""
    asked = f"{where}: HEAD {image.image}"
    upstream_fix = "the parent cannot reach its upstream: check its own log (its proxy.remoteurl, its login there, its route out)"
    if r.status == 200:
        digest = r.headers.get("docker-content-digest", "?")
        return Check(PULL, True, f"{asked} 200 {digest} (the parent has it, or reaches {registry} for it)")
    if r.status >= 500:
        return Check(PULL, False, f"{asked} {r.status}", upstream_fix)
    if r.status == 404 and found:
        # distribution 2.8 answers a tag it cannot get from its upstream (down, refused) with 404
        return Check(PULL, False, f"{asked} 404, though the test pull above found it on {registry}",
                     upstream_fix + "; and hubcache_parent_prefix (--parent-prefix) if it names its repositories so")
    if r.status == 404:
        return Check(PULL, False, f"{asked} 404: neither the parent has it nor did it get it from {registry}",
                     f"pass --image of an image that exists on {registry}; if it does, {upstream_fix}")
    if r.status in (401, 403):
        return Check(PULL, False, f"{asked} {r.status}", f"give the parent's login pull access to {image.repository}")
    if r.answered:
        return Check(PULL, False, f"{asked} {r.status}", "check the parent's own log")
    return Check(PULL, False, f"{asked}: {r.error}", "check the parent's own log")


def check_all(parent: str, ca: str = "", login_file: str = "", prefix: str = "", upstream_ca: str = "",
              image: str | None = None, found: bool | None = None) -> list[Check]:
    """Every parent of `parent` (hubcache_parent's syntax); `image`: --image, when given;
    `found`: whether the test pull through hubcache found it."""
    try:
        roots = parse_parents(parent)
        prefix = parse_parent_prefix(prefix)
    except ValueError as e:
        return [Check(REACHABLE, False, f"--parent {parent!r}: {e}",
                      "give it as hubcache_parent is given: https://HOST[:PORT], or REGISTRY=https://HOST[:PORT],...")]
    target: PullTarget | None = None
    if image is not None:
        try:
            target = pull_target(image)
        except ValueError as e:
            return [Check(PULL, False, str(e), "pass --image NAME:TAG, e.g. library/alpine:3")]
    checks: list[Check] = []
    for registry, root in roots:
        mine = target if target is not None and target.registry == registry else None
        scope = manifest_route(mine or pull_target("library/hello-world" if registry == DOCKER_HUB else
                                                   f"{registry}/hubcache/doctor"))
        facts = probe(parent_settings(registry, root, ca, login_file, prefix, upstream_ca), registry, scope,
                      manifest_route(mine) if mine else None)
        checks += judge(facts, ca, login_file, mine, found)
    return checks
