// sandboxq dashboard: live refresh (polls the JSON API, updates the DOM in
// place) and action buttons (POST with the CSRF token, no page reload).
(function () {
  "use strict";
  var meta = function (name) {
    var el = document.querySelector('meta[name="' + name + '"]');
    return el ? el.getAttribute("content") : "";
  };
  var root = meta("sandboxq-root"), csrf = meta("sandboxq-csrf");
  var body = document.body, page = body.dataset.page;
  var INTERVAL = 2000;
  var enc = encodeURIComponent;

  function flash(text, isError) {
    var el = document.getElementById("flash");
    if (!el) return;
    el.textContent = text;
    el.className = isError ? "err" : "";
  }
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function when(epoch) {
    if (!epoch) return "";
    var d = new Date(epoch * 1000);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }
  function json(value) { return JSON.stringify(value === undefined ? null : value, null, 2); }
  function setText(scope, field, text) {
    var el = scope.querySelector('[data-field="' + field + '"]');
    if (el && el.textContent !== String(text)) el.textContent = text;
    return el;
  }
  function getJSON(path) {
    return fetch(root + path, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 401) { window.location.href = root + "/login"; throw new Error("401"); }
        return r.json().then(function (data) { return { status: r.status, data: data }; });
      });
  }
  function updateCounts(counts) {
    Object.keys(counts).forEach(function (state) {
      document.querySelectorAll('[data-count="' + state + '"]').forEach(function (el) {
        var target = el.querySelector("a") || el;
        if (target.textContent !== String(counts[state])) target.textContent = counts[state];
      });
    });
  }

  function draw(el, markup) {
    if (el.dataset.drawn === markup) return;
    el.innerHTML = markup;
    el.dataset.drawn = markup;
  }

  function refreshOverview() {
    return getJSON("/api/queues").then(function (res) {
      var rows = document.querySelectorAll("#queues tr[data-queue]");
      if (rows.length !== res.data.queues.length) { window.location.reload(); return; }
      res.data.queues.forEach(function (q) {
        var row = document.querySelector('#queues tr[data-queue="' + CSS.escape(q.queue) + '"]');
        if (!row) { window.location.reload(); return; }
        Object.keys(q.counts).forEach(function (state) {
          var a = row.querySelector('[data-count="' + state + '"] a');
          if (a && a.textContent !== String(q.counts[state])) a.textContent = q.counts[state];
        });
        setText(row, "paused", q.paused ? "paused" : "");
        setText(row, "throughput", q.throughput.completed.toFixed(2) + " / " + q.throughput.failed.toFixed(2));
        setText(row, "workers", q.workers.length);
        var small = row.querySelector('[data-chart="last_hour"]');
        // Drawn by the server (templates.bars_svg), every value escaped there.
        if (small && q.last_hour_svg) draw(small, q.last_hour_svg);
      });
    });
  }

  function cell(text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }
  function refreshJobs() {
    if (!body.dataset.live) return Promise.resolve();
    var q = body.dataset.queue, state = body.dataset.state;
    return getJSON("/api/queues/" + enc(q) + "/jobs?state=" + enc(state) + "&page=" + enc(body.dataset.pageNumber))
      .then(function (res) {
        var data = res.data, tbody = document.getElementById("jobs");
        updateCounts(data.counts);
        setText(document, "paused", data.paused ? "paused" : "");
        setText(document, "pages", data.pages);
        if (!tbody) return;
        var selectable = !!document.getElementById("bulk"), ticked = {};
        tbody.querySelectorAll('input[name="ids"]:checked').forEach(function (box) {
          ticked[box.value] = true;
        });
        var rows = data.jobs.map(function (job) {
          var tr = document.createElement("tr"), td = document.createElement("td");
          var a = document.createElement("a");
          tr.dataset.job = job.id;
          if (selectable) {
            var pick = document.createElement("td"), box = document.createElement("input");
            box.type = "checkbox";
            box.name = "ids";
            box.value = job.id;
            box.checked = !!ticked[job.id];
            box.setAttribute("form", "bulk");
            box.setAttribute("aria-label", "select job " + job.id);
            pick.appendChild(box);
            tr.appendChild(pick);
          }
          a.href = root + "/queues/" + enc(q) + "/jobs/" + enc(job.id);
          a.textContent = job.id;
          td.appendChild(a);
          tr.appendChild(td);
          tr.appendChild(cell(job.name));
          tr.appendChild(cell(job.state, "state " + job.state));
          tr.appendChild(cell(job.attempts_made + "/" + job.attempts, "n"));
          tr.appendChild(cell(when(job.created_at)));
          tr.appendChild(cell(when(job.finished_at)));
          tr.appendChild(cell((job.error || "").split("\n")[0]));
          return tr;
        });
        tbody.replaceChildren.apply(tbody, rows);
      });
  }

  function showActions(state) {
    document.querySelectorAll("form.action[data-states]").forEach(function (form) {
      form.hidden = form.dataset.states.split(" ").indexOf(state) < 0;
    });
  }
  function showSteps(steps) {
    var tbody = document.getElementById("step-rows"), keys = Object.keys(steps);
    var seen = JSON.stringify(steps);
    if (!tbody || tbody.dataset.seen === seen) return;
    tbody.dataset.seen = seen;
    setText(document, "step_count", keys.length);
    var rows = keys.map(function (key) {
      var tr = document.createElement("tr"), td = document.createElement("td");
      var pre = document.createElement("pre");
      tr.dataset.step = key;
      tr.appendChild(cell(key));
      pre.textContent = json(steps[key]);
      td.appendChild(pre);
      tr.appendChild(td);
      return tr;
    });
    tbody.replaceChildren.apply(tbody, rows);
  }
  function refreshJob() {
    var q = body.dataset.queue, id = body.dataset.job;
    return getJSON("/api/queues/" + enc(q) + "/jobs/" + enc(id)).then(function (res) {
      if (res.status === 404) { flash("This job no longer exists.", true); return; }
      var r = res.data;
      var st = setText(document, "state", r.state);
      if (st) st.className = "state " + r.state;
      body.dataset.state = r.state;
      showActions(r.state);
      setText(document, "attempts", r.attempts_made + "/" + r.attempts);
      setText(document, "started_at", when(r.started_at));
      setText(document, "finished_at", when(r.finished_at));
      setText(document, "progress", json(r.progress));
      setText(document, "result", json(r.result));
      setText(document, "error", r.error || "");
      setText(document, "traceback", r.traceback || "");
      setText(document, "logs", (r.logs || []).join("\n"));
      showSteps(r.steps || {});
    });
  }

  var CHARTS_EVERY = 10000, chartsAt = Date.now();
  function refreshCharts() {
    var q = body.dataset.queue, span = body.dataset.span;
    if (Date.now() - chartsAt < CHARTS_EVERY) return Promise.resolve();
    chartsAt = Date.now();
    return getJSON("/api/queues/" + enc(q) + "/charts?span=" + enc(span)).then(function (res) {
      Object.keys(res.data.svg || {}).forEach(function (name) {
        var el = document.querySelector('[data-chart="' + name + '"]');
        // Drawn by the server (templates.chart_fragments), every value escaped there.
        if (el) draw(el, res.data.svg[name]);
      });
    });
  }

  var refreshers = { overview: refreshOverview, jobs: refreshJobs, job: refreshJob, charts: refreshCharts };
  var busy = false;
  function refresh() {
    var fn = refreshers[page];
    if (!fn || busy || document.hidden) return;
    busy = true;
    fn().catch(function () {}).then(function () { busy = false; });
  }

  document.addEventListener("change", function (event) {
    var all = event.target;
    if (all.id !== "select-all") return;
    document.querySelectorAll('#jobs input[name="ids"]').forEach(function (box) {
      box.checked = all.checked;
    });
  });

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.classList || !(form.classList.contains("action") || form.classList.contains("bulk"))) return;
    event.preventDefault();
    // The attribute: a field named "action" (the bulk form's) shadows form.action.
    var target = form.getAttribute("action");
    if (form.dataset.confirm) {
      var failed = document.querySelector('[data-count="failed"]');
      var question = form.dataset.confirm.replace("{failed}", failed ? failed.textContent : "the");
      if (!window.confirm(question)) return;
    }
    var fields = new FormData(form);
    if (event.submitter && event.submitter.name) fields.append(event.submitter.name, event.submitter.value);
    if (form.classList.contains("bulk") && !fields.getAll("ids").length) {
      flash("Select jobs first.", true);
      return;
    }
    var buttons = form.querySelectorAll("button");
    buttons.forEach(function (b) { b.disabled = true; });
    fetch(target, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, Accept: "application/json",
                 "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams(fields).toString(),
    }).then(function (r) {
      return r.json().then(function (data) {
        if (!r.ok) throw new Error(data.error || ("HTTP " + r.status));
        flash(data.message);
        if (/\/(remove|pause|resume)$/.test(target) && page !== "overview") {
          window.location.href = target.replace(/\/jobs\/[^/]+\/remove$/, "").replace(/\/(pause|resume)$/, "");
          return;
        }
        if (form.classList.contains("bulk")) {
          document.querySelectorAll('input[name="ids"], #select-all').forEach(function (box) { box.checked = false; });
        }
        refresh();
      });
    }).catch(function (err) { flash(err.message, true); })
      .then(function () { buttons.forEach(function (b) { b.disabled = false; }); });
  });

  if (page === "job") showActions(body.dataset.state);
  setInterval(refresh, INTERVAL);
})();
