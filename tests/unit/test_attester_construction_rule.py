"""The layering rule of issue 9: emulated attesters are constructed only in
``teeflow/platform`` and ``teeflow/testing``, and nothing selects emulation from the
environment (roles get their attester from ``attester_for`` by name).

The check walks the AST of every module of the installed source tree: a call of
``EmulatedSgx(...)``, ``EmulatedTdx(...)``, ``EmulatedSnp(...)`` or of their
``generate``/``load_or_create`` constructors elsewhere is a violation. The checker is itself
tested on a snippet, so this test cannot pass vacuously.
"""

from __future__ import annotations

import ast
from pathlib import Path

import teeflow

CLASSES = {"EmulatedSgx", "EmulatedTdx", "EmulatedSnp", "EmulatedNvml"}  # + the NVML stand-in
CONSTRUCTORS = {"generate", "load_or_create"}
ALLOWED = ("platform", "testing")
ROOT = Path(teeflow.__file__).parent


def constructions(source: str) -> list[int]:
    """Line numbers of emulated-attester constructions in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else None
        if isinstance(func, ast.Attribute):
            if isinstance(func.value, ast.Name) and func.attr in CONSTRUCTORS:
                name = func.value.id
            elif isinstance(func.value, ast.Attribute) and func.attr in CONSTRUCTORS:
                name = func.value.attr
            elif func.attr in CLASSES:  # module.EmulatedSgx(...)
                name = func.attr
        if name in CLASSES:
            found.append(node.lineno)
    return found


def test_checker_finds_constructions() -> None:
    snippet = (
        "a = EmulatedSgx(auth, measurement=m)\n"
        "b = emulated.EmulatedTdx(auth, mrtd=x)\n"
        "c = EmulatedSnp.load_or_create(home)\n"
        "d = mod.EmulatedSnp.generate()\n"
        "e = attester_for('emulated-sgx', measurement=m)\n"
        "f = EmulationAuthority.load_or_create(home)\n"
    )
    assert constructions(snippet) == [1, 2, 3, 4]


def test_no_emulated_attester_constructed_outside_platform_and_testing() -> None:
    modules = [p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts]
    assert len(modules) > 100  # the whole tree, not an empty glob
    violations = []
    for path in modules:
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ALLOWED:
            continue
        violations += [f"{rel}:{line}" for line in constructions(path.read_text("utf-8"))]
    assert violations == []


def test_nothing_selects_emulation_from_the_environment() -> None:
    # the former TEEFLOW_PLATFORM=emulated forcing is gone everywhere
    hits = [
        str(p.relative_to(ROOT))
        for p in ROOT.rglob("*.py")
        if "TEEFLOW_PLATFORM" in p.read_text("utf-8")
    ]
    assert hits == []
