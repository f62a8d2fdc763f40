"""Go `text/template`, the subset Ollama's prompt templates use: parsed and run in Python.

Supported: text and `{{ }}` actions with `{{-` / `-}}` trimming, comments `{{/* */}}`,
fields `.X.Y`, `.`, `$`, `$x.Y`, `(pipeline).X`, variables (`$x := ...`, `$x = ...`),
`if` / `else if` / `else` / `end`, `range` (one or two variables, `else`, over lists, maps
in key order and integers), `with` / `else with`, `break` / `continue`, pipelines `a | b`,
string, raw-string, character, number, bool and nil literals, and the functions `and or not
eq ne lt le gt ge len index slice print println printf json` (`json` as Ollama defines it).
`define`, `template` and `block` are rejected.

Values are Python data: a dict is a Go map (a missing key is nil, printed `<no value>`), a
`Struct` is a Go struct (a missing field is an error), lists are slices.

Nothing here does I/O. A template from a request is not trusted: its size, nesting, steps
and output are bounded, and every error names the line and column.

Modules: `lexer` → `parser` (builds `nodes`) → `evaluate` (calls `functions`, uses
`values`); `template` holds `GoTemplate`; `limits` and `errors` are shared.
"""

from inferd.models.go_template.errors import TemplateError
from inferd.models.go_template.limits import (
    MAX_DEPTH,
    MAX_OUTPUT_CHARS,
    MAX_STEPS,
    MAX_TEMPLATE_CHARS,
)
from inferd.models.go_template.template import GoTemplate
from inferd.models.go_template.values import Struct, to_text, truth

__all__ = [
    "MAX_DEPTH",
    "MAX_OUTPUT_CHARS",
    "MAX_STEPS",
    "MAX_TEMPLATE_CHARS",
    "GoTemplate",
    "Struct",
    "TemplateError",
    "to_text",
    "truth",
]
