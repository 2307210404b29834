"""Record the statistics of the demo models' training inputs in their pickles (``data_dict['input_regime']``).

    .venv/bin/python tools/record_input_regime.py [--models-dir demo_models]

For models trained by tools/train_demo_models.py before it wrote the key itself. Each pickle's ``data_seed`` and
``simulator_config`` say how its training inputs were drawn; the train trials' inputs are drawn again exactly as
the training script drew them (training_input_regime: the same generator, the same order, no simulation) and fed
to the accumulator of optimization/regime.py one trial at a time. Every pickle is rewritten atomically (protocol 2,
every other key unchanged). Models that share a seed and simulator share the statistics, computed once.
Takes about a minute per seed on one CPU core.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from errors import ConfigError  # noqa: E402
from fileio import write_atomically  # noqa: E402
from ground_truth.demo import NeuronConfig  # noqa: E402
from optimization.regime import REGIME_KEY, InputRegime  # noqa: E402
from safe_pickle import load_pickle  # noqa: E402
from tools.train_demo_models import (  # noqa: E402
    MODEL_FILE_PATTERN,
    TRIAL_DURATION_MS,
    split_description,
    training_input_regime,
)


def record(models_dir: Path) -> None:
    """Write the regime into every demo model pickle of `models_dir`, printing each distinct regime once."""
    pickles = sorted(
        path for path in models_dir.iterdir() if MODEL_FILE_PATTERN.match(path.name) and path.suffix == ".pickle"
    )
    if not pickles:
        raise ConfigError(f"{models_dir}: no demo model pickle (named like tools/train_demo_models.py's) in it")
    computed: dict[tuple, InputRegime] = {}
    for path in pickles:
        auxiliary = load_pickle(path)
        data = auxiliary["data_dict"]
        seed = data["data_seed"]
        if data["train_files"] != split_description("train", seed) or data["trial_duration_ms"] != TRIAL_DURATION_MS:
            raise ConfigError(
                f"{path}: its training data ({data['train_files']}, {data['trial_duration_ms']} ms "
                "trials) are not what tools/train_demo_models.py draws now; its inputs cannot be "
                "redrawn"
            )
        key = (seed, json.dumps(data["simulator_config"], sort_keys=True))
        if key not in computed:
            print("drawing the train inputs of seed %d ..." % seed, flush=True)
            computed[key] = training_input_regime(NeuronConfig.from_dict(data["simulator_config"]), seed)
            print(json.dumps(computed[key].to_dict(), indent=2), flush=True)
        data[REGIME_KEY] = computed[key].to_dict()
        write_atomically(path, lambda handle: handle.write(pickle.dumps(auxiliary, protocol=2)))  # noqa: B023 (runs at once)
        print(f"wrote data_dict[{REGIME_KEY!r}] into {path.name}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=REPO_ROOT / "demo_models",
        help="folder of the demo models (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    record(args.models_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
