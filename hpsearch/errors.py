"""Expected errors: the user can act on them, so the CLI prints one line and exits with code 2."""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


class UserError(Exception):
    """Bad input from the user: a spec, an override, a data folder, a storage URL.

    Its message is one line whatever it quotes: line breaks in quoted input are shown escaped.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))


class SpecError(UserError):
    """A study spec or an override that does not validate."""


class DataError(UserError):
    """A dataset that is missing, malformed or unsafe to load."""


def one_line(exc: BaseException) -> str:
    """``Type: message`` of an exception, its message's whitespace (line breaks included) folded to single spaces."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, else its type's name: a reason short enough for one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def format_traceback(exc: BaseException, limit: int = 20_000) -> str:
    """The traceback of ``exc`` as text, its end kept when it is longer than ``limit`` characters."""
    import traceback

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return text if len(text) <= limit else "...\n" + text[-limit:]


def users_failure(what: str, call: Callable[[], T]) -> tuple[T | None, str | None]:
    """``call()``'s value, or None and ``"<what> failed: <one line>"`` when the user's code in it raised.

    For the end of a study, which still ends when the user's code fails there: our own errors (a UserError) and
    Ctrl-C pass through.
    """
    try:
        return call(), None
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code may raise anything
        return None, f"{what} failed: {one_line(exc)}"
