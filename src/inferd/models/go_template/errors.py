"""The one error a template raises, and the "line L, column C" every message names."""

from inferd.errors import InvalidRequest


class TemplateError(InvalidRequest):
    """A template that does not parse or fails while running: a 400 naming `template`."""

    def __init__(self, message: str, *, param: str = "template") -> None:
        super().__init__(message, param=param)


def position(src: str, pos: int) -> str:
    line = src.count("\n", 0, pos) + 1
    col = pos - (src.rfind("\n", 0, pos) + 1) + 1
    return f"line {line}, column {col}"
