"""`esper report`: one self-contained HTML page whose figures load in a real headless Chromium, and
whose numbers are the pack's."""

from __future__ import annotations

import base64
import io
import re
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
from support.browser import chromium, file_url, find_browser
from support.packs import make_episodes, run_cli, write_pack

from telemetry.packs.manifest import read_manifest

FIGURES = ["actions-per-cause", "accuracy-over-epochs", "gradient-health", "seed-outcomes", "counterfactual-gains"]


@pytest.fixture(scope="module")
def page(described_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from telemetry.cli import main

    out = tmp_path_factory.mktemp("report") / "out"
    assert main(["report", str(described_pack), "--out", str(out)]) == 0
    return out / "report.html"


def _images(text: str) -> dict[str, bytes]:
    found = re.findall(r'<img id="([\w-]+)" alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', text)
    return {name: base64.b64decode(data) for name, data in found}


def test_the_page_is_self_contained_with_every_figure_embedded(page, described_pack):
    text = page.read_text(encoding="utf-8")
    images = _images(text)
    assert list(images) == FIGURES
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000 for png in images.values())
    assert not re.search(r'(src|href)="(?!data:)', text)  # nothing fetched from anywhere
    manifest = read_manifest(described_pack)
    for split, stats in manifest.split_stats.items():
        assert f"<td>{split}</td><td class=\"n\">{stats.episodes}</td><td class=\"n\">{stats.steps}</td>" in text
    branched = duckdb.sql(f"SELECT count(*) FROM read_parquet('{described_pack}/steps/**/*.parquet') "
                          "WHERE counterfactual IS NOT NULL").fetchall()[0][0]
    assert f"({branched} branched steps" in text


def test_a_pack_without_the_data_of_a_figure_says_so(tmp_path, capsys):
    path = tmp_path / "minimal"
    write_pack(path, make_episodes(0, 3, steps=4, profile="minimal"), profile="minimal")
    code, out, _ = run_cli(capsys, "report", str(path), "--out", str(tmp_path / "out"))
    text = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert code == 0 and out.strip() == str(tmp_path / "out" / "report.html")
    assert "records no per-layer gradient statistics" in text and "gradient-health" not in _images(text)


def test_bad_output_folder_is_one_line_and_exit_2(described_pack, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(capsys, "report", str(described_pack), "--out", str(tmp_path / "file"))
    assert code == 2 and "exists and is not a folder" in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(find_browser() is None, reason="no chromium and chromedriver (Debian: apt-get install chromium "
                                                   "chromium-driver; .ci/run installs them)")
def test_the_page_renders_in_a_real_browser_with_every_figure_loaded(page):
    from PIL import Image

    with chromium(width=1280, height=4200) as browser:
        browser.open(file_url(page))
        loaded = browser.script("return [...document.images].map(i => [i.id, i.complete, i.naturalWidth, "
                                "i.naturalHeight, i.getBoundingClientRect().width])")
        shot = browser.screenshot()
    assert [row[0] for row in loaded] == FIGURES
    assert all(complete and w > 100 and h > 100 and shown > 100 for _, complete, w, h, shown in loaded), loaded
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("L"), dtype=float)
    assert pixels.shape[1] >= 1000
    assert pixels.std() > 20 and (pixels < 200).mean() > 0.02  # not a blank page: text and figures drawn


@pytest.mark.parametrize("where", ["the pack", "a link to the pack", "a folder inside the pack", "the default"])
def test_the_page_is_never_written_into_a_pack(described_pack, tmp_path, capsys, monkeypatch, where):
    """A pack holds only what its commits wrote (found by the long CLI fuzz run: --out through a link)."""
    pack = Path(shutil.copytree(described_pack, tmp_path / "pack", symlinks=True))
    before = sorted(str(p) for p in pack.rglob("*"))
    link = tmp_path / "link"
    link.symlink_to(pack)
    args = {"the pack": ["--out", str(pack)], "a link to the pack": ["--out", str(link)],
            "a folder inside the pack": ["--out", str(pack / "steps" / "reports")], "the default": []}[where]
    monkeypatch.chdir(pack)
    code, _, err = run_cli(capsys, "report", str(pack), *args)
    assert code == 2 and f"inside the pack {pack}" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(str(p) for p in pack.rglob("*")) == before
