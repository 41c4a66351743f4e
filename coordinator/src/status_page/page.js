
"use strict";
// The status page: asks /api/status, draws it, then long-polls it (?since=N: the
// answer comes when something changed, or after `wait` seconds). Every value is
// written with textContent: names and failure messages come from workers.
(function () {
  const main = document.getElementById("main");
  const conn = document.getElementById("conn");
  const meta = document.getElementById("meta");
  const params = new URLSearchParams(window.location.search);
  const wait = Math.max(1, Math.min(60, Number(params.get("wait")) || 20));
  let since = null;
  let updates = 0;
  const history = [];

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function pill(state) {
    const p = el("span", "pill", state.replace(/_/g, " "));
    p.dataset.state = state;
    return p;
  }

  function ago(s) {
    if (s === null || s === undefined) return "never";
    if (s < 1) return "now";
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    return Math.round(s / 3600) + " h ago";
  }

  function table(head, rows) {
    const t = el("table");
    const tr = el("tr");
    head.forEach(function (h) { tr.appendChild(el("th", null, h)); });
    const thead = el("thead");
    thead.appendChild(tr);
    t.appendChild(thead);
    const body = el("tbody");
    rows.forEach(function (r) { body.appendChild(r); });
    t.appendChild(body);
    return t;
  }

  function campaignCard(c) {
    const card = el("div", "card");
    card.dataset.campaign = c.campaign;
    card.dataset.state = c.state;
    card.dataset.total = c.total;
    card.dataset.done = c.done;
    card.dataset.failed = c.failed;
    const h = el("h3");
    h.appendChild(el("span", null, "Campaign " + c.campaign));
    h.appendChild(el("span", "muted", c.study_name || "unnamed study"));
    h.appendChild(pill(c.state));
    card.appendChild(h);
    const bar = el("div", "bar");
    const total = Math.max(1, c.total);
    [["done", c.done], ["failed", c.failed], ["running", c.running], ["cancelled", c.cancelled]].forEach(function (p) {
      if (p[1] > 0) {
        const s = el("span", p[0]);
        s.style.width = (100 * p[1] / total) + "%";
        s.title = p[1] + " " + p[0];
        bar.appendChild(s);
      }
    });
    card.appendChild(bar);
    const finished = c.done + c.failed;
    card.appendChild(el("div", "progress",
      finished + "/" + c.total + " finished: " + c.done + " done, " + c.failed + " failed, " +
      c.running + " running, " + c.pending + " pending" +
      (c.cancelled ? ", " + c.cancelled + " cancelled" : "") +
      (c.duplicates ? "; " + c.duplicates + " duplicate result(s), not counted" : "") +
      "; " + c.n_configs + " configuration(s), submitted " + c.submitted_at));
    if (c.flags === null) {
      card.appendChild(el("div", "muted", "quality flags: not counted (submitted before this coordinator counted them)"));
    } else {
      const names = Object.keys(c.flags);
      if (names.length === 0) {
        card.appendChild(el("div", "muted", "quality flags: none"));
      } else {
        card.appendChild(el("div", null, "quality flags (runs):"));
        const ul = el("ul", "flags");
        names.forEach(function (n) {
          const li = el("li", null, n + ": " + c.flags[n]);
          li.dataset.flag = n;
          li.dataset.count = c.flags[n];
          ul.appendChild(li);
        });
        card.appendChild(ul);
      }
    }
    if (c.blocked && c.blocked.length) {
      const ul = el("ul", "blocked");
      c.blocked.forEach(function (b) {
        ul.appendChild(el("li", null, "blocked: " + b.engine + (b.tp_size > 1 ? " (" + b.tp_size + " GPUs)" : "") + ", " + b.pending + " pending: " + b.reason));
      });
      card.appendChild(ul);
    }
    if (c.recent_failures && c.recent_failures.length) {
      card.appendChild(el("div", null, "failed runs:"));
      const ul = el("ul", "cfail");
      c.recent_failures.forEach(function (f) { ul.appendChild(el("li", "msg", f)); });
      card.appendChild(ul);
    }
    return card;
  }

  function order(a, b) {
    const live = function (c) { return c.state === "running" || c.state === "blocked" ? 0 : 1; };
    return live(a) - live(b) || b.campaign - a.campaign;
  }

  function drawCampaigns(s) {
    const box = document.getElementById("campaigns");
    box.replaceChildren();
    if (!s.campaigns.length) {
      box.appendChild(el("p", "muted", "no campaigns yet (lem-coord submit STUDY)"));
      return;
    }
    s.campaigns.slice().sort(order).forEach(function (c) { box.appendChild(campaignCard(c)); });
  }

  function drawWorkers(s) {
    const box = document.getElementById("workers");
    box.replaceChildren();
    if (!s.workers.length) {
      box.appendChild(el("p", "muted", "no worker has registered"));
      return;
    }
    const rows = s.workers.map(function (w) {
      const tr = el("tr");
      tr.dataset.worker = w.worker;
      tr.dataset.connected = w.connected;
      if (w.power_w !== null && w.power_w !== undefined) tr.dataset.powerW = w.power_w.toFixed(1);
      tr.appendChild(el("td", null, w.worker));
      tr.appendChild(el("td", null, w.host));
      const st = el("td");
      st.appendChild(pill(w.connected ? "connected" : "disconnected"));
      tr.appendChild(st);
      tr.appendChild(el("td", null, ago(w.last_seen_s_ago)));
      tr.appendChild(el("td", "num", w.leases_held));
      tr.appendChild(el("td", "num", w.runs_done));
      const live = w.connected && w.power_w !== null && w.power_w !== undefined;
      tr.appendChild(el("td", "num", live ? w.power_w.toFixed(1) + " W" : "-"));
      tr.appendChild(el("td", null, live ? w.gpus.map(function (g) {
        return "GPU " + g.gpu + ": " + g.power_w.toFixed(1) + " W, " + g.temp_c.toFixed(0) + " °C, " + g.sm_clock_mhz + " MHz";
      }).join("; ") + " (" + ago(w.telemetry_age_s) + ")" : "-"));
      tr.appendChild(el("td", null, w.slots + " slot(s), " + w.runtime));
      return tr;
    });
    box.appendChild(table(["worker", "host", "state", "last seen", "leases", "runs done", "power", "GPUs", "slots"], rows));
  }

  function drawFailures(s) {
    const box = document.getElementById("failures");
    box.replaceChildren();
    if (!s.recent_failures.length) {
      box.appendChild(el("p", "muted", "none since the coordinator started"));
      return;
    }
    const rows = s.recent_failures.map(function (f) {
      const tr = el("tr");
      tr.dataset.run = f.run;
      [f.at, f.run, f.worker, f.outcome.replace(/_/g, " "), f.class].forEach(function (v) { tr.appendChild(el("td", null, v)); });
      tr.appendChild(el("td", "msg", f.message));
      return tr;
    });
    box.appendChild(table(["when", "run", "worker", "outcome", "class", "reason"], rows));
  }

  function draw(s) {
    drawCampaigns(s);
    drawWorkers(s);
    drawFailures(s);
    updates += 1;
    main.dataset.updates = updates;
    // Runs finished across campaigns, each new value once: how the page saw
    // progress move without a reload.
    const finished = s.campaigns.reduce(function (n, c) { return n + c.done + c.failed; }, 0);
    if (history[history.length - 1] !== finished) {
      history.push(finished);
      main.dataset.history = history.join(" ");
    }
    conn.textContent = "live";
    conn.dataset.state = "live";
    meta.textContent = "updated " + s.generated_at + " · lease TTL " + s.lease_ttl_s + " s";
  }

  function poll() {
    const url = since === null ? "/api/status" : "/api/status?since=" + since + "&wait=" + wait;
    fetch(url, { cache: "no-store" })
      .then(function (r) {
        if (!r.ok) return r.text().then(function (t) { throw new Error(r.status + " " + t); });
        return r.json();
      })
      .then(function (s) {
        since = s.changes;
        draw(s);
        setTimeout(poll, 1000);
      })
      .catch(function (e) {
        conn.textContent = "not answering";
        conn.dataset.state = "down";
        meta.textContent = String(e.message || e) + " (retrying)";
        setTimeout(poll, 3000);
      });
  }

  poll();
})();
