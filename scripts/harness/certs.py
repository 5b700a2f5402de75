"""Test PKI for the fake Docker Hub (and the fleet tests' parent): one CA, one TLS server cert, one JWT signing cert.

Go (registry, skopeo, dockerd) is strict about certificates: the CA needs
BasicConstraints CA=true and keyCertSign, and every server name must be a SAN.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TestPKI:
    ca_cert: Path  # PEM; what clients and the registry's rootcertbundle trust
    server_cert: Path  # PEM chain: leaf then CA
    server_key: Path
    jwt_cert: Path  # PEM: leaf only; the token server puts it in the JWT's x5c
    jwt_key: Path  # RSA, because the tokens are RS256


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _builder(subject: str, issuer: str, public_key) -> x509.CertificateBuilder:
    # Backdate a little: the servers and clients share a clock, but Go
    # rejects certs whose notBefore is even a second in the future.
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
    )


def make_pki(directory: Path, dns_names: list[str], ips: list[str], ca_cn: str = "hubcache test CA") -> TestPKI:
    """Write a fresh CA, server cert and JWT cert into `directory`. ca_cn: the CA's name; another
    PKI that must not pass for the fake Hub's (the fleet tests' parent) names its CA otherwise, so
    that a refusal names the CA that is missing."""
    directory.mkdir(parents=True, exist_ok=True)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        _builder(ca_cn, ca_cn, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, key, extensions) -> x509.Certificate:
        b = _builder(cn, ca_cn, key.public_key()).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        ).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        for ext in extensions:
            b = b.add_extension(ext, critical=False)
        return b.sign(ca_key, hashes.SHA256())

    server_key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(n) for n in dns_names] + [
        x509.IPAddress(ipaddress.ip_address(i)) for i in ips
    ]
    server = leaf(
        dns_names[0],
        server_key,
        [
            x509.SubjectAlternativeName(sans),
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        ],
    )

    jwt_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwt = leaf("hubcache test token signer", jwt_key, [])

    pki = TestPKI(
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        jwt_cert=directory / "jwt.pem",
        jwt_key=directory / "jwt-key.pem",
    )
    pem = serialization.Encoding.PEM
    pki.ca_cert.write_bytes(ca.public_bytes(pem))
    pki.server_cert.write_bytes(server.public_bytes(pem) + ca.public_bytes(pem))
    pki.server_key.write_bytes(_pem_key(server_key))
    pki.jwt_cert.write_bytes(jwt.public_bytes(pem))
    pki.jwt_key.write_bytes(_pem_key(jwt_key))
    for p in (pki.server_key, pki.jwt_key):
        p.chmod(0o600)
    return pki
