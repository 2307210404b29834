"""main.py on a study folder as researchers keep one: files written by the published training code ('lrelu'
lambdas, '<lambda>' strings, a diverged run, interior NaN epochs, a Keras 3 weights pair), unattended runs with
stderr in a file, the fallback when the best model cannot be used, degenerate results, the report page."""

from __future__ import annotations

import base64
import json
import math
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from errors import ConversionError
from tests.pipeline.test_main import QUICK
from tests.published_training import PublishedModel, write_published_models
from tests.subprocesses import REPO

NAN = math.nan
STUDY = [
    PublishedModel("NMDA_TCN__DxWxT_2x8x19__weights__ID_1", save="weights", history=[0.3, 0.05]),
    PublishedModel("NMDA_TCN__DxWxT_2x8x19__lrelu3__ID_2", history=[0.5, 0.3, 0.2]),
    PublishedModel("NMDA_TCN__DxWxT_2x8x19__interior__ID_3", history=[0.3, NAN, 0.21]),
    PublishedModel("NMDA_TCN__DxWxT_2x8x19__lrelu2__ID_4", flavour="keras2", history=[0.4, 0.25]),
    PublishedModel("NMDA_TCN__DxWxT_2x8x19__string__ID_5", flavour="keras2", lambda_string=True, history=[0.26]),
    PublishedModel("NMDA_TCN__DxWxT_2x8x19__diverged__ID_6", history=[0.01, NAN, NAN], weights="nan"),
]
BEST, LRELU3, INTERIOR, LRELU2, STRING, DIVERGED = (m.stem for m in STUDY)
FALLBACK = [PublishedModel("slope_mismatch", slope=0.3, history=[0.1]), PublishedModel("lrelu_next", history=[0.2])]
UNTRAINED = [PublishedModel("untrained", weights="init", history=[0.4])]
PROGRESS = ["progress_interval_s=0"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    write_published_models(root / "study", STUDY)
    write_published_models(root / "fallback", FALLBACK)
    write_published_models(root / "untrained", UNTRAINED)
    for extra in root.glob("*/*"):
        if extra.name.endswith((".io.npz", ".meta.json")):
            extra.unlink()  # a study folder holds the model files and pickles only
    return root


def main_unattended(workspace: Path, models: str, *overrides: str, stderr_file: Path | None = None):
    """main.py as cron runs it: stderr into a file, no terminal, and no TF_CPP_MIN_LOG_LEVEL of ours."""
    (workspace / "config.yaml").write_text(f"models_dir: {models}\noutput_dir: runs\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    stderr_file = stderr_file or workspace / "stderr.txt"
    with open(stderr_file, "w") as stderr:
        result = subprocess.run(
            [sys.executable, "main.py", "--config", str(workspace / "config.yaml"), *QUICK, *overrides],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            timeout=900,
        )
    return result, stderr_file.read_text()


def summaries(workspace: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((workspace / "runs").glob("*/summary.json"))]


def copy_of(built: Path, name: str, workspace: Path) -> str:
    import shutil

    shutil.copytree(built / name, workspace / name)
    return name


def test_a_study_folder_unattended(built, tmp_path):
    models = copy_of(built, "study", tmp_path)
    result, stderr = main_unattended(tmp_path, models, "conversion.verify=true", *PROGRESS)
    assert result.returncode == 0, stderr[-3000:]
    (summary,) = summaries(tmp_path)
    # the Keras 3 weights pair is the best model: selected and converted (verified through a rebuild)
    assert Path(summary["selected_model"]).name == f"{BEST}.weights.h5" and summary["converted"] is True
    assert summary["conversion"]["verified"] is True
    assert max(summary["conversion"]["max_abs_diff"].values()) <= 1e-5
    # the diverged run ranks nowhere, with its reason; the interior NaN epoch is dropped and said so
    table = pd.read_csv(Path(summary["run_dir"]) / "results_table.csv", keep_default_na=False)
    rows = table.set_index("stem")
    assert rows.loc[DIVERGED, "usable"] in (False, "False")
    assert rows.loc[DIVERGED, "reason"] == "diverged: val_spikes_loss non-finite from epoch 2 of 3"
    assert rows.loc[INTERIOR, "note"] == "1 non-finite epoch(s) of val_spikes_loss dropped (epoch 2)"
    assert float(rows.loc[INTERIOR, "value"]) == 0.21
    assert all(table.loc[table["usable"].astype(str) == "False", "reason"].str.len() > 0)
    # the console table shows whole stems, the reason of every unusable row
    for model in STUDY:
        assert model.stem in stderr
    assert "diverged: val_spikes_loss non-finite from epoch 2 of 3" in stderr
    # progress without a terminal, during the optimization; no TensorFlow log lines
    lines = stderr.splitlines()
    steps = [i for i, line in enumerate(lines) if line.startswith("optimizing rates: ")]
    stopped = next(i for i, line in enumerate(lines) if line.startswith("optimization stopped"))
    assert len(steps) >= 5 and steps[0] < stopped, stderr[-3000:]
    assert any("steps/s" in lines[i] and "left" in lines[i] and "p_stim" in lines[i] for i in steps), stderr
    assert any(line.startswith("evaluating initial and optimized rates: ") for line in stderr.splitlines())
    for tensorflow_noise in ("absl::InitializeLog", "oneDNN", "I0000", "cuda_", "TF-TRT"):
        assert tensorflow_noise not in stderr, stderr[-3000:]


@pytest.mark.parametrize("best", [LRELU3, LRELU2, STRING])
def test_lambda_models_are_selected_converted_and_verified(built, tmp_path, best):
    (tmp_path / "models").mkdir()
    for path in (built / "study").glob(f"{best}.*"):
        (tmp_path / "models" / path.name).write_bytes(path.read_bytes())
    result, stderr = main_unattended(tmp_path, "models", "conversion.verify=true")
    assert result.returncode == 0, stderr[-3000:]
    (summary,) = summaries(tmp_path)
    assert Path(summary["selected_model"]).name == f"{best}.h5"
    conversion = summary["conversion"]
    assert conversion["verified"] is True and max(conversion["max_abs_diff"].values()) <= 1e-5
    assert [r["layer"] for r in conversion["resolved_activations"]] == ["layer_1"]


def test_the_best_model_unusable_stops_naming_the_cause_and_the_next_candidate(built, tmp_path):
    models = copy_of(built, "fallback", tmp_path)
    result, stderr = main_unattended(tmp_path, models)
    assert result.returncode == ConversionError.exit_code, stderr[-3000:]
    (error,) = [line for line in stderr.splitlines() if line.startswith("error: ")]
    for fragment in (
        "the best model slope_mismatch (rank 1) cannot be used",
        "holds 0.3",
        "'lrelu'",
        "The next candidate is lrelu_next (rank 2",
        "selection.fallback=next tries it",
    ):
        assert fragment in error, error
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_fallback_next_takes_the_next_usable_model_and_says_why(built, tmp_path):
    models = copy_of(built, "fallback", tmp_path)
    result, stderr = main_unattended(tmp_path, models, "selection.fallback=next")
    assert result.returncode == 0, stderr[-3000:]
    (summary,) = summaries(tmp_path)
    assert Path(summary["selected_model"]).name == "lrelu_next.h5" and summary["selection"]["rank"] == 2
    (skipped,) = summary["selection"]["skipped"]
    assert skipped["stem"] == "slope_mismatch" and skipped["rank"] == 1 and "holds 0.3" in skipped["reason"]
    page = (Path(summary["run_dir"]) / "report.html").read_text()
    assert "skipped rank 1" in page and "slope_mismatch" in page
    assert summary["selection"]["usable_candidates"] == 1
    table = pd.read_csv(Path(summary["run_dir"]) / "results_table.csv", keep_default_na=False).set_index("stem")
    assert table.loc["slope_mismatch", "usable"] in (False, "False")
    assert (
        table.loc["slope_mismatch", "reason"].startswith("skipped: ")
        and "holds 0.3" in table.loc["slope_mismatch", "reason"]
    )
    assert str(table.loc["lrelu_next", "rank"]) == "2"  # whole numbers in the CSV


def test_a_degenerate_run_carries_the_warning(built, tmp_path):
    models = copy_of(built, "untrained", tmp_path)
    result, stderr = main_unattended(tmp_path, models, "optimization.report.plots=true")
    assert result.returncode == 0, stderr[-3000:]
    (summary,) = summaries(tmp_path)
    warnings = summary["warnings"]
    assert any("no evaluation trial reached the spike threshold (0.5)" in w for w in warnings), warnings
    assert any("not significantly above the initial" in w for w in warnings), warnings
    highest = summary["evaluation"]["details"]["max_prob_stim"]
    assert (
        0 < highest < 0.5 and f"{max(highest, summary['evaluation']['details']['max_prob_control']):.3g}" in warnings[0]
    )
    run_dir = Path(summary["run_dir"])
    assert "**Warning:** no evaluation trial" in (run_dir / "report.md").read_text()
    page = ReportPage.read(run_dir / "report.html")
    assert len(page.warnings) == len(warnings)
    assert sum(line.startswith("warning: ") for line in stderr.splitlines()) == len(warnings)


class ReportPage(HTMLParser):
    """The parts of report.html a test checks: figure cells, images, warnings, links."""

    def __init__(self):
        super().__init__()
        self.cells: list[tuple[str, str]] = []  # (data-key, data-value) of every figure cell, in page order
        self.images: list[dict[str, str]] = []
        self.links: list[str] = []
        self.warnings: list[str] = []

    @classmethod
    def read(cls, path: Path) -> ReportPage:
        page = cls()
        page.feed(path.read_text())
        return page

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "data-key" in attrs:
            self.cells.append((attrs["data-key"], attrs["data-value"]))
        if tag == "img":
            self.images.append(attrs)
        if tag == "a":
            self.links.append(attrs["href"])
        if tag == "div" and attrs.get("class") == "warning":
            self.warnings.append(tag)

    @property
    def figures(self) -> dict[str, str]:
        return dict(self.cells)


def summary_value(summary: dict, key: str):
    value = summary
    for part in key.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def check_page_against(folder: Path, summary: dict | None = None) -> ReportPage:
    page = ReportPage.read(folder / "report.html")
    for image in page.images:
        if image["src"].startswith("data:image/png;base64,"):
            assert base64.b64decode(image["src"].split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
        else:
            assert (folder / image["src"]).is_file(), image["src"]
    if summary is not None:
        assert page.figures, "the page shows no figures of summary.json"
        for key, shown in page.figures.items():
            assert json.loads(shown) == summary_value(summary, key), key
    return page


def test_the_report_page_is_self_contained_and_matches_the_summary(built, tmp_path):
    models = copy_of(built, "study", tmp_path)
    result, stderr = main_unattended(tmp_path, models, "optimization.report.plots=true", "conversion.verify=false")
    assert result.returncode == 0, stderr[-3000:]
    assert result.stdout.strip().endswith("report.html")
    (summary,) = summaries(tmp_path)
    run_dir = Path(summary["run_dir"])
    page = check_page_against(run_dir, summary)
    pngs = sorted(p.name for p in run_dir.glob("*.png"))
    assert len(pngs) == 5 and sorted(image["data-file"] for image in page.images) == pngs
    for key in (
        "evaluation.p_spike_stim",
        "evaluation.p_spike_control",
        "evaluation.difference",
        "evaluation_initial.difference",
        "iterations_run",
        "stimulus_time_ms",
    ):
        assert key in page.figures
    text = (run_dir / "report.html").read_text()
    for fragment in (BEST, "main.py --config", "torch", "not verified", "Reproduce", "results_table.csv"):
        assert fragment in text, fragment
