"""Gramine-SGX manifest templates for teeflow workloads.

:func:`render_gramine_manifest` writes a ``<role>.manifest.template`` (TOML, Gramine >= 1.5
manifest syntax, Jinja placeholders for ``gramine-manifest``) for one teeflow workload role.
Source: Gramine documentation "Manifest syntax" (``libos.entrypoint``,
``loader.entrypoint``, ``loader.argv``, ``loader.env``, ``fs.mounts`` with ``type =
"encrypted"`` and ``key_name = "_sgx_mrenclave"``, ``sgx.remote_attestation``,
``sgx.trusted_files`` with optional ``sha256``, ``sgx.enclave_size``, ``sgx.max_threads``).

Security properties of every template (checked by the tests):

* no ``insecure__*`` option, ``sgx.debug = false``, no ``allowed_files``, no environment
  or argument passthrough: argv and environment are fixed in the measured manifest;
* ``sgx.remote_attestation = "dcap"`` (so ``/dev/attestation`` serves DCAP quotes);
* the workload manifest's trusted files appear with their SHA-256 (Gramine checks them at
  open), plus the interpreter, its standard library, the site-packages holding teeflow and
  the system libraries (Gramine hashes these when signing);
* state lives on an encrypted mount keyed to MRENCLAVE (``_sgx_mrenclave``): only the same
  enclave on the same CPU can read it.

Each role's template runs the role's real command with its options fixed (no argument
passthrough): ``kbs serve``, the lean ``teeflow.fl.aggregator_main`` /
``teeflow.fl.client_main`` entry points, ``compute serve``, all with ``--platform
gramine-sgx``; state under the encrypted ``/state``, the KBS pin file a trusted file
``{{ app_dir }}/kbs.pin.json``. Deployment values (listen address, federation, session,
party, ...) are role variables (:attr:`RoleProfile.variables`): they are part of the measured
argv, so MRENCLAVE is computed after rendering with the deployment's values.

Template variables (``gramine-manifest -D name=value``): ``entrypoint`` (absolute path of
the Python interpreter), ``arch_libdir`` (e.g. ``/lib/x86_64-linux-gnu``), ``app_dir``
(absolute directory the workload manifest's paths are relative to), ``site_packages``
(directory holding teeflow and its dependencies), ``state_dir`` (host directory backing the
encrypted state mount). ``gramine.libos``, ``gramine.runtimedir()``, ``python.stdlib`` and
``python.distlib`` are provided by ``gramine-manifest`` itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from teeflow.errors import WorkloadError
from teeflow.workload.manifest import WorkloadManifest

__all__ = ["PIN_PATH", "ROLES", "ROLE_PROFILES", "RoleProfile", "render_gramine_manifest"]


@dataclass(frozen=True)
class RoleProfile:
    """Defaults of one workload role.

    Attributes:
        role: role name.
        argv: interpreter arguments when no workload manifest is given: the role's real
            command (``python -m teeflow kbs serve ...``) with every option fixed in the
            measured manifest; ``{{ name }}`` items are template variables of :attr:`variables`.
        enclave_size: ``sgx.enclave_size`` (Gramine size string).
        max_threads: ``sgx.max_threads``.
        summary: one line for the template header.
        variables: the role's own template variables (``gramine-manifest -Dname=value``),
            each with an example value.
    """

    role: str
    argv: tuple[str, ...]
    enclave_size: str
    max_threads: int
    summary: str
    variables: tuple[tuple[str, str], ...] = ()


#: Where the KBS pin file is inside the enclave: a trusted file in ``app_dir`` (so the
#: workload trusts exactly the KBS whose pin was measured with it).
PIN_PATH = "{{ app_dir }}/kbs.pin.json"
_PLATFORM = ("--platform", "gramine-sgx")

ROLE_PROFILES: dict[str, RoleProfile] = {
    p.role: p
    for p in (
        RoleProfile(
            "kbs",
            ("-m", "teeflow", "kbs", "serve", *_PLATFORM,
             "--db", "sqlite:////state/kbs.db", "--state-dir", "/state/kbs",
             "--listen", "{{ listen }}", "--federation", "{{ federation }}",
             "--expect-agreement", "{{ expect_agreement }}"),
            "2G",
            64,
            "Key Broker Service",
            (("listen", "0.0.0.0:8443"), ("federation", "study"),
             ("expect_agreement", "<64-hex digest: teeflow agreement show agreement.yaml>")),
        ),
        RoleProfile(
            "aggregator",
            ("-m", "teeflow.fl.aggregator_main", "run", *_PLATFORM, "--pin", PIN_PATH,
             "--session", "{{ session }}", "--rounds", "{{ rounds }}",
             "--min-clients", "{{ min_clients }}", "--listen", "{{ listen }}",
             "--state-dir", "/state/aggregator", "--out", "/state/model"),
            "2G",
            32,
            "federated-learning aggregator (lean entry point, no torch: small TCB)",
            (("session", "study-1"), ("rounds", "5"), ("min_clients", "2"),
             ("listen", "0.0.0.0:8450")),
        ),
        RoleProfile(
            "client",
            ("-m", "teeflow.fl.client_main", "run", *_PLATFORM, "--party", "{{ party }}",
             "--pin", PIN_PATH, "--aggregator", "{{ aggregator }}", "--data", "{{ data }}",
             "--workdir", "/state/client"),
            "8G",
            64,
            "federated-learning client",
            (("party", "alice"), ("aggregator", "aggregator.example:8450"),
             ("data", "npz:/state/data/alice.npz?clients=2&index=0")),
        ),
        RoleProfile(
            "compute",
            ("-m", "teeflow", "compute", "serve", *_PLATFORM, "--pin", PIN_PATH,
             "--package", "{{ app_dir }}/package", "--listen", "{{ listen }}",
             "--store", "/state/inputs"),
            "4G",
            32,
            "authorised compute worker",
            (("listen", "0.0.0.0:9443"),),
        ),
        RoleProfile(
            "serve",
            ("-m", "teeflow", "serve", *_PLATFORM, "--pin", PIN_PATH,
             "--model", "/state/model/{{ model }}", "--package", "{{ app_dir }}/package",
             "--enrollment", "/state/serve.jwt", "--listen", "{{ listen }}"),
            "4G",
            32,
            "confidential model server (Open Inference Protocol, docs/serve.md)",
            (("model", "study-1.serve"), ("listen", "0.0.0.0:8443")),
        ),
    )
}  # fmt: skip
#: Workload roles with a template.
ROLES = tuple(ROLE_PROFILES)
_VARIABLE = re.compile(r"\{\{ ([a-z_]+) \}\}")


_SIZE = re.compile(r"[1-9][0-9]{0,5}[KMG]")
_PYTHON = re.compile(r"(?:.*/)?python(?:3(?:\.[0-9]+)?)?")
_JINJA = ("{{", "}}", "{%", "%}", "{#", "#}")


def _toml(value: str, what: str) -> str:
    """A TOML basic string for ``value`` (quotes, backslashes, controls escaped).

    Raises:
        WorkloadError: ``value`` contains Jinja delimiters (``gramine-manifest`` would
            expand them) or NUL.
    """
    if any(d in value for d in _JINJA) or "\x00" in value:
        raise WorkloadError(f"{what} contains template delimiters or NUL: {value[:40]!r}")
    out = []
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _argv(manifest: WorkloadManifest | None, profile: RoleProfile) -> tuple[str, list[str]]:
    """(libos.entrypoint template, loader.argv items as TOML strings)."""
    if manifest is None:  # the profile's own argv: constants and its template variables
        return "{{ entrypoint }}", ['"{{ entrypoint }}"'] + [
            _toml(_VARIABLE.sub("", a), "argument")[:1] + a + '"' for a in profile.argv
        ]
    first, *rest = manifest.entrypoint
    trusted = {tf.path for tf in manifest.trusted_files}
    if _PYTHON.fullmatch(first):
        entry = "{{ entrypoint }}"
    else:
        rel = PurePosixPath(first).as_posix().removeprefix("./")
        if rel not in trusted:
            raise WorkloadError(
                f"entrypoint {first!r} is neither a Python interpreter nor a trusted file"
            )
        entry = "{{ app_dir }}/" + rel
    items = [f'"{entry}"'] + [_toml(a, "argument") for a in (*rest, *manifest.arguments)]
    return entry, items


def render_gramine_manifest(
    role: str,
    manifest: WorkloadManifest | None = None,
    *,
    enclave_size: str | None = None,
    max_threads: int | None = None,
    isvprodid: int = 0,
    isvsvn: int = 0,
) -> str:
    """The Gramine manifest template (TOML text with Jinja placeholders) for ``role``.

    Args:
        role: one of :data:`ROLES`.
        manifest: the workload manifest: its entrypoint/arguments become ``loader.argv``
            (a ``python``-like argv[0] becomes the ``entrypoint`` interpreter), its ``env``
            becomes ``loader.env``, its trusted files ``sgx.trusted_files`` entries under
            ``{{ app_dir }}`` with their SHA-256. Without one, the role's default argv.
        enclave_size: ``sgx.enclave_size`` (``<n>K|M|G``), default per role.
        max_threads: ``sgx.max_threads`` (1..4096), default per role.
        isvprodid, isvsvn: ``sgx.isvprodid`` / ``sgx.isvsvn`` (0..65535).

    Raises:
        WorkloadError: unknown role, bad size/thread/SVN values, an entrypoint that is not
            an interpreter or trusted file, or values containing template delimiters.
    """
    profile = ROLE_PROFILES.get(role)
    if profile is None:
        raise WorkloadError(f"unknown workload role {role!r} (expected one of {ROLES})")
    size = enclave_size or profile.enclave_size
    if _SIZE.fullmatch(size) is None:
        raise WorkloadError(f"enclave size must look like 512M or 4G, got {size!r}")
    threads = profile.max_threads if max_threads is None else max_threads
    if not 1 <= threads <= 4096:
        raise WorkloadError("max_threads must be 1..4096")
    if not (0 <= isvprodid <= 0xFFFF and 0 <= isvsvn <= 0xFFFF):
        raise WorkloadError("isvprodid and isvsvn must be 0..65535")
    entry, argv = _argv(manifest, profile)
    # the name only appears in a comment: keep it to one inert line
    name = re.sub(r"[^A-Za-z0-9._-]", "?", manifest.name if manifest else f"teeflow-{role}")

    env = {
        "LD_LIBRARY_PATH": "/lib:{{ arch_libdir }}:/usr{{ arch_libdir }}",
        "PYTHONPATH": "{{ app_dir }}:{{ site_packages }}",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "TEEFLOW_HOME": "/state",
        "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
    }
    lines = [
        f"# Gramine manifest template: teeflow {role} ({profile.summary}), workload {name}.",
        "# Generated by `teeflow workload gramine-manifest`; render and sign with:",
        "#   gramine-manifest -Dentrypoint=$(realpath $(command -v python3)) \\",
        "#     -Darch_libdir=/lib/x86_64-linux-gnu -Dapp_dir=$PWD \\",
        "#     -Dsite_packages=$(python3 -c 'import site; print(site.getsitepackages()[0])') \\",
        *(
            f"#     -D{var}={example} \\"
            for var, example in (profile.variables if manifest is None else ())
        ),
        f"#     -Dstate_dir=/var/lib/teeflow/{role} {role}.manifest.template {role}.manifest",
        f"#   gramine-sgx-sign --manifest {role}.manifest --output {role}.manifest.sgx",
        f"#   gramine-sgx {role}",
        "# Any change here or in a trusted file changes MRENCLAVE: update the reference",
        "# values in the federation agreement (see docs/deploy.md).",
        "",
        f'libos.entrypoint = "{entry}"',
        'loader.entrypoint = "file:{{ gramine.libos }}"',
        'loader.log_level = "error"',
        "loader.argv = [",
        *(f"  {a}," for a in argv),
        "]",
        "",
    ]
    for key, value in env.items():
        lines.append(f'loader.env.{key} = "{value}"')
    if manifest is not None:
        for key, value in sorted(manifest.env.items()):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise WorkloadError(f"environment variable name {key!r} unusable in a manifest")
            if key in env:
                raise WorkloadError(f"environment variable {key} is set by the template")
            lines.append(f"loader.env.{key} = {_toml(value, 'environment value')}")
    lines += [
        "",
        "fs.mounts = [",
        '  { path = "/lib", uri = "file:{{ gramine.runtimedir() }}" },',
        '  { path = "{{ arch_libdir }}", uri = "file:{{ arch_libdir }}" },',
        '  { path = "/usr{{ arch_libdir }}", uri = "file:/usr{{ arch_libdir }}" },',
        '  { path = "{{ entrypoint }}", uri = "file:{{ entrypoint }}" },',
        '  { path = "{{ python.stdlib }}", uri = "file:{{ python.stdlib }}" },',
        '  { path = "{{ python.distlib }}", uri = "file:{{ python.distlib }}" },',
        '  { path = "{{ site_packages }}", uri = "file:{{ site_packages }}" },',
        '  { path = "{{ app_dir }}", uri = "file:{{ app_dir }}" },',
        '  { path = "/etc/ssl/certs", uri = "file:/etc/ssl/certs" },',
        '  { type = "encrypted", path = "/state", uri = "file:{{ state_dir }}",'
        ' key_name = "_sgx_mrenclave" },',
        '  { type = "tmpfs", path = "/tmp" },',
        "]",
        "",
        "sys.enable_extra_runtime_domain_names_conf = true",
        'sys.stack.size = "2M"',
        "",
        "sgx.debug = false",
        "sgx.edmm_enable = false",
        'sgx.remote_attestation = "dcap"',
        'sgx.file_check_policy = "strict"',
        f'sgx.enclave_size = "{size}"',
        f"sgx.max_threads = {threads}",
        f"sgx.isvprodid = {isvprodid}",
        f"sgx.isvsvn = {isvsvn}",
        "",
        "sgx.trusted_files = [",
        '  "file:{{ gramine.libos }}",',
        '  "file:{{ entrypoint }}",',
        '  "file:{{ gramine.runtimedir() }}/",',
        '  "file:{{ arch_libdir }}/",',
        '  "file:/usr{{ arch_libdir }}/",',
        '  "file:{{ python.stdlib }}/",',
        '  "file:{{ python.distlib }}/",',
        '  "file:{{ site_packages }}/",',
        '  "file:/etc/ssl/certs/ca-certificates.crt",',
    ]
    if manifest is None:  # files the role's argv reads from app_dir (hashed when signing)
        if PIN_PATH in profile.argv:
            lines.append(f'  "file:{PIN_PATH}",')
        if "{{ app_dir }}/package" in profile.argv:
            lines.append('  "file:{{ app_dir }}/package/",')
    if manifest is not None:
        for tf in manifest.trusted_files:
            uri = '"file:{{ app_dir }}/' + _toml(tf.path, "trusted file path")[1:]
            lines.append(f'  {{ uri = {uri}, sha256 = "{tf.sha256}" }},')
    lines += ["]", ""]
    return "\n".join(lines)
