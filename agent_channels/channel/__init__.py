"""The channel itself: names, the log, the live wire, publishing, retention, control."""
