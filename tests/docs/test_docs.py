"""The documentation holds together: the README is a front page, every topic has its page, the configuration
reference is what the schema says, links resolve, and no text points at something a reader of the repository
cannot follow (issue trackers, files outside the repository, a development machine's paths)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.subprocesses import REPO

README = REPO / "README.md"
REFERENCE = REPO / "docs" / "configuration.md"
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
# Markdown files the tool writes into run and sweep folders: named in the docs, never in the repository.
WRITTEN_BY_THE_TOOL = {"report.md", "aggregate.md", "table.md"}


def repository_files() -> list[Path]:
    """What the repository holds: git's tracked and not-ignored files (a clean clone's), else every file but
    .git and .venv."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=False,
    )
    if listed.returncode == 0:
        names = [name for name in listed.stdout.decode().split("\0") if name]
        return sorted(REPO / name for name in names if (REPO / name).is_file())
    return sorted(
        path for path in REPO.rglob("*") if path.is_file() and not {".git", ".venv"} & set(path.relative_to(REPO).parts)
    )


def repository_text_files() -> list[Path]:
    """Every file of the repository that is UTF-8 text (whatever its name: workflows, Dockerfiles, notebooks)."""
    found = []
    for path in repository_files():
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
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
        if line.startswith(("```", "~~~")):
            fenced = not fenced
        match = None if fenced else re.match(r"^#{1,6} (.+)$", line)
        if match:
            base = github_anchor(match.group(1))
            count = seen.get(base, 0)
            anchors.add(base if count == 0 else f"{base}-{count}")
            seen[base] = count + 1
    return anchors


LINK_FORMS = [
    re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'(][^)]*)?\)"),  # [text](target "title")
    re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M),  # [label]: target
    re.compile(r"""(?:href|src)\s*=\s*["']([^"']+)["']""", re.I),  # <a href="target">
]


def relative_links(path: Path) -> list[str]:
    text = re.sub(r"(```|~~~).*?\1", "", path.read_text(), flags=re.S)
    targets = [target for form in LINK_FORMS for target in form.findall(text)]
    return [target for target in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I)]


def inside_the_repository(path: Path) -> bool:
    return path.resolve().is_relative_to(REPO.resolve())


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
    """The page equals the script's output, and that output shows the built-in limits whatever the shell sets."""
    env = {**os.environ, "NEURON_TCN_MAX_INPUT_LENGTH": "200000", "NEURON_TCN_MAX_SWEEP_RUNS": "7"}
    generated = subprocess.run(
        [sys.executable, str(REPO / "tools" / "config_reference.py"), "--print"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert REFERENCE.read_text() == generated, (
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
        if not inside_the_repository(destination):
            broken.append(f"{target} (outside the repository)")
        elif not destination.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and destination.suffix == ".md" and anchor not in anchors_of(destination):
            broken.append(f"{target} (no heading with anchor #{anchor})")
    assert not broken, f"{path.relative_to(REPO)}: broken links: {broken}"


# What a reader of the repository cannot follow: a tracker's numbers, a development machine's folders, the
# sibling folders of a development checkout.
UNFOLLOWABLE = [
    (
        re.compile(
            r"(?<![a-z])(issue|ticket|bug|pr|pull request)s?[ _:-]{0,3}(no\.?\s*|number\s*)?#?\d+(?![0-9])", re.I
        ),
        "an issue number",
    ),
    (
        re.compile(
            r"\(#\d+\)|\(#\d+,|\[#\d+\]|\b(in|see|refs?|cf\.?|fix(es|ed)?:?|close[sd]?:?|resolve[sd]?:?|per|after)\s+#\d+\b|\bGH[-#]\d+|/(issues|pull)/\d+",
            re.I,
        ),
        "an issue number",
    ),
    (
        re.compile(r"/work/|/home/\w|/Users/\w|/root/|/tmp/|\.\./shared\b|/\.library\b"),
        "a path of a development machine",
    ),
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
        "https://github.com/x/y/issues/7",
        "see /pull/12",
        "fixed in #7",
        "issue: 7",
        "issue no. 7",
        "issue  7",
        "ticket 7",
        "bug 12",
        "GH-7",
        "/tmp/models/a.h5",
        "/root/x",
        "refs #12",
        "cf. #12",
        "Fixes: #12",
        "(#12, #13)",
        "[#12]",
        "GH#12",
    ]
    for sample in samples:
        assert any(pattern.search(sample) for pattern, _ in UNFOLLOWABLE), sample
    for fine in [
        "a known issue",
        "issues of the format",
        "v2 (2024)",
        "dilations 1, 2, 4",
        "colour #1f77b4",
        "&#8212;",
    ]:
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
                exists = any(
                    inside_the_repository(candidate) and candidate.exists()
                    for candidate in ((REPO / mention).resolve(), (path.parent / mention).resolve())
                )
            else:
                exists = bare in names or bare in WRITTEN_BY_THE_TOOL
            if not exists:
                missing.append(f"{path.relative_to(REPO)}: {mention}")
    assert not missing, f"Markdown files named but not in the repository: {missing}"


def test_every_summary_key_is_described():
    from pipeline.summary import RunSummary

    page = (REPO / "docs" / "running.md").read_text()
    missing = [name for name in RunSummary.__dataclass_fields__ if f"`{name}`" not in page]
    assert not missing, f"summary.json keys not described in docs/running.md: {missing}"
