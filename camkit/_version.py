"""The package version, in one place (read by setup.cfg without importing camkit)."""
__version__ = "0.1.0"
