"""Certificates: reading PEM bundles, naming a certificate, and whether hubcache's CA is trusted.

Pure: tested with a certificate made in the test.
"""

from __future__ import annotations

import hashlib
import re
import ssl
import warnings

from cryptography import x509

from hubcache.tools.doctor.check import Check


def _load(der: bytes) -> x509.Certificate:

    with warnings.catch_warnings():  # old CAs in system bundles have non-positive serials
        warnings.simplefilter("ignore")
        return x509.load_der_x509_certificate(der)


def cert_subject(der: bytes) -> str:
    try:
        return _load(der).subject.rfc4514_string()
    except ValueError:
        return "?"


def cert_issuer(der: bytes) -> str:
    return _load(der).issuer.rfc4514_string()


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()[:16]


def pem_certs(text: str) -> list[bytes]:
    """Every certificate in a PEM bundle, as DER."""
    out = []
    for m in re.finditer(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S):
        try:
            out.append(ssl.PEM_cert_to_DER_cert(m.group(0)))
        except ValueError:
            continue
    return out


def judge_ca(bundle: str, bundle_ders: list[bytes], ca_der: bytes | None, ca_name: str,
             issuer: str, fix: str) -> Check:
    """Is hubcache's CA in the system bundle? Compared byte for byte with `--ca` when given,
    else by subject with the issuer the proxy's certificate named (or any CA named hubcache CA, or
    mitmproxy: one mitmproxy made before)."""
    name = "CA in system store"
    if ca_der is not None:
        fp = fingerprint(ca_der)
        if ca_der in bundle_ders:
            return Check(name, True, f"{ca_name} (sha256 {fp}) is in {bundle}")
        return Check(name, False, f"{ca_name} (sha256 {fp}) is not in {bundle}", fix)
    wanted = issuer or "with hubcache CA or mitmproxy in its name"
    for der in bundle_ders:
        subject = cert_subject(der)
        if (issuer and subject == issuer) or (not issuer and ("hubcache CA" in subject or "mitmproxy" in subject)):
            return Check(name, True, f"{subject} (sha256 {fingerprint(der)}) is in {bundle}")
    return Check(name, False, f"no CA named {wanted} in {bundle}", fix)
