"""The repository stands alone: no file cites a document outside it, and every citation of the
project's own docs (`docs/<file>.md`, optionally `#<section>`) names a file and a heading that
exist. Reads files only; imports nothing of the package."""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# Names of documents that live outside the repository, and paths that lead out of it. Spelled in
# pieces so that this file does not match itself.
FOREIGN = re.compile("|".join([r"MAGE" + "_SPEC", r"KERNEL" + "_NOTES", r"\.\./" + "shared", r"/work/" + "shared"]))
CITATION = re.compile(r"docs/([\w.-]+\.md)(?:#([\w-]+))?")
LINK = re.compile(r"\]\(([\w.-]+\.md)(?:#([\w-]+))?\)")  # relative links between the docs
SELF_LINK = re.compile(r"\]\(#([\w-]+)\)")              # a link to a section of the same doc
TEXT_SUFFIXES = {".py", ".md", ".sh", ".toml", ".cfg", ".txt", ".h", ".cpp", ".cu", ".yml", ".yaml", ""}


def repository_files():
    """The files git tracks or would track (untracked but not ignored); outside a git checkout,
    every file but the usual build and environment folders."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                             capture_output=True, check=True).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "build", "__pycache__", ".pytest_cache"}
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                 if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]
    files = [ROOT / n for n in names if (ROOT / n).is_file()]
    return [f for f in files if f.suffix in TEXT_SUFFIXES or f.name in ("Makefile",)]


def read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return ""


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(doc: Path):
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", read(doc), flags=re.MULTILINE)
    return {slug(h) for h in headings}


FILES = repository_files()


def test_the_repository_files_were_found():
    assert any(f.name == "test_docs.py" for f in FILES) and any(f.parent == DOCS for f in FILES)


def test_no_file_cites_a_document_outside_the_repository():
    hits = [f"{f.relative_to(ROOT)}:{i}: {line.strip()}" for f in FILES
            for i, line in enumerate(read(f).splitlines(), 1) if FOREIGN.search(line)]
    assert not hits, "citations of documents outside the repository:\n" + "\n".join(hits)


def citations():
    """(where, doc file, anchor or None) for every docs/<file>.md citation in any file, and every
    relative link between the files of docs/."""
    for f in FILES:
        for i, line in enumerate(read(f).splitlines(), 1):
            where = f"{f.relative_to(ROOT)}:{i}"
            for name, anchor in CITATION.findall(line):
                yield where, name, anchor or None
            if f.parent == DOCS:
                for name, anchor in LINK.findall(line):
                    yield where, name, anchor or None
                for anchor in SELF_LINK.findall(line):
                    yield where, f.name, anchor


def test_every_cited_doc_and_section_exists():
    found, broken = 0, []
    for where, name, anchor in citations():
        found += 1
        doc = DOCS / name
        if not doc.is_file():
            broken.append(f"{where}: docs/{name} does not exist")
        elif anchor and anchor not in anchors(doc):
            broken.append(f"{where}: docs/{name} has no section #{anchor}")
    assert found > 20, f"only {found} citations found: the pattern no longer matches how the code cites the docs"
    assert not broken, "\n".join(broken)


def test_the_readme_links_every_doc():
    readme = read(ROOT / "README.md")
    missing = [d.name for d in sorted(DOCS.glob("*.md")) if f"docs/{d.name}" not in readme]
    assert not missing, f"README.md does not link {missing}"


@pytest.mark.parametrize("heading,anchor", [("Training forward", "training-forward"),
                                            ("Evaluation and published numbers", "evaluation-and-published-numbers"),
                                            ("Loss head on the masked rows", "loss-head-on-the-masked-rows"),
                                            ("`mage_fast/ops/`", "mage_fastops")])
def test_slug_follows_github(heading, anchor):
    assert slug(heading) == anchor


def test_a_foreign_citation_and_a_broken_anchor_are_caught():
    """The checks above would pass vacuously if their patterns matched nothing."""
    assert FOREIGN.search("see " + "MAGE" + "_SPEC.md 3") and FOREIGN.search("../" + "shared/notes.md")
    assert CITATION.findall("(docs/mage.md#training-forward)") == [("mage.md", "training-forward")]
    assert SELF_LINK.findall("see [Deviations](#deviations)") == ["deviations"]
    assert "no-such-section" not in anchors(DOCS / "mage.md")
