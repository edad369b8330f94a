"""The docs point at things that exist: every relative link, and every ``python -m`` module named.

Reads README.md, docs/*.md and docs/reports/*.md. A link to a missing file, a ``#anchor`` that
no heading of the target page makes, or a ``python -m MODULE`` that cannot be found fails,
naming the page. Modules are looked up with ``importlib.util.find_spec`` (nothing is run).
"""

import importlib.util
import re
from pathlib import Path
from typing import Dict, List, Set

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = sorted([REPO / "README.md"] + list((REPO / "docs").glob("*.md"))
               + list((REPO / "docs" / "reports").glob("*.md")))
# [text](target) outside code spans; images too
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
MODULE = re.compile(r"python3? -m ([A-Za-z_][A-Za-z0-9_.]*)")
# modules a GPU or ROS install brings, which this machine may lack
OPTIONAL_MODULES = {"torch.distributed.run"}


def _text_outside_code_blocks(text: str) -> str:
    """The page without fenced code blocks, where [x](y) is code, not a link."""
    return re.sub(r"```.*?```", "", text, flags=re.S)


def _anchors(page: Path, cache: Dict[Path, Set[str]]) -> Set[str]:
    """GitHub's heading anchors of a markdown page: lower case, punctuation dropped, spaces to -."""
    if page not in cache:
        headings = re.findall(r"^#+\s+(.*)$", _text_outside_code_blocks(page.read_text()), flags=re.M)
        cache[page] = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
    return cache[page]


def test_there_are_pages_to_check():
    assert REPO / "README.md" in PAGES and len(PAGES) > 10


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path):
    cache: Dict[Path, Set[str]] = {}
    broken: List[str] = []
    for target in LINK.findall(_text_outside_code_blocks(page.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append("%s (no such file)" % target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest, cache):
            broken.append("%s (no heading makes #%s)" % (target, anchor))
    assert not broken, "%s: %s" % (page.relative_to(REPO), "; ".join(broken))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_python_m_modules_exist(page: Path):
    missing = []
    for module in sorted(set(MODULE.findall(page.read_text()))):
        if module in OPTIONAL_MODULES:
            continue
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(module)
    assert not missing, "%s names python -m %s" % (page.relative_to(REPO), ", ".join(missing))
