"""Report figures are drawn, not blank: 1-epoch runs, runs of several datasets, readable grid
text; the latency columns carry their spread."""

import numpy as np
import pytest
from PIL import Image

from kdistill.cli.main import main
from kdistill.reporting.figures import SHADES, text_color

from .conftest import digits_config
from .test_engine import QUIET


def pixels_of(path, hex_color, tolerance=40):
    """How many pixels of the image are close to ``hex_color``."""
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    rgb = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(image - rgb).sum(axis=2) < tolerance).sum())


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory, teacher_run):
    from kdistill.experiment import run

    out = tmp_path_factory.mktemp("short")
    run(digits_config(out, "name=one-epoch-scratch", "train.epochs=1"), **QUIET)
    run(digits_config(out, "name=one-epoch-distilled", "train.epochs=1",
                      f"kd.teachers.0.checkpoint={teacher_run.run_dir}"), **QUIET)  # fmt: skip
    return out


def test_one_epoch_runs_are_drawn_as_points(short_runs, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(short_runs), "--out", str(out)]) == 0
    curves = out / "figures" / "learning_curves.png"
    assert pixels_of(curves, SHADES["scratch"][0]) > 20  # the scratch run's marker
    assert pixels_of(curves, SHADES["distilled"][0]) > 20
    agreement = out / "figures" / "agreement.png"
    assert pixels_of(agreement, SHADES["distilled"][0]) > 20
    calibration = out / "figures" / "calibration.png"
    assert pixels_of(calibration, SHADES["scratch"][0]) > 200  # the bars
    md = (out / "report.md").read_text()
    # latency: median with its interquartile range in brackets
    row = next(line for line in md.splitlines() if line.startswith("| one-epoch-scratch"))
    assert row.count("(") >= 2 and "?" not in row


def test_runs_of_two_datasets_get_a_section_each(short_runs, tmp_path):
    from kdistill.experiment import run

    data = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    x = rng.random((120, 5)).astype(np.float32)
    y = (x[:, 0] > 0.5).astype(np.int64)
    np.savez(data, x_train=x[:80], y_train=y[:80], x_test=x[80:], y_test=y[80:])
    run(digits_config(tmp_path / "npz", "name=vectors", "data.name=npz", f"data.root={data}",
                      "train.epochs=2"), **QUIET)  # fmt: skip
    out = tmp_path / "report"
    assert main(["report", str(short_runs), str(tmp_path / "npz"), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "## Models: digits" in md and "## Models: npz" in md
    for name in ("learning_curves_digits.png", "learning_curves_npz.png"):
        assert pixels_of(out / "figures" / name, SHADES["scratch"][0]) > 20


def test_grid_text_reads_on_light_and_dark_cells():
    import matplotlib

    viridis = matplotlib.colormaps["viridis"]
    assert text_color(viridis(1.0)) == "black"  # yellow
    assert text_color(viridis(0.0)) == "white"  # dark purple
