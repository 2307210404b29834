"""The configuration of `main.py`: `config.yaml`, command-line overrides, validation before any work.

Overrides are `dotted.key=value` (values parsed as YAML, so `200`, `true`, `null`, `[1, 2]` work). An unknown
key or a wrong type is a ConfigError naming the key and the valid choices.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError

from config_base import COUNT_END, LONGEST, SEED_END, Section
from conversion.config import ConversionConfig
from errors import ConfigError
from fileio import real_path, regular_file_size
from ground_truth.neuron_backend.config import NeuronBackendConfig
from ground_truth.trials import MIN_TRIALS
from limits import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, MAX_SWEEP_RUNS
from optimization import OptimizationConfig
from selection.config import SelectionConfig

Seed = Annotated[int, Field(ge=0, lt=SEED_END)]

# The demo models shipped with the project: `demo.settings` apply to this folder (demo.apply: auto).
SHIPPED_DEMO_MODELS = Path(__file__).resolve().parents[1] / "demo_models"


class GroundTruthConfig(Section):
    """Check optimized rates in the neuron the model imitates: the demo neuron, the user's NEURON cell, or a
    simulator function of the user's."""

    enabled: bool = Field(
        True,
        description="Run the check (with simulator demo: when the model's pickle names a "
        "demo simulator configuration).",
    )
    trials: int = Field(
        MIN_TRIALS,
        ge=MIN_TRIALS,
        lt=COUNT_END,
        description="Simulated control/stimulated trial pairs per optimized pattern.",
    )
    simulator: str = Field(
        "demo",
        max_length=1000,
        description="demo (the pickle's data_dict['simulator_config']), "
        "neuron (ground_truth.neuron), or module:function / path/to/file.py:function: a function "
        "of spikes (trials, segments, time) returning each trial's somatic spike times (ms).",
    )
    workers: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Worker processes that simulate trials (a NEURON "
        "worker holds about 170 MB); null: one per core (at most 8) for neuron and "
        "functions, none (this process) for demo.",
    )
    stall_timeout_s: float = Field(
        1800,
        gt=0,
        le=86400,
        description="Stop with an error when no chunk of trials has finished for this long (a hanging simulator).",
    )
    neuron: NeuronBackendConfig = Field(default_factory=NeuronBackendConfig)


class RefineConfig(Section):
    """Closed-loop refinement of the surrogate against the neuron it imitates (the ground_truth simulator)."""

    rounds: int = Field(0, ge=0, le=50, description="Rounds of simulate, fine-tune, re-optimize; 0: none.")
    trials: int = Field(
        256,
        ge=1,
        lt=COUNT_END,
        description="Control/stimulated trial pairs simulated per round "
        "from the current pattern and its perturbations.",
    )
    perturbed_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of those pairs drawn from perturbed patterns (each rate times a log-normal factor).",
    )
    perturbation: float = Field(0.3, ge=0, le=5, description="Sigma of the log-normal factor of the perturbations.")
    replay_trials: int = Field(
        256,
        ge=0,
        lt=COUNT_END,
        description="Trials per round from the training regime "
        "(rates drawn from its quantiles, else the initial rates), so the model does not "
        "forget.",
    )
    steps: int = Field(200, ge=1, lt=COUNT_END, description="Fine-tuning steps (Adam) per round.")
    batch_size: int = Field(32, ge=1, le=4096, description="Simulated trials per fine-tuning step.")
    learning_rate: float = Field(1e-4, gt=0, le=1, description="Adam learning rate of the fine-tuning.")
    somatic_weight: float = Field(
        0.02,
        ge=0,
        description="Weight of the somatic MSE next to the spike BCE (the "
        "original training's first stage); used when the pickle records the soma "
        "targets' clip and bias (y_soma_threshold, y_train_soma_bias).",
    )
    somatic_output_index: int = Field(1, ge=0, le=1000, description="Which model output is the somatic voltage.")
    max_iterations: int | None = Field(
        200,
        ge=0,
        lt=COUNT_END,
        description="Optimizer steps of each round's re-optimization; null: optimization.loop.max_iterations.",
    )
    trust_weight: float = Field(
        10.0,
        ge=0,
        description="Added to objective.initial_distance_weight in each round's "
        "re-optimization (the distance from the round's start): keeps the new pattern where "
        "the simulated trials taught the model.",
    )


class IntRange(Section):
    """`count` consecutive integers from `first`: {first: 42, count: 6} is 42..47."""

    first: int = Field(ge=0, lt=SEED_END, description="The first value.")
    count: int = Field(ge=1, le=int(MAX_SWEEP_RUNS.value), description="How many consecutive values.")

    def values(self) -> list[int]:
        return list(range(self.first, self.first + self.count))


class RayConfig(Section):
    """The `ray` backend of a sweep: an existing cluster, or a local Ray started for the sweep."""

    address: str | None = Field(
        None, description="An existing cluster ('auto', 'host:6379' or 'ray://host:10001'); null starts a local Ray."
    )
    num_cpus: int | None = Field(
        None, ge=1, description="Local Ray only: CPUs it may use; null: sweep.max_workers, else every core."
    )
    cpus_per_run: float = Field(1, gt=0, description="CPUs each run requests.")
    gpus_per_run: float | None = Field(
        None, ge=0, description="GPUs each run requests; null: 1 when the cluster has GPUs and device is not cpu."
    )


class SweepConfig(Section):
    """`python main.py --sweep`: the cartesian product of these lists, one ordinary run per combination."""

    name: str | None = Field(
        None, pattern=r"^[\w.-]+$", description="Folder output_dir/sweep_<name>; null: a hash of the sweep's settings."
    )
    seeds: list[Seed] | IntRange | None = Field(None, description="Run seeds; null: the top-level seed.")
    stimulus_sets: list[Seed | list[Annotated[int, Field(ge=0, lt=LONGEST)]]] | IntRange | None = Field(
        None,
        description="Each an int (selection seed of the drawn segments) or a list of segments; null: "
        "optimization.stimulus as it is.",
    )
    models: list[Annotated[int, Field(ge=1, lt=COUNT_END)] | str] | IntRange = Field(
        [1], description="Ranks in the results table (1 = best) or model stems."
    )
    overrides: dict[str, list[Any]] | None = Field(
        None, description="Other config keys, each with a list of values: {'optimization.loop.learning_rate': [...]}."
    )
    backend: Literal["sequential", "local", "ray"] = Field("sequential", description="Where the runs are executed.")
    retry_failed: bool = Field(
        False, description="Also retry runs that failed twice in a row with the same error (not retried otherwise)."
    )
    max_workers: int | None = Field(
        None, ge=1, le=4096, description="local: processes at most (null: one per GPU, else one per core)."
    )
    ray: RayConfig = Field(default_factory=RayConfig)


class DemoConfig(Section):
    """Settings tuned for the shipped demo models, applied only where they belong."""

    apply: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: only when models_dir is the shipped demo_models folder; always; never."
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Dotted config keys and their demo values. They replace the built-in "
        "defaults, not values set on the command line or changed in the config file.",
    )
    _applied: list[str] = PrivateAttr(default_factory=list)

    @property
    def applied(self) -> list[str]:
        """The keys of `settings` this run took (set by load_config)."""
        return self._applied


class AppConfig(Section):
    """Everything `python main.py` does; see config.yaml for the commented defaults."""

    models_dir: Path = Field(Path("demo_models"), description="Folder with .h5/.pickle pairs (and .pth files).")
    output_dir: Path = Field(Path("runs"), description="Run folders are created inside it.")
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="auto, cpu, cuda, cuda:N or mps.")
    seed: int = Field(0, ge=0, lt=SEED_END, description="Drives every random choice of the run (0 <= seed < 2**63).")
    resume_interrupted: bool = Field(
        True,
        description="Continue the newest run folder of the same model and "
        "config that has a checkpoint but no summary, instead of starting anew.",
    )
    progress_interval_s: float = Field(
        5.0,
        ge=0,
        le=86400,
        description="Without a terminal (cron, job logs): at most one progress line per this many "
        "seconds, one per 10 % of the work.",
    )
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    conversion: ConversionConfig = Field(default_factory=ConversionConfig)
    optimization: OptimizationConfig = Field(default_factory=OptimizationConfig)
    ground_truth: GroundTruthConfig = Field(default_factory=GroundTruthConfig)
    refine: RefineConfig = Field(default_factory=RefineConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the sub-model at `loc` (the last element is the offending key)."""
    current: Any = model
    for part in loc[:-1]:
        field = current.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        current = annotation
    return list(current.model_fields)


# pydantic's names of the alternatives of a union type in an error's location, not config keys
_UNION_MEMBER = re.compile(r"^(constrained-|literal\[|function-|list\[|dict\[|str$|int$|float$|bool$)")


def _describe(error: dict, source: str, overrides: list[str]) -> str:
    key = ".".join(str(part) for part in error["loc"] if not _UNION_MEMBER.match(str(part)))
    for assignment in overrides:  # a value set on the command line: name the override, not the file
        target = assignment.partition("=")[0].strip()
        if key == target or key.startswith(target + ".") or target.startswith(key + "."):
            source = f"override '{assignment}'"
    if error["type"] == "extra_forbidden":
        valid = _valid_keys(AppConfig, error["loc"])
        return f"{source}: unknown config key '{key}'; valid keys there: {', '.join(valid)}."
    return f"{source}: config key '{key}': {error['msg']} (got {error.get('input')!r})."


def validate_config(data: dict[str, Any], source: str, overrides: list[str] = ()) -> AppConfig:
    """`data` as an AppConfig; each problem is attributed to the override that set the key, else to `source`."""
    try:
        return AppConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(" ".join(_describe(e, source, overrides) for e in exc.errors())) from None


class _PlainLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently, so a
    setting further down a long config would quietly undo one above)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue  # an unhashable key: construct_mapping says so
            if key in seen:
                raise ConfigError(
                    f"{self.subject}: the key '{key}' appears twice in one section (line "
                    f"{key_node.start_mark.line + 1}); keep one."
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_events(text: str, subject: str) -> None:
    """Refuse aliases and deep nesting while the text is scanned, before anything is built: `*name` repeats a
    value by reference (a few hundred bytes of nested aliases, "billion laughs", expand beyond any machine), and
    PyYAML's scanner slows down quadratically with flow nesting (`[[[[...`), so the scan stops at the first
    level beyond MAX_CONFIG_DEPTH."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise ConfigError(
                f"{subject}: uses the YAML alias *{event.anchor}; aliases are not accepted in a "
                "config (they can repeat a value without end): write the value out."
            )
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_CONFIG_DEPTH.value:
                raise ConfigError(
                    f"{subject}: nests more than {MAX_CONFIG_DEPTH.value:g} levels deep (line "
                    f"{event.start_mark.line + 1}; {MAX_CONFIG_DEPTH.what}); a config is a few "
                    f"sections of plain values. Raise {MAX_CONFIG_DEPTH.env} if this is meant."
                )
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def parse_yaml(text: str, subject: str) -> Any:
    """Plain data from YAML (no Python objects constructed), without aliases, nesting within MAX_CONFIG_DEPTH
    and no key twice in a mapping."""
    MAX_CONFIG_BYTES.check(len(text.encode()), subject, ConfigError, "bytes")
    try:
        _check_events(text, subject)
        loader = _PlainLoader(text)
        loader.subject = subject
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        # ValueError: an integer of more than 4300 digits (Python's int-from-text limit).
        raise ConfigError(f"{subject}: cannot be read as YAML ({type(exc).__name__}: {exc}).") from None


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Set `a.b.c=value` in nested dicts; the value is parsed as YAML."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{assignment}': expected KEY=VALUE, e.g. optimization.loop.max_iterations=200.")
    value = parse_yaml(raw, f"override '{assignment}'") if raw.strip() else None
    set_dotted(data, key.strip(), value, f"override '{assignment}'")


def set_dotted(data: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Set `a.b.c` in nested dicts, creating sections on the way."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: '{part}' is a value, not a section.")
        node = child
    node[parts[-1]] = value


_MISSING = object()


def get_dotted(data: Any, key: str) -> Any:
    """The value at `a.b.c` in nested dicts, or _MISSING."""
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return _MISSING
        data = data[part]
    return data


def load_config(path: str | Path, overrides: list[str] = ()) -> AppConfig:
    """Read `path` (YAML), apply the demo settings where they belong and the overrides, validate; paths in the
    file are relative to the file's folder."""
    path = Path(path)
    MAX_CONFIG_BYTES.check(regular_file_size(path, ConfigError, "config file"), str(path), ConfigError, "bytes")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read as YAML ({exc}).") from None
    data = parse_yaml(text, str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}.")
    file_data = copy.deepcopy(data)
    for assignment in overrides:
        apply_override(data, assignment)
    config = _resolve_paths(validate_config(data, str(path), overrides), path.parent)
    demo = demo_settings_to_apply(config, file_data, [a.partition("=")[0].strip() for a in overrides])
    if not demo:
        return config
    for key, value in demo.items():
        set_dotted(data, key, copy.deepcopy(value), f"{path}: demo.settings")
    config = _resolve_paths(validate_config(data, f"{path} (with demo.settings)", overrides), path.parent)
    config.demo._applied = sorted(demo)
    return config


def demo_settings_to_apply(
    config: AppConfig, file_data: dict[str, Any], command_line_keys: list[str]
) -> dict[str, Any]:
    """The demo settings that replace built-in defaults: all of `demo.settings` when demo.apply is always, or
    auto and models_dir is the shipped demo folder — except keys set on the command line or changed (from the
    built-in default) in the config file."""
    demo = config.demo
    applies = demo.apply == "always" or (demo.apply == "auto" and real_path(config.models_dir) == SHIPPED_DEMO_MODELS)
    if not applies:
        return {}
    defaults = AppConfig().model_dump(mode="json")
    chosen = {}
    for key, value in demo.settings.items():
        in_file = get_dotted(file_data, key)
        if key in command_line_keys or (in_file is not _MISSING and in_file != get_dotted(defaults, key)):
            continue
        chosen[key] = value
    return chosen


def _resolve_paths(config: AppConfig, base: Path) -> AppConfig:
    def resolve(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else real_path(base / p)

    config.models_dir = resolve(config.models_dir)
    config.output_dir = resolve(config.output_dir)
    config.selection.results_table = resolve(config.selection.results_table)
    config.optimization.initial_rates.path = resolve(config.optimization.initial_rates.path)
    config.optimization.loop.resume_from = resolve(config.optimization.loop.resume_from)
    neuron = config.ground_truth.neuron
    for name in ("cell", "synapse_map", "mechanisms", "mechanisms_cache"):
        setattr(neuron, name, resolve(getattr(neuron, name)))
    module, colon, function = config.ground_truth.simulator.rpartition(":")
    if colon and module.endswith(".py"):  # a simulator file, not a module on the Python path
        config.ground_truth.simulator = f"{resolve(Path(module))}:{function}"
    return config


def config_to_yaml(config: AppConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
