"""Duplex's shared library: imported by every service, never run on its own."""
