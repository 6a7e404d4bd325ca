"""Versions of the package and of the HTTP API."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["API_PREFIX", "API_VERSION", "FEDNB_VERSION"]

API_VERSION = "1"
API_PREFIX = "/api/v1"
try:
    FEDNB_VERSION = version("fednb")
except PackageNotFoundError:  # running from a source tree that is not installed
    FEDNB_VERSION = "0.0.0+source"
