"""protocol/ is sans-IO: no event loop, sockets, threads, databases or brokers."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import aquafleet.protocol as protocol

FORBIDDEN = [
    "asyncio",
    "socket",
    "redis",
    "tortoise",
    "aiohttp",
    "aiomqtt",
    "uvloop",
    "selectors",
    "threading",
]
THIRD_PARTY = {"cbor2", "msgpack", "crcmod"}
PACKAGE = Path(protocol.__file__).parent
MODULES = sorted(
    f"aquafleet.protocol.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"
)

PROBE = """
import importlib, json, sys
for name in ["aquafleet.protocol", *sys.argv[1:]]:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def test_importing_protocol_loads_no_io_module() -> None:
    assert "aquafleet.protocol.session" in MODULES
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *MODULES],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    loaded = set(json.loads(result.stdout))
    assert set(MODULES) <= loaded
    offenders = sorted(
        name for name in loaded if name.split(".")[0] in FORBIDDEN or name.startswith("_asyncio")
    )
    assert offenders == []


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names.add("aquafleet.protocol")  # a relative import stays inside the package
            elif node.module:
                names.add(node.module)
    return names


def test_protocol_sources_import_only_stdlib_and_codecs() -> None:
    files = sorted(PACKAGE.glob("*.py"))
    assert len(files) >= 8
    for path in files:
        for name in imports_of(path):
            top = name.split(".")[0]
            assert top not in FORBIDDEN, f"{path.name} imports {name}"
            ours = name == "aquafleet.protocol" or name.startswith("aquafleet.protocol.")
            assert ours or top in THIRD_PARTY or top in sys.stdlib_module_names, (
                f"{path.name} imports {name}"
            )
