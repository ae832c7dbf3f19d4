"""The bench report as Markdown tables, with the machine line and the targets."""

from __future__ import annotations

from .machine import describe_machine
from .sections import SECTIONS

__all__ = ['FORMATTERS', 'format_batch', 'format_end_to_end', 'format_keras', 'format_memory', 'format_mixed_batch', 'format_models', 'format_report', 'format_sizes', 'format_startup']


def format_report(report: dict) -> str:
    """The report as Markdown tables, with the machine line and the targets."""
    p = report["pack"]
    lines = [f"# cxr-edge bench ({report['machine']['date']})", "",
             f"machine: {describe_machine(report['machine'])}",
             f"pack: {p['path']} ({p['origin']}), {p['total_bytes'] / 1e6:.2f} MB",
             f"settings: threads {report['settings']['threads']}, {report['settings']['rounds']} interleaved "
             f"round(s), input: {report['settings']['image']}"]
    if "backend" in report:
        b = report["backend"]
        lines.append(f"interpreter: {b['backend']} {b['backend_version']}, {b['delegate']}; installed: "
                     f"{', '.join(b['installed'])}")
    for key in SECTIONS:
        if report.get(key) is not None:
            lines += ["", *FORMATTERS[key](report[key])]
    lines += ["", *format_sizes(p), "", "## Targets", "", "| target | goal | measured | met |", "|---|---|---|---|"]
    lines += [f"| {t['name']} | {t['target']} | {t['value'] if t['value'] is not None else '-'} | "
              f"{'-' if t['met'] is None else 'yes' if t['met'] else 'NO'} |" for t in report["targets"]]
    lines += [f"\nnote: {n}" for n in report.get("notes", [])]
    return "\n".join(lines)


def format_models(rows: list[dict]) -> list[str]:
    out = ["## int8 models (TFLiteModel.run = quantize + invoke + dequantize)", "",
           "| model | input | threads | median ms | p90 ms | images/s | bare invoke ms | GMAC/s |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['slot']} | {'x'.join(map(str, r['input']))} | {r['threads']} | {r['run']['median']:.2f} "
                   f"| {r['run']['p90']:.2f} | {r['per_s']:.0f} | {r['invoke']['median']:.2f} | "
                   f"{r['gmac_per_s'] if r['gmac_per_s'] is not None else '-'} |")
    return out


def format_keras(k: dict) -> list[str]:
    out = ["## Keras float vs int8", "", k["note"]]
    if k["rows"]:
        out += ["", "| model | threads | Keras median ms | p90 ms | int8 speed-up | TF CPU s per s |",
                "|---|---|---|---|---|---|"]
        out += [f"| {r['slot']} | {r['threads']} | {r['keras']['median']:.1f} | {r['keras']['p90']:.1f} | "
                f"{r['int8_speedup']}x | {r['cpu_per_wall']} |" for r in k["rows"]]
    return out


def format_end_to_end(e: dict) -> list[str]:
    f = e["facts"]
    out = [f"## End to end: {f['photo_size'][0]}x{f['photo_size'][1]} phone JPEG ({f['photo_bytes'] / 1e6:.1f} MB) "
           f"to all results, {e['threads']} interpreter thread", ""]
    out += _table(e["rows"], "ratio to the first")
    full = {r["name"]: r["median_ms"] for r in e.get("stages_full_decode", [])}
    out += ["", "Stages (medians of the pipeline's own timings_ms):", "",
            "| stage | predict(photo) ms | full decode, then predict ms |", "|---|---|---|"]
    names = list(dict.fromkeys([r["name"] for r in e["stages"]] + list(full)))
    main = {r["name"]: r["median_ms"] for r in e["stages"]}
    out += [f"| {k} | {_fmt(main.get(k))} | {_fmt(full.get(k))} |" for k in names]
    rect = f.get("rectify") or {}
    out += ["", f"Film found: {rect.get('found')}, searched at {rect.get('searched_at')}; status {f['status']}; "
                f"gate score {f['gate_score']}."]
    return out + [f"Note: {n}." for n in e["notes"]]


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def format_batch(bt: dict, what: str = "images") -> list[str]:
    out = [f"## Batch: {bt['images']} {what} through predict", "",
           "| variant | seconds | images/s | speed-up |", "|---|---|---|---|"]
    out += [f"| {r['name']} | {r['median_ms'] / 1e3:.2f} | {r['per_s']:.0f} | {r['ratio']}x |" for r in bt["rows"]]
    return out + ["", f"Status of the first 50: {bt['status_of_first_50']}."]


def format_mixed_batch(bt: dict) -> list[str]:
    return format_batch(bt, "1024-px PNGs and 12-MP phone JPEGs (alternating)")


def format_memory(rows: list[dict]) -> list[str]:
    out = ["## Peak memory (a fresh child process and any processes it starts)", "",
           "| command | largest process: peak RSS MB | ratio to python -c pass | all processes: RSS MB | "
           "all processes: PSS MB | processes | exit |", "|---|---|---|---|---|---|---|"]
    return out + [f"| {r['name']} | {r['peak_rss_mb']:.0f} | {r['ratio']}x | {_fmt0(r.get('total_rss_mb'))} | "
                  f"{_fmt0(r.get('total_pss_mb'))} | {r.get('processes') or '-'} | {r['exit_code']} |" for r in rows]


def _fmt0(v) -> str:
    return "-" if v is None else f"{v:.0f}"


def format_startup(rows: list[dict]) -> list[str]:
    return ["## Start-up (wall time of a fresh process)", "", *_table(rows, "ratio to python -c pass")]


def format_sizes(p: dict) -> list[str]:
    out = ["## Sizes", "", "| model | bytes |", "|---|---|"]
    out += [f"| {slot} ({m['task']}, {m['input']} px) | {m['bytes']:,} |" for slot, m in p["models"].items()]
    return out + [f"| pack total | {p['total_bytes']:,} |"]


FORMATTERS = {"models": format_models, "keras": format_keras, "end_to_end": format_end_to_end,
              "batch": format_batch, "mixed_batch": format_mixed_batch, "memory": format_memory,
              "startup": format_startup}


def _table(rows: list[dict], ratio_title: str | None) -> list[str]:
    head = "| step | median ms | p90 ms |" + (f" {ratio_title} |" if ratio_title else "")
    sep = "|---|---|---|" + ("---|" if ratio_title else "")
    body = [f"| {r['name']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} |" + (f" {r['ratio']:.2f}x |" if ratio_title else "")
            for r in rows]
    return [head, sep, *body]

