"""Job specs given as dicts, written as TOML for the pool.

Only what a job spec holds: tables of strings, integers, booleans, floats
and arrays of them. Money is written as strings (``total_xmr = "0.01"``),
as the spec expects, so floats never carry it.
"""

from __future__ import annotations

import json
import math
from typing import Any, List, Mapping


def dumps(spec: Mapping[str, Any]) -> str:
    """``spec`` as TOML text; a value TOML cannot hold raises ``TypeError``."""
    lines: List[str] = []
    _table(spec, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _key(k: str) -> str:
    if k and all(c.isalnum() or c in "-_" for c in k):
        return k
    return json.dumps(k)


def _value(v: Any, where: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise TypeError(f"{where}: {v} is not a finite number")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if hasattr(v, "__fspath__"):
        return json.dumps(str(v.__fspath__()), ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x, where) for x in v) + "]"
    raise TypeError(f"{where}: a {type(v).__name__} cannot be written in a job spec")


def _table(t: Mapping[str, Any], path: List[str], lines: List[str]) -> None:
    tables = []
    for k, v in t.items():
        if not isinstance(k, str):
            raise TypeError(f"spec keys are strings, got {k!r}")
        if isinstance(v, Mapping):
            tables.append((k, v))
        elif v is not None:
            lines.append(f"{_key(k)} = {_value(v, '.'.join(path + [k]))}")
    for k, v in tables:
        sub = path + [k]
        lines.append("")
        lines.append("[" + ".".join(_key(p) for p in sub) + "]")
        _table(v, sub, lines)
