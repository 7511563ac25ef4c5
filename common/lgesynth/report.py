"""``DIR/report.html``: one self-contained page (PNGs inlined) summarising a pipeline run.

Sections, each shown when its stage wrote its files: cohort fingerprint, INR fit quality ("N of M
INRs reached their targets" and the evaluation summary), inr2vec round trip, the synthetic cohort
(montage + quality report), the scar_seg comparison (Dice per region with 95 % CIs) and the wall time
per stage.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from lgesynth.io import atomic_path


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _img(path: Path, title: str) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" style="max-width:100%"><figcaption>{html.escape(title)}</figcaption></figure>'


def _table(rows: dict, keys: list[str] | None = None) -> str:
    keys = keys or [k for k, v in rows.items() if isinstance(v, (int, float))]
    cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{rows[k]:.4g}</td></tr>" for k in keys
                    if k in rows and isinstance(rows[k], (int, float)))
    return f"<table>{cells}</table>" if cells else ""


def _fingerprint(fp: dict | None) -> str:
    if not fp:
        return ""
    s = fp.get("summary", {})
    rows = {}
    for key, value in s.items():
        if isinstance(value, dict) and "median" in value and isinstance(value["median"], (int, float)):
            rows[f"{key} (median)"] = value["median"]
    return _table(rows)


def _inr_targets(summary: dict | None) -> str:
    """"N of M INRs reached their targets" from inr_fit's ``fit_summary.json`` (counts of the bank's
    ``reached_target``; an older summary without them gives nothing)."""
    if not summary or not isinstance(summary.get("reached_target"), int) or "subjects" not in summary:
        return ""
    line = f"{summary['reached_target']} of {summary['subjects']} INRs reached their targets"
    if summary.get("fell_short"):
        line += f"; {summary['fell_short']} stopped at max_steps short of them (fit_metrics.csv: reached_target)"
    if summary.get("reached_target_unknown"):
        line += f"; {summary['reached_target_unknown']} unknown (the bank did not record it)"
    return f"<p>{html.escape(line)}.</p>"


def _comparison(cmp: dict | None) -> str:
    if not cmp:
        return ""
    out = ["<table><tr><th>metric</th><th>baseline</th><th>augmented</th><th>difference [95 % CI]</th><th>p</th></tr>"]
    for key, paired in cmp.get("paired", {}).items():
        b, a = cmp.get("baseline", {}), cmp.get("augmented", {})
        bv = b.get(key, b.get("per_region", {}).get(key))
        av = a.get(key, a.get("per_region", {}).get(key))
        ci = paired.get("ci95") or [float("nan"), float("nan")]
        fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        out.append(f"<tr><td>{html.escape(key)}</td><td>{fmt(bv)}</td><td>{fmt(av)}</td>"
                   f"<td>{fmt(paired.get('mean_difference'))} [{fmt(ci[0])}, {fmt(ci[1])}]</td><td>{fmt(paired.get('p_value'))}</td></tr>")
    out.append("</table>")
    return "".join(out)


def write_report(out: str | Path, title: str = "lgesynth pipeline") -> Path:
    """Assemble ``out/report.html`` from the files the stages wrote under ``out``."""
    out = Path(out)
    parts = [f"<h1>{html.escape(title)}</h1>"]
    fit_summary = _json(out / "inr_fit" / "fit_summary.json")
    sections = [
        ("Cohort fingerprint", _fingerprint(_json(out / "data" / "fingerprint.json")) + _img(out / "data" / "montage.png", "cohort montage")),
        ("INR fit quality (inr_fit)", _inr_targets(fit_summary) + _table(fit_summary or {})),
        ("Round trip bank → latent → volume (inr2vec)", _table(_json(out / "inr2vec" / "eval" / "inr2vec_metrics.json") or {})
         + _img(out / "inr2vec" / "eval" / "inr2vec_montage.png", "source vs reconstruction")
         + _img(out / "inr2vec" / "eval" / "inr2vec_fidelity.png", "decoded vs true myocardium per subject")),
        ("Synthetic cohort (edm_synth)", _table(_json(out / "synthetic" / "report.json") or {})
         + _img(out / "synthetic" / "montage.png", "synthetic samples") + _img(out / "synthetic" / "report.png", "feature distributions")
         + _img(out / "synthetic" / "nearest.png", "samples beside their nearest training subject")),
        ("Does it help the segmenter? (scar_seg)", _comparison(_json(out / "experiment" / "comparison.json"))
         + _img(out / "experiment" / "comparison.png", "Dice per region, 95 % CI")),
        ("Wall time per stage (s)", _table(_json(out / "stage_times.json") or {})),
    ]
    for name, body in sections:
        if body:
            parts.append(f"<h2>{html.escape(name)}</h2>{body}")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>lgesynth report</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{padding:2px 8px;border-bottom:1px solid #ddd}"
            "</style></head><body>" + "".join(parts) + "</body></html>")
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(page)
    return out / "report.html"
