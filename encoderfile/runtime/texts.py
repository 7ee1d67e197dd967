"""The one rule for a text input, on every path (CLI, HTTP, gRPC, MCP, the Embedder itself):
not blank, at most `max_chars` characters, valid Unicode (no lone UTF-16 surrogate)."""

from __future__ import annotations

from encoderfile.errors import InvalidFieldError, MalformedRequestError

BLANK_FIX = "Send text to embed"


def check(
    text: str,
    where: str,
    *,
    max_chars: int | None = None,
    param: str | None = None,
    fix: str = BLANK_FIX,
) -> None:
    """Raise the rule's error for `text`, named `where` ('inputs[1]', 'stdin line 2'); `fix`
    is how to mend a blank one there (the CLI can skip them)."""
    if not text.strip():
        raise InvalidFieldError(f"{where} is empty or blank. {fix}.", param=param)
    if max_chars is not None and len(text) > max_chars:
        raise InvalidFieldError(
            f"{where} has {len(text)} characters, over the limit of {max_chars}. "
            "Shorten it, or raise --max-chars.",
            param=param,
        )
    check_unicode(text, where, param=param)


def check_unicode(text: str, where: str, *, param: str | None = None) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedRequestError(
            f"{where} has a lone UTF-16 surrogate (such as \\ud800). Send valid Unicode text.",
            param=param,
        ) from None
