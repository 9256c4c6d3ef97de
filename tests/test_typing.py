"""The package knows its version, and its wheel carries `py.typed`, so type checkers use its annotations."""

import importlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import resnet

REPO = Path(__file__).resolve().parent.parent


def test_version_comes_from_the_package_metadata() -> None:
    assert resnet.__version__ == importlib.metadata.version("resnet-annotated")


def test_version_without_metadata_says_it_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    try:
        assert importlib.reload(resnet).__version__ == "0+unknown"
    finally:
        monkeypatch.undo()
        importlib.reload(resnet)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the sources, so the build leaves nothing behind in the checkout."""
    pytest.importorskip("setuptools")
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "resnet", source / "resnet", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    # The PEP 517 hook pip itself would call, without pip's network access or build isolation.
    subprocess.run(
        [sys.executable, "-c", f"import setuptools.build_meta as b; b.build_wheel({str(out)!r})"],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (built,) = out.glob("*.whl")
    return built


def test_the_wheel_ships_py_typed_and_every_module(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "resnet/py.typed" in names
    modules = {f"resnet/{path.name}" for path in (REPO / "resnet").glob("*.py")}
    assert modules <= names


def test_mypy_sees_the_installed_package_typed(wheel: Path, tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    (tmp_path / "user.py").write_text(
        "import resnet\n"
        "reveal_type(resnet.resnet20())\n"
        "reveal_type(resnet.create_model('plain56'))\n"
        "reveal_type(resnet.resnet50().feature_info())\n"
        "reveal_type(resnet.__version__)\n"
    )
    # Skipping torch keeps this to seconds; what is checked is that mypy reads our annotations at all,
    # which it does only for an installed package that has the py.typed marker.
    (tmp_path / "mypy.ini").write_text("[mypy]\n[mypy-torch.*]\nfollow_imports = skip\n")
    # Directories on PYTHONPATH count as installed packages for mypy, as site-packages does.
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--no-incremental", "user.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    revealed = [
        line.split("Revealed type is ")[1].strip('"')
        for line in result.stdout.splitlines()
        if "Revealed type is" in line
    ]
    # mypy releases differ in how they print unions and builtins, not in the types themselves.
    classifier, either, features, version = revealed
    assert classifier == "resnet.model.ResNetClassifier"
    assert "resnet.model.ResNetClassifier" in either and "resnet.fast.ResNet9" in either
    assert "resnet.features.FeatureInfo" in features
    assert version in ("str", "builtins.str")
