"""Party keys: an Ed25519 signing key and an X25519 recipient key per party.

A **party** (a hospital, a bank, a model owner) holds two key pairs:

* ``sign`` — Ed25519 (RFC 8032): signs federation agreements and grants;
* ``recipient`` — X25519 (RFC 7748): outputs (models, results) are HPKE-sealed to it
  (RFC 9180, DHKEM(X25519, HKDF-SHA256)).

On disk (:meth:`PartyKeys.save`), in the party directory — by default
``$TEEFLOW_HOME/parties/NAME/`` (``$TEEFLOW_HOME`` defaults to ``~/.teeflow``), mode 0700:

* ``sign.ed25519.pem`` — PKCS#8 PEM, unencrypted, mode 0600;
* ``recipient.x25519.pem`` — PKCS#8 PEM, unencrypted, mode 0600;
* ``NAME.pub.json`` — the public part, :class:`PartyPublic`:
  ``{"name": NAME, "sign_key": b64url(32 raw bytes), "recipient_key": b64url(32 raw bytes)}``
  (base64url without padding, RFC 4648 §5). This is the file parties exchange and that
  ``teeflow agreement init --party NAME=FILE`` reads.

Names are DNS labels (RFC 1123 §2.1, lower case): 1–63 characters of ``a-z``, ``0-9`` and
``-``, not starting or ending with ``-``.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

from teeflow._fs import atomic_write, ensure_private_dir
from teeflow.errors import KbsError, ParseError, VerificationError
from teeflow.kbs.policy.canonical import b64url_decode, b64url_encode, validate_document

__all__ = [
    "MAX_PUBLIC_FILE_BYTES",
    "NAME_PATTERN",
    "B64Key32",
    "B64Sig64",
    "Name",
    "PartyKeys",
    "PartyPublic",
    "check_name",
    "party_dir",
    "teeflow_home",
    "verify_ed25519",
]

#: A DNS label (RFC 1123 §2.1), lower case only.
NAME_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
#: Largest ``NAME.pub.json`` accepted (bytes).
MAX_PUBLIC_FILE_BYTES = 4096
#: Largest PEM key file accepted (bytes).
_MAX_PEM_BYTES = 8192

SIGN_KEY_FILE = "sign.ed25519.pem"
RECIPIENT_KEY_FILE = "recipient.x25519.pem"


def check_name(value: object) -> str:
    """Return ``value`` if it is a DNS-label-like name, else raise ``ValueError``."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ValueError(
            f"invalid name {value!r}: expected a DNS label (1-63 of a-z, 0-9, '-', "
            "not starting or ending with '-')"
        )
    return value


def _b64_checker(length: int) -> Callable[[object], str]:
    def check(value: object) -> str:
        try:
            return b64url_encode(b64url_decode(value, length=length))
        except ParseError as exc:
            raise ValueError(str(exc)) from None

    return check


def _valid_ed25519(value: str) -> str:
    try:
        Ed25519PublicKey.from_public_bytes(b64url_decode(value, length=32))
    except ValueError:
        raise ValueError("not a valid Ed25519 public key") from None
    return value


#: A DNS-label-like name (party, federation, package).
Name = Annotated[str, BeforeValidator(check_name)]
#: 32 bytes as base64url without padding (raw Ed25519 / X25519 public key), normalised.
B64Key32 = Annotated[str, BeforeValidator(_b64_checker(32))]
#: 64 bytes as base64url without padding (an Ed25519 signature), normalised.
B64Sig64 = Annotated[str, BeforeValidator(_b64_checker(64))]
#: An Ed25519 public key (32 bytes base64url) that decodes as a curve point.
SignKey = Annotated[B64Key32, AfterValidator(_valid_ed25519)]


def teeflow_home(home: Path | str | None = None) -> Path:
    """``home`` if given, else ``$TEEFLOW_HOME``, else ``~/.teeflow``."""
    if home is not None:
        return Path(home)
    env = os.environ.get("TEEFLOW_HOME")
    return Path(env) if env else Path.home() / ".teeflow"


def party_dir(name: str, home: Path | str | None = None) -> Path:
    """``<home>/parties/<name>`` (see :func:`teeflow_home`).

    Raises:
        ParseError: ``name`` is not a DNS-label-like name.
    """
    try:
        check_name(name)
    except ValueError as exc:
        raise ParseError(str(exc)) from None
    return teeflow_home(home) / "parties" / name


def verify_ed25519(public_key_b64: str, signature_b64: str, message: bytes) -> None:
    """Check an Ed25519 signature (RFC 8032 §5.1.7).

    Args:
        public_key_b64: 32-byte raw public key, base64url.
        signature_b64: 64-byte signature, base64url.
        message: the signed bytes.

    Raises:
        VerificationError: malformed key or signature, or the signature does not verify.
    """
    try:
        key = Ed25519PublicKey.from_public_bytes(b64url_decode(public_key_b64, length=32))
        signature = b64url_decode(signature_b64, length=64)
        key.verify(signature, message)
    except (InvalidSignature, ParseError, ValueError):
        raise VerificationError("Ed25519 signature does not verify") from None


class PartyPublic(BaseModel):
    """The public half of a party's keys (``NAME.pub.json``).

    Attributes:
        name: DNS-label-like party name.
        sign_key: raw Ed25519 public key (32 bytes), base64url without padding.
        recipient_key: raw X25519 public key (32 bytes), base64url without padding.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Name
    sign_key: SignKey
    recipient_key: B64Key32

    def sign_public_key(self) -> Ed25519PublicKey:
        """The Ed25519 public key object."""
        return Ed25519PublicKey.from_public_bytes(b64url_decode(self.sign_key, length=32))

    def recipient_public_key(self) -> X25519PublicKey:
        """The X25519 public key object (HPKE recipient)."""
        return X25519PublicKey.from_public_bytes(b64url_decode(self.recipient_key, length=32))

    def to_json(self) -> str:
        """Pretty JSON text of this public file (trailing newline)."""
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"

    @classmethod
    def load(cls, path: Path | str) -> PartyPublic:
        """Read a ``NAME.pub.json`` file (JSON; YAML flow syntax is also accepted).

        Raises:
            ParseError: unreadable, larger than 4096 bytes, malformed, unknown keys, bad name,
                or a key that is not 32 bytes of base64url / not an Ed25519 point.
        """
        import yaml  # JSON is a subset of YAML 1.2 for these documents

        data = _read_bounded(Path(path), MAX_PUBLIC_FILE_BYTES)
        try:
            doc = yaml.safe_load(data.decode("utf-8"))
        except (UnicodeDecodeError, yaml.YAMLError):
            raise ParseError(f"{Path(path).name}: not a valid public key file") from None
        return validate_document(cls, doc, "party public key file")


@dataclass(frozen=True)
class PartyKeys:
    """A party's private keys: Ed25519 (signing) and X25519 (recipient).

    Attributes:
        name: DNS-label-like party name.
        sign_key: Ed25519 private key.
        recipient_key: X25519 private key.
    """

    name: str
    sign_key: Ed25519PrivateKey
    recipient_key: X25519PrivateKey

    @classmethod
    def generate(cls, name: str) -> PartyKeys:
        """Fresh keys from the OS CSPRNG (via ``cryptography``).

        Raises:
            ParseError: ``name`` is not a DNS-label-like name.
        """
        party_dir(name)  # validates the name
        return cls(name, Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    def public(self) -> PartyPublic:
        """The public part (:class:`PartyPublic`)."""
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        return PartyPublic(
            name=self.name,
            sign_key=b64url_encode(self.sign_key.public_key().public_bytes(*raw)),
            recipient_key=b64url_encode(self.recipient_key.public_key().public_bytes(*raw)),
        )

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature (64 bytes) over ``message``."""
        return self.sign_key.sign(message)

    def save(self, directory: Path | str, *, overwrite: bool = False) -> Path:
        """Write the keys into ``directory`` (created with mode 0700).

        Files: ``sign.ed25519.pem`` and ``recipient.x25519.pem`` (PKCS#8 PEM, 0600) and
        ``NAME.pub.json`` (0644). Each file is written to a temporary file and renamed.

        Returns:
            The path of ``NAME.pub.json``.

        Raises:
            KbsError: keys already exist there and ``overwrite`` is False, or the directory
                or files cannot be written.
        """
        d = Path(directory)
        pub_path = d / f"{self.name}.pub.json"
        targets = [d / SIGN_KEY_FILE, d / RECIPIENT_KEY_FILE, pub_path]
        if not overwrite and any(p.exists() for p in targets):
            raise KbsError(f"party keys already exist in {d} (use --force to replace them)")
        pkcs8 = (
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            ensure_private_dir(d)
            atomic_write(targets[0], self.sign_key.private_bytes(*pkcs8))
            atomic_write(targets[1], self.recipient_key.private_bytes(*pkcs8))
            atomic_write(pub_path, self.public().to_json().encode(), mode=0o644)
        except OSError as exc:
            raise KbsError(f"cannot write party keys to {d}: {exc.strerror or exc}") from None
        return pub_path

    @classmethod
    def load(cls, name: str, home: Path | str | None = None) -> PartyKeys:
        """Load party ``name`` from ``<home>/parties/<name>/`` (see :func:`teeflow_home`).

        Raises:
            ParseError: bad name, missing/unreadable/malformed key files, wrong key types.
            KbsError: a private key file is readable by group or others.
        """
        return cls.load_dir(party_dir(name, home), name)

    @classmethod
    def load_dir(cls, directory: Path | str, name: str) -> PartyKeys:
        """Load party ``name``'s keys from ``directory`` (the layout of :meth:`save`).

        Raises:
            ParseError: bad name, missing/unreadable/malformed key files, wrong key types.
            KbsError: a private key file is readable by group or others.
        """
        try:
            check_name(name)
        except ValueError as exc:
            raise ParseError(str(exc)) from None
        d = Path(directory)
        sign = _load_private(d / SIGN_KEY_FILE)
        recipient = _load_private(d / RECIPIENT_KEY_FILE)
        if not isinstance(sign, Ed25519PrivateKey):
            raise ParseError(f"{SIGN_KEY_FILE} is not an Ed25519 private key")
        if not isinstance(recipient, X25519PrivateKey):
            raise ParseError(f"{RECIPIENT_KEY_FILE} is not an X25519 private key")
        return cls(name, sign, recipient)


def _read_bounded(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise ParseError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise ParseError(f"{path.name} larger than {limit} bytes")
    return data


def _load_private(path: Path) -> object:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ParseError(f"cannot read {path}: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KbsError(f"{path} is accessible by group or others (chmod 600 it)")
    data = _read_bounded(path, _MAX_PEM_BYTES)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ParseError(f"{path.name} is not an unencrypted PKCS#8 PEM private key") from None
    except Exception:  # cryptography may raise UnsupportedAlgorithm
        raise ParseError(f"{path.name} is not a supported private key") from None
