"""Study storage URLs: where they come from, how they are shown, and which database or file they name.

A URL comes from ``--storage``, else ``$HPSEARCH_STORAGE``, else the spec's ``storage``, else
``sqlite:///runs/<study>.db`` (relative to the working directory, as SQLAlchemy reads ``sqlite:///`` paths).

Passwords are masked wherever a URL is shown. :func:`mask_url` masks the password field of every URL in a text by its
place in the URL, whatever its length, so that a password with spaces, ``@`` or ``&`` in it is hidden whole. Every
URL this process resolves also registers its password (as written, percent-decoded and percent-encoded), which is
masked in free text too (a database driver's error message quoting it) wherever it stands whole: not inside a
longer host name, database name or word, so that a password of one character (``1``, ``q``) neither turns
``127.0.0.1`` into ``***27.0.0.***`` nor gives itself away by doing so.

A server URL is read as a person reads it: its host part ends at the first ``/``, ``?`` or ``#``. An ``@`` after
the host (in a password given in the query, in the database name), or a second one before it, is refused: SQLAlchemy
would read the URL otherwise, connect elsewhere and show the password's tail as a host name.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from urllib.parse import quote, quote_plus, unquote

from hpsearch.errors import UserError

__all__ = ["StorageError", "chosen_storage_url", "expand_home", "mask_url", "no_study_stored", "refuse_foreign_database",
           "register_secret_url", "resolve_storage_url", "same_database", "same_file", "sqlite_path"]

DEFAULT_FOLDER = "runs"  # the SQLite storage's folder, made where it is missing (any other must exist)

ENV_STORAGE = "HPSEARCH_STORAGE"
MASK = "***"


class StorageError(UserError):
    """A storage URL that is malformed, unsupported or unreachable."""


# scheme://USER:SECRET@ where the secret runs to the last '@' before a quote or the end of the line, since an
# unencoded password may itself hold '@', spaces, ':' or '/'
_PASSWORD_IN_NETLOC = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@'\"\n]*:)(?P<secret>[^'\"\n]*)(?P<tail>@)")
_PASSWORD_IN_QUERY = re.compile(r"(?P<head>[?&](?:password|passwd|pwd)=)(?P<secret>[^&'\"\n]*)", re.IGNORECASE)
_QUERY_PASSWORD_KEYS = ("password", "passwd", "pwd")

_known_secrets: set[str] = set()  # every password of a URL this process resolved, in each form it may be shown


def _spellings(secret: str) -> set[str]:
    """``secret`` as written, percent-decoded and percent-encoded: the forms a URL or a message may show it in."""
    return {form for form in (secret, unquote(secret), quote(secret, safe=""), quote_plus(secret)) if form}


def _url_secrets(text: str) -> set[str]:
    """The passwords of ``text`` parsed as a URL (SQLAlchemy) and of every URL-shaped part of it (patterns)."""
    secrets: set[str] = set()
    for pattern in (_PASSWORD_IN_NETLOC, _PASSWORD_IN_QUERY):
        secrets.update(match["secret"] for match in pattern.finditer(text))
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(text)
    except (ArgumentError, ValueError, TypeError):
        parsed = None
    if parsed is not None:
        secrets.add(parsed.password or "")
        if parsed.host and "@" in parsed.host:  # an unencoded '@' in the password: its tail is parsed as the host
            secrets.add(parsed.host.rsplit("@", 1)[0])
        for key, value in parsed.query.items():
            if key.lower() in _QUERY_PASSWORD_KEYS:
                secrets.update([value] if isinstance(value, str) else value)
    return {form for secret in secrets for form in _spellings(str(secret))}


# a URL that is all of a text: its password runs to the last '@', quotes included (a text's URLs stop at one)
_PASSWORD_OF_A_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@]*:(?P<secret>.+)@", re.DOTALL)


def register_secret_url(url: str | None) -> None:
    """Remember the password of ``url`` so that :func:`mask_url` hides it in any text this process shows."""
    if url:
        _known_secrets.update(_url_secrets(url))
        whole = _PASSWORD_OF_A_URL.match(url)
        if whole is not None:
            _known_secrets.update(_spellings(whole["secret"]))


def mask_url(text: str) -> str:
    """``text`` with the password of every URL in it, and every known password where it stands whole, as ``***``."""
    # a password of asterisks only is indistinguishable from the mask itself
    secrets = [secret for secret in _known_secrets | _url_secrets(text) if secret.strip("*")]
    text = _mask_url_passwords(text)
    # a mask can leave a new whole occurrence behind ('a' masked in 'a*b' leaves '****b', which holds '**b'):
    # repeat until none is left; every replacement removes at least one character other than '*', so this ends
    while True:
        standing = _standing_whole(frozenset(secret for secret in secrets if secret in text))
        if standing is None:
            return text
        text, replaced = standing.subn(MASK, text)
        if not replaced:
            return text


def _mask_url_passwords(text: str) -> str:
    """``text`` with the password field of every URL in it (``user:SECRET@``, ``?password=SECRET``) masked."""
    spans = sorted(match.span("secret") for pattern in (_PASSWORD_IN_NETLOC, _PASSWORD_IN_QUERY)
                   for match in pattern.finditer(text) if match["secret"])
    parts: list[str] = []
    shown = 0  # the end of what is already in parts
    for start, end in spans:
        if end <= shown:
            continue  # inside a password already masked
        parts += [text[shown:start], MASK] if start >= shown else []
        shown = end
    return "".join(parts) + text[shown:]


# a run is letters and digits, single '.', '-' or '_' joining them (a host, a database name, a word); a password
# stands whole where neither of its ends falls inside a run: masking it inside one would give it away, not hide it
_NOT_INSIDE_A_RUN = r"(?!(?<=[^\W_])[^\W_]|(?<=[^\W_])[._-][^\W_]|(?<=[^\W_][._-])[^\W_])"


@functools.lru_cache(maxsize=32)
def _standing_whole(secrets: frozenset[str]) -> re.Pattern[str] | None:
    """A pattern matching any of ``secrets`` where it stands whole (longest first), None without secrets; few
    patterns are ever made, since a text holds few of the passwords a process knows."""
    if not secrets:
        return None
    alternatives = "|".join(re.escape(secret) for secret in sorted(secrets, key=len, reverse=True))
    return re.compile(f"{_NOT_INSIDE_A_RUN}(?:{alternatives}){_NOT_INSIDE_A_RUN}")


def resolve_storage_url(cli_value: str | None, spec_value: str | None, study_name: str, *,
                        writable: bool = True) -> str:
    """The storage URL to use, checked; its password is registered for masking.

    writable: the command writes to the storage (run, worker, sync). A read-only command (status, best, export,
    report) creates no folder and no database: a SQLite file that does not exist is "no study stored there".
    """
    url = chosen_storage_url(cli_value, spec_value, study_name)
    _check(url, writable)
    return url


def chosen_storage_url(cli_value: str | None, spec_value: str | None, study_name: str) -> str:
    """The storage URL to use (its password registered for masking, its ``~`` expanded), not yet checked: for what
    must be refused before :func:`resolve_storage_url` creates a SQLite storage's folder."""
    url = cli_value or os.environ.get(ENV_STORAGE) or spec_value or f"sqlite:///{DEFAULT_FOLDER}/{study_name}.db"
    register_secret_url(url)
    url = expand_home(url, "storage")
    _check_form(url)
    return url


def expand_home(url: str, what: str) -> str:
    """``url`` with a SQLite database path that starts with ``~`` or ``~user`` made absolute, as data paths are;
    SQLAlchemy would otherwise read ``~`` as a folder of that name in the working directory. Other URLs unchanged.

    what: how a message names the URL (``storage``, ``--tracking-uri``).
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return url  # not a database URL: whoever opens it says so
    if parsed.get_backend_name() != "sqlite" or not (parsed.database or "").startswith("~"):
        return url
    try:
        home = Path(parsed.database).expanduser()
    except RuntimeError:  # '~someone' for a user this machine does not know
        raise StorageError(f"{what} {mask_url(url)!r} names a user's home folder that does not exist.") from None
    return parsed.set(database=str(home)).render_as_string(hide_password=False)


# scheme://AUTHORITY...: the authority (user, password, host, port) ends at the first '/', '?' or '#'
_SERVER_URL = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<rest>.*)", re.DOTALL)


def _check(url: str, writable: bool) -> None:
    _check_form(url)
    path = sqlite_path(url)
    if path is None:
        return
    if not writable:
        if not path.is_file():
            raise no_study_stored(url)
        return
    if not path.parent.is_dir():
        # a mistyped folder must not start a study where nobody looks; only the default runs/ is made
        if path.parent.name != DEFAULT_FOLDER or not path.parent.parent.is_dir():
            raise StorageError(f"storage {mask_url(url)!r}: the folder {path.parent} does not exist; create it "
                               f"first (only a {DEFAULT_FOLDER}/ folder is made for you).")
        try:
            path.parent.mkdir(exist_ok=True)
        except OSError as exc:
            raise StorageError(f"storage {mask_url(url)!r}: cannot create {path.parent} ({exc.strerror}).") from None
    if not os.access(path.parent, os.W_OK):
        raise StorageError(f"storage {mask_url(url)!r}: {path.parent} is not writable.")


def _check_form(url: str) -> None:
    """StorageError for a URL that is no database URL hpsearch takes (without looking at the database)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    server = _SERVER_URL.fullmatch(url)
    if server is not None and server["scheme"].split("+")[0] != "sqlite":
        _check_at_signs(server["authority"], server["rest"])
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(f"storage {mask_url(url)!r} is not a database URL (e.g. sqlite:///runs/study.db).") from None
    except ValueError:  # SQLAlchemy reads the port as an int
        raise StorageError(_port_problem(url, server["authority"] if server is not None else "")) from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StorageError(
            f"storage {mask_url(url)!r}: unsupported database {parsed.get_backend_name()!r}; use sqlite or postgresql."
        )
    if "{" in url or "}" in url:  # Optuna reads the URL as a str.format template
        raise StorageError(f"storage {mask_url(url)!r}: write '{{' and '}}' percent-encoded, as %7B and %7D.")


def _check_at_signs(authority: str, rest: str) -> None:
    """Refuse a server URL whose '@' is not the one before its host: SQLAlchemy splits user and password from the
    host at another '@' than a person does. Says nothing of the URL, whose password cannot be told apart."""
    if authority.count("@") > 1 or "@" in rest:
        raise StorageError("the storage URL has an '@' besides the one before its host; write '@' in a user name, "
                           "password, database name or query percent-encoded, as %40 (and '/', '?' and '#' in a "
                           "password as %2F, %3F and %23).")


def _port_problem(url: str, authority: str) -> str:
    """Why SQLAlchemy cannot read the port of ``url``, whose ``authority`` holds at most one '@'."""
    hosts = authority.rpartition("@")[2]
    if "," in hosts:
        return (f"storage {mask_url(url)!r}: a URL names one host and port; give several PostgreSQL hosts in its "
                "query instead, as ?host=HOST1:5432&host=HOST2:5432.")
    return f"storage {mask_url(url)!r}: the port must be a number. Got {hosts.rpartition(':')[2]!r} instead."


def no_study_stored(url: str) -> StorageError:
    return StorageError(f"no study stored at {mask_url(url)!r}; run the study first (hpsearch run SPEC).")


def refuse_foreign_database(url: str) -> None:
    """Refuse, untouched, a database that holds tables but no Optuna schema (e.g. MLflow's own database).

    Optuna would add its tables beside the others and then fail on their versions; the user meant another file.
    """
    path = sqlite_path(url)
    if path is not None and (not path.is_file() or path.stat().st_size == 0):
        return  # a new database
    import sqlalchemy

    try:
        if path is not None:  # read-only, so that not even SQLite's first connection writes to the file
            engine = sqlalchemy.create_engine(f"sqlite:///file:{path}?mode=ro&uri=true",
                                              poolclass=sqlalchemy.pool.NullPool)
        else:
            engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            tables = set(sqlalchemy.inspect(engine).get_table_names())
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001 - unreachable or not a database: opening it will say so in one line
        if path is not None and "not a database" in str(exc):
            raise StorageError(f"storage {mask_url(url)!r}: {path} is not a SQLite database.") from None
        return
    if tables and not {"studies", "version_info"} <= tables:
        from hpsearch.storage.trialstore import OPTUNA_TABLES

        optuna = OPTUNA_TABLES - {"alembic_version"}  # a name many applications use
        if tables & optuna and tables <= optuna | {"alembic_version", "hpsearch_state"}:
            return  # Optuna's own tables, half made: another process starting on the new database is making them
        shown = ", ".join(sorted(tables)[:4]) + (", ..." if len(tables) > 4 else "")
        raise StorageError(
            f"storage {mask_url(url)!r} holds {len(tables)} tables of another application ({shown}) and no Optuna "
            "study; give a database of its own (e.g. sqlite:///runs/STUDY.db)."
        )


def same_database(url: str, other: str) -> bool:
    """Whether two URLs name one database: one SQLite file (however its path is written: through ``..``, symlinks
    or a hard link), or one PostgreSQL database on one host and port. Anything that is not a database URL (an
    MLflow server's ``http://``) names none."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        first, second = make_url(url), make_url(other)
    except (ArgumentError, ValueError):
        return False
    if first.get_backend_name() != second.get_backend_name():
        return False
    if first.get_backend_name() == "sqlite":
        paths = sqlite_path(url), sqlite_path(other)
        return None not in paths and same_file(*paths)
    if first.get_backend_name() == "postgresql":
        return ((first.host or "localhost").lower(), first.port or 5432, first.database) == \
            ((second.host or "localhost").lower(), second.port or 5432, second.database)
    return False


def same_file(path: Path, other: Path) -> bool:
    """Whether two paths name one file or folder, existing or not: through ``..``, symlinks, or a hard link."""
    if path.resolve() == other.resolve():
        return True
    try:
        return os.path.samefile(path, other)
    except OSError:  # one of them does not exist (yet)
        return False


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL, None for other databases and in-memory SQLite."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)
