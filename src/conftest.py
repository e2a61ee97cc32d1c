"""Doctest collection over ``src/`` (``--doctest-modules``, see pyproject.toml).

Collecting a module imports it, so a module whose optional extra is not installed would fail the whole
run; such modules are left out instead. Only the ``train`` extra (pydantic, PyYAML) is imported at module
level, by ``detloss.train.config`` and the modules built on it; plotting, TensorBoard and NumPy are
imported inside the functions that use them.
"""

from __future__ import annotations

collect_ignore_glob: list[str] = []
try:
    import pydantic  # noqa: F401
    import yaml  # noqa: F401
except ImportError:
    collect_ignore_glob.append("detloss/train/*")
