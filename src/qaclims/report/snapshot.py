"""The validated, filled-in config of a run as YAML (rule config_snapshot)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import yaml

from qaclims.provenance import jsonable
from qaclims.store import atomic_path

PathLike = str | os.PathLike[str]

HEADER = ("# The config this run used: the config files merged with --config overrides, validated\n"
          "# against workflow/schemas/config.schema.yaml, every default filled in.\n"
          "# Pass it back with --configfile to repeat the run.\n")


def write_config_snapshot(config: Mapping[str, Any], path: PathLike) -> None:
    """``config`` as YAML in its own key order, atomically."""
    text = yaml.safe_dump(jsonable(dict(config)), sort_keys=False, default_flow_style=False,
                          allow_unicode=True, width=100)
    with atomic_path(path) as tmp:
        tmp.write_text(HEADER + text, encoding="utf-8")
