"""Prompt-weight syntax (§3.2) including the measured edge cases."""

from __future__ import annotations

import pytest

from comfymesh.diffusion.text.prompt_weights import parse_weights


def _approx(pairs: list[tuple[str, float]]) -> list[tuple[str, float]]:
    return [(t, pytest.approx(w)) for t, w in pairs]  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a cat", [("a cat", 1.0)]),
        ("(a (b) c)", [("a ", 1.1), ("b", 1.21), (" c", 1.1)]),
        ("((x))", [("x", 1.21)]),
        ("(x:0.5) y", [("x", 0.5), (" y", 1.0)]),
        ("a ) (b) c", [("a ) (b) c", 1.0)]),
        ("a b) c", [("a b) c", 1.0)]),
        ("a (b c", [("a ", 1.0), ("(b c", 1.0)]),
        ("((a:1.3) b)", [("a", 1.3), (" b", 1.1)]),
        ("(a:x)", [("a:x", 1.1)]),
        ("(a:1.2:1.5)", [("a:1.2", 1.5)]),
        ("(:1.5)", [(":1.5", 1.1)]),
        ("(a\\(b\\):1.2)", [("a(b)", 1.2)]),
        ("(a)(b)", [("a", 1.1), ("b", 1.1)]),
        ("[a|b] AND c", [("[a|b] AND c", 1.0)]),
    ],
)
def test_parse(text: str, expected: list[tuple[str, float]]) -> None:
    assert parse_weights(text) == _approx(expected)
