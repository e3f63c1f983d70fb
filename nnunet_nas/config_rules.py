"""Field rules of the search configs: each rule says what a field allows, checks a value and names the range in its
message. :func:`check_fields` applies a ``{field: rule}`` table to a dataclass; :func:`read_fields` reads a dict
into its fields, refusing unknown keys and converting JSON lists to tuples."""

import math
import numbers
from dataclasses import fields
from typing import Callable, Optional, Sequence

from nnunet_nas.errors import ConfigError


class Rule:
    """``check(value) -> None`` when the value is allowed, else a message (``"must be ..."``)."""

    def __init__(self, check: Callable[[object], Optional[str]]):
        self.check = check


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def number(lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False,
           hi_open: bool = False) -> Rule:
    """A finite real number in ``[lo, hi]`` (``(`` / ``)`` where open)."""
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    span = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
    if lo == 0 and lo_open and hi is None:
        span = "> 0"
    elif lo == 0 and hi is None:
        span = ">= 0"

    def check(v):
        if not _is_real(v) or not math.isfinite(v):
            return f"must be a finite number {span}"
        if lo is not None and (v < lo or lo_open and v == lo) or hi is not None and (v > hi or hi_open and v == hi):
            return f"must be a finite number {span}"
        return None
    return Rule(check)


def integer(lo: Optional[int] = None, hi: Optional[int] = None) -> Rule:
    """An integer (not a bool, not a float) in ``[lo, hi]``."""
    span = f"an integer >= {lo}" if hi is None else f"an integer in {lo}..{hi}"

    def check(v):
        if not isinstance(v, numbers.Integral) or isinstance(v, bool):
            return f"must be {span}"
        if lo is not None and v < lo or hi is not None and v > hi:
            return f"must be {span}"
        return None
    return Rule(check)


def one_of(values: Sequence) -> Rule:
    return Rule(lambda v: None if isinstance(v, str) and v in values else f"must be one of {list(values)}")


def _boolean(v) -> Optional[str]:
    return None if isinstance(v, bool) else "must be true or false"


boolean = Rule(_boolean)


def optional(rule: Rule) -> Rule:
    def check(v):
        if v is None:
            return None
        message = rule.check(v)
        return None if message is None else f"{message}, or None"
    return Rule(check)


def pair(rule: Rule) -> Rule:
    """Two values, each allowed by ``rule``."""
    def check(v):
        if not isinstance(v, (tuple, list)) or len(v) != 2:
            return "must be a pair of values"
        for x in v:
            message = rule.check(x)
            if message is not None:
                return f"must be a pair of values that each {message.replace('must be', 'are', 1)}"
        return None
    return Rule(check)


def check_fields(obj, rules: dict, source: str, raise_error: bool = True) -> Optional[str]:
    """Apply ``rules`` to the dataclass ``obj``: a field without a rule is a bug of ours (``KeyError``); the first
    field out of range raises :class:`ConfigError` naming ``source.field``, its value and the range (or returns the
    message with ``raise_error=False``)."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        message = rules[f.name].check(value)
        if message is not None:
            text = f"{f.name}={value!r} {message}"
            if raise_error:
                raise ConfigError(f"{source}: {text}.")
            return text
    return None


def read_fields(cls, d, source: str) -> dict:
    """The fields of dataclass ``cls`` from the dict ``d`` (lists become tuples); an unknown key or a value that is
    not a dict is one :class:`ConfigError` naming its path."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected an object of {cls.__name__} fields, found {type(d).__name__}.")
    known = {f.name for f in fields(cls)}
    unknown = sorted(k for k in d if k not in known)
    if unknown:
        raise ConfigError(f"{source}: unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(f'{source}.{k}' for k in unknown)} ({cls.__name__} has {sorted(known)}). "
                          f"Check the spelling, or use the nnunet_nas version that wrote it.")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
