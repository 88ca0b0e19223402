"""nbremote: one command from the laptop to a persistent Jupyter on a server."""

__version__ = "0.1.0"
