"""Which run folder a new start continues: only a killed run of the same model and config, never a finished,
failed or live one (the other cases run real jobs in tests/reliability/test_faults.py)."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import AppConfig, config_to_yaml
from pipeline.run_folder import RunFiles, claim_run_folder, find_interrupted_run, working_in

STEM = "NMDA_TCN__DxWxT_7x128x153__ID_42"


def killed_run(output_dir: Path, name: str, config: AppConfig) -> Path:
    folder = output_dir / f"{name}_NMDA_TCN_7x128x153_ID42"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(config_to_yaml(config))
    (folder / "checkpoint.pt").write_bytes(b"checkpoint")
    return folder


def test_newest_killed_run_with_the_same_config_is_claimed(tmp_path):
    config = AppConfig()
    killed_run(tmp_path, "20261126-080000", config)
    newest = killed_run(tmp_path, "20261126-090000", config)
    longer = config.model_copy(deep=True)
    longer.optimization.loop.max_iterations += 100  # how far to go may change between starts
    folder, claim = find_interrupted_run(tmp_path, STEM, longer.model_dump(mode="json"))
    with working_in(folder, claim):
        assert folder == newest
        assert claim_run_folder(newest) is None  # held by this claim
    assert not RunFiles(newest).lock.exists()
    assert claim_run_folder(newest) is not None  # free again


def test_finished_failed_live_or_other_config_runs_are_not_continued(tmp_path):
    config = AppConfig()
    (killed_run(tmp_path, "1", config) / "summary.json").write_text("{}")
    RunFiles(killed_run(tmp_path, "2", config)).failed.write_text("OptimizationError: diverged")
    other = config.model_copy(deep=True)
    other.seed = 1
    killed_run(tmp_path, "3", other)
    live = claim_run_folder(killed_run(tmp_path, "4", config))
    with live:
        assert find_interrupted_run(tmp_path, STEM, config.model_dump(mode="json")) is None
