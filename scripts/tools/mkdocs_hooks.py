"""MkDocs hooks for the documentation site (mkdocs.yml: ``hooks``).

mkdocs-click 0.9 prints click 8.3's "no default" sentinel as a default (``Sentinel.UNSET``)
for flags and options without one; the reference shows them with no default instead. And the
docstrings' Sphinx roles are shown as the code they name.
"""
from __future__ import annotations

import re
from typing import Any

UNSET = "<code>Sentinel.UNSET</code>"


def on_page_content(html: str, **_: Any) -> str:
    """The page's HTML with click's unset-default sentinel shown as no default."""
    return strip_roles(html.replace(UNSET, ""))


# The docstrings name other objects with Sphinx roles (:func:`~edgel2.x.name`), which the
# Markdown the reference is rendered from shows as written; show the name as code instead.
ROLE = re.compile(r":(?:func|meth|class|mod|data|attr|exc|obj):(<code>)~?(?:[\w.]*\.)?([\w.]+</code>)")


def strip_roles(html: str) -> str:
    """``:func:<code>~a.b.name</code>`` -> ``<code>name</code>``.

    Examples:
        >>> strip_roles(":func:<code>~edgel2.runtime.shipped.shipped_models</code> and :meth:<code>run</code>")
        '<code>shipped_models</code> and <code>run</code>'
    """
    return ROLE.sub(r"\1\2", html)
