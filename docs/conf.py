"""Sphinx configuration for the ``adapters`` documentation.

Build from the repository root with::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import os
import sys

# autodoc imports the package from this checkout, not from site-packages
sys.path.insert(0, os.path.abspath(".."))

import adapters  # noqa: E402

project = "adapters"
author = "adapters contributors"
copyright = "adapters contributors"
version = adapters.__version__
release = adapters.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build", "support_table.rst"]  # included from architecture.rst
root_doc = "index"
language = "en"

# -- autodoc -----------------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_inherit_docstrings = False
autodoc_preserve_defaults = True

# -- napoleon: Google-style "Args:" / "Raises:" / "Example::" sections ----------------------------
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_include_init_with_doc = False
napoleon_use_rtype = False

# Unresolvable cross-references (e.g. to torch or transformers types) are not errors here.
nitpicky = False

# -- HTML --------------------------------------------------------------------------------------
html_theme = "alabaster"
html_theme_options = {
    "description": "Named, composable adapters for transformers 5",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "240px",
}
html_static_path = []
html_title = f"adapters {release}"
