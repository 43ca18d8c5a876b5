// gradpool's dashboard: a client of the pool's /v1 API, served by the pool.
//
// Pages (the URL's hash): #/ the pool at a glance (anyone), #/signin,
// #/jobs (a customer's jobs, balance and deposit address), #/jobs/ID (a
// job's live loss curve, segments, verdicts, rounds, money, its model),
// #/providers/ID (a provider's standing and telemetry), #/rig (a rig
// owner's own page, opened with the link `gradpool provider dashboard`
// prints: #/rig/TOKEN, a read-only view token a node proof opened).
//
// Every value from the pool goes into the page as text (textContent),
// never as markup. The API key lives in this tab's sessionStorage and
// travels only in the Authorization header.
"use strict";

(function () {
  const KEY = "gradpool.api_key";
  const VIEW = "gradpool.view_token";
  const PICONERO_PER_XMR = 1000000000000n;
  const FINAL = new Set(["succeeded", "unverified", "failed", "cancelled"]);

  // Errors of the page itself are shown, and kept for the browser tests:
  // a broken page fails them, not only a missing element.
  const errors = (window.gradpoolErrors = []);
  function fail(message) {
    errors.push(String(message));
    showAlert(String(message));
  }
  window.addEventListener("error", (e) => fail(e.message || "script error"));
  window.addEventListener("unhandledrejection", (e) =>
    fail((e.reason && e.reason.message) || String(e.reason)),
  );
  document.addEventListener("securitypolicyviolation", (e) =>
    fail(`blocked by the page's policy: ${e.violatedDirective} ${e.blockedURI || ""}`),
  );

  // ------------------------------------------------------------ DOM

  /** An element with attributes and children (strings become text). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function showAlert(text) {
    const a = document.getElementById("alert");
    a.textContent = text;
    a.hidden = false;
  }

  function clearAlert() {
    const a = document.getElementById("alert");
    a.textContent = "";
    a.hidden = true;
  }

  function cards(pairs) {
    return h(
      "dl",
      { class: "cards" },
      pairs
        .filter((p) => p)
        .map(([k, v, id]) => h("div", { class: "card", "data-field": id || null }, h("dt", {}, k), h("dd", {}, v))),
    );
  }

  /** A table with a caption, header cells and rows of cells. */
  function table(caption, head, rows, attrs) {
    return h(
      "div",
      { class: "scroll" },
      h(
        "table",
        attrs || {},
        h("caption", {}, caption),
        h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col", class: /^(#|count|loss|held-out|cost|price|steps)/i.test(c) ? "num" : null }, c)))),
        h(
          "tbody",
          {},
          rows.length
            ? rows.map((r) => h("tr", {}, r.map((c) => (c instanceof Node && c.tagName === "TD" ? c : h("td", {}, c)))))
            : h("tr", {}, h("td", { colspan: head.length, class: "muted" }, "none yet")),
        ),
      ),
    );
  }

  function num(v) {
    return h("td", { class: "num" }, v);
  }

  function status(s) {
    return h("span", { class: `status status-${s}` }, s);
  }

  function xmr(piconero) {
    if (piconero === null || piconero === undefined) return "—";
    const p = BigInt(piconero);
    const whole = p / PICONERO_PER_XMR;
    const frac = (p % PICONERO_PER_XMR).toString().padStart(12, "0").replace(/0+$/, "");
    return `${whole}${frac ? "." + frac : ""} XMR`;
  }

  function loss(v) {
    return v === null || v === undefined ? "—" : Number(v).toFixed(4);
  }

  function when(t) {
    if (!t) return "—";
    const d = new Date(t);
    return isNaN(d) ? t : d.toLocaleString();
  }

  function providerLink(id) {
    return id ? h("a", { href: `#/providers/${encodeURIComponent(id)}`, class: "mono" }, id) : "—";
  }

  // ------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(status, code, message) {
      super(`${code}: ${message}`);
      this.status = status;
      this.code = code;
    }
  }

  function key() {
    return sessionStorage.getItem(KEY);
  }

  async function call(path, opts) {
    opts = opts || {};
    const headers = Object.assign({}, opts.headers || {});
    const secret = opts.token || (opts.anonymous === true ? null : key());
    if (secret) headers["Authorization"] = `Bearer ${secret}`;
    let r;
    try {
      r = await fetch(path, { method: opts.method || "GET", headers, body: opts.body, signal: opts.signal });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, "unreachable", `the pool did not answer (${e.message})`);
    }
    if (!r.ok) {
      let body = null;
      try {
        body = await r.json();
      } catch (_) {
        body = null;
      }
      const err = new ApiError(r.status, (body && body.code) || `http_${r.status}`, (body && body.message) || r.statusText);
      if (r.status === 401 && opts.token) {
        sessionStorage.removeItem(VIEW);
        signedIn();
      } else if (r.status === 401 && key() && opts.anonymous !== true) {
        sessionStorage.removeItem(KEY);
        signedIn();
      }
      throw err;
    }
    return opts.response ? r : r.json();
  }

  /** Follows a job's server-sent events (read with fetch: the key stays
   * in a header) until the stream ends; calls onEvent for each. */
  async function follow(jobId, after, onEvent, signal) {
    const r = await call(`/v1/jobs/${encodeURIComponent(jobId)}/events?after=${after}`, { response: true, signal });
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const data = block
          .split("\n")
          .filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).replace(/^ /, ""))
          .join("\n");
        if (data) onEvent(JSON.parse(data));
      }
    }
  }

  // ------------------------------------------------------------ pages

  const main = () => document.getElementById("main");
  let page = { stop() {} };

  function render(title, ...content) {
    const m = main();
    m.replaceChildren(h("h1", {}, title), ...content);
    document.title = `${title} · gradpool`;
  }

  async function overviewPage(signal) {
    const o = await call("/v1/overview", { anonymous: true, signal });
    const p = o.pool;
    const running = (o.jobs && o.jobs.running) || 0;
    render(
      "The pool",
      cards([
        ["Providers connected", p.providers_connected, "providers-connected"],
        ["Jobs running", running, "jobs-running"],
        ["Jobs open", p.jobs_open],
        ["Median provider price", p.median_provider_price_per_hour !== undefined ? `${xmr(p.median_provider_price_per_hour)}/h` : "—"],
        ["Median job price cap", p.median_job_price_per_hour !== undefined ? `${xmr(p.median_job_price_per_hour)}/h` : "—"],
        ["Fees", `pool ${p.pool_fee_bps / 100}%, validators ${p.validator_fee_bps / 100}%`],
        ["Money", p.backend === "dev" ? "dev (no Monero)" : `Monero ${p.network}`],
        ["Version", p.version],
      ]),
      h("h2", {}, "Providers"),
      table("Providers by status", ["Status", "Count"], Object.entries(o.providers).map(([s, n]) => [status(s), num(n)]), { id: "providers-by-status" }),
      table("Connected providers by device", ["Device", "Count"], Object.entries(o.devices).map(([d, n]) => [d, num(n)])),
      h("h2", {}, "Jobs"),
      table("Jobs by state", ["State", "Count"], Object.entries(o.jobs).map(([s, n]) => [status(s), num(n)])),
      h("h2", {}, "Recent verdicts"),
      table(
        "The latest decided audits: whose segment, why it was audited, what was found",
        ["Provider", "Reason", "Outcome", "At fault", "Decided"],
        o.recent_verdicts.map((v) => [providerLink(v.provider), v.reason, status(v.outcome), v.at_fault ? providerLink(v.at_fault) : "nobody", when(v.decided_at)]),
        { id: "recent-verdicts" },
      ),
    );
  }

  function signinPage() {
    const input = h("input", { id: "api-key", type: "password", name: "api_key", autocomplete: "off", required: true, placeholder: "gp_…", "aria-describedby": "key-help" });
    const form = h(
      "form",
      { class: "signin", id: "signin" },
      h("label", { for: "api-key" }, "Your API key"),
      input,
      h("p", { id: "key-help", class: "muted" }, "As gradpool account create printed it (also in ~/.gradpool/credentials.toml). It stays in this tab and is sent only to this pool."),
      h("button", { type: "submit", class: "primary" }, "Sign in"),
    );
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      clearAlert();
      const k = input.value.trim();
      try {
        const r = await fetch("/v1/account", { headers: { Authorization: `Bearer ${k}` } });
        if (!r.ok) {
          const body = await r.json().catch(() => ({}));
          showAlert(r.status === 401 ? "That API key is not one this pool knows." : `${body.code || r.status}: ${body.message || r.statusText}`);
          return;
        }
        sessionStorage.setItem(KEY, k);
        signedIn();
        location.hash = "#/jobs";
      } catch (err) {
        showAlert(`The pool did not answer: ${err.message}`);
      }
    });
    render("Sign in", form);
    input.focus();
  }

  async function jobsPage(signal) {
    if (!requireKey()) return;
    const draw = async () => {
      const [account, balance, jobs] = await Promise.all([
        call("/v1/account", { signal }),
        call("/v1/account/balance", { signal }),
        call("/v1/jobs", { signal }),
      ]);
      let deposit;
      if (balance.backend === "monero") {
        const d = await call("/v1/account/deposit", { signal });
        deposit = h("span", { class: "mono" }, `${d.address} (credited after ${d.confirmations} confirmations)`);
      } else {
        deposit = "a dev pool: no Monero (gradpool account faucet)";
      }
      render(
        `Jobs of ${account.name}`,
        cards([
          ["Available", xmr(balance.available), "available"],
          ["In escrow", xmr(balance.escrowed), "escrowed"],
          ["Withdrawing", xmr(balance.withdrawing)],
          ["Deposit address", deposit, "deposit"],
        ]),
        h("h2", {}, "Jobs"),
        table(
          "Your jobs, newest first",
          ["Job", "State", "Steps", "Loss", "Held-out", "Cost so far", "Providers", "Submitted"],
          jobs.map((j) => [
            h("a", { href: `#/jobs/${encodeURIComponent(j.id)}` }, j.name),
            status(j.status),
            num(`${j.step}/${j.steps}`),
            num(loss(j.last_loss)),
            num(loss(j.eval_loss)),
            num(`${xmr(j.spent)} of ${xmr(j.budget)}`),
            num(j.providers),
            when(j.created_at),
          ]),
          { id: "jobs" },
        ),
      );
      return jobs.some((j) => !FINAL.has(j.status));
    };
    let live = await draw();
    while (live && !signal.aborted) {
      await sleep(5000, signal);
      if (signal.aborted) return;
      live = await draw();
    }
  }

  /** A job's page: its chart and tables, kept live by its events. */
  async function jobPage(id, signal) {
    if (!requireKey()) return;
    const path = `/v1/jobs/${encodeURIComponent(id)}`;
    const state = { job: await call(path, { signal }), segments: [], verdicts: [], rounds: [], live: new Map(), events: [], refunded: null, last: 0 };
    const chart = lossChart();
    const parts = {
      summary: h("div", {}),
      segments: h("div", {}),
      verdicts: h("div", {}),
      rounds: h("div", {}),
      activity: h("ol", { id: "activity", class: "muted", reversed: true }),
    };
    const download = h("button", { type: "button", class: "primary", id: "download" }, "Download the model");
    download.addEventListener("click", () => downloadModel(state.job));
    render(
      state.job.name,
      parts.summary,
      h("h2", {}, "Loss"),
      chart.figure,
      h("p", {}, download, " ", h("span", { class: "muted", id: "download-note" })),
      h("h2", {}, "Segments"),
      parts.segments,
      h("h2", {}, "Audits and verdicts"),
      parts.verdicts,
      parts.rounds,
      h("h2", {}, "Activity"),
      parts.activity,
    );

    const refresh = async () => {
      const [job, segments, verdicts] = await Promise.all([
        call(path, { signal }),
        call(`${path}/segments`, { signal }),
        call(`${path}/verdicts`, { signal }),
      ]);
      Object.assign(state, { job, segments, verdicts });
      if (job.parallel) state.rounds = await call(`${path}/rounds`, { signal });
      // What a committed segment says replaces what was seen live.
      const done = segments.length ? segments[segments.length - 1].end_step : 0;
      for (const s of state.live.keys()) if (s <= done) state.live.delete(s);
      draw();
    };

    const draw = () => {
      const j = state.job;
      parts.summary.replaceChildren(
        cards([
          ["State", status(j.status), "status"],
          ["Step", `${j.step} of ${j.steps}`, "step"],
          ["Segments", `${j.segments_done} of ${j.segments_total}`],
          ["Loss", loss(j.last_loss)],
          ["Held-out loss", loss(j.eval_loss)],
          ["Cost so far", xmr(j.spent), "spent"],
          ["Budget", xmr(j.budget)],
          ["In escrow", xmr(j.escrow), "escrow"],
          state.refunded !== null ? ["Refunded", xmr(state.refunded), "refunded"] : null,
          ["Training on", j.provider ? providerLink(j.provider) : "—"],
          ["Providers", j.providers],
          j.waiting ? ["Waiting", j.waiting] : null,
          j.error ? ["Error", j.error] : null,
        ]),
      );
      chart.update(state);
      const confidential = /^\s*\[privacy\]/m.test(j.spec_toml || "");
      download.disabled = !j.checkpoint_sha256 || confidential;
      document.getElementById("download-note").textContent = confidential
        ? "A confidential job's model is sealed to your key: gradpool job fetch opens it."
        : j.checkpoint_sha256
          ? `the checkpoint of step ${j.step}${FINAL.has(j.status) ? "" : " (training goes on)"}`
          : "no checkpoint yet";
      parts.segments.replaceChildren(
        table(
          "Who trained what: each committed segment, its provider and loss",
          ["#", "Steps", "Provider", "Loss", "Held-out", "Status", "Committed"],
          state.segments.map((s) => [
            num(s.segment),
            num(`${s.start_step}–${s.end_step}`),
            providerLink(s.provider),
            num(loss(s.loss_trace.length ? s.loss_trace[s.loss_trace.length - 1] : null)),
            num(loss(s.eval_loss)),
            status(s.status),
            when(s.committed_at),
          ]),
          { id: "segments" },
        ),
      );
      parts.verdicts.replaceChildren(
        table(
          "Audited segments: why, what the validators' replays found, and who was at fault",
          ["#", "Reason", "Outcome", "Replays matching", "At fault", "Opened", "Decided"],
          state.verdicts.map((v) => [
            num(v.segment),
            v.reason,
            status(v.outcome),
            num(`${v.replays.filter((r) => r.matches).length} of ${v.replays.length}`),
            v.at_fault ? providerLink(v.at_fault) : "nobody",
            when(v.opened_at),
            when(v.decided_at),
          ]),
          { id: "verdicts" },
        ),
      );
      parts.rounds.replaceChildren(
        ...(state.job.parallel
          ? [
              h("h2", {}, "DiLoCo rounds"),
              table(
                "Each round: its steps, its workers' providers, how long it waited for the slowest",
                ["Round", "Steps", "Workers", "Wait"],
                state.rounds.map((r) => [num(r.round), num(`${r.start_step}–${r.end_step}`), r.workers.map((w) => w.provider).join(", "), num(`${Number(r.wait_seconds).toFixed(1)} s`)]),
                { id: "rounds" },
              ),
            ]
          : []),
      );
    };

    const onEvent = (ev) => {
      state.last = ev.id;
      if (ev.type === "progress") {
        state.live.set(ev.step, ev.loss);
        chart.update(state);
        return;
      }
      if (ev.type === "settled") state.refunded = ev.refunded;
      const line = describe(ev);
      if (line) {
        parts.activity.prepend(h("li", {}, `${when(ev.at)} — ${line}`));
        while (parts.activity.children.length > 30) parts.activity.lastChild.remove();
      }
      if (["checkpoint", "status", "verdict", "outer_step", "rolled_back", "settled", "payment"].includes(ev.type)) {
        refresh().catch(report);
      }
    };

    await refresh();
    // Live until the job ends; a dropped stream is taken up where it left off.
    while (!signal.aborted) {
      try {
        await follow(id, state.last, onEvent, signal);
      } catch (e) {
        if (signal.aborted || e.name === "AbortError") return;
        throw e;
      }
      if (signal.aborted) return;
      await refresh();
      if (FINAL.has(state.job.status)) {
        // Whatever came after the final status (the settlement).
        await follow(id, state.last, onEvent, signal).catch(() => {});
        return;
      }
      await sleep(1000, signal);
    }
  }

  function describe(ev) {
    switch (ev.type) {
      case "status": return `job ${ev.status}${ev.reason ? ": " + ev.reason : ""}`;
      case "assigned": return `segment ${ev.segment} (steps ${ev.start_step}–${ev.end_step}) to ${ev.provider}`;
      case "checkpoint": return `checkpoint ${ev.segment} at step ${ev.step}: loss ${loss(ev.loss)}${ev.eval_loss !== undefined ? ", held-out " + loss(ev.eval_loss) : ""}`;
      case "payment": return `segment ${ev.segment} paid: ${xmr(ev.price)} (${ev.kind || "train"}); cost so far ${xmr(ev.spent)}`;
      case "audit": return `segment ${ev.segment} of ${ev.provider} drawn for an audit (${ev.reason})`;
      case "verdict": return `segment ${ev.segment}: ${ev.outcome}`;
      case "lease_expired": return `${ev.provider} went quiet; segment ${ev.segment} back in the queue`;
      case "released": return `${ev.provider} paused (${ev.reason}); segment ${ev.segment} back in the queue`;
      case "task_failed": return `segment ${ev.segment} failed on ${ev.provider}: ${ev.reason}`;
      case "outer_step": return `round ${ev.round} closed at step ${ev.step}: loss ${loss(ev.loss)}`;
      case "rolled_back": return `${ev.provider} caught cheating: back to step ${ev.step}`;
      case "settled": return `settled: ${xmr(ev.refunded)} refunded, ${xmr(ev.released)} released to providers`;
      default: return ev.type;
    }
  }

  /** The loss chart (uPlot) and a text summary of it for screen readers. */
  function lossChart() {
    const box = h("div", { class: "chart", id: "loss-chart", role: "img", "aria-label": "Loss by step: no points yet", "data-points": "0" });
    const summary = h("p", { class: "muted", id: "loss-summary" }, "No loss reported yet.");
    const figure = h("figure", {}, box, h("figcaption", {}, summary));
    let plot = null;
    const size = () => ({ width: Math.max(box.clientWidth - 8, 240), height: window.innerWidth < 640 ? 220 : 300 });
    const make = (data) => {
      plot = new uPlot(
        Object.assign(size(), {
          scales: { x: { time: false } },
          series: [
            { label: "step" },
            { label: "training loss", stroke: "#0969da", width: 1.5 },
            { label: "held-out loss", stroke: "#bc4c00", width: 2, spanGaps: true, points: { show: true, size: 6 } },
          ],
          axes: [{ label: "step" }, { label: "loss" }],
        }),
        data,
        box,
      );
    };
    new ResizeObserver(() => plot && plot.setSize(size())).observe(box);
    return {
      figure,
      update(state) {
        const points = new Map();
        const held = new Map();
        for (const s of state.segments) {
          s.loss_trace.forEach((l, i) => points.set(s.start_step + i + 1, l));
          if (s.eval_loss !== null && s.eval_loss !== undefined) held.set(s.end_step, s.eval_loss);
        }
        for (const [step, l] of state.live) if (!points.has(step)) points.set(step, l);
        const steps = [...new Set([...points.keys(), ...held.keys()])].sort((a, b) => a - b);
        const data = [steps, steps.map((s) => (points.has(s) ? points.get(s) : null)), steps.map((s) => (held.has(s) ? held.get(s) : null))];
        box.dataset.points = String(points.size);
        box.dataset.committed = String(state.segments.length);
        if (points.size) {
          const last = steps.filter((s) => points.has(s)).pop();
          const text = `Loss by step: ${points.size} points, last ${loss(points.get(last))} at step ${last}` + (held.size ? `; ${held.size} held-out points` : "");
          box.setAttribute("aria-label", text);
          summary.textContent = text + ".";
        }
        if (!plot) make(data);
        else plot.setData(data);
      },
    };
  }

  async function downloadModel(job) {
    clearAlert();
    const note = document.getElementById("download-note");
    note.textContent = "downloading…";
    const r = await call(`/v1/jobs/${encodeURIComponent(job.id)}/model`, { response: true }).catch((e) => {
      note.textContent = "";
      showAlert(`The model could not be downloaded: ${e.message}`);
      return null;
    });
    if (!r) return;
    const blob = await r.blob();
    const url = URL.createObjectURL(blob);
    const a = h("a", { href: url, download: `${job.name.replace(/[^A-Za-z0-9._-]+/g, "_")}-model.safetensors` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    note.textContent = `downloaded (${blob.size} bytes)`;
    note.dataset.downloaded = String(blob.size);
  }

  async function providerPage(id, signal) {
    const path = `/v1/providers/${encodeURIComponent(id)}`;
    const draw = async () => {
      let p, history;
      try {
        [p, history] = await Promise.all([call(path, { signal }), call(`${path}/telemetry`, { signal })]);
      } catch (e) {
        if (e instanceof ApiError && e.status === 401) {
          requireKey("This pool shows providers to its signed-in customers.");
          return false;
        }
        throw e;
      }
      const hw = p.hardware || {};
      render(
        p.name,
        cards([
          ["Status", status(p.status), "status"],
          p.paused_reason ? ["Paused because", p.paused_reason] : null,
          p.held ? ["Held", p.held] : null,
          ["Device", [hw.name, hw.device].filter(Boolean).join(", ") || "—"],
          ["Class", p.class],
          ["Price", `${xmr(p.price_per_hour)}/h`],
          ["Reputation", `${(p.reputation * 100).toFixed(0)}% (${p.streak} audits passed, ${p.faults} faults)`, "reputation"],
          ["Audit probability", `${(p.audit_probability * 100).toFixed(0)}%`],
          ["Segments committed", p.segments_committed, "segments"],
          ["Hardware proof", p.proven_gflops ? `${p.proven_gflops.toFixed(1)} GFLOP/s` : "—"],
          ["Transfer rate", p.transfer_rate ? `${(p.transfer_rate / 1e6).toFixed(1)} MB/s` : "—"],
          ["Work", [p.train ? "trains" : null, p.validate ? "validates" : null, p.containers ? "containers" : null].filter(Boolean).join(", ")],
          p.tier ? ["Tier", `${p.tier.tier} until ${when(p.tier.expires_at)}`] : null,
          ["Last seen", when(p.last_seen)],
          ["Id", h("span", { class: "mono" }, p.id)],
        ]),
        h("h2", {}, "Telemetry"),
        h("p", { class: "muted" }, "The last hour, a sample a minute, and its last heartbeat."),
        telemetryCharts(samplesOf(history, p)),
      );
      return true;
    };
    while (!signal.aborted && (await draw())) {
      await sleep(5000, signal);
    }
  }

  /** The pool's samples, then the provider's last reading. */
  function samplesOf(history, provider) {
    const out = history.map((s) => [Date.parse(s.at) / 1000, s.telemetry]);
    if (provider.telemetry) out.push([Date.parse(provider.last_seen) / 1000, provider.telemetry]);
    return out.sort((a, b) => a[0] - b[0]);
  }

  const TELEMETRY = [
    ["temperature_c", "Temperature", "°C"],
    ["power_w", "Power", "W"],
    ["utilization_pct", "Utilization", "%"],
    ["load", "Load", ""],
    ["memory_used_bytes", "Memory used", "MB", 1e-6],
  ];

  function telemetryCharts(samples) {
    const out = h("dl", { class: "cards", id: "telemetry" });
    for (const [field, label, unit, scale] of TELEMETRY) {
      const values = samples.map(([, t]) => (t[field] === undefined || t[field] === null ? null : Number(t[field]) * (scale || 1)));
      const last = values[values.length - 1];
      if (values.every((v) => v === null)) continue;
      const box = h("div", { class: "spark", role: "img", "data-samples": String(values.filter((v) => v !== null).length), "aria-label": `${label}: ${last === null ? "unknown" : last.toFixed(1) + " " + unit}, ${values.length} readings` });
      out.append(h("div", { class: "card" }, h("dt", {}, label), h("dd", {}, last === null ? "—" : `${last.toFixed(1)} ${unit}`), box));
      new uPlot(
        {
          width: 160, height: 48, legend: { show: false }, cursor: { show: false },
          scales: { x: { time: false } }, axes: [{ show: false }, { show: false }],
          series: [{}, { stroke: "#0969da", width: 1.5, spanGaps: true }],
        },
        [samples.map(([t]) => t), values],
        box,
      );
    }
    if (!out.children.length) out.append(h("p", { class: "muted" }, "No telemetry reported."));
    return out;
  }

  /** A rig owner's own page, read with its view token. */
  async function rigPage(token, signal) {
    if (token) {
      // From the link: kept in this tab, taken out of the address bar.
      sessionStorage.setItem(VIEW, token);
      history.replaceState(null, "", "#/rig");
      signedIn();
    }
    const view = sessionStorage.getItem(VIEW);
    if (!view) {
      render(
        "Your rig",
        h("p", {}, "Open your rig's page with the link this command prints on the rig:"),
        h("pre", {}, h("code", {}, "gradpool provider dashboard --pool POOL --data-dir DATA_DIR")),
        h("p", { class: "muted" }, "It proves the rig holds its node key; the link shows this page for 12 hours and changes nothing."),
      );
      return;
    }
    while (!signal.aborted) {
      const r = await call("/v1/providers/me", { token: view, signal });
      const p = r.provider;
      const e = r.earnings;
      render(
        p.name,
        cards([
          ["Status", status(p.status), "status"],
          p.paused_reason ? ["Paused because", p.paused_reason] : null,
          p.held ? ["Held", p.held] : null,
          ["Earned, pending", xmr(e.pending), "pending"],
          ["Available", xmr(e.available), "available"],
          ["Paid out", xmr(e.paid), "paid"],
          ["Stake", xmr(e.stake) + (e.unstake_at ? ` (back on ${when(e.unstake_at)})` : "")],
          ["Price", `${xmr(p.price_per_hour)}/h`],
          ["Reputation", `${(p.reputation * 100).toFixed(0)}% (${p.streak} audits passed, ${p.faults} faults)`, "reputation"],
          ["Segments committed", p.segments_committed, "segments"],
          ["Hardware proof", p.proven_gflops ? `${p.proven_gflops.toFixed(1)} GFLOP/s` : "—"],
          ["Id", h("span", { class: "mono" }, p.id)],
        ]),
        h("h2", {}, "Telemetry"),
        h("p", { class: "muted" }, "The last hour, a sample a minute, and its last heartbeat."),
        telemetryCharts(samplesOf(r.telemetry, p)),
        h("h2", {}, "Status history"),
        table("Changes of standing, newest first", ["When", "Change", "Why"],
          r.history.map((c) => [when(c.at), status(c.status), c.reason || "—"]), { id: "history" }),
        h("h2", {}, "Payouts"),
        table("Where payouts go", ["Address", "Share"], e.payout.map((d) => [h("span", { class: "mono" }, d.address), num(d.share)])),
        table("Payouts, newest first", ["Created", "Status", "Amount", "Transaction"],
          e.payouts.map((o) => [when(o.created_at), status(o.status), num(xmr(o.amount)), o.txid ? h("span", { class: "mono" }, o.txid) : "—"]), { id: "payouts" }),
        h("h2", {}, "Hardware proofs"),
        table("Proofs of its speed, newest first", ["Issued", "Outcome", "Claimed", "Proven", "Took"],
          r.proofs.map((q) => [when(q.issued_at), status(q.outcome),
            num(q.claimed_gflops ? `${q.claimed_gflops.toFixed(1)} GFLOP/s` : "—"),
            num(q.proven_gflops ? `${q.proven_gflops.toFixed(1)} GFLOP/s` : "—"),
            num(q.elapsed_ms !== null && q.elapsed_ms !== undefined ? `${q.elapsed_ms} ms` : "—")]), { id: "proofs" }),
        h("h2", {}, "Audits"),
        table("Decided audits of segments it trained, newest first", ["Decided", "Reason", "Outcome", "At fault"],
          r.verdicts.map((v) => [when(v.decided_at), v.reason, status(v.outcome), v.at_fault ? providerLink(v.at_fault) : "nobody"]), { id: "audits" }),
      );
      await sleep(5000, signal);
    }
  }

  // ------------------------------------------------------------ routing

  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      if (signal) signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
    });
  }

  function signedIn() {
    document.body.classList.toggle("has-key", Boolean(key()));
    document.body.classList.toggle("has-view", Boolean(sessionStorage.getItem(VIEW)));
  }

  function requireKey(why) {
    if (key()) return true;
    render(
      "Sign in",
      h("p", {}, why || "Sign in with your API key to see your jobs."),
      h("p", {}, h("a", { href: "#/signin" }, "Sign in")),
    );
    return false;
  }

  function report(e) {
    if (e && e.name === "AbortError") return;
    if (e instanceof ApiError) {
      showAlert(e.status === 401 ? "Your API key was refused: sign in again." : e.message);
      if (e.status >= 500 || e.status === 0) errors.push(e.message);
      return;
    }
    fail(e && e.message ? e.message : String(e));
  }

  function route() {
    page.stop();
    clearAlert();
    const controller = new AbortController();
    page = { stop: () => controller.abort() };
    const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    const signal = controller.signal;
    let run;
    if (parts[0] === "signin") run = Promise.resolve(signinPage());
    else if (parts[0] === "jobs" && parts[1]) run = jobPage(parts[1], signal);
    else if (parts[0] === "jobs") run = jobsPage(signal);
    else if (parts[0] === "providers" && parts[1]) run = providerPage(parts[1], signal);
    else if (parts[0] === "rig") run = rigPage(parts[1], signal);
    else run = overviewPage(signal);
    run.catch(report);
    main().focus({ preventScroll: true });
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("signout").addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      sessionStorage.removeItem(VIEW);
      signedIn();
      location.hash = "#/";
    });
    signedIn();
    window.addEventListener("hashchange", route);
    route();
  });
})();
