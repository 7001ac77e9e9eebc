// The SkillScale console: four views over the gateway's /v1 API.
// No framework and no build step: the DOM is built with textContent and
// createElement, and the only HTML strings come from markdown.js (which
// escapes everything first).
"use strict";

(function () {
  const md = window.SkillMarkdown;
  const HISTORY = 60; // seconds of time series kept per topic
  const state = {
    topics: [], skills: [], stats: null, view: "dashboard",
    series: {}, // topic -> {done: [60], errors: [60], queue: [60], inflight: [60]}
    second: Math.floor(Date.now() / 1000),
    live: false, selectedTrace: null, selectedSkill: null,
  };

  // -- helpers -------------------------------------------------------------

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of [].concat(children || [])) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
  function $(id) { return document.getElementById(id); }
  function fmtMs(v) { return v === null || v === undefined ? "–" : (v < 10 ? v.toFixed(2) : v.toFixed(1)); }
  function fmtNum(v) { return v === null || v === undefined ? "–" : String(v); }
  function short(topic) { return topic.replace(/^TOPIC_/, "").toLowerCase().replace(/_/g, "-"); }
  function ago(ts) {
    const s = Math.max(0, Date.now() / 1000 - ts);
    if (s < 60) return Math.round(s) + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    return new Date(ts * 1000).toLocaleTimeString();
  }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    const token = sessionStorage.getItem("skillscale-token");
    if (token) h.Authorization = "Bearer " + token;
    return h;
  }
  async function api(path, options) {
    const opts = Object.assign({}, options || {});
    opts.headers = headers(opts.headers);
    const response = await fetch(path, opts);
    if (response.status === 401) askToken();
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    return { status: response.status, ok: response.ok, body: body, headers: response.headers };
  }
  function askToken() {
    $("token-btn").hidden = false;
    setLive(false, "token needed");
  }

  function setLive(on, text) {
    state.live = on;
    $("live-dot").className = "dot " + (on ? "on" : "off");
    $("live-text").textContent = text || (on ? "live" : "disconnected");
  }

  // -- views ---------------------------------------------------------------

  function show(view) {
    if (!["dashboard", "try", "traces", "skills"].includes(view)) view = "dashboard";
    state.view = view;
    for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== "view-" + view;
    for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("active", a.dataset.view === view);
    if (view === "traces") loadTraces();
    if (view === "skills") loadSkills();
  }

  // -- data ----------------------------------------------------------------

  function series(topic) {
    if (!state.series[topic]) {
      const zeros = () => new Array(HISTORY).fill(0);
      state.series[topic] = { done: zeros(), errors: zeros(), queue: zeros(), inflight: zeros() };
    }
    return state.series[topic];
  }
  function tick() {
    // One bucket per second; shift every series when the second changes.
    const now = Math.floor(Date.now() / 1000);
    const steps = Math.min(HISTORY, now - state.second);
    if (steps <= 0) return;
    state.second = now;
    for (const s of Object.values(state.series)) {
      for (const key of ["done", "errors", "queue", "inflight"]) {
        const last = s[key][HISTORY - 1];
        for (let i = 0; i < steps; i++) { s[key].shift(); s[key].push(key === "queue" || key === "inflight" ? last : 0); }
      }
    }
  }

  async function loadTopics() {
    const r = await api("/v1/topics");
    if (!r.ok || !r.body) return;
    state.topics = r.body.topics;
    for (const t of state.topics) series(t.topic);
    fillTopicSelect();
  }
  async function loadStats() {
    const r = await api("/v1/stats");
    if (!r.ok || !r.body) return;
    state.stats = r.body;
    tick();
    for (const t of r.body.topics) {
      if (t.topic.startsWith("_") || t.topic.endsWith("*")) continue;
      const s = series(t.topic);
      s.queue[HISTORY - 1] = t.queue_depth || 0;
      s.inflight[HISTORY - 1] = t.inflight || 0;
    }
  }

  function onEvent(kind, data) {
    tick();
    if (kind === "execution" && data.topic) {
      const s = series(data.topic);
      s.done[HISTORY - 1] += 1;
      if (data.outcome && data.outcome !== "success") s.errors[HISTORY - 1] += 1;
    } else if (kind === "skills_changed") {
      state.skills = [];
      loadTopics();
      if (state.view === "skills") loadSkills();
    } else if (kind === "request" && state.view === "traces") {
      loadTraces();
    }
  }

  // The event stream over fetch (not EventSource) so a bearer token can go
  // in a header; reconnects with backoff.
  async function streamEvents() {
    let delay = 500;
    for (;;) {
      try {
        const response = await fetch("/v1/events", { headers: headers({ Accept: "text/event-stream" }) });
        if (response.status === 401) { askToken(); return; }
        if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
        setLive(true);
        delay = 500;
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
            let kind = "message";
            const data = [];
            for (const line of block.split(/\r?\n/)) {
              if (line.startsWith("event:")) kind = line.slice(6).trim();
              else if (line.startsWith("data:")) data.push(line.slice(5).trim());
            }
            if (!data.length) continue;
            try { onEvent(kind, JSON.parse(data.join("\n"))); } catch (e) { /* not JSON: ignore */ }
          }
        }
      } catch (e) { /* the gateway went away: retry below */ }
      setLive(false, "reconnecting…");
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 8000);
    }
  }

  // -- dashboard -------------------------------------------------------------

  // A canvas drawn at the screen's pixel density, in CSS pixels (the given size
  // when the layout has none yet).
  function sharpCanvas(canvas, width, height) {
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || width, h = canvas.clientHeight || height;
    canvas.width = w * ratio; canvas.height = h * ratio;
    const ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    return { ctx, w, h };
  }

  function plot(canvas, lines, max) {
    const { ctx, w, h } = sharpCanvas(canvas, 260, 56);
    ctx.clearRect(0, 0, w, h);
    ctx.strokeStyle = "#e4e7ec"; ctx.lineWidth = 1;
    ctx.beginPath(); ctx.moveTo(0, h - 0.5); ctx.lineTo(w, h - 0.5); ctx.stroke();
    const top = Math.max(max, 1);
    for (const line of lines) {
      ctx.strokeStyle = line.color; ctx.lineWidth = 1.6;
      ctx.beginPath();
      line.values.forEach(function (v, i) {
        const x = (i / (HISTORY - 1)) * (w - 2) + 1;
        const y = h - 3 - (v / top) * (h - 8);
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
    }
  }

  function statBox(label, value, hint) {
    return el("div", { class: "stat", title: hint || null }, [el("span", { class: "v", text: value }), el("span", { class: "l", text: label })]);
  }

  function replicaTable(replicas) {
    if (!replicas.length) return el("p", { class: "small muted replicas-none", text: "No replica state from the proxy." });
    const table = el("table", { class: "replicas" }, [el("tr", {}, [
      el("th", { text: "replica" }), el("th", { text: "state" }), el("th", { text: "slots in use" }), el("th", { class: "num", text: "seen" }),
    ])]);
    for (const r of replicas) {
      const used = Math.min(r.inflight, r.slots);
      const meter = el("span", { class: "slots", title: r.inflight + " in flight (proxy), " + r.busy + " busy (replica), " + r.slots + " slots" });
      for (let i = 0; i < Math.min(r.slots, 16); i++) meter.append(el("span", { class: "slot" + (i < used ? " used" : "") }));
      table.append(el("tr", { "data-replica": r.server_id, "data-state": r.state }, [
        el("td", {}, [el("code", { class: "small", text: r.server_id })]),
        el("td", {}, [el("span", { class: "pill small " + REPLICA_PILL[r.state], text: r.state })]),
        el("td", {}, [meter, el("span", { class: "small muted", text: " " + r.inflight + " / " + r.slots })]),
        el("td", { class: "num small muted", text: r.last_seen_s < 1 ? "now" : Math.round(r.last_seen_s) + " s" }),
      ]));
    }
    return table;
  }
  const REPLICA_PILL = { up: "up", draining: "warn", joining: "idle", unreachable: "down" };

  function renderDashboard() {
    const cards = clear($("topic-cards"));
    const byTopic = {};
    for (const t of (state.stats && state.stats.topics) || []) byTopic[t.topic] = t;
    const replicasOf = {};
    for (const r of (state.stats && state.stats.replicas) || []) {
      for (const topic of r.topics) (replicasOf[topic] = replicasOf[topic] || []).push(r);
    }
    if (!state.topics.length) cards.append(el("p", { class: "muted", text: "No topics yet: is a skill server running?" }));
    for (const t of state.topics) {
      const s = series(t.topic);
      const recent = s.done.slice(-10).reduce((a, b) => a + b, 0) / 10;
      const errors = s.errors.reduce((a, b) => a + b, 0);
      const figures = byTopic[t.topic] || {};
      const replicas = replicasOf[t.topic] || [];
      const draining = replicas.filter((r) => r.state === "draining").length;
      // The proxy's figures (refreshed every 2 s) over the topic list's (every 10 s).
      const replicaCount = figures.replicas !== undefined && figures.replicas !== null ? figures.replicas : t.replicas;
      const slots = figures.slots === null || figures.slots === undefined ? null : figures.slots;
      const up = replicaCount === null ? (t.live ? "serving" : "no answer")
        : replicaCount + (replicaCount === 1 ? " replica" : " replicas") + (draining ? " · " + draining + " draining" : "") +
          (slots === null ? "" : " · " + slots + (slots === 1 ? " slot" : " slots"));
      const health = replicaCount === 0 || !t.live ? "down" : draining ? "warn" : "up";
      const queued = figures.queue_depth !== undefined ? figures.queue_depth : t.queue_depth;
      const inflight = figures.inflight !== undefined ? figures.inflight : t.inflight;
      const canvas = el("canvas", { class: "spark", "aria-label": "requests per second, last minute" });
      const card = el("article", { class: "card topic", "data-topic": t.topic }, [
        el("header", {}, [
          el("div", {}, [el("h3", { text: short(t.topic) }), el("code", { class: "muted small", text: t.topic })]),
          el("span", { class: "pill " + health, text: up, title: "slots: requests the replicas taking work run at once (a draining replica's are not counted)" }),
        ]),
        el("div", { class: "stats" }, [
          statBox("req/s", recent.toFixed(1), "completed requests per second, last 10 s (from the event stream)"),
          statBox("queued", fmtNum(queued), "waiting for a free replica slot (proxy)"),
          statBox("in flight", fmtNum(inflight), "dispatched to a replica, not yet answered (proxy)"),
          statBox("errors", String(errors), "error outcomes in the last minute"),
        ]),
        canvas,
        el("div", { class: "legend small muted" }, [
          el("span", { class: "key done" }), "done/s ", el("span", { class: "key err" }), "errors/s ",
          el("span", { class: "key queue" }), "queued — last 60 s",
        ]),
        replicaTable(replicas),
        el("p", { class: "small muted skills-line", text: t.skills.length + (t.skills.length === 1 ? " skill: " : " skills: ") + t.skills.join(", ") }),
      ]);
      cards.append(card);
      const max = Math.max(...s.done, ...s.queue, 1);
      // Errors on top, but only when there were any: a red zero line reads as errors.
      const lines = [{ values: s.queue, color: "#c8a2ff" }, { values: s.done, color: "#2563eb" }];
      if (s.errors.some((v) => v > 0)) lines.push({ values: s.errors, color: "#dc2626" });
      requestAnimationFrame(() => plot(canvas, lines, max));
    }
    const st = state.stats;
    const proxy = clear($("proxy-card"));
    if (!st) return;
    $("proxy-line").textContent = st.available
      ? "Live from " + st.source + " and the gateway's event stream."
      : "Proxy metrics unavailable (" + (st.error || "no URL") + "); throughput still comes from the event stream.";
    if (st.available) {
      const codes = Object.entries(st.error_replies || {}).map(([k, v]) => k + " " + v).join(", ") || "none";
      proxy.append(el("div", { class: "stats" }, [
        statBox("subscriptions", fmtNum(st.subscriptions)),
        statBox("redelivered", fmtNum(st.redelivered), "requests re-dispatched after a replica was lost"),
        statBox("duplicates dropped", fmtNum(st.duplicates_dropped)),
        statBox("proxy error replies", codes),
      ]));
    } else {
      proxy.append(el("p", { class: "muted", text: "No proxy metrics." }));
    }
  }

  // -- try ---------------------------------------------------------------------

  function fillTopicSelect() {
    const select = $("try-topic");
    const current = select.value;
    clear(select);
    select.append(el("option", { value: "", text: "any topic (routed)" }));
    for (const t of state.topics) select.append(el("option", { value: t.topic, text: short(t.topic) + "  (" + t.topic + ")" }));
    select.value = current || (state.topics[0] && state.topics[0].topic) || "";
    fillSkillSelect();
  }
  function fillSkillSelect() {
    const topic = $("try-topic").value;
    const t = state.topics.find((x) => x.topic === topic);
    const select = clear($("try-skill"));
    for (const name of (t ? t.skills : [])) select.append(el("option", { value: name, text: name }));
  }
  function tryMode() { return document.querySelector("input[name=mode]:checked").value; }
  function syncTryForm() {
    const skill = tryMode() === "skill";
    const routed = !$("try-topic").value;
    if (routed && skill) document.querySelector("input[name=mode][value=task]").checked = true;
    const explicit = tryMode() === "skill";
    $("try-skill-label").hidden = !explicit;
    $("try-data-label").hidden = !explicit;
    $("try-task-label").hidden = explicit;
    document.querySelector("input[name=mode][value=skill]").disabled = routed;
    $("try-note").textContent = routed ? "The gateway's router picks the topic." : "";
  }

  async function sendTry(event) {
    event.preventDefault();
    const topic = $("try-topic").value;
    const explicit = tryMode() === "skill";
    const body = explicit ? { skill: $("try-skill").value, data: $("try-data").value } : { task: $("try-task").value };
    const button = $("try-send");
    button.disabled = true; button.textContent = "Sending…";
    const result = $("try-result");
    result.hidden = false;
    clear(result).append(el("p", { class: "muted", text: "Waiting for the reply…" }));
    try {
      const path = topic ? "/v1/topics/" + encodeURIComponent(topic) + "/invoke" : "/v1/invoke";
      const r = await api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      renderReply(result, r);
    } catch (e) {
      clear(result).append(el("p", { class: "error", text: "The gateway did not answer: " + e }));
    } finally {
      button.disabled = false; button.textContent = "Send";
    }
  }

  function renderReply(node, r) {
    clear(node);
    const b = r.body || {};
    if (!r.ok) {
      const err = b.error || { code: "http_" + r.status, message: "no error body" };
      node.append(el("div", { class: "reply-head" }, [
        el("span", { class: "pill down", text: err.code }), el("span", { text: "HTTP " + r.status }),
        err.request_id ? el("code", { class: "small", text: err.request_id }) : null,
      ]));
      node.append(el("p", { class: "error", text: err.message }));
      if (err.trace) node.append(traceDetails(err.trace));
      return;
    }
    node.append(el("div", { class: "reply-head" }, [
      el("span", { class: "pill up", text: "success" }),
      el("span", { text: (b.skill || "?") + " on " + short(b.topic) }),
      b.route ? el("span", { class: "muted", text: "routed by " + b.route.mode }) : null,
      el("span", { class: "muted", text: fmtMs(b.timing.gateway_ms) + " ms" }),
      el("a", { href: "#traces", class: "small", text: "open in Traces", onclick: () => { state.selectedTrace = b.request_id; } }),
    ]));
    const content = el("div", { class: "markdown" });
    content.innerHTML = md.render(b.content); // escaped by markdown.js before any markup
    node.append(content);
    node.append(el("h3", { text: "Waterfall" }), waterfall(b.timing, b.trace || {}));
    node.append(traceDetails(b.trace || {}));
  }

  function traceDetails(trace) {
    return el("details", { class: "trace" }, [el("summary", { text: "_trace" }),
      el("pre", { text: JSON.stringify(trace, null, 2) })]);
  }

  // Where the time of one request went. The gateway measures the whole round
  // trip and the server reports its own handling, queueing and the skill's run;
  // what is left is the bus (proxy hops and replica dispatch, out and back),
  // which is shown split evenly because its two halves are not measured apart.
  function waterfall(timing, trace) {
    const total = timing.gateway_ms || 0;
    const server = timing.server_ms;
    const queue = timing.queue_ms || 0;
    const exec = timing.exec_ms || 0;
    const rows = [];
    if (server === null || server === undefined) {
      rows.push(["client → gateway → reply", 0, total, "total", "measured by the gateway"]);
    } else {
      const bus = Math.max(0, total - server);
      const half = bus / 2;
      const match = Math.max(0, server - queue - exec);
      rows.push(["client → gateway (total)", 0, total, "total", "gateway receipt to reply"]);
      rows.push(["proxy → replica dispatch", 0, half, "bus", "half of the " + fmtMs(bus) + " ms bus time"]);
      rows.push(["queue at server", half, queue, "queue", "waiting for a worker"]);
      rows.push(["match + handling", half + queue, match, "match", (trace.matcher_mode || "") + (trace.score !== undefined ? " score " + trace.score : "")]);
      rows.push(["exec", half + queue + match, exec, "exec", trace.exit_code !== undefined ? "exit " + trace.exit_code : "the skill's process"]);
      rows.push(["reply → proxy → gateway", half + server, half, "bus", "the other half"]);
    }
    const box = el("div", { class: "waterfall" });
    const scale = total > 0 ? 100 / total : 0;
    for (const [label, start, length, kind, note] of rows) {
      const bar = el("span", { class: "bar " + kind });
      bar.style.left = Math.min(100, start * scale) + "%";
      bar.style.width = Math.max(0.6, length * scale) + "%";
      box.append(el("div", { class: "wf-row" }, [
        el("span", { class: "wf-label", text: label }),
        el("span", { class: "wf-track" }, [bar]),
        el("span", { class: "wf-ms", text: fmtMs(length) + " ms" }),
        el("span", { class: "wf-note muted small", text: note }),
      ]));
    }
    const attempt = trace.attempt || 1;
    const redelivered = trace.redelivered_from || [];
    box.append(el("p", { class: "small muted", text: "attempt " + attempt +
      (redelivered.length ? " · redelivered from " + redelivered.join(", ") : " · no redelivery") +
      (trace.server_id ? " · replica " + trace.server_id : "") }));
    return box;
  }

  // -- traces --------------------------------------------------------------------

  async function loadTraces() {
    const r = await api("/v1/requests?limit=50");
    if (!r.ok || !r.body) return;
    const body = $("trace-table").querySelector("tbody");
    clear(body);
    $("trace-empty").hidden = r.body.requests.length > 0;
    for (const q of r.body.requests) {
      const row = el("tr", { class: q.request_id === state.selectedTrace ? "selected" : null, "data-id": q.request_id, onclick: () => openTrace(q.request_id) }, [
        el("td", { text: ago(q.received_at) }),
        el("td", { class: "topic-cell", text: short(q.topic), title: q.topic }),
        el("td", { text: q.skill || "–" }),
        el("td", {}, [el("span", { class: "pill " + (q.status === "success" ? "up" : "down"), text: q.status === "success" ? "ok" : q.code || "error" })]),
        el("td", { class: "num", text: fmtMs(q.gateway_ms) }),
      ]);
      body.append(row);
    }
    if (state.selectedTrace) openTrace(state.selectedTrace, true);
  }

  async function openTrace(id, quiet) {
    state.selectedTrace = id;
    for (const row of document.querySelectorAll("#trace-table tbody tr")) row.classList.toggle("selected", row.dataset.id === id);
    const r = await api("/v1/requests/" + encodeURIComponent(id));
    const node = clear($("trace-detail"));
    if (!r.ok) { if (!quiet) node.append(el("p", { class: "muted", text: "That request is no longer kept." })); return; }
    const q = r.body;
    node.append(el("div", { class: "reply-head" }, [
      el("span", { class: "pill " + (q.status === "success" ? "up" : "down"), text: q.status === "success" ? "success" : (q.error && q.error.code) || "error" }),
      el("span", { text: (q.skill || "?") + " on " + short(q.topic) }),
      el("code", { class: "small", text: q.request_id }),
    ]));
    node.append(el("h3", { text: "Waterfall" }), waterfall(q.timing, q.trace || {}));
    if (q.error) node.append(el("p", { class: "error", text: q.error.message }));
    if (q.events.length) {
      node.append(el("h3", { text: "Trace events" }));
      const list = el("ul", { class: "events small" });
      for (const e of q.events) list.append(el("li", { text: (e.server_id || "?") + ": " + e.outcome + " in " + fmtMs(e.elapsed_ms) + " ms, attempt " + (e.attempt || 1) + (e.matcher_mode ? ", matched by " + e.matcher_mode : "") }));
      node.append(list);
    }
    node.append(el("details", { class: "trace" }, [el("summary", { text: "request and _trace" }),
      el("pre", { text: JSON.stringify({ intent: q.intent, route: q.route, trace: q.trace }, null, 2) })]));
  }

  // -- skills --------------------------------------------------------------------

  async function loadSkills() {
    const r = await api("/v1/skills");
    if (!r.ok || !r.body) return;
    state.skills = r.body.skills;
    const list = clear($("skill-list"));
    const topics = {};
    for (const s of state.skills) (topics[s.topic] = topics[s.topic] || []).push(s);
    for (const [topic, skills] of Object.entries(topics)) {
      list.append(el("h3", { class: "group", text: short(topic) }));
      for (const s of skills) {
        const [pillClass, pillText] = skillPill(s, false);
        const flags = [];
        if (s.rollout_state === "canary") flags.push(el("span", { class: "pill small warn", text: "canary" }));
        if (s.degraded) flags.push(el("span", { class: "pill small down", text: "degraded" }));
        if (s.drafts && s.drafts.length && s.rollout_state !== "draft") {
          flags.push(el("span", { class: "pill small info", text: s.drafts.length === 1 ? "1 draft" : s.drafts.length + " drafts" }));
        }
        list.append(el("button", { class: "skill-item" + (state.selectedSkill === topic + "/" + s.name ? " selected" : ""), "data-skill": s.name, "data-state": s.rollout_state || "", onclick: () => openSkill(topic, s.name) }, [
          el("span", { class: "name" }, [s.name, flags.length ? " " : null].concat(flags)),
          el("span", { class: "pill small " + pillClass, text: pillText }),
          el("span", { class: "desc muted small", text: s.description }),
        ]));
      }
    }
    for (const [topic, err] of Object.entries(r.body.errors || {})) list.append(el("p", { class: "error small", text: short(topic) + ": " + err.message }));
    if (state.selectedSkill) { const [t, n] = state.selectedSkill.split("/"); openSkill(t, n); }
  }

  // A draft-only skill is no server's yet: "draft", not the alarming "not served".
  function skillPill(s, long) {
    if (!s.valid) return ["down", "invalid"];
    if (s.rollout_state === "draft" && !s.live) return ["info", long ? "draft: not served until promoted" : "draft"];
    if (s.live) return ["up", long ? "served live" : "live"];
    return ["idle", "not served"];
  }

  function openSkill(topic, name) {
    state.selectedSkill = topic + "/" + name;
    for (const b of document.querySelectorAll(".skill-item")) b.classList.toggle("selected", b.dataset.skill === name);
    const s = state.skills.find((x) => x.topic === topic && x.name === name);
    const node = clear($("skill-detail"));
    if (!s) return;
    const [pillClass, pillText] = skillPill(s, true);
    node.append(el("div", { class: "reply-head" }, [el("h2", { text: s.name }),
      el("span", { class: "pill " + pillClass, text: pillText }),
      s.degraded ? el("span", { class: "pill down", text: "degraded" }) : null]));
    node.append(el("p", { text: s.description }));
    const meta = el("table", { class: "meta" });
    // The servers' SKILL.md version; the rollout numbers its versions 1, 2, ... on its own.
    const draftOnly = s.rollout_state === "draft" && !s.live;
    const rows = [["topic", s.topic], [draftOnly ? "version (draft)" : "version (served)", s.version || "–"], ["timeout", s.timeout ? s.timeout + " s" : "server default"],
      ["validation", s.valid ? "valid SKILL.md" : "invalid"]];
    for (const [k, v] of Object.entries(s.metadata || {})) rows.push(["metadata." + k, v]);
    for (const [k, v] of rows) {
      const value = String(v);
      // A long value (a keyword list) folds, so the SKILL.md stays in view.
      const cell = value.length > 140
        ? el("td", {}, [el("details", {}, [el("summary", { text: value.slice(0, 110) + "… (" + value.length + " chars)" }), value])])
        : el("td", { text: value });
      meta.append(el("tr", {}, [el("th", { text: k }), cell]));
    }
    node.append(meta);
    for (const p of s.problems || []) node.append(el("p", { class: "error", text: p }));
    const versions = el("div", { class: "versions" });
    node.append(versions);
    if (s.valid) renderVersions(versions, s);
    if (s.body) {
      node.append(el("h3", { text: draftOnly ? "SKILL.md (the draft)" : "SKILL.md" }));
      const body = el("div", { class: "markdown" });
      body.innerHTML = md.render(s.body); // escaped first by markdown.js
      node.append(body);
    } else {
      node.append(el("p", { class: "muted", text: "The body is not available to this gateway (no local copy of the skill)." }));
    }
    if (draftOnly) return; // nothing serves it yet: nothing to try
    const tryIt = el("button", { class: "ghost", text: "Try this skill", onclick: () => {
      $("try-topic").value = s.topic; fillSkillSelect();
      document.querySelector("input[name=mode][value=skill]").checked = true; syncTryForm();
      $("try-skill").value = s.name; location.hash = "#try";
    } });
    node.append(el("p", {}, [tryIt]));
  }

  const VERSION_PILL = { active: "up", canary: "warn", draft: "info", retired: "idle" };

  async function renderVersions(node, s) {
    const base = "/v1/skills/" + encodeURIComponent(s.topic) + "/" + encodeURIComponent(s.name);
    const key = s.topic + "/" + s.name;
    const [r, h] = await Promise.all([api(base + "/rollout"), api(base + "/history?limit=20")]);
    if (state.selectedSkill !== key) return; // another skill was opened meanwhile
    clear(node);
    if (!r.ok || !r.body) return;
    const st = r.body;
    node.append(el("h3", { text: "Versions" }));
    const message = el("p", { class: "small action-note", role: "status" });
    if (!st.managed) {
      node.append(el("p", { class: "muted small", text: "One version (" + (st.active || "unversioned") + "): no candidates yet." }));
    } else {
      const table = el("table", { class: "meta versions-table" }, [el("tr", {}, [
        el("th", { text: "rollout version" }), el("th", { text: "state" }), el("th", { text: "since" }), el("th", { text: "why" })])]);
      for (const [v, info] of Object.entries(st.versions)) {
        table.append(el("tr", { "data-version": v }, [
          el("td", { text: v }),
          el("td", {}, [el("span", { class: "pill small " + (VERSION_PILL[info.state] || "idle"), text: info.state })]),
          el("td", { class: "small muted", text: ago(info.decided || info.created) }),
          el("td", { class: "small", text: info.reason || "" }),
        ]));
      }
      node.append(table);
    }
    if (st.state === "draft") {
      node.append(el("p", { class: "small notice", text: "A new skill: no server serves it until its draft is promoted. "
        + "Promoting writes its SKILL.md into the library; the servers load it on their next scan." }));
    }
    if (st.degraded) node.append(degradedPanel(st));
    if (st.canary) node.append(canaryPanel(st));
    // Each button says what it will do to what the servers serve.
    const drafts = st.drafts || [];
    const candidate = st.canary ? st.canary.version : drafts[drafts.length - 1];
    const retired = Object.entries(st.versions).filter(([, i]) => i.state === "retired").map(([v]) => v);
    const done = {
      // A promoted draft-only skill is new to the servers: "not served" until they load it.
      promote: (b) => "Promoted: version " + b.active + " is active." + (st.state === "draft" ? " The servers are told to load the new skill." : ""),
      rollback: (b) => "Rolled back: version " + b.active + " is active.",
      canary: (b) => "Canary started: version " + b.canary.version + " on " + Math.round(b.canary.share * 100) + " % of callers.",
      reject: () => "Rejected: version " + candidate + " is retired; version " + st.active + " stays active.",
    };
    const act = async (what, button) => {
      button.disabled = true;
      const body = what === "canary" ? { version: candidate } : { reason: what + " from the console" };
      const res = await api(base + "/" + what, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      if (!res.ok) {
        button.disabled = false;
        message.className = "small action-note error";
        message.textContent = (res.body && res.body.error && res.body.error.message) || "failed";
        return;
      }
      // Kept a few seconds: the skills-changed event this causes redraws the view again.
      state.flash = { key: key, text: done[what](res.body), until: Date.now() + 10000 };
      state.skills = [];
      loadSkills();
    };
    const button = (what, id, enabled, text, idle) => {
      const b = el("button", { class: "ghost", id: id, disabled: !enabled, text: enabled ? text : idle });
      b.addEventListener("click", () => act(what, b));
      return b;
    };
    if (st.managed) {
      const buttons = [button("promote", "promote-btn", !!candidate, "Promote version " + candidate, "Promote (no candidate)")];
      // A canary needs an active version to compare with: a new skill is promoted.
      if (!st.canary && drafts.length && st.active) buttons.push(button("canary", "canary-btn", true, "Canary version " + candidate, ""));
      if (st.canary) buttons.push(button("reject", "reject-btn", true, "Reject version " + st.canary.version, ""));
      if (st.active) buttons.push(button("rollback", "rollback-btn", !!retired.length, "Roll back", "Roll back (nothing earlier)"));
      node.append(el("p", { class: "actions" }, buttons));
    }
    if (state.flash && state.flash.key === key && Date.now() < state.flash.until) message.textContent = state.flash.text;
    if (st.managed) node.append(message); // (an empty line under "one version" would only be a gap)
    const versions = Object.keys(st.versions);
    if (versions.length > 1) node.append(diffPanel(base, versions, st));
    const commits = (h.ok && h.body && h.body.entries) || [];
    if (commits.length) node.append(historyPanel(commits));
    if (st.canary) {
      // While a canary runs its evidence grows: read it again, while this skill stays open.
      setTimeout(() => {
        if (state.view === "skills" && state.selectedSkill === key && node.isConnected) renderVersions(node, s);
      }, 4000);
    }
  }

  function degradedPanel(st) {
    const box = el("div", { class: "degraded", id: "degraded-panel" }, [el("h3", { text: "Degraded: its runs fail repeatedly" })]);
    const failures = st.failures || [];
    if (!failures.length) box.append(el("p", { class: "small muted", text: "No failure cluster is recorded." }));
    const list = el("ul", { class: "failures small" });
    for (const f of failures) {
      const last = (f.stderr || "").trim().split("\n").pop() || "(no stderr)";
      list.append(el("li", {}, [el("b", { text: f.count + " × " + f.outcome }), " on version " + (f.version || "?") +
        (f.input_shape ? ", input " + f.input_shape : "") + ", last " + ago(f.last) + ": ", el("code", { text: last.slice(0, 200) })]));
    }
    if (failures.length) box.append(list);
    const suggestion = (st.suggestions || []).slice(-1)[0];
    if (suggestion && suggestion.text) box.append(el("p", { class: "small" }, [el("b", { text: "Suggestion: " }), suggestion.text.slice(0, 400)]));
    return box;
  }

  function canaryPanel(st) {
    const c = st.canary;
    const box = el("div", { class: "canary", id: "canary-panel" });
    const decision = { continue: "collecting evidence", promote: "the test says promote", reject: "the test says reject" }[c.decision] || c.decision;
    box.append(el("h3", { text: "Canary: version " + c.version + " on " + Math.round(c.share * 100) + "% of callers" }));
    const left = c.time_left > 2 * 86400 ? Math.round(c.time_left / 86400) + " days" : c.time_left > 7200 ? Math.round(c.time_left / 3600) + " h" : Math.round(c.time_left / 60) + " min";
    box.append(el("p", { class: "small muted", text: decision + " · " + left + " left before an undecided test is rejected as inconclusive" }));
    const arms = el("table", { class: "meta arms" }, [el("tr", {}, [
      el("th", { text: "arm" }), el("th", { class: "num", text: "calls" }), el("th", { class: "num", text: "successes" }),
      el("th", { text: "success rate" }), el("th", { class: "num", text: "mean ms" })])]);
    for (const name of ["active", "candidate"]) {
      const a = c.arms[name] || { n: 0, successes: 0, success_rate: null, mean_latency_ms: null };
      const rate = a.success_rate === null ? null : a.success_rate;
      const meter = el("span", { class: "rate " + name }, [el("span", {})]);
      meter.firstChild.style.width = (rate === null ? 0 : rate * 100) + "%";
      arms.append(el("tr", {}, [
        el("td", { text: name === "active" ? "active (v" + st.active + ")" : "candidate (v" + c.version + ")" }),
        el("td", { class: "num", text: String(a.n) }), el("td", { class: "num", text: String(a.successes) }),
        el("td", {}, [meter, el("span", { class: "small", text: rate === null ? " –" : " " + (rate * 100).toFixed(0) + "%" })]),
        el("td", { class: "num", text: fmtMs(a.mean_latency_ms) }),
      ]));
    }
    box.append(arms);
    const canvas = el("canvas", { class: "sprt", id: "sprt-plot", "aria-label": "SPRT log-likelihood ratio against its bounds" });
    box.append(canvas);
    const p = c.pairs;
    box.append(el("p", { class: "small muted", text: "SPRT on paired outcomes: " + (p.candidate_wins + p.active_wins) + " discordant pairs (" +
      p.candidate_wins + " won by the candidate, " + p.active_wins + " by the active version, " + p.ties + " ties). " +
      "LLR " + Number(c.llr).toFixed(2) + "; it promotes at " + c.bounds[1].toFixed(2) + " and rejects at " + c.bounds[0].toFixed(2) +
      ". Points: what this gateway saw; the dashed start is from before it looked." }));
    requestAnimationFrame(() => plotSprt(canvas, c, st.canary_history || []));
    return box;
  }

  // The SPRT's path: LLR over discordant pairs, between its two bounds.
  function plotSprt(canvas, c, history) {
    const { ctx, w, h } = sharpCanvas(canvas, 420, 170);
    const [lower, upper] = c.bounds;
    const points = history.map((x) => [x.pairs, x.llr]);
    const now = c.pairs.candidate_wins + c.pairs.active_wins;
    if (!points.length || points[points.length - 1][0] !== now || points[points.length - 1][1] !== c.llr) points.push([now, c.llr]);
    const maxX = Math.max(8, ...points.map((q) => q[0])) * 1.1;
    const top = Math.max(upper, ...points.map((q) => q[1])) * 1.15, bottom = Math.min(lower, ...points.map((q) => q[1])) * 1.15;
    const left = 34, right = 92, pad = 8;
    const x = (v) => left + (v / maxX) * (w - left - right);
    const y = (v) => pad + (top - v) / (top - bottom) * (h - 2 * pad - 14);
    ctx.clearRect(0, 0, w, h);
    ctx.font = "11px system-ui, sans-serif";
    // Regions beyond the bounds, tinted with their verdict.
    ctx.fillStyle = "rgba(21,128,61,.07)"; ctx.fillRect(left, y(top), w - left - right, y(upper) - y(top));
    ctx.fillStyle = "rgba(220,38,38,.07)"; ctx.fillRect(left, y(lower), w - left - right, y(bottom) - y(lower));
    const hline = (v, color, label, dash) => {
      ctx.strokeStyle = color; ctx.lineWidth = 1; ctx.setLineDash(dash || []);
      ctx.beginPath(); ctx.moveTo(left, y(v)); ctx.lineTo(w - right, y(v)); ctx.stroke(); ctx.setLineDash([]);
      ctx.fillStyle = color; ctx.fillText(label, w - right + 6, y(v) + 4);
    };
    hline(upper, "#15803d", "promote " + upper.toFixed(2), [5, 3]);
    hline(0, "#94a3b8", "0");
    hline(lower, "#dc2626", "reject " + lower.toFixed(2), [5, 3]);
    ctx.fillStyle = "#6b7280";
    ctx.fillText("0", left - 3, h - 2);
    ctx.fillText("discordant pairs →", left + 18, h - 2);
    const ticks = Math.round(maxX / 1.1);
    ctx.fillText(String(ticks), x(ticks) - 6, h - 2);
    ctx.save(); ctx.translate(10, h / 2 + 10); ctx.rotate(-Math.PI / 2); ctx.fillText("LLR", 0, 0); ctx.restore();
    // Before the first sample: unknown path from the origin, dashed.
    ctx.strokeStyle = "#7c3aed"; ctx.lineWidth = 2;
    if (points[0][0] > 0) {
      ctx.setLineDash([3, 3]); ctx.beginPath(); ctx.moveTo(x(0), y(0)); ctx.lineTo(x(points[0][0]), y(points[0][1])); ctx.stroke(); ctx.setLineDash([]);
    }
    ctx.beginPath();
    points.forEach((q, i) => { if (i === 0) ctx.moveTo(x(q[0]), y(q[1])); else ctx.lineTo(x(q[0]), y(q[1])); });
    ctx.stroke();
    ctx.fillStyle = "#7c3aed";
    for (const q of points) { ctx.beginPath(); ctx.arc(x(q[0]), y(q[1]), 2.5, 0, 2 * Math.PI); ctx.fill(); }
    const last = points[points.length - 1];
    ctx.beginPath(); ctx.arc(x(last[0]), y(last[1]), 4.5, 0, 2 * Math.PI); ctx.fill();
  }

  function diffPanel(base, versions, st) {
    const box = el("div", { class: "diff-panel", id: "diff-panel" });
    const pick = (id) => {
      const select = el("select", { id: id, class: "narrow" });
      for (const v of versions) select.append(el("option", { value: v, text: "v" + v + " (" + st.versions[v].state + ")" }));
      return select;
    };
    const oldSel = pick("diff-old"), newSel = pick("diff-new");
    const out = el("div", { class: "diff-out" });
    box.append(el("h3", { text: "Diff" }),
      el("div", { class: "row diff-pick" }, [el("label", { class: "small" }, ["from ", oldSel]), el("label", { class: "small" }, ["to ", newSel])]), out);
    let first = true;
    const load = async () => {
      const q = first ? "" : "?old=" + encodeURIComponent(oldSel.value) + "&new=" + encodeURIComponent(newSel.value);
      const r = await api(base + "/diff" + q);
      clear(out);
      if (!r.ok) { out.append(el("p", { class: "error small", text: (r.body && r.body.error && r.body.error.message) || "no diff" })); return; }
      if (first) { oldSel.value = r.body.old; newSel.value = r.body.new; first = false; }
      out.append(renderDiff(r.body));
    };
    oldSel.addEventListener("change", load);
    newSel.addEventListener("change", load);
    load();
    return box;
  }

  function renderDiff(d) {
    const box = el("div", {});
    if (!d.files.length) { box.append(el("p", { class: "muted small", text: "v" + d.old + " and v" + d.new + " have the same files." })); return box; }
    for (const f of d.files) {
      const file = el("div", { class: "diff-file" }, [el("div", { class: "diff-name" }, [
        el("span", { class: "pill small " + ({ added: "up", removed: "down", modified: "info" }[f.change]), text: f.change }), " ",
        el("code", { text: f.path })])]);
      if (f.binary) { file.append(el("p", { class: "small muted pad", text: "binary or large file" })); box.append(file); continue; }
      const pre = el("pre", { class: "diff" });
      for (const line of f.diff.split("\n")) {
        if (!line || line.startsWith("--- ") || line.startsWith("+++ ")) continue;
        const kind = line.startsWith("@@") ? "hunk" : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : "ctx";
        // A long unchanged line (a keyword list) is cut: the change is what matters here.
        const shown = kind === "ctx" && line.length > 180 ? line.slice(0, 170) + " … (" + line.length + " chars)" : line;
        pre.append(el("span", { class: "dl " + kind, text: shown + "\n", title: shown === line ? null : line }));
      }
      file.append(pre);
      box.append(file);
    }
    if (d.truncated) box.append(el("p", { class: "small muted", text: "The diff is longer than shown." }));
    return box;
  }

  function historyPanel(commits) {
    const list = el("ul", { class: "history small" });
    for (const c of commits.slice(0, 8)) {
      list.append(el("li", {}, [el("code", { text: c.sha.slice(0, 8) }), " ", el("span", { class: "muted", text: ago(c.time) }), " ",
        c.message.split("\n")[0], c.hand_edit ? el("span", { class: "pill small warn", text: "hand edit" }) : null]));
    }
    return el("div", { class: "history-panel" }, [el("h3", { text: "History (git)" }), list]);
  }

  // -- start ---------------------------------------------------------------------

  function start() {
    for (const a of document.querySelectorAll("#tabs a")) a.addEventListener("click", () => show(a.dataset.view));
    window.addEventListener("hashchange", () => show(location.hash.slice(1)));
    $("try-form").addEventListener("submit", sendTry);
    $("try-topic").addEventListener("change", () => { fillSkillSelect(); syncTryForm(); });
    for (const r of document.querySelectorAll("input[name=mode]")) r.addEventListener("change", syncTryForm);
    $("token-btn").addEventListener("click", () => {
      const token = prompt("Gateway token (kept for this tab only):");
      if (token) { sessionStorage.setItem("skillscale-token", token); location.reload(); }
    });
    show(location.hash.slice(1) || "dashboard");
    syncTryForm();
    Promise.all([loadTopics(), loadStats()]).then(() => { syncTryForm(); renderDashboard(); });
    setInterval(async () => { await loadStats(); if (state.view === "dashboard") renderDashboard(); }, 2000);
    setInterval(loadTopics, 10000);
    streamEvents();
  }
  document.addEventListener("DOMContentLoaded", start);
})();
