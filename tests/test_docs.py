"""The documentation stays true: every relative link leads to a file (and an anchor to a heading), the
README stays a short tour, docs/configuration.md's table is the one ``zoomq.config`` makes now, and
docs/architecture.md names only files that exist and every module of the packages it lists."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from zoomq.config import DOCS_BEGIN, DOCS_END, VARIABLES, Variable, markdown_table, with_markdown_table
from zoomq.errors import InvalidParameter

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
PACKAGE = ROOT / "src" / "zoomq"


def documents() -> list[Path]:
    """Every document whose links are checked; benchmarks/README.md once it exists."""
    found = [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
    return found + [p for p in [ROOT / "benchmarks" / "README.md"] if p.exists()]


# --- reading Markdown as GitHub does, as far as links and headings go ---------------------------------

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+).+?\1")
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:|^//")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (an indented fence, in a list item, counts too)."""
    lines, fence = [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if m and (fence is None or m.group(1) == fence):
            fence = m.group(1) if fence is None else None
            continue
        if fence is None:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, only letters, digits, ``_``, ``-`` and
    spaces kept, spaces as hyphens (a code span's text stays; its backticks go)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file; a repeated heading gets -1, -2, … as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(path.read_text()):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[str]:
    """Every link target in a Markdown file's prose: inline links, images and reference definitions."""
    found = []
    for line in prose_lines(path.read_text()):
        m = REFERENCE.match(line)
        if m:
            found.append(m.group(1))
            continue
        found += INLINE_LINK.findall(CODE_SPAN.sub("", line))
    return found


def broken_links(path: Path) -> list[str]:
    """The relative links of ``path`` that lead nowhere: no such file or folder, or no such heading in
    the Markdown file an ``#anchor`` names. Links with a scheme (https:, mailto:) are not followed."""
    broken = []
    for target in links(path):
        if not target or SCHEME.match(target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / unquote(file)).resolve() if file else path
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and unquote(anchor) not in anchors(dest):
            broken.append(target)
    return broken


def section(text: str, heading: str) -> str:
    """The lines under a ``## heading`` up to the next heading of that level or above (a ``#`` line in a
    fenced block is no heading)."""
    lines = text.splitlines()
    start = lines.index(heading) + 1
    level = len(heading) - len(heading.lstrip("#"))
    fence = None
    for i in range(start, len(lines)):
        m = FENCE.match(lines[i])
        if m and (fence is None or m.group(1) == fence):
            fence = m.group(1) if fence is None else None
        elif fence is None and (h := HEADING.match(lines[i])) and len(h.group(1)) <= level:
            return "\n".join(lines[start:i])
    return "\n".join(lines[start:])


def generated_part(text: str) -> str:
    """What lies between the generated-table markers of docs/configuration.md."""
    begin, end = text.index(DOCS_BEGIN) + len(DOCS_BEGIN) + 1, text.index(DOCS_END)
    return text[begin:end]


# --- links ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    assert broken_links(path) == [], f"{path.relative_to(ROOT)}: links that lead nowhere"


def test_the_link_check_finds_what_is_broken(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## One machine: `zoomq up`\n\n## Twice\n\n## Twice\n")
    (tmp_path / "folder").mkdir()
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## Here, and *now*\n\n"
        "[ok](other.md) [ok](other.md#one-machine-zoomq-up) [ok](other.md#twice-1) [ok](folder/)\n"
        "[ok](#here-and-now) [ok](https://example.com/nowhere.md) ![ok](other.md)\n"
        "[gone](missing.md) [no heading](other.md#no-such-heading) [no local heading](#nowhere)\n"
        "`[in code](missing-in-code.md)`\n"
        "```sh\n[in a fence](missing-in-fence.md)\n# not a heading\n```\n"
        "[ref]: missing-by-reference.md\n"
    )
    assert broken_links(page) == ["missing.md", "other.md#no-such-heading", "#nowhere", "missing-by-reference.md"]
    assert "not-a-heading" not in anchors(page)


def test_slugs_follow_github():
    assert slug("One machine: `zoomq up`") == "one-machine-zoomq-up"
    assert slug("5. Object storage") == "5-object-storage"
    assert slug("Feature → files") == "feature--files"
    assert slug("A shared service: limits, costs and keys") == "a-shared-service-limits-costs-and-keys"
    assert slug("See [the API](api.md) — ZOOMQ_MAX_*") == "see-the-api--zoomq_max_"


# --- the README ----------------------------------------------------------------------------------------

def test_readme_is_a_short_tour():
    assert len(README.read_text().splitlines()) <= 250


def test_readme_quick_start_shows_the_two_commands():
    quick_start = section(README.read_text(), "## Quick start")
    commands = [line.split("#")[0].strip() for line in quick_start.splitlines()]
    assert "make demo" in commands and "make test" in commands


# --- docs/configuration.md -----------------------------------------------------------------------------

def test_configuration_table_is_generated_from_the_variables():
    assert generated_part(CONFIGURATION.read_text()) == markdown_table(), \
        "docs/configuration.md is out of date: run `make docs`"


def test_a_new_variable_makes_the_configuration_table_stale(monkeypatch):
    text = CONFIGURATION.read_text()
    monkeypatch.setattr("zoomq.config.VARIABLES", (*VARIABLES, Variable("ZOOMQ_NEW", "1", "A new | setting.")))
    assert generated_part(text) != markdown_table()
    assert "| `ZOOMQ_NEW` | `1` | A new \\| setting. |" in markdown_table()
    regenerated = with_markdown_table(text)
    assert generated_part(regenerated) == markdown_table()
    assert regenerated.replace(generated_part(regenerated), "") == text.replace(generated_part(text), "")


def test_regenerating_needs_the_markers():
    with pytest.raises(InvalidParameter, match="docs/x.md: must hold the lines"):
        with_markdown_table("# no markers\n", "docs/x.md")


# --- docs/architecture.md ------------------------------------------------------------------------------

def layout_paths() -> list[Path]:
    """Every file and folder the layout block names, as paths: ``src/zoomq/`` entries nested by indent."""
    block = section(ARCHITECTURE.read_text(), "## Layout").split("```")[1]
    paths, parents = [], {0: ROOT}
    for line in block.splitlines():
        m = re.match(r"^( *)((?:[\w.][\w./]*, )*[\w.][\w./]*)(?:\s|$)", line)
        if not m or not re.search(r"\.py\b|/", m.group(2)):
            continue  # a continuation line of a description
        depth = len(m.group(1)) // 2
        names = m.group(2).split(", ")
        paths += [parents[depth] / name for name in names]
        if names[0].endswith("/"):
            parents[depth + 1] = parents[depth] / names[0]
    return paths


def test_architecture_layout_names_existing_files():
    named = layout_paths()
    assert PACKAGE / "render" / "pipeline.py" in named  # the parse found the nested entries
    assert [str(p.relative_to(ROOT)) for p in named if not p.exists()] == []


def test_architecture_layout_lists_every_package_and_module():
    named = set(layout_paths())
    packages = {p.parent for p in PACKAGE.glob("*/__init__.py")}
    assert sorted(p.name for p in packages - named) == [], "subpackages missing from docs/architecture.md"
    assert sorted(p.name for p in PACKAGE.glob("*.py") if p not in named) == []
    itemized = {p.parent for p in named if p.suffix == ".py" and p.parent != PACKAGE}
    unlisted = [str(p.relative_to(PACKAGE)) for d in itemized for p in d.glob("*.py")
                if p not in named and p.name != "__init__.py"]
    assert sorted(unlisted) == [], "modules missing from docs/architecture.md's layout"


FEATURES = ("DeepCache", "guidance split", "previews", "TAESD", "sizing", "S3", "API keys", "zoom", "leases",
            "metrics")


def test_architecture_maps_each_feature_to_existing_files():
    rows = [line.split(" | ") for line in section(ARCHITECTURE.read_text(), "## Feature → files").splitlines()
            if line.startswith("| ") and not line.startswith("| feature")]
    for feature in FEATURES:
        assert any(feature in row[0] for row in rows), f"no row for {feature}"
    files = [f for row in rows for f in re.findall(r"`([\w./]+)`", row[1]) if "/" in f or f.endswith(".py")]
    assert len(files) > 30
    assert [f for f in files if not (PACKAGE / f).exists()] == []
