"""Expected errors: the user can act on them, so the CLI prints one line and exits with code 2."""


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


def format_traceback(exc: BaseException, limit: int = 20_000) -> str:
    """The traceback of ``exc`` as text, its end kept when it is longer than ``limit`` characters."""
    import traceback

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return text if len(text) <= limit else "...\n" + text[-limit:]
