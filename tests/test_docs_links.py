"""Every relative link in README.md, docs/*.md and docs/reports/**/*.md points to a file that exists.

Markdown links and images (`[text](path)`, `![alt](path)`) are resolved against the page's own
folder, as GitHub renders them; web links and in-page anchors are left alone, and a link's
`#anchor` part is dropped before the file is looked for. docs/reports and docs/images keep only
what the pages cite, so a page that loses its picture or report fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# [text](target) and ![alt](target); the target ends at whitespace (a title may follow) or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)  # links inside code are text, not links


def pages() -> list[Path]:
    docs = ROOT / "docs"
    return [ROOT / "README.md", *sorted(docs.glob("*.md")), *sorted((docs / "reports").rglob("*.md"))]


def relative_links(text: str) -> list[str]:
    """The link targets of a markdown text that name a file in this repository."""
    targets = LINK.findall(CODE.sub("", text))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def broken_links(page: Path) -> list[str]:
    bad = []
    for target in relative_links(page.read_text()):
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            bad.append(f"{page.relative_to(ROOT)}: {target}")
    return bad


def test_the_link_finder_reads_links_and_skips_the_rest():
    text = (
        "see [a](docs/a.md#part), ![pic](images/p.png \"title\"), [web](https://x.org/y), [here](#top)\n"
        "`[not](a link)` and\n```\n[nor](this.md)\n```\n[mail](mailto:a@b.c)"
    )
    assert relative_links(text) == ["docs/a.md#part", "images/p.png"]


def test_every_relative_link_in_the_docs_exists():
    assert (ROOT / "README.md") in pages() and len(pages()) > 10
    bad = [b for page in pages() for b in broken_links(page)]
    assert not bad, "links to files that do not exist:\n" + "\n".join(bad)
