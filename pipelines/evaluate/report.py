"""The evaluation report: one Markdown and one self-contained HTML file, plus the pictures as PNGs.

Both files are rendered from the same list of sections. The Markdown links the PNGs next to it
(`images/NAME.png`); the HTML embeds them as data URIs, so it displays on its own, e.g. in the
MLflow UI's artifact viewer, where relative links do not resolve.

Example:
    >>> paths = write_report(result, {"model": "linearizer-onestep v3"}, decision, "runs/evaluate/x")
    >>> sorted(p.name for p in paths)
    ['one_vs_multistep.png', 'report.html', 'report.md', 'samples.png']
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

from linearizer.viz import to_pil

from .common import Check, EvalResult
from .promotion import Decision

Table = list[tuple[str, str]]


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def sections(result: EvalResult, header: dict[str, str], decision: Decision | None) -> list[tuple[str, Table | str]]:
    """The report's content: (title, table rows or paragraph) in order."""
    verdict = "PASS" if result.passed else "FAIL"
    out: list[tuple[str, Table | str]] = [("Model", list(header.items()))]
    summary = [("quality floors", verdict),
               ("primary metric", f"{result.primary} = {_fmt(result.primary_value)} "
                                  f"({'higher' if result.higher_is_better else 'lower'} is better)"),
               ("comparable as", result.comparable)]
    if decision is not None:
        summary += [("decision", decision.action), ("reason", decision.reason)]
    out.append(("Summary", summary))
    out.append(("Metrics", [(k, _fmt(v)) for k, v in sorted(result.metrics.items())]))
    if result.checks:
        out.append(("Quality floors", [(c.metric, _floor_line(c)) for c in result.checks]))
    if result.info:
        out.append(("Settings", sorted(result.info.items())))
    if result.notes:
        out.append(("Notes", "\n\n".join(result.notes)))
    return out


def _floor_line(c: Check) -> str:
    bound = "unknown" if math.isnan(c.bound) else f"{c.bound:g}"
    where = f" ({c.source})" if c.source else ""
    return f"{_fmt(c.value)} {c.op} {bound}{where}: " + ("pass" if c.passed else f"FAIL, {c.shortfall}")


def _markdown(title: str, content: list[tuple[str, Table | str]], images: list[str]) -> str:
    lines = [f"# {title}", ""]
    for heading, body in content:
        lines += [f"## {heading}", ""]
        if isinstance(body, str):
            lines += [body, ""]
        else:
            lines += ["| | |", "|---|---|"] + [f"| {k} | {v.replace('|', '/')} |" for k, v in body] + [""]
    if images:
        lines += ["## Pictures", ""] + [f"### {name}\n\n![{name}](images/{name}.png)\n" for name in images]
    return "\n".join(lines)


def _html(title: str, content: list[tuple[str, Table | str]], pngs: dict[str, bytes]) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
             "body{font-family:sans-serif;max-width:60em;margin:2em auto}"
             "td{padding:2px 12px;border-bottom:1px solid #ddd}"
             "img{image-rendering:pixelated;width:min(100%,48em)}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for heading, body in content:
        parts.append(f"<h2>{e(heading)}</h2>")
        if isinstance(body, str):
            parts += [f"<p>{e(p)}</p>" for p in body.split("\n\n")]
        else:
            parts.append("<table>" + "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in body) + "</table>")
    if pngs:
        parts.append("<h2>Pictures</h2>")
    for name, data in pngs.items():
        uri = "data:image/png;base64," + base64.b64encode(data).decode()
        parts.append(f"<h3>{e(name)}</h3><img alt='{e(name)}' src='{uri}'>")
    return "\n".join(parts + ["</body></html>\n"])


def write_report(result: EvalResult, header: dict[str, str], decision: Decision | None,
                 directory: str | Path) -> list[Path]:
    """Write `report.md`, `report.html` and `images/*.png` into `directory`.

    Args:
        result: the evaluation.
        header: model facts shown first (name, version, kind, run ids ...).
        decision: the promotion decision (None when none was taken).
        directory: output folder (created).

    Returns:
        The paths written.
    """
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    pngs: dict[str, bytes] = {}
    written = []
    for name, picture in result.images.items():
        buffer = io.BytesIO()
        to_pil(picture).save(buffer, format="PNG")
        pngs[name] = buffer.getvalue()
        path = directory / "images" / f"{name}.png"
        path.write_bytes(pngs[name])
        written.append(path)
    title = f"{result.evaluation} evaluation: {header.get('model', '')}".rstrip(": ")
    content = sections(result, header, decision)
    for path, text in ((directory / "report.md", _markdown(title, content, list(pngs))),
                       (directory / "report.html", _html(title, content, pngs))):
        path.write_text(text)
        written.append(path)
    return written
