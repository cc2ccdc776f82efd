"""The README and the guides in ``docs/`` say only what the code does. In every one of them:

- each shell block (```bash, ```sh, ```console) is read line by line, continuations joined, comments and a ``$ ``
  prompt dropped, ``NAME=value`` prefixes skipped. An ``hpsearch ...`` line must parse against the real command line
  (its subcommand exists, and click accepts its options and arguments, values included); ``make X`` must name a
  target of the Makefile; ``python benchmarks/X.py`` must name a benchmark, with only options it declares;
  ``docker compose -f FILE`` must name a file. Other lines (``mlflow ui``, ``createdb``, ...) are not checked.
- a path in backticks or in a shell line, under ``hpsearch/``, ``studies/``, ``examples/``, ``docker/``,
  ``benchmarks/``, ``tests/`` or ``docs/``, must exist.
- a relative link must resolve, and its ``#anchor`` must be a heading of the file it points at. Every guide is one
  link away from the README, and the README stays a front door (at most 250 lines).
- a ```yaml block is a whole spec and must load with :func:`~hpsearch.spec.build.load_spec`, unless the line before
  its fence is ``<!-- fragment -->`` (an HTML comment, so it does not show): a piece of a spec is marked so and
  skipped. A block whose first line is ``# PATH`` naming a file of the repository must be that file's own text, so a
  spec shown in the docs cannot drift from the one shipped. A ```python block whose first line is ``# NAME.py ...``
  is written beside the specs of its file, so a spec naming ``NAME:function`` loads as the guide says it does.

Nothing trains: the file runs in seconds.
"""

from __future__ import annotations

import functools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CODE = REPO  # where the code the docs describe is looked up
README = REPO / "README.md"
GUIDES = sorted((REPO / "docs").glob("*.md"))
DOCS = [README, *GUIDES]
FRAGMENT = "<!-- fragment -->"
SHELL = {"bash", "sh", "console", "shell"}
CHECKED_FOLDERS = ("hpsearch/", "studies/", "examples/", "docker/", "benchmarks/", "tests/", "docs/")


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int  # of the opening fence, 1-based
    fragment: bool


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file (fences at any indent, as inside a list item)."""
    found, lines = [], path.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = re.match(r"^(\s*)```(\w*)\s*$", lines[index])
        if not opening:
            index += 1
            continue
        indent, start = len(opening.group(1)), index
        index += 1
        body = []
        while not re.match(r"^\s*```\s*$", lines[index]):
            body.append(lines[index][indent:])
            index += 1
        fragment = start > 0 and lines[start - 1].strip() == FRAGMENT
        found.append(Block(opening.group(2), "\n".join(body) + "\n", start + 1, fragment))
        index += 1
    return found


def prose(path: Path) -> str:
    """The text outside code blocks."""
    return re.sub(r"^\s*```\w*\s*$.*?^\s*```\s*$", "", path.read_text(), flags=re.M | re.S)


def shell_commands(path: Path) -> list[tuple[int, list[str]]]:
    """Each command of the file's shell blocks as words: (line of its block, words), ``NAME=value`` prefixes off."""
    commands = []
    for block in blocks(path):
        if block.language not in SHELL:
            continue
        for line in block.code.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            words = shlex.split(line, comments=True)
            while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
                words = words[1:]
            if words:
                commands.append((block.line, words))
    return commands


def root_of(relative: Path) -> Path:
    """Where a path the docs name lives: the docs (and this test) here, everything else in the code's checkout."""
    own = relative.parts[0] in ("docs", "README.md") or relative == Path(__file__).relative_to(REPO)
    return REPO if own else CODE


def doc_id(path: Path) -> str:
    return str(path.relative_to(REPO))


@functools.cache
def cli():
    import typer

    from hpsearch.cli.app import app

    return typer.main.get_command(app)


def check_hpsearch(words: list[str]) -> None:
    group = cli()
    assert len(words) > 1, "a bare `hpsearch`"
    name, args = words[1], words[2:]
    assert name in group.commands, f"`hpsearch {name}` is no command; there are {', '.join(group.commands)}"
    command = group.commands[name]
    # make_context parses as the command would run: unknown options, missing or extra arguments, bad values fail
    command.make_context(name, list(args))


@functools.cache
def make_targets() -> frozenset[str]:
    text = (CODE / "Makefile").read_text()
    return frozenset(re.findall(r"^([A-Za-z0-9_.-]+):(?!=)", text, flags=re.M))


def benchmark_options(path: Path) -> set[str]:
    return set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", path.read_text()))


def check_command(words: list[str]) -> None:
    if words[0] == "hpsearch":
        check_hpsearch(words)
    elif words[0] == "make":
        for target in words[1:]:
            assert target in make_targets(), f"`make {target}`: no such target in the Makefile"
    elif words[0] in ("python", "python3") and len(words) > 1 and words[1].startswith("benchmarks/"):
        script = CODE / words[1]
        assert script.is_file(), f"{words[1]} does not exist"
        declared = benchmark_options(script)
        for word in words[2:]:
            if word.startswith("--"):
                assert word.split("=")[0] in declared, f"{words[1]} declares no option {word}"
    elif words[:2] == ["docker", "compose"]:
        for index, word in enumerate(words):
            if word == "-f":
                assert (CODE / words[index + 1]).is_file(), f"{words[index + 1]} does not exist"


def named_paths(path: Path) -> set[str]:
    """Paths under the checked folders that the file names, in backticks or as words of its shell commands."""
    candidates = set(re.findall(r"`([^`\s]+)`", prose(path)))
    candidates |= {word for _, words in shell_commands(path) for word in words}
    return {word.rstrip(".,;:") for word in candidates if word.startswith(CHECKED_FOLDERS)}


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(title) for title in re.findall(r"^#{1,6} (.+)$", prose(path), flags=re.M)}


def links(path: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", prose(path))


@pytest.mark.parametrize("path", DOCS, ids=doc_id)
def test_every_command_is_real(path):
    failures = []
    for line, words in shell_commands(path):
        try:
            check_command(words)
        except Exception as exc:  # an AssertionError, or the usage error click raises for a bad command line
            failures.append(f"{doc_id(path)}:{line}: {shlex.join(words)}: {exc}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("path", DOCS, ids=doc_id)
def test_every_named_file_exists(path):
    missing = sorted(name for name in named_paths(path) if not (root_of(Path(name)) / name).exists())
    assert not missing, f"{doc_id(path)} names files that do not exist: {missing}"


@pytest.mark.parametrize("path", DOCS, ids=doc_id)
def test_every_link_resolves(path):
    broken = []
    for link in links(path):
        if re.match(r"^[a-z]+:", link):  # http:, https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        relative = file.relative_to(REPO)
        if not (root_of(relative) / relative).exists():
            broken.append(link)
        elif anchor and anchor not in anchors(root_of(relative) / relative):
            broken.append(f"{link} (no such heading)")
    assert not broken, f"{doc_id(path)}: broken links {broken}"


def test_every_guide_is_one_link_from_the_readme():
    linked = {(README.parent / link.partition("#")[0]).resolve() for link in links(README)}
    assert GUIDES and not [doc_id(guide) for guide in GUIDES if guide.resolve() not in linked]


def test_the_readme_is_a_front_door():
    assert len(README.read_text().splitlines()) <= 250


@pytest.mark.parametrize("path", DOCS, ids=doc_id)
def test_every_whole_spec_loads(path, tmp_path):
    from hpsearch.spec.build import load_spec

    found = blocks(path)
    for block in found:
        first = block.code.splitlines()[0]
        module = re.match(r"^# (\w+\.py)\b", first)
        if block.language == "python" and module:
            (tmp_path / module.group(1)).write_text(block.code)
    for block in found:
        if block.language != "yaml" or block.fragment:
            continue
        first, _, rest = block.code.partition("\n")
        shipped = re.match(r"^# (\S+/\S+)$", first)
        if shipped and (CODE / shipped.group(1)).is_file():
            assert rest in (CODE / shipped.group(1)).read_text(), (
                f"{doc_id(path)}:{block.line}: the block is not the text of {shipped.group(1)}")
        spec = tmp_path / f"line{block.line}.yaml"
        spec.write_text(block.code)
        load_spec(spec)  # a SpecError names the block's line in its file name
