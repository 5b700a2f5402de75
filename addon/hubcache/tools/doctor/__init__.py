"""`hubcache doctor`: run on a runner host, checks that the host pulls Docker Hub through hubcache.

One line per check, `OK`, `FAIL` (with the fix in one sentence) or `SKIP` (could not check, and
why). Exit code 0 when every check that ran passed, 1 otherwise.

The pure parts are modules of their own, tested without a network: `proxyenv` (proxy URLs,
NO_PROXY), `dockerd` (/proc/<pid>/environ, `systemctl show`, daemon.json, the verdict), `certs`,
`hub` (the test pull's image on any registry and what the answers mean), with `check` (one check's
result) below them all. The I/O: `probe` (CONNECT, TLS, a request through the proxy),
`proxychecks` and `hostchecks` (the checks), `runner` (the command line). Nothing here needs root
except reading another user's /proc/<pid>/environ, and nothing is changed on the host.
"""

from hubcache.tools.doctor.certs import cert_issuer, cert_subject, fingerprint, judge_ca, pem_certs
from hubcache.tools.doctor.check import Check, exit_code
from hubcache.tools.doctor.dockerd import daemon_json_proxies, judge_docker, parse_environ, parse_systemctl_environment
from hubcache.tools.doctor.hub import answered_by, hub_outcome, parse_challenge, pull_target
from hubcache.tools.doctor.proxyenv import (
    ProxyURL,
    no_proxy_from_env,
    no_proxy_match,
    parse_proxy,
    proxy_from_env,
    same_proxy,
)
from hubcache.tools.doctor.runner import add_arguments, run

__all__ = [
    "Check",
    "ProxyURL",
    "add_arguments",
    "answered_by",
    "cert_issuer",
    "cert_subject",
    "daemon_json_proxies",
    "exit_code",
    "fingerprint",
    "hub_outcome",
    "judge_ca",
    "judge_docker",
    "no_proxy_from_env",
    "no_proxy_match",
    "parse_challenge",
    "parse_environ",
    "parse_proxy",
    "parse_systemctl_environment",
    "pem_certs",
    "proxy_from_env",
    "pull_target",
    "run",
    "same_proxy",
]
