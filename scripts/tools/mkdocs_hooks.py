"""MkDocs hooks for the documentation site (mkdocs.yml: ``hooks``).

mkdocs-click 0.9 prints click 8.3's "no default" sentinel as a default (``Sentinel.UNSET``)
for flags and options without one; the reference shows them with no default instead.
"""
from __future__ import annotations

from typing import Any

UNSET = "<code>Sentinel.UNSET</code>"


def on_page_content(html: str, **_: Any) -> str:
    """The page's HTML with click's unset-default sentinel shown as no default."""
    return html.replace(UNSET, "")
