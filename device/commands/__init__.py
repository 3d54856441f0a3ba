"""Subcommands of the ``device`` CLI; every public module here has ``register(commands)``."""
