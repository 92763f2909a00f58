"""The WebSocket surface: the consumer, its frames, limits and close codes."""
