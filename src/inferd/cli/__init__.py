"""The `inferd` command line."""

from inferd.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
