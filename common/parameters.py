"""Notebook parameters: what each notebook's `parameters` cell declares, and who gets which value.

A notebook's parameters are exactly the names assigned in its cell tagged ``parameters``. So
`collect` takes a run's values by those names (re-running cells interactively adds nothing), and
`route` hands every notebook of a `run_all.sh` batch only the names it declares: a shared value
goes to each notebook that has the name, a ``<notebook>:`` section of the YAML file (or
``-p <notebook>.<name>``) to that notebook alone. A shared name whose default differs between
two notebooks of the batch means different things in each (``model``: ``single`` in 01,
``embedding`` in 02), so it must be given per notebook.

`load_yaml` reads numbers the YAML 1.2 way: ``3e-4`` is a float, not the string PyYAML's YAML 1.1
makes of it.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import yaml

from common import workspace

__all__ = ["NOTEBOOKS", "ParameterError", "notebook_path", "read_defaults", "collect",
           "parse_value", "load_yaml", "split_overrides", "route"]

NOTEBOOKS = ("00_preprocess", "01_task_a_gender", "02_task_b_arcface", "03_task_b_siamese",
             "04_evaluation")


class ParameterError(ValueError):
    """A parameter no notebook declares, or one that must be given per notebook."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats (``1e-3``, ``3E+2`` without a dot)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789."))


def notebook_path(name: str) -> Path:
    """The project's copy of notebook `name` (``01_task_a_gender``)."""
    if name not in NOTEBOOKS:
        raise ParameterError(f"Unknown notebook {name!r}; choose one of {NOTEBOOKS}.")
    return workspace.project_root() / "notebooks" / f"{name}.ipynb"


def read_defaults(name: str) -> dict[str, Any]:
    """``{parameter: default}`` as written in notebook `name`'s ``parameters`` cell."""
    notebook = json.loads(notebook_path(name).read_text())
    for cell in notebook["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", ()):
            tree = ast.parse("".join(cell["source"]))
            return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
                    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    raise ParameterError(f"{notebook_path(name)} has no cell tagged 'parameters'.")


def collect(namespace: dict, name: str) -> dict[str, Any]:
    """The current values of notebook `name`'s parameters, read from `namespace` (globals())."""
    return {key: namespace[key] for key in read_defaults(name)}


def parse_value(text: str) -> Any:
    """One ``-p NAME VALUE`` value: YAML scalars, numbers as numbers (``3e-4`` too)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: str | Path) -> tuple[dict, dict[str, dict]]:
    """A parameters file: (shared values, ``{notebook: values}`` from its notebook sections)."""
    loaded = yaml.load(Path(path).read_text(), Loader=_Loader) or {}  # noqa: S506
    if not isinstance(loaded, dict):
        raise ParameterError(f"{path} must be a mapping of parameter: value, with optional "
                             f"sections named after notebooks ({NOTEBOOKS[1]}: {{...}}).")
    shared = {key: value for key, value in loaded.items() if key not in NOTEBOOKS}
    sections = {key: value for key, value in loaded.items() if key in NOTEBOOKS}
    for name, section in sections.items():
        if not isinstance(section, dict):
            raise ParameterError(f"Section {name} of {path} must be a mapping of "
                                 "parameter: value.")
    return shared, sections


def split_overrides(pairs: list[tuple[str, str]]) -> tuple[dict, dict[str, dict]]:
    """``-p NAME VALUE`` / ``-p NOTEBOOK.NAME VALUE`` pairs as (shared, sections)."""
    shared: dict = {}
    sections: dict[str, dict] = {}
    for key, text in pairs:
        notebook, dot, name = key.rpartition(".")
        if dot:
            notebook_path(notebook)  # an unknown notebook is refused here
            sections.setdefault(notebook, {})[name] = parse_value(text)
        else:
            shared[key] = parse_value(text)
    return shared, sections


def route(shared: dict, sections: dict[str, dict], notebooks: tuple[str, ...]
          ) -> dict[str, dict]:
    """``{notebook: its parameters}`` for a batch of `notebooks`.

    Raises:
        ParameterError: a name no notebook of the batch declares, a section naming a parameter
            its notebook lacks, or a shared name whose defaults differ between notebooks.
    """
    defaults = {name: read_defaults(name) for name in notebooks}
    for key in shared:
        owners = [name for name in notebooks if key in defaults[name]]
        if not owners:
            raise ParameterError(f"No notebook of {notebooks} has a parameter {key!r}; see the "
                                 "parameters cell of each notebook for the names.")
        values = {repr(defaults[name][key]) for name in owners}
        if len(values) > 1:
            meaning = ", ".join(f"{name} (default {defaults[name][key]!r})" for name in owners)
            raise ParameterError(
                f"{key!r} means different things in {meaning}: give it per notebook, as a "
                f"section of the YAML file ({owners[0]}: {{{key}: ...}}) or "
                f"-p {owners[0]}.{key} VALUE.")
    for name, section in sections.items():
        unknown = sorted(set(section) - set(defaults.get(name, section)))
        if unknown:
            raise ParameterError(f"Notebook {name} has no parameter {unknown}; its parameters "
                                 f"are {sorted(defaults[name])}.")
    return {name: {**{k: v for k, v in shared.items() if k in defaults[name]},
                   **sections.get(name, {})} for name in notebooks}
