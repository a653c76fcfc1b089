"""A notebook's parameters: declared in its cell tagged ``parameters``, checked before anything runs (README).

Papermill only warns about a parameter a notebook does not declare and injects any value; here an
unknown name, a value of another type than the default literal's, or ``-p profile`` (use
``--profile``) is a :class:`vlkit.errors.UserError` naming the parameter and the notebook.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import nbformat
import papermill

from vlkit.errors import UserError

# Parameters every notebook must declare: the runner passes them to all notebooks.
COMMON_PARAMETERS = ("profile",)
PROFILES = ("smoke", "full")


def declared_parameters(notebook: Path) -> dict[str, Any]:
    """The names and default values in a notebook's cell tagged ``parameters``.

    Uses papermill's own inspection; a notebook without such a cell is an error, since
    the runner could not pass it a profile.
    """
    nb = nbformat.read(notebook, as_version=4)
    if not any("parameters" in c.metadata.get("tags", []) for c in nb.cells):
        raise ValueError(f"{notebook.name}: no cell tagged 'parameters'")
    params = papermill.inspect_notebook(str(notebook))
    return {name: info["default"] for name, info in params.items()}


def parse_value(text: str) -> Any:
    """A ``-p NAME VALUE`` value as papermill's CLI reads it: int, float, bool, None, JSON, else str."""
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


_NO_DEFAULT = object()


def default_value(source: str) -> Any:
    """A parameter's default as a value (``ast.literal_eval`` of papermill's default string), or
    ``_NO_DEFAULT`` when it is an expression rather than a literal (``2 ** 10``, ``os.cpu_count()``)."""
    try:
        return ast.literal_eval(source)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NO_DEFAULT


def _type_error(name: str, value: Any, default: Any) -> str | None:
    """Why ``value`` cannot stand for a parameter whose default is ``default``; None if it can.

    int default: an int (not a bool); float: an int or a float (not a bool); bool: a bool;
    str: a str; list/tuple: a list (JSON has no tuple); dict: a dict; None or a non-literal
    default: anything.
    """
    if default is None or default is _NO_DEFAULT:
        return None
    if isinstance(default, bool):
        ok, expected = isinstance(value, bool), "a bool (true or false)"
    elif isinstance(default, int):
        ok, expected = isinstance(value, int) and not isinstance(value, bool), "an int"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        expected = "a number"
    elif isinstance(default, str):
        ok, expected = isinstance(value, str), "a str"
    elif isinstance(default, (list, tuple)):
        ok, expected = isinstance(value, (list, tuple)), "a list"
    elif isinstance(default, dict):
        ok, expected = isinstance(value, dict), "a dict"
    else:
        ok, expected = isinstance(value, type(default)), f"a {type(default).__name__}"
    if ok:
        return None
    quotable = expected == "a str" and (value is None or isinstance(value, (bool, int, float)))
    hint = f" (to pass it as text, quote it: -p {name} '\"{value}\"')" if quotable else ""
    return f"expects {expected} (its default is {default!r}), got {value!r} ({type(value).__name__}){hint}"


def check_parameters(notebooks: list[Path], params: dict[str, Any]) -> dict[Path, dict[str, Any]]:
    """Map each notebook to the parameters it declares; unknown names and wrong types are errors.

    Papermill only warns about a parameter a notebook does not declare (and injects it
    anyway); a typo would then silently run the default. Here a name must be declared by
    at least one selected notebook, and each notebook gets only the names it declares. Each
    value must fit the type of the default of every notebook that declares it
    (see :func:`_type_error`), so that ``-p seed abc`` fails here rather than inside a notebook
    or, worse, runs.
    """
    declared = {nb: declared_parameters(nb) for nb in notebooks}
    for nb, names in declared.items():
        missing = [c for c in COMMON_PARAMETERS if c not in names]
        if missing:
            raise UserError(f"{nb.name}: parameters cell lacks {', '.join(missing)}")
    known = set().union(*declared.values())
    unknown = sorted(set(params) - known)
    if unknown:
        raise UserError(f"unknown parameter(s) {', '.join(unknown)}; the selected notebooks "
                        f"declare: {', '.join(sorted(known))}")
    for nb, defaults in declared.items():
        for name, value in params.items():
            if name in defaults:
                why = _type_error(name, value, default_value(defaults[name]))
                if why:
                    raise UserError(f"parameter {name} of {nb.name} {why}")
    return {nb: {k: v for k, v in params.items() if k in names} for nb, names in declared.items()}


def with_profile(params: dict[str, Any] | None, profile: str) -> dict[str, Any]:
    """``params`` plus ``profile``; the profile is chosen by ``--profile``, never by ``-p``.

    A ``-p profile X`` used to be overridden by ``--profile`` and yet recorded as X.
    """
    if profile not in PROFILES:
        raise UserError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    if "profile" in (params or {}):
        raise UserError(f"-p profile {params['profile']}: the profile is chosen with --profile "
                        f"({' or '.join(PROFILES)}), not with -p")
    return {**(params or {}), "profile": profile}
