"""hubcache's CA: made by hubcache (before mitmproxy would make its own, unconstrained one) with a
critical Name Constraints extension permitting only what hubcache intercepts; `hubcache ca show`
and `hubcache ca renew`.

The files are mitmproxy's, so mitmproxy loads the CA as its own: <confdir>/mitmproxy-ca.pem (key
and certificate, mode 0600), mitmproxy-ca-cert.pem (the one runners trust; .cer the same bytes),
mitmproxy-ca.p12 (0600) and mitmproxy-ca-cert.p12. The confdir is made 0700, and an existing one
loses its world permissions.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hubcache.decide.canames import Permitted, permitted, uncovered
from hubcache.settings import CDN_SUFFIXES, DEFAULT_HOME, DIRECT_HOST, Settings

KEY_FILE = "mitmproxy-ca.pem"
CERT_FILE = "mitmproxy-ca-cert.pem"
_PUBLIC = ("mitmproxy-ca-cert.pem", "mitmproxy-ca-cert.cer", "mitmproxy-ca-cert.p12")
_SECRET = ("mitmproxy-ca.pem", "mitmproxy-ca.p12")
VALIDITY = datetime.timedelta(days=5 * 365)
BACKDATE = datetime.timedelta(days=2)  # as mitmproxy does: clients with a clock a little behind
CN = "hubcache CA (registries only)"
_ALL_IPS = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


def intercepted(s: Settings) -> list[str]:
    """Every host pattern hubcache intercepts (its registry table, token realm and CDN hosts) and
    its own blob host: what the CA must vouch for."""
    return [*s.registries.patterns, *sorted(s.auth_hosts), *sorted(s.cdn_hosts), *("*" + x for x in CDN_SUFFIXES),
            DIRECT_HOST]


@dataclass(frozen=True)
class CAInfo:
    cert: x509.Certificate
    names: Permitted | None  # None: no Name Constraints (a CA mitmproxy made, or any other)

    @property
    def fingerprint(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex(":").upper()

    @property
    def subject(self) -> str:
        return self.cert.subject.rfc4514_string()


def names_of(cert: x509.Certificate) -> Permitted | None:
    """The permitted names of a CA certificate, or None when it has no Name Constraints."""
    try:
        nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None
    subtrees = nc.permitted_subtrees or []
    dns = tuple(str(n.value) for n in subtrees if isinstance(n, x509.DNSName))
    ips = tuple(str(n.value.network_address) for n in subtrees
                if isinstance(n, x509.IPAddress) and isinstance(n.value, ipaddress.IPv4Network | ipaddress.IPv6Network))
    return Permitted(dns, ips)


def load(confdir: str | Path) -> CAInfo:
    """The CA of `confdir` (its distributed certificate). Raises OSError/ValueError."""
    cert = x509.load_pem_x509_certificate((Path(confdir) / CERT_FILE).read_bytes())
    return CAInfo(cert, names_of(cert))


def _constraints(names: Permitted) -> x509.NameConstraints:
    allowed: list[x509.GeneralName] = [x509.DNSName(d) for d in names.dns]
    allowed += [x509.IPAddress(ipaddress.ip_network(ip)) for ip in names.ips]
    excluded = None if names.ips else [x509.IPAddress(n) for n in _ALL_IPS]
    return x509.NameConstraints(permitted_subtrees=allowed, excluded_subtrees=excluded)


def make(names: Permitted, key_size: int = 2048) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A new key and self-signed CA certificate limited to `names` (RSA: mitmproxy's leaf
    certificates carry the CA's own public key, and every client takes RSA)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CN), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hubcache")])
    now = datetime.datetime.now(datetime.UTC)
    usage = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(_constraints(names), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _write(path: Path, data: bytes, mode: int) -> None:
    """Written under a temporary name with its mode from the start, then renamed over."""
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write(confdir: str | Path, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> None:
    d = secure_dir(confdir)
    pem_cert = cert.public_bytes(serialization.Encoding.PEM)
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    none = serialization.NoEncryption()
    # the certificates first: a crash in between leaves no key whose certificate is missing
    _write(d / "mitmproxy-ca-cert.pem", pem_cert, 0o644)
    _write(d / "mitmproxy-ca-cert.cer", pem_cert, 0o644)
    _write(d / "mitmproxy-ca-cert.p12",
           pkcs12.serialize_key_and_certificates(b"hubcache", None, cert, None, none), 0o644)
    _write(d / "mitmproxy-ca.p12", pkcs12.serialize_key_and_certificates(b"hubcache", key, cert, None, none), 0o600)
    _write(d / KEY_FILE, pem_key + pem_cert, 0o600)


def secure_dir(confdir: str | Path) -> Path:
    """The confdir, made 0700 if new; an existing one loses its world permissions."""
    d = Path(confdir)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = d.stat().st_mode & 0o777
    if mode & 0o007:
        os.chmod(d, mode & ~0o007)
    return d


def ensure(confdir: str | Path, patterns: Iterable[str]) -> tuple[CAInfo, bool]:
    """The confdir's CA, made (constrained to `patterns`) when it holds none. True: made now.
    The key file of an existing CA is made 0600 if it was more open."""
    d = secure_dir(confdir)
    key_file = d / KEY_FILE
    if key_file.exists():
        if key_file.stat().st_mode & 0o077:
            os.chmod(key_file, 0o600)
        return load(d), False
    key, cert = make(permitted(patterns))
    write(d, key, cert)
    return CAInfo(cert, names_of(cert)), True


def problems(info: CAInfo, patterns: Iterable[str]) -> list[str]:
    """What is wrong with this CA for these intercepted patterns, each with the fix ([] when nothing)."""
    if info.names is None:
        return [f"the CA {info.subject} has no Name Constraints: it can vouch for any site to every runner that "
                "trusts it; fix: hubcache ca renew, then give runners the new certificate and remove the old one"]
    missing = uncovered(patterns, info.names)
    if missing:
        return [f"the CA may not vouch for {', '.join(missing)} (it permits {', '.join(info.names.dns + info.names.ips)}): "
                "clients get a certificate error there; fix: hubcache ca renew (with the same --set "
                "hubcache_registries...), then give runners the new certificate"]
    return []


def settings_from(sets: list[str]) -> Settings:
    """hubcache's settings from `--set OPTION=VALUE`s, as `hubcache run` would parse them."""
    from mitmproxy import options

    from hubcache import settings

    opts = options.Options()
    settings.load(opts)
    opts.set(*sets)
    return Settings.parse(opts, set())


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="ca_command", required=True)
    for name, text in (("show", "print the CA's fingerprint, validity and the names it may vouch for"),
                       ("renew", "make a new CA for the current registry table (the old one is deleted)")):
        c = sub.add_parser(name, help=text)
        c.add_argument("--confdir", default=DEFAULT_HOME, help="where the CA lives (as hubcache run's --confdir)")
        c.add_argument("--set", dest="sets", action="append", default=[], metavar="OPTION=VALUE",
                       help="hubcache's options as hubcache run gets them (hubcache_registries, hubcache_auth_hosts ...)")


def _show(info: CAInfo, confdir: str, patterns: list[str]) -> None:
    c = info.cert
    print(f"CA:          {info.subject}")
    print(f"certificate: {Path(confdir) / CERT_FILE}")
    print(f"sha256:      {info.fingerprint}")
    print(f"valid:       {c.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to {c.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")
    if info.names is None:
        print("permitted:   any name (no Name Constraints)")
    else:
        print(f"permitted:   {' '.join(info.names.dns + info.names.ips)} (DNS subtrees: each name and every name below it)")
    for p in problems(info, patterns):
        print(f"problem:     {p}")


def run(args: argparse.Namespace) -> int:
    try:
        s = settings_from(args.sets)
    except Exception as e:  # mitmproxy's OptionsError, hubcache's SettingsError: a bad --set
        print(f"hubcache: {e}", file=sys.stderr)
        return 2
    patterns = intercepted(s)
    if args.ca_command == "show":
        try:
            info = load(args.confdir)
        except (OSError, ValueError) as e:
            print(f"hubcache: no CA at {Path(args.confdir) / CERT_FILE} ({e}): hubcache run makes one, "
                  "or hubcache ca renew", file=sys.stderr)
            return 2
        _show(info, args.confdir, patterns)
        return 1 if problems(info, patterns) else 0
    try:
        key, cert = make(permitted(patterns))
        write(args.confdir, key, cert)
    except (OSError, ValueError) as e:
        print(f"hubcache: {e}", file=sys.stderr)
        return 2
    info = CAInfo(cert, names_of(cert))
    _show(info, args.confdir, patterns)
    print(f"\nA new CA is in {args.confdir} (the old key is gone). Now: restart hubcache; put "
          f"{Path(args.confdir) / CERT_FILE} on every runner host in place of the old one (system trust store, "
          "then `update-ca-certificates`; /etc/docker/certs.d and /etc/containers/certs.d where used; "
          "restart dockerd/containerd); remove the old CA (sha256 as `hubcache ca show` printed before) from "
          "their trust stores.")
    return 0
