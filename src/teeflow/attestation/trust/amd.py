"""AMD SEV-SNP roots and intermediates shipped as package data, pinned by fingerprint.

AMD's SEV-SNP endorsement PKI has one root per product line (AMD "Versioned Chip Endorsement
Key (VCEK) Certificate and KDS Interface Specification" #57230, §2 "Certificate chain"):

* ARK (AMD Root Key, ``CN=ARK-<Product>``): RSA-4096, self-signed with RSASSA-PSS SHA-384;
* ASK (AMD SEV Key, ``CN=SEV-<Product>``): issued by the ARK, issues VCEKs;
* ASVK (AMD SEV VLEK Key, ``CN=SEV-VLEK-<Product>``): issued by the ARK, issues the VLEKs
  loaded by cloud providers.

Files (byte-identical copies; origin in ``../shared/testdata/attestation/README.md``):
``amd_ark_<product>.pem`` / ``amd_ask_<product>.pem`` from virtee/sev
``src/certs/snp/builtin/<product>/`` (Apache-2.0) for Milan, Genoa and Turin;
``amd_asvk_ark_<product>.pem`` (ASVK then ARK) from google/go-sev-guest ``verify/trust/``
(Apache-2.0) for Milan and Genoa — no Turin ASVK is shipped. Every certificate is checked
against the SHA-256 of its DER in :data:`AMD_CERT_SHA256` when loaded; the ARK inside an
ASVK file must be byte-identical to the product's ARK file.

Product names are the plain strings ``"Milan"``, ``"Genoa"``, ``"Turin"`` (equal to
``teeflow.attestation.snp.SnpProduct`` members, which are ``StrEnum``).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from teeflow.attestation.trust import TrustAnchor

__all__ = [
    "AMD_CERT_SHA256",
    "AMD_PRODUCTS",
    "amd_ark",
    "amd_ask",
    "amd_asvk",
]

#: Product lines with shipped roots.
AMD_PRODUCTS: tuple[str, ...] = ("Milan", "Genoa", "Turin")

#: (kind, product) -> SHA-256 of the certificate's DER, lower-case hex.
AMD_CERT_SHA256: dict[tuple[str, str], str] = {
    ("ARK", "Milan"): "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    ("ARK", "Genoa"): "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    ("ARK", "Turin"): "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
    ("ASK", "Milan"): "67d303bd3905fd38db8b20e0793699870e7fa612eaad5dec358293fd8c0bac1b",
    ("ASK", "Genoa"): "5464738c1546aed5f2cecf1dc98c5c960a92e8913238a61711bc90ec6e828521",
    ("ASK", "Turin"): "5b77ef5fe7a7a004fd9032668fba9d0fda22f88c4442069a479636a6ae3b3185",
    ("ASVK", "Milan"): "c5e081f59b7efab1fe2f8b505e159704e72f29cab7ef7cf628a05a42439082f5",
    ("ASVK", "Genoa"): "197e610743a917d6b9bb982a5a9226ccc0a15b611be0619e626aca9151457372",
}


def _product(product: str) -> str:
    name = str(product)
    if name not in AMD_PRODUCTS:
        raise KeyError(f"no AMD certificates for product {name!r} (known: {AMD_PRODUCTS})")
    return name


def _load(file_name: str) -> list[x509.Certificate]:
    pem = resources.files("teeflow.attestation.trust").joinpath(file_name).read_bytes()
    return x509.load_pem_x509_certificates(pem)


def _pinned(cert: x509.Certificate, kind: str, product: str) -> x509.Certificate:
    if cert.fingerprint(hashes.SHA256()).hex() != AMD_CERT_SHA256[(kind, product)]:
        raise RuntimeError(  # pragma: no cover - packaging error
            f"packaged AMD {kind} for {product} does not match its pinned fingerprint"
        )
    return cert


@cache
def amd_ark(product: str) -> TrustAnchor:
    """The AMD Root Key of ``product`` as a trust anchor (``name`` ``"AMD ARK-<product>"``).

    Args:
        product: ``"Milan"``, ``"Genoa"`` or ``"Turin"``.

    Raises:
        KeyError: unknown product.
        RuntimeError: the packaged certificate does not match its pin (packaging error).
    """
    name = _product(product)
    cert = _pinned(_load(f"amd_ark_{name.lower()}.pem")[0], "ARK", name)
    return TrustAnchor(certificate=cert, name=f"AMD ARK-{name}", emulated=False)


@cache
def amd_ask(product: str) -> x509.Certificate:
    """The AMD SEV Key (``CN=SEV-<product>``, issuer of VCEKs) of ``product``.

    Raises:
        KeyError: unknown product.
        RuntimeError: the packaged certificate does not match its pin (packaging error).
    """
    name = _product(product)
    return _pinned(_load(f"amd_ask_{name.lower()}.pem")[0], "ASK", name)


@cache
def amd_asvk(product: str) -> x509.Certificate:
    """The AMD SEV VLEK Key (``CN=SEV-VLEK-<product>``, issuer of VLEKs) of ``product``.

    Raises:
        KeyError: unknown product, or no ASVK shipped for it (Turin).
        RuntimeError: the packaged file does not match its pins, or its ARK differs from
            the product's ARK (packaging error).
    """
    name = _product(product)
    if ("ASVK", name) not in AMD_CERT_SHA256:
        raise KeyError(f"no AMD ASVK shipped for product {name!r}")
    certs = _load(f"amd_asvk_ark_{name.lower()}.pem")
    if len(certs) != 2 or certs[1] != amd_ark(name).certificate:  # pragma: no cover
        raise RuntimeError(f"packaged AMD ASVK file for {name} does not end in its ARK")
    return _pinned(certs[0], "ASVK", name)
