"""Sphinx configuration: MyST markdown pages, API reference from docstrings, CLI from click."""

from __future__ import annotations

import importlib.util
import os

from rlmesh import __version__

project = "rlmesh"
author = "rlmesh contributors"
copyright = "rlmesh contributors"
release = __version__
version = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_click",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Optional extras: the API pages still build without them.
_OPTIONAL = ["torch", "ray", "docker", "podman", "python_on_whales", "stable_baselines3"]
autodoc_mock_imports = [name for name in _OPTIONAL if importlib.util.find_spec(name) is None]
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# pygame (pulled in by Gymnasium's classic-control envs) must not look for a display.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

html_theme = "furo"
html_title = f"rlmesh {__version__}"
