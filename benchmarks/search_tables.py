"""Markdown tables of a quantization search (``<output>/search/search.json`` of ``edgeport run``):
the trials (settings, quality, p50), the FP32 references, the winner and the sensitivity top nodes.

Usage::

    python benchmarks/search_tables.py OUTPUT_DIR/summary.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def tables(summary_path: str | Path) -> str:
    """The markdown for one pipeline summary with a ``search`` entry."""
    summary = json.loads(Path(summary_path).read_text())
    search = summary.get("search")
    if not search:
        raise SystemExit(f"{summary_path}: no search in this summary")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tasks.search import trial_rows

    rows = trial_rows(search)
    metric = search["metric"]
    obj = search["objective"]
    out = [
        (
            f"Search `{search['search_id']}`: {len(rows)} trials ({search['stopped']}), {search['calibrations']} calibration(s) "
            f"computed ({search['calibrations_cached']} cached), sensitivity {(search['sensitivity'] or {}).get('probes', 0)} probes on "
            f"{(search['sensitivity'] or {}).get('num_samples', 0)} samples, search {search['elapsed_s']:.0f} s; pipeline total "
            f"{summary['timings_s'].get('total', 0):.0f} s (search step {summary['timings_s'].get('search', 0):.0f} s)."
        ),
        "",
        f"| trial | phase | calibration | per-ch | act/weight | format | op types | top-k excluded | {metric} | gate | p50 ms ({obj['target']}, b{obj['batch_size']}) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    winner = (search.get("winner") or {}).get("trial_id")
    for r in rows:
        name = f"**{r['trial']}**" if r["trial"] == winner else r["trial"]
        out.append(
            f"| {name} | {r['phase']} | {r['calibration']} | {r['per_channel']} | {r['act/weight']} | {r['format']} | {r['op_types']} "
            f"| {r['exclude_top_k']} | {r[metric]} | {'pass' if r['passed'] else r['status']} | {r['p50_ms'] if r['p50_ms'] is not None else '-'} |"
        )
    out += ["", "| reference (same sweep) | kind | " + metric + " | p50 ms |", "|---|---|---|---|"]
    for ref in search["references"]:
        kind = ref.get("kind", "fp32")
        out.append(f"| {ref['name']} | {kind} | {ref['quality']:.5f} | {ref['p50_ms']:.4f} |" if ref["p50_ms"] else f"| {ref['name']} | {kind} | - | - |")
    w = search.get("winner")
    pareto = search["pareto"].get(obj["target"], []) if isinstance(search["pareto"], dict) else search["pareto"]  # per target since issue 11
    out.append("")
    if w:
        speed = f"{w['speedup_vs_fastest_fp32']:.2f}x vs the fastest FP32" if w.get("speedup_vs_fastest_fp32") else "n/a vs FP32"
        if w.get("speedup_vs_fastest_handwritten"):
            speed += f", {w['speedup_vs_fastest_handwritten']:.2f}x vs the fastest hand-written variant"
        out.append(
            f"Winner {w['trial_id']}: {metric} {w['quality']:.5f}, p50 {w['p50_ms']:.4f} ms, {speed} "
            f"(same interleaved benchmark); nodes kept in float: {w['nodes_to_exclude'] or 'none'}; pareto set: {', '.join(pareto)}."
        )
    else:
        out.append("No configuration meets the budget: nothing registered.")
    out.append("")
    if search["sensitivity"]:  # None when no exclude_top_k above 0 applied
        out.append("Sensitivity top nodes: " + ", ".join(f"`{n}`" for n in search["sensitivity"]["top"][:8]))
    variants = [v for v in summary["variants"]]
    out += ["", "Pipeline benchmark (all variants, interleaved):", "", "| variant | " + metric + " | target | batch | p50 ms |", "|---|---|---|---|---|"]
    for v in variants:
        for b in v["benchmarks"]:
            if b.get("p50_ms") is not None:
                q = (v.get("evaluation") or {}).get("value")
                out.append(f"| {v['name']} | {q:.5f} | {b['target']} | {b['batch_size']} | {b['p50_ms']:.4f} |" if q is not None else f"| {v['name']} | - | {b['target']} | {b['batch_size']} | {b['p50_ms']:.4f} |")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(tables(sys.argv[1]))
