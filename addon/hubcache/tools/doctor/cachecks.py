"""The checks of hubcache's CA itself: it has Name Constraints (a CA mitmproxy made before can
vouch for any site to every runner that trusts it), and they cover every host hubcache
intercepts (a registry added after the CA was made gets certificate errors)."""

from __future__ import annotations

from pathlib import Path

from hubcache.decide.canames import uncovered
from hubcache.tools import ca
from hubcache.tools.doctor.check import Check

RENEW = "on hubcache's host: hubcache ca renew (with hubcache run's --set options), restart hubcache, then give runners the new certificate"


def check_ca(cert_file: str, sets: list[str]) -> list[Check]:
    """`cert_file`: hubcache's CA certificate; `sets`: hubcache run's --set options (its registry table)."""
    try:
        info = _load_file(cert_file)
    except (OSError, ValueError) as e:
        return [Check("CA name constraints", None, f"cannot read {cert_file}: {e}")]
    if info.names is None:
        return [Check("CA name constraints", False, f"{info.subject} (sha256 {info.fingerprint[:23]}) has none: it can "
                      "vouch for any site (GitLab, package mirrors) to every runner that trusts it", RENEW)]
    names = " ".join(info.names.dns + info.names.ips)
    out = [Check("CA name constraints", True, f"{info.subject} may vouch only for {names}")]
    try:
        patterns = ca.intercepted(ca.settings_from(sets))
    except Exception as e:  # a bad --set: the options' own message
        return [*out, Check("CA covers the registries", None, f"cannot read the options: {e}")]
    missing = uncovered(patterns, info.names)
    if missing:
        out.append(Check("CA covers the registries", False, f"hubcache intercepts {', '.join(missing)}, which the CA may "
                         "not vouch for: clients get a certificate error there", RENEW))
    else:
        out.append(Check("CA covers the registries", True, f"every host hubcache intercepts ({len(patterns)} entries)"))
    return out


def _load_file(path: str) -> ca.CAInfo:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    return ca.CAInfo(cert, ca.names_of(cert))
