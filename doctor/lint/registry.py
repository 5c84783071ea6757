"""Finding and selecting the static rules."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Iterable, Iterator, Optional

from doctor.core.findings import Finding
from doctor.lint.rule import Rule

_STATIC: Optional[dict[str, type[Rule]]] = None


def load_modules(package: str) -> Iterator[object]:
    """The public modules of a package, by name (one module per rule or check)."""
    pkg = importlib.import_module(package)
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"{package}.{info.name}")


def static_rules() -> dict[str, type[Rule]]:
    """All static rules by name, in code order."""
    global _STATIC
    if _STATIC is None:
        found: dict[str, type[Rule]] = {}
        for module in load_modules("doctor.rules.static"):
            for obj in vars(module).values():
                if isinstance(obj, type) and issubclass(obj, Rule) and obj is not Rule and "name" in vars(obj):
                    if obj.name in found and found[obj.name] is not obj:
                        raise RuntimeError(f"duplicate rule name {obj.name}")
                    found[obj.name] = obj
        _STATIC = dict(sorted(found.items(), key=lambda kv: kv[1].code))
    return _STATIC


def lookup(key: str) -> Optional[type[Rule]]:
    """A static rule by name or code (case-insensitive)."""
    key_l = key.lower()
    for rule in static_rules().values():
        if rule.name == key_l or rule.code.lower() == key_l:
            return rule
    return None


def _matches(rule: type[Rule], selector: str) -> bool:
    sel = selector.strip()
    if not sel:
        return False
    if sel.upper() == "ALL":
        return True
    if sel.lower() == rule.name:
        return True
    return rule.code.upper().startswith(sel.upper())


def validate_selectors(selectors: Iterable[str]) -> list[str]:
    """Selectors that match no rule at all (reported as usage errors)."""
    rules = static_rules().values()
    return [s for s in selectors if s.strip() and not any(_matches(r, s) for r in rules)]


def select_rules(
    select: Iterable[str] = (), ignore: Iterable[str] = (), extend_select: Iterable[str] = ()
) -> list[type[Rule]]:
    """Rules enabled by ``select``/``ignore``. With no ``select``, the default-enabled rules.

    Like ruff, when ``select`` and ``ignore`` both match a rule the more specific selector wins
    (a name beats a code, a longer code prefix beats a shorter one, anything beats ``ALL``).
    """
    select = [s for s in select if s.strip()]
    extend_select = [s for s in extend_select if s.strip()]
    ignore = [s for s in ignore if s.strip()]
    chosen = []
    for rule in static_rules().values():
        matched = [s for s in select + extend_select if _matches(rule, s)]
        on = bool(matched) if select else (rule.default_enabled or bool(matched))
        if on:
            best = max((_specificity(rule, s) for s in matched), default=0)
            if any(_specificity(rule, s) >= best for s in ignore if _matches(rule, s)):
                on = False
        if on:
            chosen.append(rule)
    return chosen


def _specificity(rule: type[Rule], selector: str) -> int:
    if selector.upper() == "ALL":
        return 0
    if selector.lower() == rule.name:
        return 1000
    return len(selector)


RuleFilter = Callable[[Finding], bool]
