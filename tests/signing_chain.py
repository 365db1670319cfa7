"""A throwaway certificate chain for C2PA tests: a root CA and a signer it issued (EC P-256), as an operator
would get from their CA. c2pa-rs refuses self-signed signers, so the chain has two links."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class SigningChain:
    cert: Path  # the signer's certificate, then the root's
    key: Path
    root: Path  # the trust anchor


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tests")]
    )


def _certificate(subject: str, key, issuer: x509.Name, issuer_key, authority: bool, key_id: bool = True):
    now = dt.datetime.now(dt.UTC)
    usage = dict(content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False)
    usage |= dict(encipher_only=False, decipher_only=False)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=authority, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=not authority, key_cert_sign=authority, crl_sign=authority, **usage),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if not authority:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
    if not authority and key_id:
        identifier = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())
        builder = builder.add_extension(identifier, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_chain(folder: Path, signer_name: str = "Test Operator", usable: bool = True) -> SigningChain:
    """`usable=False`: the signer's certificate lacks what C2PA asks of one (its authority key id), as a
    certificate made for another purpose would."""
    folder.mkdir(parents=True, exist_ok=True)
    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = _certificate("Test Root CA", root_key, _name("Test Root CA"), root_key, authority=True)
    signer = _certificate(signer_name, key, root.subject, root_key, authority=False, key_id=usable)
    pem = serialization.Encoding.PEM
    chain = SigningChain(folder / "chain.pem", folder / "key.pem", folder / "root.pem")
    chain.cert.write_bytes(signer.public_bytes(pem) + root.public_bytes(pem))
    chain.key.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    chain.root.write_bytes(root.public_bytes(pem))
    return chain
