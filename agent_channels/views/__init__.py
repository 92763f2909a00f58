"""The HTTP surface: the log as JSON pages, runs, and control messages."""
