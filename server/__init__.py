"""Voxline: a speech inference server for contact-center voice agents."""

__version__ = "0.1.0"
