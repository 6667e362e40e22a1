"""Intel PCS / AMD KDS clients and the collateral cache, over recorded responses.

The "recorded" responses are rebuilt from the real collateral in
``../shared/testdata/attestation`` (bodies as Intel PCS serves them, issuer chains
URL-encoded in the headers as PCS does) and served by :class:`httpx.MockTransport`: no test
touches the network. The AMD CRL is synthetic (the shared data has none).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from teeflow.attestation.collateral import (
    AmdKdsClient,
    CachingAmdKdsClient,
    CachingIntelCollateralProvider,
    CollateralCache,
    IntelPcsClient,
)
from teeflow.attestation.collateral.amd_kds import load_der_certificate
from teeflow.attestation.collateral.cache import CachedItem
from teeflow.attestation.dcap.collateral import verify_collateral
from teeflow.attestation.dcap.quote import parse_quote
from teeflow.attestation.trust import intel_sgx_root_ca
from teeflow.errors import CollateralError, VerificationError

pytestmark = pytest.mark.vectors

SGX_SET = "sgx/collateral/sgx_00A067110000_2025-06-19_phala"
TDX_SET = "tdx/collateral/tdx_B0C06F000000_2025-06-19_phala"
SGX_FMSPC = "00A067110000"
TDX_FMSPC = "B0C06F000000"
FIXED = datetime(2025, 7, 1, tzinfo=UTC)  # README fixed verification time for both sets
PCS = "https://api.trustedservices.intel.com"
ROOT_CRL_URL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"


def _enc(pem: bytes) -> str:
    """URL-encode a PEM chain the way Intel PCS does (everything but unreserved chars)."""
    return quote(pem.decode(), safe="")


@dataclass
class FakePcs:
    """Serves the recorded collateral sets; records every request."""

    base: Path
    sets: dict[tuple[str, str], str]  # (tee, FMSPC) -> set dir
    requests: list[httpx.Request] = field(default_factory=list)
    overrides: dict[str, Callable[[httpx.Request], httpx.Response]] = field(default_factory=dict)
    tcb_header: str = "TCB-Info-Issuer-Chain"

    def _file(self, rel: str, name: str) -> bytes:
        return (self.base / rel / name).read_bytes()

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path in self.overrides:
            return self.overrides[path](request)
        if request.url.host == "certificates.trustedservices.intel.com":
            assert path == "/IntelSGXRootCA.der"
            any_set = next(iter(self.sets.values()))
            return httpx.Response(200, content=self._file(any_set, "root_ca_crl.der"))
        parts = path.strip("/").split("/")
        tee = parts[0]
        assert parts[1:3] == ["certification", "v4"], path
        route = "/".join(parts[3:])
        sets = {k: v for k, v in self.sets.items() if k[0] == tee}
        if not sets:
            return httpx.Response(404)
        if route == "tcb":
            rel = sets.get((tee, request.url.params["fmspc"]))
            if rel is None:
                return httpx.Response(404, headers={"Error-Code": "FmspcNotFound"})
            chain = self._file(rel, "tcb_info_issuer_chain.pem")
            return httpx.Response(
                200,
                content=self._file(rel, "tcb_info.json"),
                headers={self.tcb_header: _enc(chain), "Content-Type": "application/json"},
            )
        rel = next(iter(sets.values()))
        if route == "qe/identity":
            chain = self._file(rel, "tcb_info_issuer_chain.pem")  # identical per README
            return httpx.Response(
                200,
                content=self._file(rel, "qe_identity.json"),
                headers={"SGX-Enclave-Identity-Issuer-Chain": _enc(chain)},
            )
        if route == "pckcrl":
            chain = self._file(rel, "pck_crl_issuer_chain.pem")
            return httpx.Response(
                200,
                content=self._file(rel, "pck_crl.der"),
                headers={"SGX-PCK-CRL-Issuer-Chain": _enc(chain)},
            )
        if route == "rootcacrl":
            return httpx.Response(200, content=self._file(rel, "root_ca_crl.der").hex().encode())
        return httpx.Response(404)

    def client(self, base_url: str = PCS, **kw: Any) -> IntelPcsClient:
        return IntelPcsClient(base_url, transport=httpx.MockTransport(self.handler), **kw)


@pytest.fixture()
def pcs(attestation_dir: Path) -> FakePcs:
    return FakePcs(
        attestation_dir,
        {("sgx", SGX_FMSPC): SGX_SET, ("tdx", TDX_FMSPC): TDX_SET},
    )


# -- Intel PCS client ---------------------------------------------------------------------


def test_tcb_info_path_query_and_decoded_chain(pcs: FakePcs, attestation_dir: Path) -> None:
    body, chain = pcs.client().tcb_info(bytes.fromhex(SGX_FMSPC), "sgx")
    req = pcs.requests[-1]
    assert req.method == "GET"
    assert req.url.path == "/sgx/certification/v4/tcb"
    assert dict(req.url.params) == {"fmspc": SGX_FMSPC}
    assert req.headers["accept-encoding"] == "identity"
    assert body == (attestation_dir / SGX_SET / "tcb_info.json").read_bytes()
    # the PEM has '+', '/' and '=' -- URL-decoding must keep '+' (not form decoding)
    expected = (attestation_dir / SGX_SET / "tcb_info_issuer_chain.pem").read_bytes()
    assert b"+" in expected
    assert chain == expected


def test_tdx_routes(pcs: FakePcs) -> None:
    client = pcs.client()
    client.tcb_info(TDX_FMSPC.lower(), "tdx")
    client.qe_identity("tdx")
    assert [r.url.path for r in pcs.requests] == [
        "/tdx/certification/v4/tcb",
        "/tdx/certification/v4/qe/identity",
    ]
    assert pcs.requests[0].url.params["fmspc"] == TDX_FMSPC


def test_v3_tcb_header_name_accepted(pcs: FakePcs) -> None:
    pcs.tcb_header = "SGX-TCB-Info-Issuer-Chain"
    _, chain = pcs.client().tcb_info(SGX_FMSPC)
    assert chain is not None and chain.startswith(b"-----BEGIN CERTIFICATE-----")


def test_pck_crl_query_and_root_crl_from_distribution_point(
    pcs: FakePcs, attestation_dir: Path
) -> None:
    client = pcs.client()
    crl, chain = client.pck_crl("processor")
    root = client.root_ca_crl()
    assert pcs.requests[0].url.path == "/sgx/certification/v4/pckcrl"
    assert dict(pcs.requests[0].url.params) == {"ca": "processor", "encoding": "der"}
    assert str(pcs.requests[1].url) == ROOT_CRL_URL
    assert crl == (attestation_dir / SGX_SET / "pck_crl.der").read_bytes()
    assert chain == (attestation_dir / SGX_SET / "pck_crl_issuer_chain.pem").read_bytes()
    assert root == (attestation_dir / SGX_SET / "root_ca_crl.der").read_bytes()


def test_pccs_root_crl_route_and_hex_body(pcs: FakePcs, attestation_dir: Path) -> None:
    client = pcs.client("https://pccs.example:8081/")
    assert client.root_ca_crl_url == "https://pccs.example:8081/sgx/certification/v4/rootcacrl"
    assert client.root_ca_crl() == (attestation_dir / SGX_SET / "root_ca_crl.der").read_bytes()
    assert pcs.requests[-1].url.host == "pccs.example"


@pytest.mark.parametrize(
    ("tee", "fmspc", "rel"), [("sgx", SGX_FMSPC, SGX_SET), ("tdx", TDX_FMSPC, TDX_SET)]
)
def test_collateral_for_parses_and_verifies(
    pcs: FakePcs, tee: str, fmspc: str, rel: str, attestation_dir: Path
) -> None:
    ca = "processor" if tee == "sgx" else "platform"
    coll = pcs.client().collateral_for(fmspc, ca, tee)
    assert coll.tcb_info.fmspc.hex().upper() == fmspc
    assert coll.tcb_info.id == tee.upper()
    assert len(pcs.requests) == 4
    anchor = verify_collateral(coll, [intel_sgx_root_ca()], FIXED)
    assert anchor.certificate == intel_sgx_root_ca().certificate
    # the recorded set expires: the same collateral fails at the real date
    with pytest.raises(CollateralError, match="collateral expired"):
        verify_collateral(coll, [intel_sgx_root_ca()], datetime(2026, 11, 21, tzinfo=UTC))


def test_collateral_for_rejects_tcb_info_of_another_platform(pcs: FakePcs) -> None:
    pcs.sets[("sgx", TDX_FMSPC)] = SGX_SET  # PCS answers with the wrong FMSPC's TCB Info
    with pytest.raises(CollateralError, match="TCB Info is for FMSPC 00A067110000"):
        pcs.client().collateral_for(TDX_FMSPC, "processor", "sgx")


@pytest.mark.parametrize(
    ("status", "headers", "match"),
    [
        (404, {"Error-Code": "FmspcNotFound"}, r"HTTP 404 \(not found\) Error-Code FmspcNotFound"),
        (429, {"Retry-After": "30"}, r"HTTP 429 \(rate limited, retry after 30s\)"),
        (500, {}, "HTTP 500"),
        (301, {"Location": "https://evil.example/"}, "HTTP 301"),
    ],
)
def test_http_errors_map_to_collateral_error(
    pcs: FakePcs, status: int, headers: dict[str, str], match: str
) -> None:
    pcs.overrides["/sgx/certification/v4/tcb"] = lambda r: httpx.Response(status, headers=headers)
    with pytest.raises(CollateralError, match=match):
        pcs.client().tcb_info(SGX_FMSPC)
    assert len(pcs.requests) == 1  # no redirect followed


def test_transport_failure_maps_to_collateral_error(pcs: FakePcs) -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    pcs.overrides["/sgx/certification/v4/qe/identity"] = boom
    with pytest.raises(CollateralError, match="ConnectTimeout"):
        pcs.client().qe_identity()


def test_missing_or_bad_issuer_chain_header(pcs: FakePcs, attestation_dir: Path) -> None:
    body = (attestation_dir / SGX_SET / "tcb_info.json").read_bytes()
    pcs.overrides["/sgx/certification/v4/tcb"] = lambda r: httpx.Response(200, content=body)
    with pytest.raises(CollateralError, match="lacks the TCB-Info-Issuer-Chain header"):
        pcs.client().tcb_info(SGX_FMSPC)
    pcs.overrides["/sgx/certification/v4/tcb"] = lambda r: httpx.Response(
        200, content=body, headers={"TCB-Info-Issuer-Chain": "not%20a%20chain"}
    )
    with pytest.raises(CollateralError, match="TCB-Info-Issuer-Chain"):
        pcs.client().tcb_info(SGX_FMSPC)


def test_oversized_response_refused(pcs: FakePcs) -> None:
    big = b"{" + b" " * 5000 + b"}"
    # once with Content-Length, once streamed without it
    pcs.overrides["/sgx/certification/v4/qe/identity"] = lambda r: httpx.Response(200, content=big)
    with pytest.raises(CollateralError, match="larger than 4096 bytes"):
        pcs.client(max_response_bytes=4096).qe_identity()

    def chunked(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=iter([big[:3000], big[3000:]]))

    pcs.overrides["/sgx/certification/v4/qe/identity"] = chunked
    with pytest.raises(CollateralError, match="larger than 4096 bytes"):
        pcs.client(max_response_bytes=4096).qe_identity()


def test_compressed_response_refused(pcs: FakePcs) -> None:
    pcs.overrides["/sgx/certification/v4/pckcrl"] = lambda r: httpx.Response(
        200, content=b"x", headers={"Content-Encoding": "gzip"}
    )
    with pytest.raises(CollateralError, match="Content-Encoding"):
        pcs.client().pck_crl()


def test_body_not_a_crl(pcs: FakePcs, attestation_dir: Path) -> None:
    chain = (attestation_dir / SGX_SET / "pck_crl_issuer_chain.pem").read_bytes()
    pcs.overrides["/sgx/certification/v4/pckcrl"] = lambda r: httpx.Response(
        200, content=b"\x30\x03junk", headers={"SGX-PCK-CRL-Issuer-Chain": _enc(chain)}
    )
    with pytest.raises(CollateralError, match="not a CRL"):
        pcs.client().pck_crl()


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.tcb_info("00A0671100", "sgx"),
        lambda c: c.tcb_info("zzzzzzzzzzzz", "sgx"),
        lambda c: c.tcb_info(SGX_FMSPC, "sev"),
        lambda c: c.pck_crl("cpu"),
        lambda c: c.pck_crl("processor", "base64"),
        lambda c: c.qe_identity("sgx", update="late"),
    ],
)
def test_bad_arguments_make_no_request(pcs: FakePcs, call: Callable[[IntelPcsClient], Any]) -> None:
    with pytest.raises(CollateralError):
        call(pcs.client())
    assert pcs.requests == []


def test_bad_base_url() -> None:
    with pytest.raises(CollateralError):
        IntelPcsClient("file:///etc")


# -- cache ----------------------------------------------------------------------------------


def test_cache_hit_miss_and_expiry_by_next_update(pcs: FakePcs, tmp_path: Path) -> None:
    cache = CollateralCache(tmp_path / "cache")
    provider = CachingIntelCollateralProvider(pcs.client(), cache)
    first = provider.collateral_for(SGX_FMSPC, "processor", "sgx", FIXED)
    assert len(pcs.requests) == 4  # miss: four fetches
    files = sorted(
        p.relative_to(cache.directory).as_posix() for p in cache.directory.rglob("*.json")
    )
    assert files == [
        "intel/pck_crl/processor.json",
        "intel/qe_identity/sgx.json",
        "intel/root_ca_crl/default.json",
        f"intel/tcb_info/sgx_{SGX_FMSPC}.json",
    ]
    second = provider.collateral_for(SGX_FMSPC, "processor", "sgx", FIXED + timedelta(days=1))
    assert len(pcs.requests) == 4  # hit: nothing fetched
    assert second.digest == first.digest
    verify_collateral(second, [intel_sgx_root_ca()], FIXED)

    # past the QE Identity nextUpdate (2025-07-19T10:01:18Z) but before the PCK CRL's
    # (10:23:18Z) and the TCB Info's (10:56:11Z): only the QE Identity is refetched
    t = datetime(2025, 7, 19, 10, 10, tzinfo=UTC)
    provider.collateral_for(SGX_FMSPC, "processor", "sgx", t)
    assert [r.url.path for r in pcs.requests[4:]] == ["/sgx/certification/v4/qe/identity"]
    # past every document's nextUpdate: all refetched except the Root CA CRL (next
    # update 2026-04-03, still cached)
    provider.collateral_for(SGX_FMSPC, "processor", "sgx", datetime(2025, 8, 1, tzinfo=UTC))
    assert sorted(r.url.path for r in pcs.requests[5:]) == [
        "/sgx/certification/v4/pckcrl",
        "/sgx/certification/v4/qe/identity",
        "/sgx/certification/v4/tcb",
    ]


def test_cache_entry_format_is_raw_body_and_headers(
    pcs: FakePcs, tmp_path: Path, attestation_dir: Path
) -> None:
    cache = CollateralCache(tmp_path)
    CachingIntelCollateralProvider(pcs.client(), cache).collateral_for(
        SGX_FMSPC, "processor", "sgx", FIXED
    )
    doc = json.loads((tmp_path / f"intel/tcb_info/sgx_{SGX_FMSPC}.json").read_text())
    assert doc["format"] == "teeflow-collateral-cache-v1"
    assert doc["expires"] == "2025-07-19T10:56:11+00:00"
    item = cache.get(("intel", "tcb_info", "sgx", SGX_FMSPC))
    assert item is not None
    assert item.body == (attestation_dir / SGX_SET / "tcb_info.json").read_bytes()
    assert (
        item.headers["issuer_chain"].encode()
        == (attestation_dir / SGX_SET / "tcb_info_issuer_chain.pem").read_bytes()
    )
    assert not list(tmp_path.rglob(".tmp-*"))  # atomic writes leave no temporaries


def test_offline_reads_cache_only_and_never_the_network(pcs: FakePcs, tmp_path: Path) -> None:
    cache = CollateralCache(tmp_path)
    CachingIntelCollateralProvider(pcs.client(), cache).collateral_for(
        SGX_FMSPC, "processor", "sgx", FIXED
    )
    n = len(pcs.requests)
    offline = CachingIntelCollateralProvider(pcs.client(), cache, offline=True)
    # even past nextUpdate: served stale (the verifier then says "collateral expired")
    late = datetime(2026, 11, 21, tzinfo=UTC)
    coll = offline.collateral_for(SGX_FMSPC, "processor", "sgx", late)
    with pytest.raises(CollateralError, match="collateral expired"):
        verify_collateral(coll, [intel_sgx_root_ca()], late)
    with pytest.raises(CollateralError, match="offline and not cached: intel/tcb_info/tdx"):
        offline.collateral_for(TDX_FMSPC, "platform", "tdx", FIXED)
    assert len(pcs.requests) == n


def test_offline_fixed_directory(attestation_dir: Path, tmp_path: Path) -> None:
    offline = CachingIntelCollateralProvider(
        None,
        CollateralCache(tmp_path),
        offline=True,
        fixed_dirs=[attestation_dir / "sgx" / "collateral", attestation_dir / "tdx" / "collateral"],
    )
    coll = offline.collateral_for(TDX_FMSPC, "platform", "tdx", FIXED)
    assert coll.tcb_info.fmspc.hex().upper() == TDX_FMSPC
    verify_collateral(coll, [intel_sgx_root_ca()], FIXED)
    with pytest.raises(CollateralError, match="offline and not cached"):
        offline.collateral_for("112233445566", "processor", "sgx", FIXED)


def test_online_provider_requires_client() -> None:
    with pytest.raises(CollateralError):
        CachingIntelCollateralProvider(None)


def test_corrupt_entry_refetched_online_and_error_offline(pcs: FakePcs, tmp_path: Path) -> None:
    cache = CollateralCache(tmp_path)
    provider = CachingIntelCollateralProvider(pcs.client(), cache)
    provider.collateral_for(SGX_FMSPC, "processor", "sgx", FIXED)
    entry = tmp_path / "intel/qe_identity/sgx.json"
    entry.write_text('{"format": "teeflow-collateral-cache-v1", "body": "!!"}')
    offline = CachingIntelCollateralProvider(None, cache, offline=True)
    with pytest.raises(CollateralError, match="corrupt cache entry intel/qe_identity/sgx"):
        offline.collateral_for(SGX_FMSPC, "processor", "sgx", FIXED)
    n = len(pcs.requests)
    provider.collateral_for(SGX_FMSPC, "processor", "sgx", FIXED)
    assert [r.url.path for r in pcs.requests[n:]] == ["/sgx/certification/v4/qe/identity"]
    assert json.loads(entry.read_text())["key"] == ["intel", "qe_identity", "sgx"]


def test_fetch_failure_with_stale_entry_fails_closed(pcs: FakePcs, tmp_path: Path) -> None:
    cache = CollateralCache(tmp_path)
    provider = CachingIntelCollateralProvider(pcs.client(), cache)
    provider.collateral_for(SGX_FMSPC, "processor", "sgx", FIXED)
    pcs.overrides["/sgx/certification/v4/tcb"] = lambda r: httpx.Response(503)
    with pytest.raises(CollateralError, match="HTTP 503"):
        provider.collateral_for(SGX_FMSPC, "processor", "sgx", datetime(2025, 8, 1, tzinfo=UTC))


def test_cache_rejects_bad_keys_and_naive_time(tmp_path: Path) -> None:
    cache = CollateralCache(tmp_path)
    for key in [("intel",), ("intel", "../x"), ("intel", "a/b"), ("intel", "..")]:
        with pytest.raises(CollateralError, match="invalid collateral cache key"):
            cache.path_for(key)
    item = CachedItem(b"x", datetime(2030, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC))
    with pytest.raises(CollateralError, match="timezone-aware"):
        cache.get_or_fetch(("intel", "x"), lambda: item, now=datetime(2025, 1, 1))


def test_default_cache_dir_under_teeflow_home(teeflow_home: Path) -> None:
    assert CollateralCache().directory == teeflow_home / "collateral-cache"


def test_for_quote_picks_fmspc_ca_and_tee(
    pcs: FakePcs, tmp_path: Path, attestation_dir: Path
) -> None:
    provider = CachingIntelCollateralProvider(pcs.client(), CollateralCache(tmp_path))
    quote = parse_quote((attestation_dir / "sgx" / "phala_sgx_quote_v3.bin").read_bytes())
    coll = provider.for_quote(quote, now=FIXED)
    assert coll is not None and coll.tcb_info.fmspc.hex().upper() == SGX_FMSPC
    tcb_req = next(r for r in pcs.requests if r.url.path.endswith("/tcb"))
    assert tcb_req.url.path.startswith("/sgx/")
    pck_req = next(r for r in pcs.requests if r.url.path.endswith("/pckcrl"))
    assert pck_req.url.params["ca"] == "processor"
    # a failing fetch is a CollateralError, i.e. a VerificationError: callers fail closed
    pcs.overrides["/sgx/certification/v4/tcb"] = lambda r: httpx.Response(500)
    other = CachingIntelCollateralProvider(pcs.client(), CollateralCache(tmp_path / "other"))
    with pytest.raises(VerificationError):
        other.for_quote(quote, now=FIXED)


# -- AMD KDS --------------------------------------------------------------------------------

VIRTEE = "snp/virtee_milan_report_v2.bin"


@dataclass
class FakeKds:
    base: Path
    hwid: str
    crl: bytes
    requests: list[httpx.Request] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        roots = self.base / "roots"
        if path == "/vcek/v1/Milan/cert_chain":
            pem = (roots / "amd_ask_milan.pem").read_bytes() + (
                roots / "amd_ark_milan.pem"
            ).read_bytes()
            return httpx.Response(200, content=pem)
        if path == "/vlek/v1/Milan/cert_chain":
            return httpx.Response(200, content=(roots / "amd_asvk_ark_milan.pem").read_bytes())
        if path in ("/vcek/v1/Milan/crl", "/vlek/v1/Milan/crl"):
            return httpx.Response(200, content=self.crl)
        if path == f"/vcek/v1/Milan/{self.hwid}":
            want = {"blSPL": "3", "teeSPL": "0", "snpSPL": "8", "ucodeSPL": "115"}
            if dict(request.url.params) != want:
                return httpx.Response(404)
            der = (self.base / "snp" / "virtee_milan_vcek.der").read_bytes()
            return httpx.Response(
                200, content=der, headers={"Content-Type": "application/x-x509-ca-cert"}
            )
        return httpx.Response(404)

    def client(self, **kw: Any) -> AmdKdsClient:
        return AmdKdsClient(transport=httpx.MockTransport(self.handler), **kw)


def _synthetic_crl(next_update: datetime) -> bytes:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ARK-Test")])
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(name)
        .last_update(next_update - timedelta(days=7))
        .next_update(next_update)
        .sign(key, hashes.SHA384())
    )
    return crl.public_bytes(Encoding.DER)


@pytest.fixture()
def kds(attestation_dir: Path, manifest: dict[str, Any]) -> FakeKds:
    facts = manifest["files"][VIRTEE]["expected"]
    return FakeKds(
        attestation_dir,
        facts["fields"]["chip_id"],
        _synthetic_crl(datetime(2025, 7, 8, tzinfo=UTC)),
    )


def _virtee_tcb(manifest: dict[str, Any]) -> dict[str, int]:
    ext = manifest["files"][VIRTEE]["expected"]["cert"]["amd_extensions"]
    return {
        "bl": ext["blSPL"],
        "tee": ext["teeSPL"],
        "snp": ext["snpSPL"],
        "ucode": ext["ucodeSPL"],
    }


def test_vcek_path_and_query(kds: FakeKds, manifest: dict[str, Any], attestation_dir: Path) -> None:
    der = kds.client().vcek("milan", kds.hwid.upper(), _virtee_tcb(manifest))
    req = kds.requests[-1]
    assert req.url.path == f"/vcek/v1/Milan/{kds.hwid}"
    assert list(req.url.params.items()) == [
        ("blSPL", "3"),
        ("teeSPL", "0"),
        ("snpSPL", "8"),
        ("ucodeSPL", "115"),
    ]
    assert der == (attestation_dir / "snp" / "virtee_milan_vcek.der").read_bytes()
    sha = manifest["files"][VIRTEE]["expected"]["cert"]["sha256_der"]
    assert load_der_certificate(der).fingerprint(hashes.SHA256()).hex() == sha


def test_vcek_turin_truncates_hwid_and_sends_fmc() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(404)

    client = AmdKdsClient(transport=httpx.MockTransport(handler))
    with pytest.raises(CollateralError, match="HTTP 404"):
        client.vcek("Turin", "ab" * 64, {"fmc": 1, "bl": 2, "tee": 3, "snp": 4, "ucode": 5})
    assert seen[0].url.path == "/vcek/v1/Turin/" + "ab" * 8
    assert seen[0].url.params["fmcSPL"] == "1"


@pytest.mark.parametrize(
    ("product", "hwid", "tcb"),
    [
        ("Naples", "00" * 64, {"bl": 0, "tee": 0, "snp": 0, "ucode": 0}),
        ("Milan", "00" * 8, {"bl": 0, "tee": 0, "snp": 0, "ucode": 0}),
        ("Milan", "zz" * 64, {"bl": 0, "tee": 0, "snp": 0, "ucode": 0}),
        ("Milan", "00" * 64, {"bl": 0, "tee": 0, "snp": 0}),
        ("Milan", "00" * 64, {"bl": 0, "tee": 0, "snp": 0, "ucode": 256}),
        ("Milan", "00" * 64, {"bl": 0, "tee": 0, "snp": 0, "ucode": 1, "fmc": 1}),
        ("Turin", "00" * 8, {"bl": 0, "tee": 0, "snp": 0, "ucode": 1}),
    ],
)
def test_vcek_bad_arguments(kds: FakeKds, product: str, hwid: str, tcb: dict[str, int]) -> None:
    with pytest.raises(CollateralError):
        kds.client().vcek(product, hwid, tcb)
    assert kds.requests == []


def test_vcek_body_must_be_a_certificate(kds: FakeKds, manifest: dict[str, Any]) -> None:
    client = AmdKdsClient(
        transport=httpx.MockTransport(lambda r: httpx.Response(200, content=b"<html>"))
    )
    with pytest.raises(CollateralError, match="not a DER certificate"):
        client.vcek("Milan", kds.hwid, _virtee_tcb(manifest))


def test_cert_chains(kds: FakeKds, attestation_dir: Path) -> None:
    ask, ark = kds.client().cert_chain("Milan", "vcek")
    assert x509.load_pem_x509_certificate(ask) == x509.load_pem_x509_certificate(
        (attestation_dir / "roots" / "amd_ask_milan.pem").read_bytes()
    )
    assert x509.load_pem_x509_certificate(ark) == x509.load_pem_x509_certificate(
        (attestation_dir / "roots" / "amd_ark_milan.pem").read_bytes()
    )
    asvk, ark2 = kds.client().cert_chain("Milan", "vlek")
    assert ark2 == ark
    assert "SEV-VLEK" in x509.load_pem_x509_certificate(asvk).subject.rfc4514_string()
    assert [r.url.path for r in kds.requests] == [
        "/vcek/v1/Milan/cert_chain",
        "/vlek/v1/Milan/cert_chain",
    ]


def test_cert_chain_needs_two_certificates(attestation_dir: Path) -> None:
    one = (attestation_dir / "roots" / "amd_ark_milan.pem").read_bytes()
    client = AmdKdsClient(transport=httpx.MockTransport(lambda r: httpx.Response(200, content=one)))
    with pytest.raises(CollateralError, match="1 certificates, not 2"):
        client.cert_chain("Milan")


def test_crl_and_amd_cache(kds: FakeKds, manifest: dict[str, Any], tmp_path: Path) -> None:
    cache = CollateralCache(tmp_path)
    cached = CachingAmdKdsClient(kds.client(), cache)
    t = datetime(2025, 7, 1, tzinfo=UTC)
    tcb = _virtee_tcb(manifest)
    vcek = cached.vcek("Milan", kds.hwid, tcb, now=t)
    chain = cached.cert_chain("Milan", now=t)
    crl = cached.crl("Milan", now=t)
    assert crl == kds.crl
    assert len(kds.requests) == 3
    # all cached: VCEK until its notAfter (2030), chain until ASK notAfter, CRL until 07-08
    assert cached.vcek("Milan", kds.hwid, tcb, now=t + timedelta(days=5)) == vcek
    assert cached.cert_chain("Milan", now=t + timedelta(days=5)) == chain
    assert cached.crl("Milan", now=t + timedelta(days=5)) == crl
    assert len(kds.requests) == 3
    cached.crl("Milan", now=datetime(2025, 7, 8, tzinfo=UTC))  # at nextUpdate: refetched
    assert [r.url.path for r in kds.requests[3:]] == ["/vcek/v1/Milan/crl"]
    # another TCB is another VCEK (another cache key)
    offline = CachingAmdKdsClient(None, cache, offline=True)
    assert offline.vcek("Milan", kds.hwid, tcb, now=t) == vcek
    with pytest.raises(CollateralError, match="offline and not cached: amd/vcek/Milan"):
        offline.vcek("Milan", kds.hwid, {**tcb, "ucode": 116}, now=t)
    with pytest.raises(CollateralError, match="offline and not cached"):
        offline.cert_chain("Milan", "vlek", now=t)
