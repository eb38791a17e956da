"""Errors a user can cause and fix: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class ResnetlabError(Exception):
    """Base class for every error caused by bad input (names, configs, paths, files)."""

    exit_code = 2


class SpecError(ResnetlabError, ValueError):
    """An invalid network specification; the message names the bad field."""


class ConfigError(ResnetlabError, ValueError):
    """An invalid recipe, config file or command-line override."""


class DataError(ResnetlabError):
    """A missing, unreadable or malformed data set; the message names the file."""


class CheckpointError(ResnetlabError):
    """A missing, corrupt, untrusted or mismatched checkpoint."""


class RunDirError(ResnetlabError):
    """A run directory that cannot be used (exists, locked, not a run)."""
