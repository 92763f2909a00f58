"""Sphinx configuration for the agent-channels docs.

autodoc imports the package, which needs configured Django: the test settings stand in
for a project, with the repository root and the example project on the path.
"""

import os
import sys
from pathlib import Path

import django

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "example_project")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

project = "agent-channels"
author = "agent-channels contributors"
copyright = "2026, agent-channels contributors"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
nitpicky = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
# No intersphinx_mapping: the docs build offline and with -W.
