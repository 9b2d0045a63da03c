"""HTML reports: the building blocks, and the pages as headless Chromium renders them."""

from __future__ import annotations

import json
import subprocess
import sys

from cryostack.examples import SPIKE_NTD_MAP, SPIKE_NTD_MODEL
from cryostack.report.browser import check_page
from cryostack.report.html import Section, fmt, page, table, write_report
from cryostack.report.sections import outlier_rows

# The browser checks are part of the suite: set-up installs Chromium, so a missing one fails
# them (with the install hint) rather than skipping them.


def test_table_escapes_text_formats_numbers_and_marks_missing_values():
    html = table(["name", "value"], [("<b>x</b>", 0.123456), ("y", None), ("z", 7)], table_id="t")
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    assert '<td class="num">0.1235</td>' in html and '<td class="num">7</td>' in html and "—" in html
    assert 'class="sortable"' in html
    assert fmt(float("nan")) == "—" and fmt(None) == "—" and fmt(1.5, "{:.2f}") == "1.50"
    assert "none" in table(["a"], [], empty="none")


def test_page_embeds_data_that_cannot_end_its_script_early(tmp_path):
    data = {"note": "</script><script>alert(1)</script>"}
    doc = page("t", "s", [Section("A", "a").add("<p>x</p>")], data)
    assert doc.count("</script>") == 2  # the data block's and the page script's own
    path = write_report(tmp_path / "r.html", doc, data)
    assert json.loads(path.with_suffix(".json").read_text()) == data


def test_outlier_rows_cover_every_kind_with_chain_and_residue():
    d = {
        "geometry": {
            "bond_outliers": [
                {
                    "chain": "A",
                    "number": 5,
                    "name": "ALA",
                    "atoms": "N–CA",
                    "sigmas": 4.5,
                    "model_A": 1.6,
                    "ideal_A": 1.46,
                }
            ],  # fmt: skip
            "clashes": [{"atom1": "B/LEU7/CD1", "atom2": "B/GLY9/O", "distance_A": 2.5, "overlap_A": 0.9}],
            "ramachandran": {
                "outliers": [
                    {
                        "chain": "A",
                        "number": 9,
                        "name": "SER",
                        "category": "general",
                        "phi": 60.0,
                        "psi": -120.0,
                        "score": 0.0001,
                    }
                ]
            },  # fmt: skip
            "rotamer": {"outliers": [{"chain": "C", "number": 3, "name": "LYS", "score": 0.001, "chis": [60.0, 20.0]}]},
            "cbeta": {"outliers": [{"chain": "A", "number": 12, "name": "VAL", "deviation_A": 0.31}]},
        }
    }
    rows = outlier_rows(d)
    assert [r[0] for r in rows] == ["bond", "clash", "Ramachandran", "rotamer", "Cβ deviation"]
    assert rows[0][1:3] == ("A", "ALA5") and rows[1][1:3] == ("B", "LEU7") and rows[3][1:3] == ("C", "LYS3")


def test_validation_report_renders_in_chromium_with_working_tables(tmp_path):
    html = tmp_path / "v.html"
    r = subprocess.run(
        [sys.executable, "-m", "cryostack.cli.main", "validate", "--model", str(SPIKE_NTD_MODEL), "--map",
         str(SPIKE_NTD_MAP), "--resolution", "3.2", "--no-q-score", "--html", str(html)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    data = json.loads(html.with_suffix(".json").read_text())
    n_outliers = len(outlier_rows(data["validation"]))
    # the per-residue table: sort by CC (column 4) ascending and read the first two values back;
    # the outlier filter: type a residue name and count the visible rows
    sort_cc = """(function(){var t=document.querySelectorAll("table.sortable")[2];
        t.tHead.rows[0].cells[3].click();
        return [t.tBodies[0].rows[0].cells[3].textContent, t.tBodies[0].rows[1].cells[3].textContent];})()"""
    filt = """(function(){var i=document.querySelector("input[data-filter]");i.value="PHE";
        i.dispatchEvent(new Event("input"));var t=document.getElementById(i.dataset.filter);
        return Array.prototype.filter.call(t.tBodies[0].rows,function(r){return r.style.display!=="none";}).length;})()"""
    shot = tmp_path / "v.png"
    check = check_page(html, screenshot=shot, evaluate={"sorted": sort_cc, "phe_rows": filt})
    assert check.errors == [], check.errors
    f = check.facts
    assert f["ready"] and f["broken_images"] == 0
    assert f["images"] >= 4  # slices, FSC, per-residue, Ramachandran
    assert f["sections"] == ["inputs", "map", "model"] and f["tables"] >= 5
    low, next_low = (float(v) for v in f["sorted"])
    assert low <= next_low
    phe = sum(1 for row in outlier_rows(data["validation"]) if "PHE" in " ".join(map(str, row)))
    assert f["phe_rows"] == phe and 0 < phe < n_outliers
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chromium_reports_script_errors_and_broken_images(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><body><img src="data:image/png;base64,AAAA">'
        "<script>console.error('boom'); undefinedFunction();</script></body></html>"
    )
    check = check_page(bad)
    assert not check.ok
    assert any("boom" in e for e in check.errors) and any("undefinedFunction" in e for e in check.errors)
    assert check.facts["broken_images"] == 1


def test_particles_section_shows_every_reconstructed_subset(tmp_path):
    import numpy as np

    from cryostack.io.maps import DensityMap, write_map
    from cryostack.report.sections import particles_section

    subsets = []
    for i, stage in enumerate(("initial", "rescue", "final")):
        path = write_map(DensityMap(data=np.random.default_rng(i).normal(size=(16, 16, 16)).astype(np.float32), voxel_size=(3.0,) * 3), tmp_path / f"m{i}.mrc")  # fmt: skip
        subsets.append({"stage": stage, "name": f"s{i}", "size": 100 * (i + 1), "resolution_A": 20.0 - i, "cfar": None,
                        "seconds": 1.0, "result": {"map": str(path)}})  # fmt: skip
    subsets.append({"stage": "rescue", "name": "failed", "size": 50, "resolution_A": None, "note": "engine failed"})
    summary = {"particles": 400, "chosen": 300, "subsets": subsets, "final": {"resolution_A": 18.0}}
    html = particles_section(summary, tmp_path, scores=np.linspace(0, 1, 400)).html()
    assert html.count("<img") == 2  # the histogram and the subset views (subsets.png is absent: a note)
    assert "subsets.png was not produced" in html and "engine failed" in html and "cluster" in html
