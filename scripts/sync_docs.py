"""Copy the example files into the documentation pages that show them.

The pages in ``docs/`` show their Python code inline, so that it reads on GitHub and in an
editor, and the files in ``docs/examples/`` (and ``examples/``) are what the tests run. Each
copy is a fenced block right after a comment naming its file::

    <!-- docs/examples/tasks.py -->
    ```python
    ...the file's text...
    ```

``python scripts/sync_docs.py`` rewrites every such block of ``docs/*.md`` with the file's
current text; give pages as arguments to rewrite only those. A block written the old way,
``--8<-- "docs/examples/tasks.py"`` (pymdownx.snippets), becomes a marked copy too.
``--check`` changes nothing and exits 1 if a page is out of date. ``tests/test_docs.py``
fails when a copy differs from its file.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

#: ``<!-- path.py -->`` on its own line, then a fenced block of Python.
_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)<!-- (?P<source>[\w./-]+\.py) -->\n"
    r"(?P=indent)(?P<fence>`{3,})(?P<language>python|py|python3)[^\n]*\n"
    r"(?P<body>.*?)"
    r"^(?P=indent)(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
#: A block that includes its file by reference (pymdownx.snippets), without a marker.
_INCLUDE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<language>python|py|python3)[^\n]*\n"
    r'(?P=indent)--8<-- "(?P<source>[\w./-]+\.py)"\n'
    r"^(?P=indent)(?P=fence)[ \t]*$",
    re.MULTILINE,
)


@dataclass(frozen=True)
class Copy:
    """A marked block of a page: the file it copies and the text it shows."""

    source: str
    shown: str

    @property
    def expected(self) -> str:
        return (ROOT / self.source).read_text()


def copies(markdown: str) -> Iterator[Copy]:
    """The marked blocks of a page, with their indentation taken off."""
    for match in _BLOCK.finditer(markdown):
        yield Copy(match["source"], _dedent(match["body"], match["indent"]))


def sync(markdown: str) -> str:
    """``markdown`` with every marked block (and every include line) holding its file."""
    markdown = _INCLUDE.sub(lambda m: _block(m["indent"], m["source"], m["language"]), markdown)
    return _BLOCK.sub(lambda m: _block(m["indent"], m["source"], m["language"]), markdown)


def _block(indent: str, source: str, language: str) -> str:
    text = (ROOT / source).read_text()
    if not text.endswith("\n"):
        text += "\n"
    longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=2)
    fence = "`" * max(3, longest + 1)
    body = "".join(indent + line if line.strip() else line for line in text.splitlines(True))
    return f"{indent}<!-- {source} -->\n{indent}{fence}{language}\n{body}{indent}{fence}"


def _dedent(body: str, indent: str) -> str:
    return "".join(line.removeprefix(indent) for line in body.splitlines(True))


def main(argv: list[str]) -> int:
    check = "--check" in argv
    pages = [Path(a) for a in argv if a != "--check"] or sorted(DOCS.glob("*.md"))
    stale = []
    for page in pages:
        text = page.read_text()
        synced = sync(text)
        if synced != text:
            stale.append(page)
            if not check:
                page.write_text(synced)
    for page in stale:
        print(f"{page}: {'out of date' if check else 'updated'}")
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
