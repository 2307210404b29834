"""The documentation holds together: the README is a front page, every topic has its page, the configuration
reference is what the schema says, links resolve, and no text points at something a reader of the repository
cannot follow (issue trackers, files outside the repository, a development machine's paths)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.subprocesses import REPO
from tools.config_reference import REFERENCE, reference_markdown

README = REPO / "README.md"
DOC_PAGES = sorted((REPO / "docs").glob("*.md"))
TOPICS = [
    "converting",
    "running",
    "optimization",
    "configuration",
    "ground-truth",
    "sweeps",
    "reliability",
    "performance",
    "architecture",
]
SKIPPED_DIRS = {".git", ".venv", "runs", "__pycache__", "node_modules"}
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ini", ".sh", ".mod", ".hoc", ".json"}
TEXT_NAMES = {"Makefile", "run"}
# Markdown files the tool writes into run and sweep folders: named in the docs, never in the repository.
WRITTEN_BY_THE_TOOL = {"report.md", "aggregate.md", "table.md"}


def repository_text_files() -> list[Path]:
    found = []
    for path in REPO.rglob("*"):
        relative = path.relative_to(REPO)
        if any(part in SKIPPED_DIRS or part.startswith(".") and part != ".ci" for part in relative.parts[:-1]):
            continue
        if path.is_file() and (path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES):
            found.append(path)
    return found


def markdown_files() -> list[Path]:
    return [path for path in repository_text_files() if path.suffix == ".md"]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped (but - and _), spaces as hyphens."""
    text = re.sub(r"`|\*\*", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors_of(path: Path) -> set[str]:
    anchors, seen, fenced = set(), {}, False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"^#{1,6} (.+)$", line)
        if match:
            base = github_anchor(match.group(1))
            count = seen.get(base, 0)
            anchors.add(base if count == 0 else f"{base}-{count}")
            seen[base] = count + 1
    return anchors


def relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [target for target in targets if not re.match(r"^[a-z]+:", target)]


def test_readme_is_a_front_page_that_links_every_topic_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; topics belong in docs/"
    linked = {Path(target.split("#")[0]).stem for target in relative_links(README) if target.startswith("docs/")}
    assert set(TOPICS) <= linked, f"README does not link: {sorted(set(TOPICS) - linked)}"
    assert {page.stem for page in DOC_PAGES} <= linked, "a docs page that the README does not link"


def test_quick_start_has_the_two_commands():
    text = README.read_text()
    quick_start = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^make (\w+)", quick_start, flags=re.M)
    assert commands == ["run", "test"]


def test_the_configuration_reference_is_generated_from_the_schema():
    assert REFERENCE.read_text() == reference_markdown(), (
        "docs/configuration.md differs from the config schema: run `python tools/config_reference.py`"
    )


def test_the_configuration_reference_lists_every_key_of_the_shipped_config():
    from pipeline.config import parse_yaml

    def keys(node: dict, prefix: str = "") -> list[str]:
        found = []
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            found.append(dotted)
            if isinstance(value, dict) and key != "settings" and not dotted.startswith("sweep.overrides"):
                found += keys(value, dotted + ".")
        return found

    shipped = parse_yaml((REPO / "config.yaml").read_text(), "config.yaml")
    reference = REFERENCE.read_text()
    missing = [key for key in keys(shipped) if f"`{key}`" not in reference]
    assert not missing, f"config.yaml keys missing from docs/configuration.md: {missing}"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: str(path.relative_to(REPO)))
def test_relative_links_resolve(path):
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and destination.suffix == ".md" and anchor not in anchors_of(destination):
            broken.append(f"{target} (no heading with anchor #{anchor})")
    assert not broken, f"{path.relative_to(REPO)}: broken links: {broken}"


# What a reader of the repository cannot follow: a tracker's numbers, a development machine's folders, the
# sibling folders of a development checkout.
UNFOLLOWABLE = [
    (re.compile(r"(?<![a-z])issues?[ _-]?#?\d+(?![0-9])", re.I), "an issue number"),
    (re.compile(r"\(#\d+\)"), "an issue number"),
    (re.compile(r"/work/|/home/\w|/Users/\w|\.\./shared\b|\.library\b"), "a path of a development machine"),
]


def test_the_reference_patterns_catch_what_they_are_for():
    samples = [
        "see issue 2",
        "(issue #14)",
        "Issues 5",
        "fixed (#12)",
        "/work/shared/x.md",
        "../shared/DESIGN.md",
        "/home/alice/models",
        "the ../.library tools",
        "def test_issue_2_refusals",
    ]
    for sample in samples:
        assert any(pattern.search(sample) for pattern, _ in UNFOLLOWABLE), sample
    for fine in ["a known issue", "issues of the format", "v2 (2024)", "dilations 1, 2, 4", "#1 model"]:
        assert not any(pattern.search(fine) for pattern, _ in UNFOLLOWABLE), fine


def test_no_text_points_outside_the_repository():
    found = []
    for path in repository_text_files():
        if path == Path(__file__):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for pattern, what in UNFOLLOWABLE:
                if pattern.search(line):
                    found.append(f"{path.relative_to(REPO)}:{number}: {what}: {line.strip()[:100]}")
    assert not found, "\n".join(found)


def test_every_markdown_file_named_in_the_text_exists():
    """`docs/x.md`, `README.md`: a named Markdown file must be in the repository (or be one the tool writes)."""
    names = {path.name for path in markdown_files()}
    missing = []
    for path in repository_text_files():
        if path == Path(__file__):
            continue
        for mention in set(re.findall(r"[\w./-]*\w\.md\b", path.read_text(errors="replace"))):
            bare = Path(mention).name
            if "/" in mention.strip("./"):
                exists = (REPO / mention).exists() or (path.parent / mention).resolve().exists()
            else:
                exists = bare in names or bare in WRITTEN_BY_THE_TOOL
            if not exists:
                missing.append(f"{path.relative_to(REPO)}: {mention}")
    assert not missing, f"Markdown files named but not in the repository: {missing}"
