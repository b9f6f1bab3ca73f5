// holyroute dashboard: polls /api/state and redraws the page. No framework, no build step, no network beyond
// this server. Every text from the state is written with textContent (never as markup), so nothing in an event
// field can inject HTML; the server's Content-Security-Policy forbids inline script as a second line of defence.
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";

  // ---- DOM helpers: text only ------------------------------------------------------------------------------------

  function add(parent, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return parent;
  }

  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "title") el.title = String(value);
      else if (key === "width") el.style.width = value; // CSSOM, which the CSP allows (style attributes it does not)
      else el.setAttribute(key, String(value));
    }
    return add(el, children);
  }

  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) el.setAttribute(key, String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined) continue;
      if (child instanceof Node) el.append(child);
      else el.append(document.createTextNode(String(child)));
    }
    return el;
  }

  function fill(id, ...children) {
    const el = document.getElementById(id);
    el.replaceChildren();
    return add(el, children);
  }

  // ---- formatting ------------------------------------------------------------------------------------------------

  const num = (v) => typeof v === "number" && Number.isFinite(v);
  const int = (v) => (num(v) ? Math.round(v).toLocaleString("en-US") : "\u2013");
  const pct = (r) => (num(r) ? (r * 100 >= 10 || r === 0 ? (r * 100).toFixed(0) : (r * 100).toFixed(1)) + "%" : "\u2013");
  const weight = (w) => (num(w) ? (Number.isInteger(w) ? w.toFixed(0) : w.toFixed(1)) + "%" : "\u2013");

  function ms(v) {
    if (!num(v)) return "\u2013";
    if (v >= 10000) return (v / 1000).toFixed(1) + " s";
    return (v >= 100 ? v.toFixed(0) : v.toFixed(1)) + " ms";
  }

  function usd(v) {
    if (!num(v)) return "\u2013";
    if (v === 0) return "$0";
    if (v >= 100) return "$" + v.toFixed(0);
    if (v >= 1) return "$" + v.toFixed(2);
    if (v >= 0.01) return "$" + v.toFixed(4);
    if (v < 1e-6) return "<$0.000001";
    return "$" + String(Number(v.toPrecision(3)));
  }

  function compact(v) {
    if (!num(v)) return "\u2013";
    const a = Math.abs(v);
    if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
    if (a >= 1e3) return (v / 1e3).toFixed(a >= 1e4 ? 0 : 1) + "k";
    return Number.isInteger(v) || a >= 10 ? String(Math.round(v)) : String(Number(v.toPrecision(2)));
  }

  const pad = (n) => String(n).padStart(2, "0");

  function clock(t, tenths) {
    if (!num(t)) return "\u2013";
    const d = new Date(t * 1000);
    const text = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return tenths ? text + "." + Math.floor(d.getMilliseconds() / 100) : text;
  }

  function duration(seconds) {
    if (!num(seconds)) return "\u2013";
    const v = Math.max(0, seconds);
    if (v < 1) return v.toFixed(1) + " s";
    if (v < 90) return Math.round(v) + " s";
    if (v < 5400) return Math.round(v / 60) + " min";
    if (v < 172800) return (v / 3600).toFixed(1) + " h";
    return Math.round(v / 86400) + " d";
  }

  const ago = (t, now) => (num(t) ? duration(now - t) + " ago" : "never");

  function widthLabel(w) {
    if (w < 1) return w.toFixed(1) + " s";
    if (w < 60) return w + " s";
    if (w < 3600) return w / 60 + " min";
    return w / 3600 + " h";
  }

  // ---- charts: inline SVG ----------------------------------------------------------------------------------------

  const VIEW_W = 320;
  const VIEW_H = 118;
  const PAD = { left: 44, right: 8, top: 8, bottom: 18 };

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 4, 6, 8, 10]) if (v <= m * p) return m * p; // halves are round too
    return 10 * p;
  }

  function chart(opts) {
    const { title, unit, buckets, widthS, now, fmt } = opts;
    const panel = h("div", { class: "chart", "data-chart": opts.id });
    panel.append(h("div", { class: "head" }, h("div", { class: "title" }, title, " ", h("span", null, unit)), h("div", { class: "now" }, now)));
    const svg = s("svg", { viewBox: `0 0 ${VIEW_W} ${VIEW_H}`, role: "img", "aria-label": title });
    const plotW = VIEW_W - PAD.left - PAD.right;
    const plotH = VIEW_H - PAD.top - PAD.bottom;
    const n = buckets.length;
    if (!n) {
      svg.append(s("text", { x: VIEW_W / 2, y: VIEW_H / 2, "text-anchor": "middle", class: "empty" }, "no calls yet"));
      panel.append(svg);
      return panel;
    }
    let top = 0;
    for (const layer of opts.layers) for (const b of buckets) {
      const v = layer.value(b);
      if (num(v)) top = Math.max(top, v);
    }
    top = niceMax(top);
    const y = (v) => PAD.top + plotH - (v / top) * plotH;
    const step = plotW / n;
    const x = (i) => PAD.left + i * step;
    for (const frac of [0, 0.5, 1]) {
      const yy = y(top * frac);
      svg.append(s("line", { x1: PAD.left, x2: VIEW_W - PAD.right, y1: yy, y2: yy, class: "grid" }));
      svg.append(s("text", { x: PAD.left - 4, y: yy + 3, "text-anchor": "end", class: "axis" }, fmt(top * frac)));
    }
    const tenths = widthS < 1;
    const ticks = n > 2 ? [0, Math.floor((n - 1) / 2), n - 1] : [...Array(n).keys()];
    for (const i of ticks) {
      const anchor = i === 0 ? "start" : i === n - 1 ? "end" : "middle";
      const xx = i === 0 ? PAD.left : i === n - 1 ? VIEW_W - PAD.right : x(i) + step / 2;
      svg.append(s("text", { x: xx, y: VIEW_H - 5, "text-anchor": anchor, class: "axis" }, clock(buckets[i].t, tenths)));
    }
    for (const layer of opts.layers) {
      if (layer.kind === "bar") {
        const gap = step > 4 ? 1 : 0;
        buckets.forEach((b, i) => {
          const v = layer.value(b);
          const base = layer.base ? layer.base(b) : 0;
          if (!num(v) || v <= 0) return;
          const rect = s("rect", {
            x: (x(i) + gap / 2).toFixed(2), width: Math.max(0.5, step - gap).toFixed(2),
            y: y(base + v).toFixed(2), height: Math.max(0.5, y(base) - y(base + v)).toFixed(2), fill: layer.color,
          });
          rect.append(s("title", null, `${clock(b.t, tenths)}  ${layer.label}: ${layer.tip(v, b)}`));
          svg.append(rect);
        });
      } else {
        let d = "";
        let open = false;
        const dots = [];
        buckets.forEach((b, i) => {
          const v = layer.value(b);
          if (!num(v)) { open = false; return; }
          const px = (x(i) + step / 2).toFixed(2);
          const py = y(v).toFixed(2);
          d += (open ? "L" : "M") + px + " " + py + " ";
          const lonely = !open && !num(buckets[i + 1] ? layer.value(buckets[i + 1]) : null);
          open = true;
          const dot = s("circle", { cx: px, cy: py, r: lonely ? 1.8 : 4, fill: lonely ? layer.color : "transparent" });
          dot.append(s("title", null, `${clock(b.t, tenths)}  ${layer.label}: ${layer.tip(v, b)}`));
          dots.push(dot);
        });
        if (d) {
          svg.append(s("path", {
            d, fill: "none", stroke: layer.color, "stroke-width": 1.5, "stroke-linejoin": "round",
            "stroke-dasharray": layer.dash || null, opacity: layer.opacity || null,
          }));
        }
        for (const dot of dots) svg.append(dot);
      }
    }
    panel.append(svg);
    return panel;
  }

  function renderCharts(st) {
    const series = st.series;
    const buckets = series.buckets;
    const w = widthLabel(series.width_s);
    const t = st.totals;
    const rate = (b) => (b.calls ? b.errors / b.calls : null);
    const RED = "#f85149", BLUE = "#58a6ff", VIOLET = "#b58cff", AMBER = "#d29922", GREEN = "#3fb950";
    fill(
      "charts",
      chart({
        id: "calls", title: "Calls", unit: `per ${w}`, buckets, widthS: series.width_s, fmt: compact,
        now: `${int(t.calls)} total`,
        layers: [
          { kind: "bar", label: "ok", color: BLUE, value: (b) => b.calls - b.errors, tip: (v, b) => `${b.calls} calls, ${b.errors} errors` },
          { kind: "bar", label: "errors", color: RED, base: (b) => b.calls - b.errors, value: (b) => b.errors, tip: (v) => `${v} errors` },
        ],
      }),
      chart({
        id: "errors", title: "Error rate", unit: `per ${w}`, buckets, widthS: series.width_s, fmt: (v) => pct(v),
        now: `${pct(t.calls ? t.errors / t.calls : null)} overall`,
        layers: [{ kind: "line", label: "error rate", color: RED, value: rate, tip: (v, b) => `${pct(v)} (${b.errors}/${b.calls})` }],
      }),
      chart({
        id: "latency", title: "Latency", unit: "p95 \u00b7 p50", buckets, widthS: series.width_s, fmt: (v) => compact(v) + "ms",
        now: `p95 ${ms(t.p95_ms)}`,
        layers: [
          { kind: "line", label: "p50", color: GREEN, dash: "3 2", opacity: 0.8, value: (b) => b.p50_ms, tip: (v) => ms(v) },
          { kind: "line", label: "p95", color: AMBER, value: (b) => b.p95_ms, tip: (v) => ms(v) },
        ],
      }),
      chart({
        id: "cost", title: "Cost", unit: `USD per ${w}`, buckets, widthS: series.width_s, fmt: usdAxis,
        now: `${usd(t.cost_usd)} total`,
        layers: [{ kind: "bar", label: "cost", color: VIOLET, value: (b) => b.cost_usd, tip: (v) => usd(v) }],
      }),
    );
  }

  function usdAxis(v) {
    if (v === 0) return "0";
    if (v >= 1) return "$" + (Number.isInteger(v) ? v : v.toFixed(1));
    return "$" + String(Number(v.toPrecision(2)));
  }

  // ---- sections --------------------------------------------------------------------------------------------------

  const STATUS_KIND = {
    healthy: "good", idle: "idle", cooldown: "warn", degraded: "warn", trial: "warn", ejected: "bad", unhealthy: "bad",
  };

  function renderSource(st) {
    const src = st.source;
    const log = st.log;
    const bad = log.not_json + log.too_long + (log.malformed || 0);
    const parts = [["events", src.events]];
    if (src.config) parts.push(["config", src.config]);
    const el = fill("source");
    parts.forEach(([label, value], i) => {
      if (i) el.append(h("span", { class: "sep" }, "\u00b7"));
      add(el, [label + " ", h("b", null, value)]);
    });
    el.append(h("span", { class: "sep" }, "\u00b7"));
    add(el, [`${int(log.lines)} lines, ${int(log.events)} events`]);
    if (bad) add(el, [h("span", { class: "sep" }, "\u00b7"), h("span", { class: "bad-lines" }, `${int(bad)} bad lines skipped`)]);
    if (src.resets) add(el, [h("span", { class: "sep" }, "\u00b7"), `restarted ${src.resets}\u00d7 (file truncated)`]);
    if (log.last_at) add(el, [h("span", { class: "sep" }, "\u00b7"), `last event ${ago(log.last_at, st.now)}`]);
  }

  function setLive(state, text) {
    const el = document.getElementById("live");
    el.dataset.state = state;
    document.getElementById("live-text").textContent = text;
  }

  function kpi(id, label, value, sub, kind) {
    return h("div", { class: "kpi" + (kind ? " " + kind : ""), id: "kpi-" + id },
      h("div", { class: "label" }, label), h("div", { class: "value" }, value), h("div", { class: "sub" }, sub || "\u00a0"));
  }

  function renderKpis(st) {
    const t = st.totals;
    const rate = t.calls ? t.errors / t.calls : null;
    const priced = t.calls + t.cancelled + t.shadow_calls;
    const extra = [t.cancelled ? `${int(t.cancelled)} cancelled` : null, t.shadow_calls ? `${int(t.shadow_calls)} shadow` : null]
      .filter(Boolean).join(", ");
    const span = st.log.first_at && st.log.last_at ? `over ${duration(st.log.last_at - st.log.first_at)}` : "";
    const unhealthy = st.endpoints.filter((e) => STATUS_KIND[e.status] === "bad").length;
    fill(
      "kpis",
      kpi("calls", "Calls", int(t.calls), extra || span),
      kpi("errors", "Errors", int(t.errors), rate === null ? "" : `${pct(rate)} of calls`, rate > 0.05 ? "bad" : rate > 0 ? "warn" : ""),
      kpi("latency", "p95 latency", ms(t.p95_ms), `p50 ${ms(t.p50_ms)}`),
      kpi("cost", "Cost", usd(t.cost_usd), priced ? `${usd(t.cost_usd / priced)} per call` : ""),
      ...(t.cache_lookups ? [kpi("cache", "Cache hits", pct(t.cache_hits / t.cache_lookups),
        `${int(t.cache_hits)} of ${int(t.cache_lookups)} lookups \u00b7 saved ${usd(t.saved_usd)}`)] : []),
      kpi("failovers", "Failovers", int(t.failovers), t.calls ? `${(t.failovers / t.calls).toFixed(2)} per call` : ""),
      kpi("endpoints", "Endpoints", `${st.endpoints.length - unhealthy}/${st.endpoints.length}`,
        unhealthy ? `${unhealthy} ejected or unhealthy` : "none ejected", unhealthy ? "bad" : ""),
    );
  }

  function meter(rate) {
    if (!num(rate)) return h("span", { class: "faint" }, "\u2013");
    const kind = rate >= 0.2 ? "bad" : rate > 0 ? "warn" : "";
    const bar = h("span", { class: "meter " + kind }, h("i", { width: Math.max(rate > 0 ? 4 : 0, rate * 100) + "%" }));
    return h("span", null, bar, pct(rate));
  }

  function headroom(e) {
    const parts = [];
    if (num(e.remaining_requests) || num(e.remaining_tokens)) {
      parts.push(h("div", null, `${compact(e.remaining_requests)} req \u00b7 ${compact(e.remaining_tokens)} tok left`));
    }
    const limits = [e.rpm ? `rpm ${compact(e.rpm)}` : null, e.tpm ? `tpm ${compact(e.tpm)}` : null].filter(Boolean);
    if (limits.length) parts.push(h("div", { class: "small" }, "limit " + limits.join(", ")));
    return parts.length ? parts : h("span", { class: "faint", title: "no x-ratelimit-remaining-* in the log and no rpm/tpm configured" }, "\u2013");
  }

  function renderEndpoints(st) {
    const now = st.now;
    const rows = st.endpoints.map((e) => {
      const kind = STATUS_KIND[e.status] || "info";
      const until = num(e.until) && e.until > now ? h("span", { class: "until" }, duration(e.until - now) + " left") : null;
      const probe = e.probe ? h("div", { class: "small" }, `probe: ${e.probe.status || "?"}${num(e.probe.latency_ms) ? " in " + ms(e.probe.latency_ms) : ""}`) : null;
      return h("tr", { "data-endpoint": e.name, "data-status": e.status },
        h("td", { class: "name" }, e.name, e.configured ? null : h("div", { class: "small" }, "not in the config"),
          e.models.length ? h("div", { class: "small" }, e.models.join(", ")) : null),
        h("td", { class: "mono muted" }, e.host || "\u2013"),
        h("td", { class: "status-cell" }, h("span", { class: "badge " + kind }, e.status), until, probe),
        h("td", { class: "num" }, int(e.calls)),
        h("td", { class: "num" }, int(e.attempts)),
        h("td", { class: "num" }, int(e.failed)),
        h("td", { class: "num" }, meter(e.recent_error_rate)),
        h("td", { class: "num" }, ms(e.p95_ms)),
        h("td", { class: "num" }, usd(e.cost_usd)),
        h("td", null, headroom(e)),
        h("td", { class: "reason" }, e.reason || ""),
        h("td", { class: "time" }, ago(e.last_seen, now)),
      );
    });
    const head = h("tr", null, ...["endpoint", "host", "status", "calls", "attempts", "failed", "recent errors", "p95", "cost", "headroom", "why", "last seen"]
      .map((label, i) => h("th", { class: i >= 3 && i <= 8 ? "num" : null }, label)));
    fill("endpoints", rows.length ? h("table", { id: "endpoints-table" }, h("thead", null, head), h("tbody", null, rows)) : h("div", { class: "empty" }, "No endpoints yet: pass --config, or wait for events."));
    fill("endpoints-note", `recent errors: failed share of the last 50 attempts; failovers count as failed attempts`);
  }

  function splitBar(w, share) {
    const track = h("span", { class: "track" });
    if (num(w)) track.append(h("span", { class: "w", width: Math.min(100, w) + "%" }));
    if (num(share)) track.append(h("span", { class: "o", width: Math.min(100, share * 100) + "%" }));
    return h("span", { class: "split-bar", title: `configured ${weight(w)}, observed ${pct(share)}` }, track, weight(w), h("span", { class: "faint" }, "/ " + pct(share)));
  }

  function rolloutBadge(r) {
    const last = r.last;
    if (!last) return h("span", { class: "badge idle" }, `rollout: no event yet (${r.steps ?? "?"} steps)`);
    const kind = { aborted: "bad", completed: "good", paused: "warn" }[last.status] || "info";
    const steps = num(last.steps) ? last.steps : r.steps;
    return h("span", { class: "badge " + kind, "data-rollout": last.status || "" },
      `${last.status || "rollout"} \u00b7 step ${num(last.step) ? last.step : "?"}/${num(steps) ? steps : "?"} \u00b7 ${weight(last.weight)}`);
  }

  function renderRoutes(st) {
    const cards = st.routes.map((r) => {
      const badges = [];
      if (!r.configured) badges.push(h("span", { class: "badge idle" }, "not in the config"));
      if (r.sticky) badges.push(h("span", { class: "badge idle" }, "sticky " + r.sticky));
      if (r.rollout) badges.push(rolloutBadge(r.rollout));
      if (r.arms.some((a) => a.panic)) badges.push(h("span", { class: "badge bad" }, "panic"));
      const rate = r.calls ? r.errors / r.calls : null;
      const head = h("div", { class: "head" }, h("span", { class: "alias" }, r.route), badges,
        h("span", { class: "totals" }, `${int(r.calls)} calls \u00b7 ${pct(rate)} err \u00b7 p95 ${ms(r.p95_ms)} \u00b7 ${usd(r.cost_usd)}`
          + (r.cache_lookups ? ` \u00b7 cache ${pct(r.cache_hits / r.cache_lookups)} hits, saved ${usd(r.saved_usd)}` : "")));
      const arms = r.arms.map((a) => h("tr", { "data-arm": a.arm },
        h("td", { class: "name" }, a.arm, a.model && a.model !== a.arm ? h("div", { class: "small" }, a.model) : null),
        h("td", { class: "mono muted" }, a.endpoints.length ? a.endpoints.join(" \u2192 ") : "\u2013"),
        h("td", null, splitBar(a.weight, a.share)),
        h("td", { class: "num" }, int(a.calls)),
        h("td", { class: "num" }, a.calls ? `${int(a.errors)} (${pct(a.errors / a.calls)})` : int(a.errors)),
        h("td", { class: "num" }, ms(a.p95_ms)),
        h("td", { class: "num" }, usd(a.cost_usd)),
      ));
      const table = !r.arms.length ? h("div", { class: "empty" }, "No calls yet.") : h("table", null,
        h("thead", null, h("tr", null, h("th", null, "arm"), h("th", null, "endpoints (failover order)"), h("th", null, "weight / observed"),
          h("th", { class: "num" }, "calls"), h("th", { class: "num" }, "errors"), h("th", { class: "num" }, "p95"), h("th", { class: "num" }, "cost"))),
        h("tbody", null, arms));
      const lines = [];
      if (r.rollout && r.rollout.last && r.rollout.last.reason) {
        lines.push(h("div", { class: "line" }, `rollout ${clock(r.rollout.last.t)}: ${r.rollout.last.reason}`));
      }
      const extras = [];
      if (r.fallbacks.length) extras.push(`fallbacks ${r.fallbacks.join(", ")}`);
      if (r.fallback_calls) extras.push(`${int(r.fallback_calls)} calls served by a fallback`);
      if (r.cancelled) extras.push(`${int(r.cancelled)} cancelled`);
      if (r.shadow) extras.push(`shadow ${r.shadow.arm || "?"}${num(r.shadow.sample_percent) ? " (" + weight(r.shadow.sample_percent) + " sampled)" : ""}: ${int(r.shadow.calls)} calls, ${usd(r.shadow.cost_usd)}`);
      if (extras.length) lines.push(h("div", { class: "line" }, extras.join(" \u00b7 ")));
      return h("div", { class: "route", "data-route": r.route }, head, table, lines);
    });
    fill("routes", cards.length ? cards : h("div", { class: "empty" }, "No routes yet: pass --config, or wait for events."));
    fill("routes-note", h("span", { class: "legend" }, h("span", { class: "sw blue" }), "weight now", h("span", { class: "sw violet" }), "observed share of calls (whole log)"));
  }

  function statusCell(f) {
    if (num(f.status)) return h("span", { class: "status-code" + (f.status >= 500 ? " bad" : "") }, String(f.status));
    return h("span", { class: "status-code bad" }, f.error || "error");
  }

  // Consecutive failovers alike (same hop, same answer, same reason) share one row with a count.
  function groupFailovers(list) {
    const groups = [];
    for (const f of list) {
      const key = JSON.stringify([f.route, f.arm, f.endpoint, f.next_endpoint, f.status, f.error, f.reason]);
      const last = groups[groups.length - 1];
      if (last && last.key === key) {
        last.count += 1;
        last.first = f;
        last.ms.push(f.attempt_ms);
      } else groups.push({ key, count: 1, latest: f, first: f, ms: [f.attempt_ms] });
    }
    return groups;
  }

  function renderFailovers(st) {
    const rows = groupFailovers(st.failovers).slice(0, 12).map((g) => {
      const f = g.latest;
      const since = g.count > 1 && clock(g.first.t) !== clock(f.t) ? h("div", { class: "small" }, "since " + clock(g.first.t)) : null;
      const times = g.ms.filter(num);
      const took = times.length > 1 ? `${compact(Math.min(...times))}\u2013${ms(Math.max(...times))}` : ms(times[0]);
      return h("tr", { class: "failover-row" },
        h("td", { class: "time" }, clock(f.t), since),
        h("td", { class: "name" }, f.route || "\u2013", f.arm ? h("div", { class: "small" }, f.arm) : null),
        h("td", { class: "name wrap" }, h("span", { class: "nowrap" }, f.endpoint || "\u2013", h("span", { class: "arrow" }, "\u2192")), " ",
          h("span", { class: "nowrap" }, f.next_endpoint || h("span", { class: "faint" }, "retry / give up"))),
        h("td", { class: "status-cell" }, statusCell(f), g.count > 1 ? h("span", { class: "badge idle count" }, `\u00d7${g.count}`) : null,
          h("div", { class: "small", title: "how long the abandoned attempt took" }, took)),
        h("td", { class: "reason" }, f.reason || ""),
      );
    });
    fill("failovers", rows.length
      ? h("table", { id: "failovers-table" }, h("thead", null, h("tr", null, h("th", null, "time"), h("th", null, "route / arm"), h("th", null, "from \u2192 to"),
        h("th", null, "status, attempt"), h("th", null, "reason"))), h("tbody", null, rows))
      : h("div", { class: "empty" }, "No failovers in the log."));
    const kept = st.failovers.length < st.totals.failovers ? `; the latest ${st.failovers.length} shown` : "";
    fill("failovers-note", st.totals.failovers ? `${int(st.totals.failovers)} in the log, newest first${kept}` : "");
  }

  function renderAlerts(st) {
    const rows = st.alerts.slice(0, 10).map((a) => {
      const sev = String(a.severity || "alert").toLowerCase();
      const kind = /crit|error|page|bad|high/.test(sev) ? "bad" : /warn|medium/.test(sev) ? "warn" : "info";
      return h("tr", { class: "alert-row" },
        h("td", { class: "time" }, clock(a.t)),
        h("td", null, h("span", { class: "badge " + kind }, sev)),
        h("td", null, h("div", { class: "mono" }, a.title || "alert"), a.message ? h("div", { class: "reason" }, a.message) : null,
          a.details ? h("div", { class: "small" }, a.details) : null),
      );
    });
    fill("alerts", rows.length ? h("table", null, h("tbody", null, rows)) : h("div", { class: "empty" }, "No alerts in the log."));
    fill("alerts-note", st.totals.alerts ? `${int(st.totals.alerts)} in the log` : "");
  }

  function renderActivity(st) {
    const rows = st.activity.slice(0, 12).map((a) => h("tr", { class: "activity-row" },
      h("td", { class: "time" }, clock(a.t)),
      h("td", { class: "name" }, h("span", { class: "kind " + a.kind }), a.event),
      h("td", { class: "name muted" }, a.subject || ""),
      h("td", { class: "reason" }, a.reason || ""),
    ));
    fill("activity", rows.length ? h("table", null, h("tbody", null, rows)) : h("div", { class: "empty" }, "No cooldowns, ejections or rollout steps in the log."));
  }

  function render(st) {
    renderSource(st);
    renderKpis(st);
    renderCharts(st);
    renderEndpoints(st);
    renderRoutes(st);
    renderFailovers(st);
    renderAlerts(st);
    renderActivity(st);
    document.title = `holyroute \u00b7 ${int(st.totals.calls)} calls \u00b7 ${int(st.totals.errors)} errors`;
  }

  // ---- polling ---------------------------------------------------------------------------------------------------

  async function tick() {
    let delay = 2000;
    try {
      const response = await fetch("api/state", { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const st = await response.json();
      delay = st.source.poll_ms || 1000;
      render(st);
      document.body.dataset.version = String(st.version);
      if (st.source.error) setLive("down", st.source.error);
      else if (st.source.missing) setLive("waiting", "waiting for the events file");
      else if (st.source.behind_bytes > 0) {
        setLive("reading", `reading, ${compact(st.source.behind_bytes)}B to go`);
        delay = 0;
      } else setLive("live", "live");
    } catch (err) {
      setLive("down", `no answer from the dashboard (${err.message || err})`);
    }
    setTimeout(tick, delay);
  }

  tick();
})();
