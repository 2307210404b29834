"""NEURON mechanisms (.mod files) compiled once by nrnivmodl into a cache keyed by the files' hashes.

The project's NMDA synapse is always among them; a cell's own mechanisms folder joins it. A cache entry is a folder
holding nrnivmodl's output (`x86_64/libnrnmech.so` or the machine's equivalent): NEURON loads it by itself when it is
imported with that folder as working directory. An entry is built in a private folder and renamed into place, so
that runs compiling the same files at once never see half an entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import uuid
from importlib import metadata
from pathlib import Path

from errors import ConfigError, SimulatorError

log = logging.getLogger(__name__)

PROJECT_MECHANISMS = (Path(__file__).with_name("nmda_mg.mod"),)
NAME = re.compile(r"^[\w.-]+$")
STRIPPED = re.compile(rb"COMMENT.*?ENDCOMMENT|:[^\n]*", re.DOTALL)
DECLARED = re.compile(rb"\b(?:SUFFIX|POINT_PROCESS|ARTIFICIAL_CELL)\s+(\w+)")
# mechanisms every NEURON has (and the project's): a .mod of the same name cannot be loaded beside them
BUILT_IN = {
    "NmdaMgSyn",
    "hh",
    "pas",
    "fastpas",
    "extracellular",
    "Exp2Syn",
    "ExpSyn",
    "AlphaSynapse",
    "IClamp",
    "SEClamp",
    "VClamp",
    "OClamp",
    "APCount",
    "NetStim",
    "IntFire1",
    "IntFire2",
    "IntFire4",
    "PatternStim",
    "PointProcessMark",
    "capacitance",
    "k_ion",
    "na_ion",
    "morphology",
}
MAX_MOD_FILES = 500
MAX_MOD_BYTES = 4 << 20
COMPILE_TIMEOUT_S = 1800
DONE = "compiled.json"


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "neuron-tcn" / "nrnivmodl"


def neuron_version() -> str:
    try:
        return metadata.version("neuron")
    except metadata.PackageNotFoundError:
        raise SimulatorError(
            "ground_truth.simulator=neuron needs NEURON: `pip install neuron==9.0.2` (Linux and "
            "macOS wheels; `make venv` installs it on Linux)."
        ) from None


def mechanism_files(folder: Path | None) -> list[Path]:
    """The project's .mod files and those of `folder` (its top level, as nrnivmodl reads it), with the files they
    may INCLUDE (.inc)."""
    files = list(PROJECT_MECHANISMS)
    if folder is None:
        return files
    if not folder.is_dir():
        raise ConfigError(f"ground_truth.neuron.mechanisms={folder}: not a folder.")
    own = sorted(path for path in folder.iterdir() if path.suffix in (".mod", ".inc") and path.is_file())
    if len(own) > MAX_MOD_FILES:
        raise ConfigError(
            f"ground_truth.neuron.mechanisms={folder}: {len(own)} .mod/.inc files, more than {MAX_MOD_FILES}."
        )
    for path in own:
        if not NAME.match(path.name):
            raise ConfigError(f"{path}: nrnivmodl takes file names of letters, digits, '_', '-' and '.' only.")
        if path.name in {p.name for p in PROJECT_MECHANISMS}:
            raise ConfigError(f"{path}: has the name of the project's own mechanism file; rename it.")
    return files + own


def check_mechanism_names(contents: list[tuple[str, bytes]]) -> None:
    """Refuse, before compiling, mechanisms that NEURON would reject when loading them: names that NEURON or the
    project's NMDA synapse already has, or that two files share."""
    seen: dict[str, str] = {}
    for name, data in contents:
        if not name.endswith(".mod"):
            continue
        for mechanism in DECLARED.findall(STRIPPED.sub(b"", data)):
            mechanism = mechanism.decode()
            if mechanism in BUILT_IN and name not in {p.name for p in PROJECT_MECHANISMS}:
                raise ConfigError(
                    f"ground_truth.neuron.mechanisms: {name} defines {mechanism}, which "
                    f"{'the project' if mechanism == 'NmdaMgSyn' else 'NEURON'} already has; rename "
                    "it in the file."
                )
            if mechanism in seen:
                raise ConfigError(
                    f"ground_truth.neuron.mechanisms: {seen[mechanism]} and {name} both define {mechanism}."
                )
            seen[mechanism] = name


def _contents(files: list[Path]) -> list[tuple[str, bytes]]:
    contents = []
    for path in files:
        if path.stat().st_size > MAX_MOD_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_MOD_BYTES >> 20} MiB; not a mechanism file.")
        contents.append((path.name, path.read_bytes()))
    return contents


def mechanisms_key(contents: list[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256(f"{neuron_version()}|{platform.machine()}|{sys.platform}".encode())
    for name, data in contents:
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()[:32]


def _tools() -> Path:
    here = Path(sys.executable).parent / "nrnivmodl"
    found = here if here.is_file() else (Path(shutil.which("nrnivmodl")) if shutil.which("nrnivmodl") else None)
    if found is None:
        neuron_version()  # says how to install NEURON when it is missing
        raise SimulatorError(
            "NEURON is installed but its nrnivmodl command is not on the PATH; it compiles the "
            "ground truth's mechanisms."
        )
    compilers = [c for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c and shutil.which(c.split()[0])]
    if not compilers or shutil.which("make") is None:
        raise SimulatorError(
            "compiling NEURON mechanisms (nrnivmodl) needs a C compiler and make, and "
            f"{'no C compiler (cc, gcc, clang)' if not compilers else 'no make'} was found; "
            "install them (e.g. `apt install build-essential`), or compile once on a machine "
            "that has them and point ground_truth.neuron.mechanisms_cache at that cache."
        )
    return found


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def usable_entry(entry: Path) -> bool:
    """A finished cache entry whose library is the one compiled into it (its sha256 recorded in compiled.json)."""
    try:
        record = json.loads((entry / DONE).read_text())
        library = entry / record["library"]
        return library.is_file() and _sha256(library) == record["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def compiler_lines(output: str) -> list[str]:
    """nrnivmodl's output without its own Python traceback (it reports a failed make with one), which would push
    the compiler's message out of a short excerpt."""
    lines, in_traceback = [], False
    for line in output.strip().splitlines():
        if line.startswith("Traceback (most recent call last)"):
            in_traceback = True
        elif in_traceback and not line.startswith(" "):
            in_traceback = False  # the exception line itself
            continue
        if not in_traceback:
            lines.append(line)
    return lines


def compiled_mechanisms(folder: Path | None, cache: Path | None) -> tuple[Path, bool]:
    """The cache entry of the project's and `folder`'s mechanisms, and whether it was compiled now."""
    contents = _contents(mechanism_files(folder))
    check_mechanism_names(contents)
    cache = cache or default_cache()
    entry = cache / mechanisms_key(contents)
    if usable_entry(entry):
        return entry, False
    if entry.exists():  # damaged (or written by something else): never used, rebuilt
        log.warning("ground truth: the compiled mechanisms in %s are damaged; compiling them again", entry)
        aside = cache / f".damaged-{uuid.uuid4().hex}"
        try:
            entry.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
        except OSError as exc:
            raise SimulatorError(
                f"{entry}: a damaged compiled-mechanisms entry that cannot be moved aside "
                f"({exc.strerror or exc}); delete it."
            ) from None
    nrnivmodl = _tools()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        building = cache / f".building-{uuid.uuid4().hex}"
        building.mkdir()
    except OSError as exc:
        raise SimulatorError(
            f"ground_truth.neuron.mechanisms_cache={cache}: cannot be written ({exc.strerror or exc})."
        ) from None
    try:
        for name, data in contents:
            (building / name).write_bytes(data)
        log.info("ground truth: compiling %d NEURON mechanism file(s) with nrnivmodl into %s", len(contents), entry)
        try:
            done = subprocess.run(
                [str(nrnivmodl)], cwd=building, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            raise SimulatorError(
                f"nrnivmodl did not finish within {COMPILE_TIMEOUT_S} s compiling {folder or 'the project mechanisms'}."
            ) from None
        libraries = list(building.glob("*/libnrnmech.so")) + list(building.glob("*/.libs/libnrnmech.so"))
        if done.returncode != 0 or not libraries:
            tail = "\n".join(compiler_lines(done.stdout + done.stderr)[-12:])
            raise SimulatorError(
                f"nrnivmodl could not compile the mechanisms of {folder or 'the project'} "
                f"(exit code {done.returncode}); its last lines:\n{tail}"
            )
        (building / DONE).write_text(
            json.dumps(
                {
                    "files": [name for name, _ in contents],
                    "neuron": neuron_version(),
                    "library": str(libraries[0].relative_to(building)),
                    "sha256": _sha256(libraries[0]),
                }
            )
            + "\n"
        )
        try:
            building.rename(entry)
        except OSError as exc:  # another run finished the same entry first: theirs is as good
            if not usable_entry(entry):
                raise SimulatorError(
                    f"{entry}: the compiled mechanisms cannot be put in place ({exc.strerror or exc})."
                ) from None
        return entry, True
    finally:
        shutil.rmtree(building, ignore_errors=True)
