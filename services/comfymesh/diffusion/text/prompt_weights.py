"""ComfyUI's prompt-weight syntax: `(text)` ×1.1 per level, `(text:1.3)` sets the weight, `\\(` escapes."""

from __future__ import annotations

_OPEN, _CLOSE = "\0\2", "\0\1"  # stand-ins for escaped parentheses while parsing


def _escape(text: str) -> str:
    return text.replace("\\)", _CLOSE).replace("\\(", _OPEN)


def _unescape(text: str) -> str:
    return text.replace(_CLOSE, ")").replace(_OPEN, "(")


def unweighted(text: str) -> str:
    """The text ComfyUI tokenizes where prompt weights are disabled (FLUX.2's encoders): parentheses as written,
    escaped ones without their backslash."""
    return _unescape(_escape(text))


def split_top_level(text: str) -> list[str]:
    """Split at top-level parenthesised groups with one counter (a stray `)` makes later parens text)."""
    items: list[str] = []
    current = ""
    level = 0
    for ch in text:
        if ch == "(":
            if level == 0:
                if current:
                    items.append(current)
                current = "("
            else:
                current += ch
            level += 1
        elif ch == ")":
            level -= 1
            if level == 0:
                items.append(current + ")")
                current = ""
            else:
                current += ch
        else:
            current += ch
    if current:
        items.append(current)
    return items


def _weights(text: str, weight: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for item in split_top_level(text):
        if len(item) >= 2 and item[0] == "(" and item[-1] == ")":
            inner = item[1:-1]
            group_weight = weight * 1.1
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    group_weight = float(inner[colon + 1:])
                    inner = inner[:colon]
                except ValueError:
                    pass
            out.extend(_weights(inner, group_weight))
        else:
            out.append((item, weight))
    return out


def parse_weights(text: str) -> list[tuple[str, float]]:
    """Weighted segments of a prompt, in order, escapes resolved."""
    return [(_unescape(segment), w) for segment, w in _weights(_escape(text), 1.0)]
