"""The proxy's routes, one router per concern: chat, completions and passthrough, models, health and
metrics. ``server.app.create_app`` includes them; state comes from ``server.dependencies``."""
