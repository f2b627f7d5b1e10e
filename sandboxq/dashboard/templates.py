"""HTML pages as small string templates. Every value goes through ``h``
(html.escape) or ``url``; only fragments built here are inserted raw."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape
from string import Template
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from sandboxq.job import FINISHED_STATES, STATES


@dataclass(frozen=True)
class Context:
    root: str
    csrf: str
    read_only: bool
    user: str
    session: bool = False  # logged in through the form: a Log out button


def h(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def url(ctx_root: str, *segments: str, **query: Any) -> str:
    path = "/".join(quote(str(s), safe="") for s in segments)
    found = {k: v for k, v in query.items() if v not in (None, "")}
    return f"{ctx_root}/{path}" + (f"?{urlencode(found)}" if found else "")


def when(epoch: float | None) -> str:
    if not epoch:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def link(href: str, text: Any) -> str:
    return f'<a href="{h(href)}">{h(text)}</a>'


def pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode()


LAYOUT = Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="sandboxq-root" content="$root">
<meta name="sandboxq-csrf" content="$csrf">
<title>$title · sandboxq</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#283447;color:#fff;padding:.6em 1.2em;display:flex;gap:1.5em;align-items:center}
header a{color:#fff;text-decoration:none}header .who{margin-left:auto;opacity:.8}
main{padding:1em 1.2em}table{border-collapse:collapse;background:#fff;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f0f2f5}td.n{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#fff;border:1px solid #ddd;padding:.6em;overflow:auto;max-height:30em}
form.action{display:inline;margin:0 .2em}form[hidden]{display:none}button{cursor:pointer}
.state{font-weight:bold}.failed{color:#b00020}.completed{color:#1b7f3b}.cancelled{color:#6b6b6b}
.paused{color:#b36b00;font-weight:bold}nav.states a{margin-right:.8em}
nav.states a.current{font-weight:bold;text-decoration:none;color:#000}
#flash{color:#1b7f3b;min-height:1.4em}.err{color:#b00020}
</style></head>
<body data-page="$page" $attrs>
<header><a href="$root/"><b>sandboxq</b></a><a href="$root/">Queues</a>
<span class="who">$who</span>$logout</header>
<main><div id="flash"></div>
$body
</main><script src="$root/static/dashboard.js"></script></body></html>
""")


def layout(ctx: Context, title: str, body: str, page: str, **attrs: str) -> str:
    extra = " ".join(f'data-{k.replace("_", "-")}="{h(v)}"' for k, v in attrs.items())
    who = f"{h(ctx.user)}" + (" · read-only" if ctx.read_only else "")
    return LAYOUT.substitute(
        logout=logout_form(ctx) if ctx.session else "",
        root=h(ctx.root),
        csrf=h(ctx.csrf),
        title=h(title),
        page=h(page),
        attrs=extra,
        who=who,
        body=body,
    )


def action(
    ctx: Context,
    path: str,
    label: str,
    fields: dict[str, str] | None = None,
    inputs: dict[str, str] | None = None,
    **kw: str,
) -> str:
    """A POST button carrying the CSRF token, ``fields`` (hidden) and
    ``inputs`` (text boxes: name -> placeholder); nothing when read-only."""
    if ctx.read_only:
        return ""
    hidden = "".join(
        f'<input type="hidden" name="{h(k)}" value="{h(v)}">'
        for k, v in {"csrf_token": ctx.csrf, **(fields or {})}.items()
    )
    hidden += "".join(
        f'<input name="{h(k)}" placeholder="{h(v)}" maxlength="1000"> '
        for k, v in (inputs or {}).items()
    )
    data = " ".join(f'data-{k.replace("_", "-")}="{h(v)}"' for k, v in kw.items())
    return (
        f'<form class="action" method="post" action="{h(path)}" {data}>{hidden}'
        f'<button type="submit" name="do" value="{h(label)}">{h(label)}</button></form>'
    )


def table(headers: Sequence[str], rows: Iterable[str], tbody_id: str = "") -> str:
    head = "".join(f"<th>{h(x)}</th>" for x in headers)
    ident = f' id="{h(tbody_id)}"' if tbody_id else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody{ident}>{''.join(rows)}</tbody></table>"


# -- charts (inline SVG, drawn here: no script, no library) ---------------------------
COMPLETED_COLOR, FAILED_COLOR = "#1b7f3b", "#b00020"
WAITING_COLOR, ACTIVE_COLOR = "#283447", "#b36b00"


def minute_label(minute: int) -> str:
    return time.strftime("%H:%M", time.localtime(minute * 60))


def bars_svg(points: Sequence[dict[str, Any]], width: int = 720, height: int = 140) -> str:
    """Completed (below) and failed (stacked on top) per point: one
    ``<g class="bar">`` per point, its numbers in a ``<title>``."""
    top = max([p["completed"] + p["failed"] for p in points] + [1])
    step = width / max(len(points), 1)
    bars = []
    for i, p in enumerate(points):
        x = f"{i * step:.1f}"
        w = f"{max(step - 1, 0.5):.1f}"
        done_h = p["completed"] / top * (height - 12)
        fail_h = p["failed"] / top * (height - 12)
        bars.append(
            f'<g class="bar"><title>{h(minute_label(p["minute"]))}: {h(p["completed"])} '
            f"completed, {h(p['failed'])} failed</title>"
            f'<rect x="{x}" y="{height - done_h:.1f}" width="{w}" height="{done_h:.1f}" '
            f'fill="{COMPLETED_COLOR}"></rect>'
            f'<rect x="{x}" y="{height - done_h - fail_h:.1f}" width="{w}" '
            f'height="{fail_h:.1f}" fill="{FAILED_COLOR}"></rect></g>'
        )
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="completed and failed jobs, up to {top} a point">'
        f'<text x="2" y="10" font-size="10">{h(top)}</text>{"".join(bars)}</svg>'
    )


def lines_svg(points: Sequence[dict[str, Any]], width: int = 720, height: int = 140) -> str:
    """Waiting and active depth over time, one polyline each (minutes with
    no sample are skipped)."""
    fields = (("waiting", WAITING_COLOR), ("active", ACTIVE_COLOR))
    values = [p[f] for p in points for f, _ in fields if p[f] is not None]
    top = max([*values, 1])
    step = width / max(len(points) - 1, 1)
    lines = []
    for field, color in fields:
        coords = " ".join(
            f"{i * step:.1f},{height - p[field] / top * (height - 12):.1f}"
            for i, p in enumerate(points)
            if p[field] is not None
        )
        lines.append(
            f'<polyline class="line" data-series="{field}" points="{coords}" fill="none" '
            f'stroke="{color}" stroke-width="1.5"><title>{field}</title></polyline>'
        )
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="waiting and active jobs, up to {top}">'
        f'<text x="2" y="10" font-size="10">{h(top)}</text>{"".join(lines)}</svg>'
    )


def run_time(ms: float | None) -> str:
    if ms is None:
        return ""
    if ms == float("inf"):
        return "> 1 h"
    return f"≤ {ms / 1000:g} s" if ms >= 1000 else f"≤ {ms:g} ms"


def run_times_table(run_times: dict[str, dict[str, Any]]) -> str:
    rows = (
        f'<tr><td>{h(name)}</td><td class="n">{h(r["runs"])}</td>'
        f'<td class="n">{h(run_time(r["p50_ms"]))}</td>'
        f'<td class="n">{h(run_time(r["p95_ms"]))}</td></tr>'
        for name, r in run_times.items()
    )
    return table(["Job name", "Runs", "p50", "p95"], rows, "run-times")


def chart_fragments(charts: dict[str, Any]) -> dict[str, str]:
    """What the charts page shows and dashboard.js swaps in live."""
    return {
        "throughput": bars_svg(charts["points"]),
        "depth": lines_svg(charts["points"]),
        "run_times": run_times_table(charts["run_times"]),
    }


def charts_page(ctx: Context, charts: dict[str, Any]) -> str:
    q, span = charts["queue"], charts["span"]
    spans = " ".join(
        f'<a class="{"current" if s == span else ""}" '
        f'href="{h(url(ctx.root, "queues", q, "charts", span=s))}">last {h(s)}</a>'
        for s in ("hour", "day")
    )
    per = "minute" if charts["per_minutes"] == 1 else f"{charts['per_minutes']} minutes"
    parts = chart_fragments(charts)
    body = (
        f"<h1>Charts of {h(q)}</h1><p>{link(url(ctx.root, 'queues', q), '« queue ' + q)}</p>"
        f'<nav class="states">{spans}</nav>'
        + section(
            f"Completed (green) and failed (red) per {per}",
            f'<div data-chart="throughput">{parts["throughput"]}</div>',
        )
        + section(
            "Waiting (blue) and active (orange), sampled each minute",
            f'<div data-chart="depth">{parts["depth"]}</div>',
        )
        + section(
            f"Run time per job name (last {span})",
            f'<div data-chart="run_times">{parts["run_times"]}</div>',
        )
    )
    return layout(ctx, f"{q} charts", body, "charts", queue=q, span=span)


# -- pages ----------------------------------------------------------------------------
def overview_page(ctx: Context, stats: list[dict[str, Any]]) -> str:
    rows = []
    for s in stats:
        q = s["queue"]
        cells = "".join(
            f'<td class="n" data-count="{h(state)}">'
            f"{link(url(ctx.root, 'queues', q, state=state), s['counts'][state])}</td>"
            for state in STATES
        )
        thr = s["throughput"]
        rate = f"{thr['completed']:.2f} / {thr['failed']:.2f}"
        rows.append(
            f'<tr data-queue="{h(q)}"><td><a href="{h(url(ctx.root, "queues", q))}">{h(q)}</a></td>'
            f"{cells}"
            f'<td data-field="paused" class="paused">{"paused" if s["paused"] else ""}</td>'
            f'<td class="n" data-field="throughput">{rate}</td>'
            f'<td class="n" data-field="workers">{len(s["workers"])}</td>'
            f'<td><a data-chart="last_hour" href="{h(url(ctx.root, "queues", q, "charts"))}">'
            f"{bars_svg(s['last_hour'], 180, 30)}</a></td></tr>"
        )
    body = "<h1>Queues</h1>" + table(
        ["Queue", *STATES, "Paused", "Done/s ok / failed (1 min)", "Workers", "Last hour"],
        rows,
        "queues",
    )
    if not stats:
        body += "<p>No queues found.</p>"
    workers = [w for s in stats for w in s["workers"]]
    seen: dict[str, dict[str, Any]] = {}
    for w in workers:
        seen[f"{w.get('host')}:{w.get('pid')}"] = w
    body += "<h2>Live workers</h2>" + table(
        ["Host", "PID", "Queues", "Procs", "Started", "Last seen"],
        (
            f"<tr><td>{h(w.get('host'))}</td><td>{h(w.get('pid'))}</td>"
            f"<td>{h(', '.join(w.get('queues', ())))}</td><td>{h(w.get('procs'))}</td>"
            f"<td>{h(when(w.get('started_at')))}</td><td>{h(when(w.get('last_seen')))}</td></tr>"
            for w in seen.values()
        ),
        "workers",
    )
    return layout(ctx, "Queues", body, "overview")


def queue_header(ctx: Context, q: str, paused: bool, counts: dict[str, int], state: str) -> str:
    links = "".join(
        f'<a class="{"current" if s == state else ""}" '
        f'href="{h(url(ctx.root, "queues", q, state=s))}">{h(s)} '
        f'(<span data-count="{h(s)}">{h(counts[s])}</span>)</a>'
        for s in STATES
    )
    toggle = (
        action(ctx, url(ctx.root, "queues", q, "resume"), "Resume")
        if paused
        else action(ctx, url(ctx.root, "queues", q, "pause"), "Pause")
    )
    return (
        f'<h1>Queue {h(q)} <span class="paused" data-field="paused">'
        f"{'paused' if paused else ''}</span></h1>"
        f'<p>{toggle} <a href="{h(url(ctx.root, "queues", q, "schedules"))}">Schedules</a> '
        f'<a href="{h(url(ctx.root, "queues", q, "charts"))}">Charts</a></p>'
        f'<nav class="states">{links}</nav>'
    )


#: The states whose jobs each bulk action applies to.
BULK_STATES = {
    "retry": ("failed",),
    "remove": (
        "waiting",
        "delayed",
        "completed",
        "failed",
        "waiting-children",
        "waiting-deps",
        "cancelled",
    ),
    "cancel": ("waiting", "delayed", "active", "waiting-children", "waiting-deps"),
}


def job_row(ctx: Context, q: str, job: dict[str, Any], selectable: bool = False) -> str:
    error = (job.get("error") or "").splitlines()
    pick = (
        f'<td><input type="checkbox" form="bulk" name="ids" value="{h(job["id"])}" '
        f'aria-label="select job {h(job["id"])}"></td>'
        if selectable
        else ""
    )
    return (
        f'<tr data-job="{h(job["id"])}">{pick}'
        f'<td><a href="{h(url(ctx.root, "queues", q, "jobs", job["id"]))}">{h(job["id"])}</a></td>'
        f'<td>{h(job["name"])}</td><td class="state {h(job["state"])}">{h(job["state"])}</td>'
        f'<td class="n">{h(job["attempts_made"])}/{h(job["attempts"])}</td>'
        f"<td>{h(when(job['created_at']))}</td><td>{h(when(job['finished_at']))}</td>"
        f"<td>{h(error[0] if error else '')}</td></tr>"
    )


def bulk_form(ctx: Context, q: str, state: str) -> str:
    """The buttons acting on the jobs ticked in the list (their checkboxes
    belong to this form through ``form="bulk"``); nothing when read-only or
    when no bulk action applies to the state."""
    verbs = [verb for verb, states in BULK_STATES.items() if state in states]
    if ctx.read_only or not verbs:
        return ""
    buttons = " ".join(
        f'<button type="submit" name="action" value="{h(verb)}">{h(verb.capitalize())} '
        "selected</button>"
        for verb in verbs
    )
    target = url(ctx.root, "queues", q, "bulk")
    return (
        f'<form id="bulk" class="bulk" method="post" action="{h(target)}">'
        f'<input type="hidden" name="csrf_token" value="{h(ctx.csrf)}">'
        f'<input type="hidden" name="state" value="{h(state)}">{buttons}</form>'
    )


def jobs_page(ctx: Context, page: dict[str, Any]) -> str:
    q, state = page["queue"], page["state"]
    body = queue_header(ctx, q, page["paused"], page["counts"], state)
    chooser = bulk_form(ctx, q, state)
    body += (
        jobs_search(ctx, page)
        + f"<p>{' '.join(queue_actions(ctx, page))}</p>"
        + chooser
        + f"<p>{' · '.join(pager(ctx, page))}</p>"
        + jobs_table(ctx, page, bool(chooser))
    )
    if not page["jobs"]:
        body += f"<p>No {h(state)} jobs{' match' if page['job_id'] or page['search'] else ''}.</p>"
    live = "" if page["job_id"] or page["search"] else "1"
    return layout(
        ctx,
        f"{q} · {state}",
        body,
        "jobs",
        queue=q,
        state=state,
        page_number=str(page["page"]),
        live=live,
    )


def jobs_search(ctx: Context, page: dict[str, Any]) -> str:
    """The search by id or name, and what a search by name looked at."""
    q, state = page["queue"], page["state"]
    search = (
        f'<form method="get" action="{h(url(ctx.root, "queues", q))}">'
        f'<input type="hidden" name="state" value="{h(state)}">'
        f'<input name="id" placeholder="job id" value="{h(page["job_id"])}"> '
        f'<input name="q" placeholder="name contains" value="{h(page["search"])}"> '
        f"<button>Search</button></form>"
    )
    if page["search"]:
        search += (
            f'<p data-field="matched">{h(page["matched"])} {h(state)} job(s) named like '
            f"“{h(page['search'])}” among the first {h(page['scanned'])} of "
            f"{h(page['total'])} (a search looks at the first {h(page['scan_limit'])}).</p>"
        )
    return search


def queue_actions(ctx: Context, page: dict[str, Any]) -> list[str]:
    """The buttons that act on every job of the listed state."""
    q, state = page["queue"], page["state"]
    found = []
    if state == "failed" and page["counts"]["failed"]:
        found.append(
            action(
                ctx,
                url(ctx.root, "queues", q, "retry-failed"),
                "Retry all failed",
                # dashboard.js puts the live count in for {failed}.
                confirm="Retry all {failed} failed jobs of queue " + q + "?",
            )
        )
    if state != "active":
        fields = (
            {"state": state, "older_than": "3600"}
            if state in FINISHED_STATES
            else {"state": state, "keep": "0"}
        )
        label = "Clean older than 1h" if state in FINISHED_STATES else f"Clean all {state}"
        found.append(action(ctx, url(ctx.root, "queues", q, "clean"), label, fields))
    return found


def pager(ctx: Context, page: dict[str, Any]) -> list[str]:
    """Links to the newer and older pages of a job list, and where it is."""
    q, state, search_term = page["queue"], page["state"], page["search"]
    parts = []
    if page["page"] > 1:
        parts.append(
            link(
                url(ctx.root, "queues", q, state=state, page=page["page"] - 1, q=search_term),
                "« newer",
            )
        )
    parts.append(
        f'page <span data-field="page">{h(page["page"])}</span> of '
        f'<span data-field="pages">{h(page["pages"])}</span>'
    )
    if page["page"] < page["pages"]:
        parts.append(
            link(
                url(ctx.root, "queues", q, state=state, page=page["page"] + 1, q=search_term),
                "older »",
            )
        )
    return parts


def jobs_table(ctx: Context, page: dict[str, Any], selectable: bool) -> str:
    """The listed jobs, each with a box to select it when ``selectable``."""
    heads = ["Id", "Name", "State", "Attempts", "Created", "Finished", "Error"]
    pick_all = (
        '<th><input type="checkbox" id="select-all" aria-label="select every job shown"></th>'
        if selectable
        else ""
    )
    rows = "".join(job_row(ctx, page["queue"], j, selectable) for j in page["jobs"])
    return (
        f"<table><thead><tr>{pick_all}{''.join(f'<th>{h(x)}</th>' for x in heads)}</tr></thead>"
        f'<tbody id="jobs">{rows}</tbody></table>'
    )


def confirm_retry_failed(ctx: Context, q: str, failed: int) -> str:
    """Asked before "Retry all failed" runs, when the browser runs no script."""
    form = action(
        ctx, url(ctx.root, "queues", q, "retry-failed"), "Retry them all", {"confirm": "yes"}
    )
    body = (
        f"<h1>Retry all failed jobs of {h(q)}?</h1>"
        f"<p>{h(failed)} failed job(s) go back to waiting, each with a fresh attempt budget; "
        "each retry is audited.</p>"
        f"<p>{form} {link(url(ctx.root, 'queues', q, state='failed'), 'Cancel')}</p>"
    )
    return layout(ctx, f"{q} · retry all failed", body, "confirm", queue=q)


def section(title: str, content: str, ident: str = "") -> str:
    ident_attr = f' id="{h(ident)}"' if ident else ""
    return f"<section{ident_attr}><h2>{h(title)}</h2>{content}</section>"


def steps_section(steps: dict[str, Any]) -> str:
    """The durable steps the job recorded, in order: key and result."""
    rows = (
        f'<tr data-step="{h(key)}"><td>{h(key)}</td><td><pre>{h(pretty(result))}</pre></td></tr>'
        for key, result in steps.items()
    )
    return (
        '<section id="steps"><h2>Steps (<span data-field="step_count">'
        f"{len(steps)}</span>)</h2>{table(['Key', 'Result'], rows, 'step-rows')}</section>"
    )


def job_page(ctx: Context, r: dict[str, Any]) -> str:
    q, jid = r["queue"], r["id"]
    body = (
        f"<h1>Job {h(jid)} <small>{h(r['name'])}</small></h1>"
        f"<p>{link(url(ctx.root, 'queues', q, state=r['state']), '« queue ' + q)} "
        f"{job_buttons(ctx, url(ctx.root, 'queues', q, 'jobs', jid))}</p>"
        + table(["", ""], (f"<tr><th>{h(k)}</th><td>{v}</td></tr>" for k, v in job_summary(ctx, r)))
        + job_sections(r)
    )
    if r["children"] or r["children_failed"]:
        body += children_section(ctx, r)
    return layout(ctx, f"job {jid}", body, "job", queue=q, job=jid, state=r["state"])


def job_buttons(ctx: Context, base: str) -> str:
    """A job's actions; dashboard.js shows those its state allows."""
    return (
        action(ctx, base + "/retry", "Retry", states="failed")
        + action(ctx, base + "/promote", "Promote", states="delayed")
        + action(
            ctx,
            base + "/remove",
            "Remove",
            states="waiting delayed completed failed waiting-children waiting-deps cancelled",
        )
        + action(
            ctx,
            base + "/cancel",
            "Cancel",
            inputs={"reason": "reason (optional)"},
            states="waiting delayed active waiting-children waiting-deps",
        )
    )


def job_summary(ctx: Context, r: dict[str, Any]) -> list[tuple[str, str]]:
    """A job's state, attempts, times and relations: (label, HTML) rows."""
    summary = [
        ("State", f'<span class="state {h(r["state"])}" data-field="state">{h(r["state"])}</span>'),
        (
            "Attempts",
            f'<span data-field="attempts">{h(r["attempts_made"])}/{h(r["attempts"])}</span>'
            f" (stalls {h(r['stalls'])}, retries {h(r['retries'])})",
        ),
        ("Created", h(when(r["created_at"]))),
        ("Started", f'<span data-field="started_at">{h(when(r["started_at"]))}</span>'),
        ("Finished", f'<span data-field="finished_at">{h(when(r["finished_at"]))}</span>'),
    ]
    if r["corrupt"]:
        summary.append(("Corrupt", f'<span class="err">{h(r["corrupt"])}</span>'))
    if r["cancelled_by"] is not None:
        reason = r["cancel_reason"] or "no reason given"
        summary.append(("Cancelled by", f"{h(r['cancelled_by'])} ({h(reason)})"))
    if r.get("dedupe_id") is not None:
        summary.append(("Dedupe id", f'<span data-field="dedupe_id">{h(r["dedupe_id"])}</span>'))
    if r["parent"]:
        p = r["parent"]
        summary.append(
            (
                "Parent",
                f'<a href="{h(url(ctx.root, "queues", p["queue"] or "", "jobs", p["id"]))}">'
                f"{h(p['queue'])} {h(p['id'])}</a>",
            )
        )
    if r["children_pending"]:
        summary.append(("Children pending", h(r["children_pending"])))
    return summary


def job_sections(r: dict[str, Any]) -> str:
    """A job's data, options, progress, result, steps, error, logs and audit."""
    return (
        section("Data", f"<pre>{h(pretty(r['data']))}</pre>")
        + section("Options", f"<pre>{h(pretty(r['options']))}</pre>")
        + section("Progress", f'<pre data-field="progress">{h(pretty(r["progress"]))}</pre>')
        + section("Result", f'<pre data-field="result">{h(pretty(r["result"]))}</pre>')
        + steps_section(r["steps"])
        + section("Error", f'<pre data-field="error" class="err">{h(r["error"] or "")}</pre>')
        + section(
            "Traceback", f'<pre data-field="traceback">{h(r["traceback"] or "")}</pre>', "traceback"
        )
        + section(
            f"Logs ({len(r['logs'])})", f'<pre data-field="logs">{h(chr(10).join(r["logs"]))}</pre>'
        )
        + section(
            "Audit",
            table(
                ["At", "By", "Action"],
                (
                    f"<tr><td>{h(when(e.get('at')))}</td><td>{h(e.get('by'))}</td><td>{h(e.get('action'))}</td></tr>"
                    for e in r["audit"]
                ),
                "audit",
            ),
        )
    )


def children_section(ctx: Context, r: dict[str, Any]) -> str:
    """A flow parent's finished children: results, and the failed it skipped."""
    rows = [
        f"<tr><td>{link(url(ctx.root, 'queues', c['queue'], 'jobs', c['id']), c['ref'])}</td>"
        f"<td><pre>{h(pretty(c['result']))}</pre></td></tr>"
        for c in r["children"]
    ] + [
        f"<tr><td>{link(url(ctx.root, 'queues', c['queue'], 'jobs', c['id']), c['ref'])}</td>"
        f'<td class="err">failed, skipped: {h(c["error"])}</td></tr>'
        for c in r["children_failed"]
    ]
    return section("Children", table(["Child", "Result"], rows))


def schedule_when(s: dict[str, Any]) -> str:
    if s["cron"]:
        return f"cron {s['cron']} {s['tz']}"
    return f"every {s['every']:g}s"


def schedules_page(ctx: Context, q: str, found: list[dict[str, Any]]) -> str:
    rows = (
        f"<tr><td>{h(s['key'])}</td><td>{h(s['name'])}</td>"
        f"<td>{h(schedule_when(s))}</td>"
        f'<td>{h(when(s["next_run"]))}</td><td class="n">{h(s["count"])}'
        f"{h('/' + str(s['limit']) if s['limit'] else '')}</td><td>{h(s['misfire'])}</td>"
        f"<td><pre>{h(pretty(s['data']))}</pre></td></tr>"
        for s in found
    )
    body = (
        f"<h1>Schedules of {h(q)}</h1><p>{link(url(ctx.root, 'queues', q), '« queue ' + q)}</p>"
        + table(["Key", "Job", "When", "Next run", "Runs", "Misfire", "Data"], rows, "schedules")
    )
    if not found:
        body += "<p>No schedules.</p>"
    return layout(ctx, f"{q} schedules", body, "schedules", queue=q)


def login_page(root: str, error: str = "", *, named: bool = False) -> str:
    message = f'<p class="err">{h(error)}</p>' if error else ""
    user = "User" if named else "Name <small>(optional, shown as unverified)</small>"
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Log in · sandboxq</title></head><body style="font:14px system-ui;margin:3em">
<h1>sandboxq dashboard</h1>{message}
<form method="post" action="{h(root)}/login">
<p><label>{user} <input name="username" autocomplete="username"
 {"required autofocus" if named else ""}></label></p>
<p><label>Token <input name="password" type="password" autocomplete="current-password"
 {"required" if named else "autofocus"}></label></p>
<p><button type="submit">Log in</button></p></form></body></html>"""


def logout_form(ctx: Context) -> str:
    """Ends the session server-side (no CSRF token: a page of another site
    cannot send the SameSite=Strict cookie, so it cannot log anyone out)."""
    return (
        f'<form method="post" action="{h(ctx.root)}/logout" style="margin:0">'
        '<button type="submit">Log out</button></form>'
    )


def logout_page(ctx: Context) -> str:
    body = "<h1>Log out</h1><p>This ends your session: its cookie will not work again.</p>"
    return layout(ctx, "Log out", body + logout_form(ctx), "logout")


def error_page(ctx: Context | None, status: int, message: str) -> str:
    body = f"<h1>{h(status)}</h1><p>{h(message)}</p>"
    if ctx is None:
        return f"<!doctype html><html><body>{body}</body></html>"
    return layout(ctx, str(status), body, "error")
