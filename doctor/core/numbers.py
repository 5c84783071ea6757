"""Number helpers shared by the probe and the reports."""

from __future__ import annotations

import math
from typing import Any, Iterable


def finite(values: Iterable[Any]) -> list[float]:
    """The finite numbers of ``values`` (None, NaN, Inf and non-numbers dropped)."""
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def json_safe(value: Any) -> Any:
    """Strict JSON: NaN/Inf become null, recursively (the non-finite-loss evidence spells them out as strings)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
