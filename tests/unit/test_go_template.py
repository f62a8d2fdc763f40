"""The Go text/template evaluator (models/go_template/): each construct, trimming, errors
with their positions, and the bounds a hostile template runs into. Expected outputs are what
Go's text/template prints for the same template and data."""

from __future__ import annotations

import time
from typing import Any

import pytest

from inferd.errors import InvalidRequest
from inferd.models import go_template as gt
from inferd.models.go_template import GoTemplate, Struct, TemplateError


def render(src: str, data: Any = None, **limits: int) -> str:
    return GoTemplate.parse(src).render({} if data is None else data, **limits)


def msg(role: str, content: str) -> Struct:
    return Struct("api.Message", {"Role": role, "Content": content}, {"Role": "role"})


DATA = {
    "System": "Be brief.",
    "Prompt": "Hi",
    "Empty": "",
    "Zero": 0,
    "List": ["a", "b", "c"],
    "Map": {"b": 2, "a": 1},
    "Messages": [msg("system", "Be brief."), msg("user", "Hi")],
    "Nested": {"Inner": {"Value": "deep"}},
}


@pytest.mark.parametrize(
    ("src", "out"),
    [
        ("plain text", "plain text"),
        ("{{ .Prompt }}", "Hi"),
        ("{{.Prompt}}!", "Hi!"),
        ("{{ .Nested.Inner.Value }}", "deep"),
        ("{{ .Missing }}", "<no value>"),  # a map's missing key, as Go prints it
        ("{{ . | len }}", "8"),
        ("{{ $.Prompt }}", "Hi"),
        ("{{ $.Nested.Inner.Value }}", "deep"),
        ("{{ with .Nested }}{{ .Inner.Value }}{{ end }}", "deep"),
        ("{{ (index .Messages 1).Content }}", "Hi"),
        ('{{ "a\\tb" }}', "a\tb"),
        ("{{ `raw\\n` }}", "raw\\n"),
        ("{{ 'x' }}", "120"),
        ("{{ 42 }} {{ -7 }} {{ 0x1F }} {{ 1.5 }} {{ 1e6 }} {{ 1e21 }}", "42 -7 31 1.5 1e+06 1e+21"),
        ("{{ true }} {{ false }}", "true false"),
        ("{{ .List }} {{ .Map }}", "[a b c] map[a:1 b:2]"),
        ("{{ index .Messages 0 }}", "{system Be brief.}"),
    ],
)
def test_values_and_printing(src: str, out: str) -> None:
    assert render(src, DATA) == out


def test_go_float_formatting() -> None:
    # Go's %v: %g with the shortest digits, an exponent from 1e6 and below 1e-4
    assert [gt.to_text(x) for x in (0.5, 123456.789, 1e6, 1e21, 0.0001, 0.00001)] == [
        "0.5",
        "123456.789",
        "1e+06",
        "1e+21",
        "0.0001",
        "1e-05",
    ]


@pytest.mark.parametrize(
    ("src", "out"),
    [
        ("a  {{- .Prompt -}}  b", "aHib"),
        ("a \n\t{{- .Prompt }} \n b", "aHi \n b"),
        ("a {{ .Prompt -}}\n\n b", "a Hib"),
        ("{{- /* a comment */ -}}\n  x", "x"),
        ("a{{/* comment */}}b", "ab"),
        ("x {{- 3}}", "x3"),
        ("{{-3}}", "-3"),  # no space after the dash: a negative number, not trimming
        ("{{ if true -}}\n  yes\n{{- end }}", "yes"),
    ],
)
def test_trimming_and_comments(src: str, out: str) -> None:
    assert render(src, DATA) == out


@pytest.mark.parametrize(
    ("src", "out"),
    [
        ("{{ if .System }}S{{ end }}", "S"),
        ("{{ if .Empty }}S{{ else }}E{{ end }}", "E"),
        ("{{ if .Empty }}1{{ else if .Zero }}2{{ else if .List }}3{{ else }}4{{ end }}", "3"),
        ("{{ if .Missing }}1{{ else }}2{{ end }}", "2"),
        ("{{ if .Map }}m{{ end }}{{ if (index .Messages 0) }}s{{ end }}", "ms"),
        ("{{ with .Empty }}x{{ else }}none{{ end }}", "none"),
        ("{{ with .Missing }}x{{ else with .Prompt }}{{ . }}{{ end }}", "Hi"),
        ("{{ range .List }}{{ . }}{{ end }}", "abc"),
        ("{{ range $i, $e := .List }}{{ $i }}={{ $e }} {{ end }}", "0=a 1=b 2=c "),
        ("{{ range $e := .List }}{{ $e }}{{ end }}", "abc"),
        ("{{ range $k, $v := .Map }}{{ $k }}{{ $v }}{{ end }}", "a1b2"),
        ("{{ range .Nothing }}x{{ else }}empty{{ end }}", "empty"),
        ("{{ range .Empty2 }}x{{ else }}empty{{ end }}", "empty"),
        ("{{ range 3 }}{{ . }}{{ end }}", "012"),
        (
            '{{ range .List }}{{ if eq . "b" }}{{ continue }}{{ end }}{{ . }}{{ end }}',
            "ac",
        ),
        ('{{ range .List }}{{ if eq . "b" }}{{ break }}{{ end }}{{ . }}{{ end }}', "a"),
        (
            "{{ range .Messages }}[{{ .Role }}:{{ .Content }}]{{ end }}",
            "[system:Be brief.][user:Hi]",
        ),
        (
            "{{ range $i, $m := .Messages }}{{ if eq $i 0 }}{{ $.Prompt }}{{ end }}{{ end }}",
            "Hi",
        ),
    ],
)
def test_control_structures(src: str, out: str) -> None:
    assert render(src, DATA | {"Empty2": []}) == out


def test_variables_scope_and_assignment() -> None:
    src = (
        '{{ $last := "" }}{{ range .List }}{{ $last = . }}{{ $tmp := 1 }}{{ end }}'
        "{{ $last }}{{ if $x := .Prompt }}{{ $x }}{{ end }}"
    )
    assert render(src, DATA) == "cHi"
    # $x is gone after its {{end}}; $tmp after the range
    for bad in (
        "{{ if $x := 1 }}{{ end }}{{ $x }}",
        "{{ range .List }}{{ $t := 1 }}{{ end }}{{ $t }}",
    ):
        with pytest.raises(TemplateError, match="undefined variable"):
            GoTemplate.parse(bad)


@pytest.mark.parametrize(
    ("src", "out"),
    [
        ('{{ and 1 0 2 }} {{ and 1 2 }} {{ or 0 "" }} {{ or 0 .Prompt }}', "0 2  Hi"),
        ("{{ not .Empty }} {{ not .List }}", "true false"),
        ('{{ eq .Prompt "Hi" }} {{ eq 1 2 3 1 }} {{ ne 1 2 }}', "true true true"),
        ('{{ lt 1 2 }} {{ le 2 2 }} {{ gt 1 2 }} {{ ge "b" "a" }}', "true true false true"),
        ('{{ len .List }} {{ len .Map }} {{ len "héllo" }}', "3 2 6"),  # bytes, as Go counts
        (
            '{{ index .List 1 }} {{ index .Map "b" }} {{ index .Nested "Inner" "Value" }}',
            "b 2 deep",
        ),
        ('{{ slice .List 1 }} {{ slice .List 0 2 }} {{ slice "hello" 1 3 }}', "[b c] [a b] el"),
        ('{{ print "a" "b" 1 2 true }}', "ab1 2 true"),
        ('{{ println "a" 1 }}', "a 1\n"),
        (
            '{{ printf "%s=%d %q %v %5s|%-3s|%05d %.2f %t %%" '
            '"k" 7 "q" .List "r" "l" 42 3.14159 true }}',
            'k=7 "q" [a b c]     r|l  |00042 3.14 true %',
        ),
        ('{{ printf "%d" }}', "%!d(MISSING)"),
        ('{{ .Prompt | printf "%s!" }}', "Hi!"),
        ('{{ .List | len | printf "%d items" }}', "3 items"),
        (
            "{{ json .Messages }}",
            '[{"role":"system","Content":"Be brief."},{"role":"user","Content":"Hi"}]',
        ),
        ('{{ json "<a&b>" }}', '"\\u003ca\\u0026b\\u003e"'),
        ("{{ json .Map }}", '{"a":1,"b":2}'),  # Go sorts a map's keys
        ("{{ if and .System (eq (len .Messages) 2) }}yes{{ end }}", "yes"),
    ],
)
def test_functions_and_pipelines(src: str, out: str) -> None:
    assert render(src, DATA) == out


def test_json_of_a_struct_leaves_out_empty_optional_fields() -> None:
    m = Struct(
        "api.Message",
        {"Role": "user", "Content": "x", "ToolCalls": []},
        {"Role": "role", "Content": "content", "ToolCalls": "tool_calls"},
        frozenset({"ToolCalls"}),
    )
    assert render("{{ json . }}", m) == '{"role":"user","content":"x"}'


def test_and_or_stop_at_the_deciding_argument() -> None:
    # the second argument would fail (index out of range) if it were evaluated
    assert render("{{ or .Prompt (index .List 9) }}", DATA) == "Hi"
    assert render("{{ and .Empty (index .List 9) }}", DATA) == ""


def test_identifiers_are_what_ollama_calls_vars() -> None:
    t = GoTemplate.parse(
        "{{ if .System }}{{ .System }}{{ end }}{{ range $m := .Messages }}{{ $m.Content }}"
        "{{ end }}{{ $.Tools }}"
    )
    assert {"system", "messages", "content", "tools", "$", "$m"} <= t.identifiers()


def test_cut_after_response_keeps_the_prompt_up_to_the_answer() -> None:
    t = GoTemplate.parse(
        "{{ if .System }}<s>{{ .System }}</s>{{ end }}<u>{{ .Prompt }}</u><a>{{ .Response }}</a>"
        "{{ if .Prompt }}tail{{ end }}"
    )
    values = {"System": "S", "Prompt": "P", "Response": ""}
    assert t.render(values) == "<s>S</s><u>P</u><a></a>tail"
    assert t.cut_after("Response").render(values) == "<s>S</s><u>P</u><a>"
    # the cut is structural, inside a branch as well
    t = GoTemplate.parse("{{ if .Prompt }}[{{ .Response }}]{{ end }}after")
    assert t.cut_after("Response").render(values) == "["


@pytest.mark.parametrize(
    ("src", "where", "what"),
    [
        ("{{ .Prompt ", "line 1, column 1", "unclosed action"),
        ("ok\n  {{ if .X }}", "line 2, column 6", "has no {{end}}"),
        ("{{ end }}", "line 1, column 4", "unexpected {{end}}"),
        ("{{ else }}", "line 1, column 4", "unexpected {{else}}"),
        ("a\nb {{ foo 1 }}", "line 2, column 6", 'function "foo" not defined'),
        ("{{ $x }}", "line 1, column 4", "undefined variable"),
        ("{{ $x = 1 }}", "line 1, column 7", "undefined variable"),
        ("{{ break }}", "line 1, column 4", "outside {{range}}"),
        ('{{ define "x" }}{{ end }}', "line 1, column 4", "not supported"),
        ('{{ template "x" }}', "line 1, column 4", "not supported"),
        ("{{ }}", "line 1, column 4", "missing value"),
        ('{{ "abc }}', "line 1, column 4", "unterminated quoted string"),
        ("{{ .A | .B }}", "line 1, column 9", "only a function"),
        ("{{ .A 1 }}", "line 1, column 4", "can't give argument to non-function"),
        ("{{ /* x */ }}", "line 1, column 4", "unexpected"),
        ("{{/* never closed", "line 1, column 1", "unclosed comment"),
        ("{{ 12abc }}", "line 1, column 4", "bad number"),
        ("{{ # }}", "line 1, column 4", "unexpected '#'"),
    ],
)
def test_parse_errors_name_the_position(src: str, where: str, what: str) -> None:
    with pytest.raises(TemplateError) as info:
        GoTemplate.parse(src)
    err = info.value
    assert isinstance(err, InvalidRequest) and err.param == "template"
    assert where in err.message and what in err.message, err.message


@pytest.mark.parametrize(
    ("src", "where", "what"),
    [
        ("\n {{ (index .Messages 0).Nope }}", "line 2, column 5", "can't evaluate field Nope"),
        ("{{ .Missing.Deeper }}", "line 1, column 4", "nil pointer"),
        ("{{ .Prompt.X }}", "line 1, column 4", "can't evaluate field X"),
        ("{{ index .List 5 }}", "line 1, column 4", "error calling index"),
        ('{{ lt 1 "a" }}', "line 1, column 4", "incompatible types"),
        ("{{ len 3 }}", "line 1, column 4", "error calling len"),
        ("{{ range .Prompt }}{{ end }}", "line 1, column 4", "can't iterate"),
        ("{{ not 1 2 }}", "line 1, column 4", "wrong number of args"),
    ],
)
def test_runtime_errors_name_the_position(src: str, where: str, what: str) -> None:
    with pytest.raises(TemplateError) as info:
        render(src, DATA)
    assert where in info.value.message and what in info.value.message, info.value.message


def test_size_limit() -> None:
    with pytest.raises(TemplateError, match="longer than"):
        GoTemplate.parse("x" * (gt.MAX_TEMPLATE_CHARS + 1))


def test_nesting_limit() -> None:
    deep = "{{ if true }}" * (gt.MAX_DEPTH + 1) + "{{ end }}" * (gt.MAX_DEPTH + 1)
    with pytest.raises(TemplateError, match="nesting deeper"):
        GoTemplate.parse(deep)
    parens = "{{ " + "(" * (gt.MAX_DEPTH + 1) + "1" + ")" * (gt.MAX_DEPTH + 1) + " }}"
    with pytest.raises(TemplateError, match="nesting deeper"):
        GoTemplate.parse(parens)
    ok = "{{ if true }}" * gt.MAX_DEPTH + "x" + "{{ end }}" * gt.MAX_DEPTH
    assert GoTemplate.parse(ok).render({}) == "x"


@pytest.mark.parametrize(
    ("src", "what"),
    [
        ("{{ range 1000000000 }}{{ end }}", "too many steps"),
        ("{{ range 100000 }}{{ range 100000 }}{{ end }}{{ end }}", "too many steps"),
        ("{{ range 100000 }}xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx{{ end }}", "writes more"),
        ('{{ $x := "ab" }}{{ range 64 }}{{ $x = print $x $x }}{{ end }}', "over"),
        ('{{ printf "%999999999s" "a" }}', "too large"),
        (
            '{{ $x := printf "%9000s" "" }}{{ range 100000 }}{{ $y := print $x $x $x }}{{ end }}',
            "builds too much",
        ),
    ],
)
def test_hostile_templates_are_bounded(src: str, what: str) -> None:
    started = time.monotonic()
    with pytest.raises(TemplateError, match=what):
        render(src)
    assert time.monotonic() - started < 5.0


def test_limits_can_be_tightened() -> None:
    with pytest.raises(TemplateError, match="too many steps"):
        render("{{ range 50 }}x{{ end }}", max_steps=20)
    with pytest.raises(TemplateError, match="writes more"):
        render("{{ range 50 }}x{{ end }}", max_output=10)


def test_truth_is_gos() -> None:
    falsy = [None, False, 0, 0.0, "", [], {}]
    truthy = [True, 1, -1, 0.5, "x", [0], {"a": None}, Struct("T", {})]
    assert not any(gt.truth(v) for v in falsy)
    assert all(gt.truth(v) for v in truthy)
