"""The repository keeps its promises: README's commands, CI, docs links."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    test_command = next(b for b in blocks if "pytest" in b)
    assert test_command in ci


def test_readme_starts_the_platform_on_embedded_defaults():
    blocks = re.findall(r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    assert blocks[0].startswith("python3 -m venv .venv") and blocks[0].endswith("aquafleet serve")


def test_documents_linked_from_the_readme_exist():
    readme = (ROOT / "README.md").read_text()
    for link in re.findall(r"\]\((docs/[^)]+)\)", readme):
        assert (ROOT / link).exists(), link


PACKAGE_FOLDERS = ("api", "gateway", "models", "protocol", "simulators")


def test_every_package_folder_installs_under_aquafleet_only(tmp_path: Path):
    """aquafleet installs one top-level package: the repository's folders are linked under
    aquafleet/, and no generic name (`api`, `models`, ...) is importable on its own."""
    import subprocess
    import sys

    folders = sorted(
        p.name for p in ROOT.iterdir() if (p / "__init__.py").exists() and p.name != "tests"
    )
    assert folders == sorted((*PACKAGE_FOLDERS, "aquafleet"))
    for name in PACKAGE_FOLDERS:
        link = ROOT / "aquafleet" / name
        assert link.is_symlink() and link.resolve() == (ROOT / name).resolve(), name
    probe = (
        "import importlib, importlib.util, sys\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module('aquafleet.' + name)\n"
        "    assert importlib.util.find_spec(name) is None, name\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *PACKAGE_FOLDERS],
        cwd=tmp_path,  # not the repository: what an installed aquafleet offers
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_no_source_imports_a_package_folder_by_its_bare_name():
    """In the repository the folders are importable bare too (the root is on sys.path when
    tests run): `gateway.appkeys` next to `aquafleet.gateway.appkeys` would be a second copy of
    every module, with app keys and classes that do not match. Only aquafleet.* is ours."""
    bare = re.compile(
        rf"^\s*(?:from|import)\s+(?:{'|'.join(PACKAGE_FOLDERS)})(?:\.|\s|$)", re.MULTILINE
    )
    offenders = []
    for folder in (*PACKAGE_FOLDERS, "aquafleet", "tests", "benchmarks", "fuzz"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.is_relative_to(ROOT / "aquafleet") and path.parent != ROOT / "aquafleet":
                continue  # the links: the same files as the folders
            offenders += [
                f"{path.relative_to(ROOT)}: {m.group(0).strip()}"
                for m in bare.finditer(path.read_text())
            ]
    assert offenders == []
