"""Sphinx configuration for the agent-channels docs."""

project = "agent-channels"
author = "agent-channels contributors"
copyright = "2026, agent-channels contributors"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
nitpicky = False
