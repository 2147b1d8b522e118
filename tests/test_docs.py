"""The README stays a page a newcomer can read, and no link in it or in docs/ is broken."""

import re
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
README = PROJECT / "README.md"
PAGES = [README, *sorted((PROJECT / "docs").glob("*.md"))]

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but '-' dropped, spaces to '-'."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def without_blocks(text: str) -> str:
    """The text without its code blocks, fenced or indented."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return "\n".join(line for line in text.splitlines() if not line.startswith("    "))


def prose(text: str) -> str:
    """The text without code: code blocks and inline code spans."""
    return re.sub(r"`[^`\n]*`", "", without_blocks(text))


def anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#+ (.+)$", without_blocks(path.read_text()), flags=re.M)
    return {slug(h) for h in headings}


def broken_links(path: Path) -> list[str]:
    """Each relative link of a markdown file whose file (or heading anchor) does not exist."""
    problems = []
    for target in LINK.findall(prose(path.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{path.name}: {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{path.name}: {target}: no heading with that anchor")
    return problems


def code_lines(text: str) -> list[str]:
    """The README's indented command lines, without their trailing comments."""
    return [
        line.split("  #")[0].strip()
        for line in text.splitlines()
        if line.startswith("    ") and line.strip()
    ]


def test_readme_is_under_200_lines():
    n = len(README.read_text().splitlines())
    assert n < 200, f"README.md has {n} lines; move detail to docs/"


def test_readme_has_the_two_commands_verbatim():
    """`pip install -e .` then `r1v2 demo`; `pip install -e '.[dev]'` then the test command."""
    lines = code_lines(README.read_text())
    for first, second in [
        ("pip install -e .", "r1v2 demo"),
        ("pip install -e '.[dev]'", "python -m pytest -q -n 2 tests"),
    ]:
        assert first in lines, first
        assert lines[lines.index(first) + 1] == second, (first, second)


def test_there_are_docs_pages():
    assert len(PAGES) > 5, PAGES


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(PROJECT).as_posix())
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(PROJECT / t.partition("#")[0]).resolve() for t in LINK.findall(README.read_text())}
    missing = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert missing == [], missing


def test_the_checks_catch_a_broken_link_and_anchor(tmp_path):
    """The checker is not vacuous: a missing file, a missing anchor and a missing image are found;
    links inside code and absolute URLs are not checked."""
    (tmp_path / "other.md").write_text("# A heading, with `code`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [ok anchor](other.md#a-heading-with-code) [self](#title)\n"
        "# Title\n"
        "[gone](missing.md) [bad anchor](other.md#nope) ![img](plots/x.png)\n"
        "`[in code](nothing.md)` [web](https://example.com/x.md)\n"
        "    [indented](nothing.md)\n"
    )
    assert broken_links(page) == [
        "page.md: missing.md: no such file",
        "page.md: other.md#nope: no heading with that anchor",
        "page.md: plots/x.png: no such file",
    ]
    assert code_lines("    pip install -e .\n    r1v2 demo   # note\n") == [
        "pip install -e .",
        "r1v2 demo",
    ]
