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
