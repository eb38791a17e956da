"""MkDocs hooks (mkdocs.yml `hooks:`), not a page: the site's view of the run outputs the pages link to.

docs/results.md and docs/experiments.md link to run outputs under the repository's results/ folder
(`../results/cifar10-jpeg/degradation/curves.png`): a code host resolves those, a site built from docs/ alone
does not. Each such target (and, for a linked Markdown table, the files it links to) is added to the site
under `results/`, and the pages' `../results/` links are pointed there; a target that is missing still fails
the strict build, as any broken link does.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

OUTSIDE = re.compile(r"\]\(\.\./(results/[^)\s#]+)")  # a top-level page's link into ../results/
RELATIVE = re.compile(r"\]\(([^)\s#:]+)")  # a linked Markdown file's own relative links


def on_files(files, config):
    root = Path(config.docs_dir).parent
    todo = []
    for page in files.documentation_pages():
        if "/" not in page.src_uri:  # `../` climbs out of docs/ from the top level only
            todo += OUTSIDE.findall(Path(page.abs_src_path).read_text(encoding="utf-8"))
    seen = set()
    while todo:
        uri = posixpath.normpath(todo.pop())
        if uri in seen or not uri.startswith("results/") or not (root / uri).is_file():
            continue  # a missing target is left to the link check, which reports it
        seen.add(uri)
        if files.get_file_from_path(uri) is None:
            files.append(File(uri, src_dir=str(root), dest_dir=config.site_dir,
                              use_directory_urls=config.use_directory_urls))
        if uri.endswith(".md"):
            text = (root / uri).read_text(encoding="utf-8")
            todo += [posixpath.join(posixpath.dirname(uri), link) for link in RELATIVE.findall(text)]
    return files


def on_page_markdown(markdown, page, config, files):
    if "/" not in page.file.src_uri:
        markdown = markdown.replace("](../results/", "](results/")
    return markdown
