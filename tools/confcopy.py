"""A copy of ``conf/doodle.toml`` pointed at another Kafka port, with overrides.

The tests and the benchmarks run brokers of their own beside `make kafka-up`'s::

    conf_copy(tmp / "test.toml", 19092, **{"spark.driver_memory": "1g"})
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from doodlestats.runtime.config import REPO_ROOT

__all__ = ["conf_copy"]


def conf_copy(path: Path, port: int, **overrides) -> Path:
    """Write ``conf/doodle.toml`` with ``[kafka]`` on 127.0.0.1:``port`` (controller
    ``port + 1``) and ``section.key`` overrides to ``path``; return ``path``."""
    raw = tomllib.loads((REPO_ROOT / "conf" / "doodle.toml").read_text())
    raw["kafka"]["bootstrap_servers"] = f"127.0.0.1:{port}"
    raw["kafka"]["controller_port"] = port + 1
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        raw.setdefault(section, {})[name] = value
    lines = []
    for section, values in raw.items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            if isinstance(v, bool):
                lines.append(f"{k} = {'true' if v else 'false'}")
            elif isinstance(v, str):
                lines.append(f"{k} = {json.dumps(v)}")
            else:
                lines.append(f"{k} = {v}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
