"""The command line: `doctor check`, `doctor probe`, `doctor rules`, `doctor explain`."""

from doctor.cli.main import main

__all__ = ["main"]
