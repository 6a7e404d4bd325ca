"""Long-term Ed25519 identities of domains and the roster of peers an owner trusts."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from fednb.errors import InvalidInput

__all__ = ["Identity", "Roster", "canonical", "public_key"]


def canonical(*parts: object) -> bytes:
    """The bytes a signature covers: a JSON array, compact and with sorted keys."""
    return json.dumps(list(parts), sort_keys=True, separators=(",", ":")).encode()


class Identity:
    """A domain's Ed25519 signing key; ``public`` (hex) is what peers put on their roster."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public = raw.hex()

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        """The identity kept in ``path`` (a 0600 file), made on first use."""
        if path.exists():
            return cls(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(path.read_text().strip())))
        ident = cls.generate()
        raw = ident._key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                       serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(raw.hex())
        return ident

    def sign(self, message: bytes) -> str:
        return self._key.sign(message).hex()

    def tls_certificate(self, common_name: str, dns_name: str) -> tuple[bytes, bytes]:
        """A TLS certificate self-signed by this identity's key for ``dns_name``, and that
        key, both PEM: what a domain serves behind a relay. Clients pin the certificate's
        public key (the identity), not the certificate, so one made afresh is as good as
        the last; the key is the identity's own, so the pair holds no other secret."""
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
                .sign(self._key, None))
        key = self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
        return cert.public_bytes(serialization.Encoding.PEM), key

    def __repr__(self) -> str:
        return f"Identity(public={self.public[:16]}...)"


def public_key(identity: str | Identity) -> str:
    """The Ed25519 public key (hex, lower case) of ``identity``: an :class:`Identity`, or
    the key itself in hex, checked.

    Raises
    ------
    InvalidInput
        If it is neither an Identity nor an Ed25519 public key in hex (64 digits).
    """
    key = identity.public if isinstance(identity, Identity) else identity
    if not isinstance(key, str):
        raise InvalidInput(f"a peer's identity is an Identity or its public key in hex, not "
                           f"{type(identity).__name__}")
    key = key.strip().lower()
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(key))
    except ValueError:
        raise InvalidInput(f"{key!r} is not an Ed25519 public key in hex (64 digits)") from None
    return key


def verify(public_hex: str, message: bytes, signature_hex: str) -> bool:
    """True when ``signature_hex`` is the holder of ``public_hex``'s signature of ``message``."""
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex)).verify(
            bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError):
        return False
    return True


class Roster:
    """The peer domains an owner will aggregate with: name -> Ed25519 public key (hex)."""

    def __init__(self, peers: dict[str, str] | None = None) -> None:
        self._peers: dict[str, str] = {}
        for name, key in (peers or {}).items():
            self.trust(name, key)

    def trust(self, name: str, public: str | Identity) -> None:
        """Put ``name`` on the roster with its key: an :class:`Identity` (a domain's
        ``dom.identity``) or its public key in hex (``/info``'s ``identity``)."""
        self._peers[name] = public_key(public)

    def forget(self, name: str) -> None:
        self._peers.pop(name, None)

    def key(self, name: str) -> str | None:
        return self._peers.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._peers

    def as_dict(self) -> dict[str, str]:
        return dict(self._peers)
