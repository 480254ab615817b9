"""docs/deviations.md: every config key it names exists, and every "ours" value is what the real
config it is listed under runs with - so the page cannot drift from the code silently."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from qaclims.config import load_yaml, validate_config

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "deviations.md"


def tables() -> dict[str, list[dict[str, str]]]:
    """{config file: rows} from the '## ... (config/X.yaml)' sections' markdown tables."""
    out: dict[str, list[dict[str, str]]] = {}
    config, header = None, None
    for line in DOC.read_text().splitlines():
        m = re.match(r"^## .*\((config/[\w.]+\.yaml)\)\s*$", line)
        if m:
            config, header = m.group(1), None
            out[config] = []
            continue
        if config is None or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set("".join(cells)) <= set("-: "):
            out[config].append(dict(zip(header, cells, strict=True)))
    return out


def _schema_has(schema: dict, path: list[str]) -> bool:
    node = schema
    for part in path:
        props = node.get("properties", {})
        if part not in props:
            return False
        node = props[part]
    return True


def _get(config: dict, path: list[str]):
    for part in path:
        config = config[part]
    return config


def test_readme_links_the_page() -> None:
    assert "docs/deviations.md" in (ROOT / "README.md").read_text()


def test_the_issue_s_deviations_are_listed() -> None:
    keys = {row["config key"] for rows in tables().values() for row in rows}
    for key in ("seg.predict.crf_params.authors_image", "cam.threshold.step",
                "cam.export.dtype", "qape.lemmatizer", "models.vqa.image_size",
                "cam.baseline_checkpoint"):
        assert f"`{key}`" in keys, key


@pytest.mark.parametrize("config_file", ["config/voc12.yaml", "config/coco14.yaml"])
def test_keys_exist_and_ours_is_what_the_config_runs(config_file: str, tmp_path: Path) -> None:
    rows = tables()[config_file]
    assert len(rows) >= 3
    schema = load_yaml(ROOT / "workflow" / "schemas" / "config.schema.yaml")
    raw = load_yaml(ROOT / config_file)
    (tmp_path / raw["dataset"]["root"]).mkdir(parents=True)
    config = validate_config(raw, base=tmp_path)
    for row in rows:
        assert row["authors"] and row["why"], row
        key = row["config key"]
        if key == "none" or key.startswith("none "):
            continue
        m = re.fullmatch(r"`([\w.]+)`", key)
        assert m, f"config key cell must be one `dotted.key` or none: {key!r}"
        path = m.group(1).split(".")
        assert _schema_has(schema, path), f"{m.group(1)} is not a config key"
        ours = re.fullmatch(r"`(.*)`", row["ours"])
        assert ours, f"'ours' of {m.group(1)} must be one `value`: {row['ours']!r}"
        assert _get(config, path) == yaml.safe_load(ours.group(1)), m.group(1)
