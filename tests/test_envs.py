"""The pip requirements and the conda environment file pin the same packages."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pip_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "envs" / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.txt: {line!r} is not pinned with =="
            pins[name.lower()] = version
    return pins


def _conda_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "envs" / "qaclims.yaml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "envs/qaclims.yaml: expected exactly one pip: section"
    pins = {}
    for line in pip_sections[0]:
        name, _, version = line.partition("==")
        assert version, f"envs/qaclims.yaml: {line!r} is not pinned with =="
        pins[name.lower()] = version
    return pins


def test_conda_env_matches_requirements() -> None:
    pip, conda = _pip_pins(), _conda_pins()
    assert pip == conda, (
        f"only in requirements.txt: {sorted(set(pip.items()) - set(conda.items()))}; "
        f"only in qaclims.yaml: {sorted(set(conda.items()) - set(pip.items()))}"
    )


def test_conda_env_python_matches_pyproject() -> None:
    env = yaml.safe_load((ROOT / "envs" / "qaclims.yaml").read_text())
    assert "python=3.11" in env["dependencies"]
    assert 'requires-python = ">=3.11"' in (ROOT / "pyproject.toml").read_text()
