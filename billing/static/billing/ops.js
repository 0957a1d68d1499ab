// The ops dashboard: renders /ops/data with uPlot, refreshes every 10 s.
(function () {
  "use strict";
  const REFRESH_MS = 10000;
  const charts = {};

  function fmt(v) { return v === null || v === undefined ? "-" : (typeof v === "number" ? +v.toFixed(3) : v); }

  function rows(tbody, list) {
    tbody.replaceChildren(...list.map((cells) => {
      const tr = document.createElement("tr");
      for (const c of cells) { const td = document.createElement("td"); td.textContent = fmt(c); tr.appendChild(td); }
      return tr;
    }));
  }

  function chart(id, series, data) {
    const el = document.getElementById(id);
    const opts = { width: Math.max(380, el.clientWidth - 4), height: 220, series: [{}].concat(series), scales: { x: { time: true } } };
    if (charts[id]) { charts[id].setData(data); return; }
    charts[id] = new uPlot(opts, data, el);
  }

  function render(d) {
    const s = d.series;
    const t = s.map((p) => p.t);
    chart("chart-messages", [{ label: "in", stroke: "#1f77b4", width: 2 }, { label: "deliveries", stroke: "#ff7f0e", width: 2 }],
          [t, s.map((p) => p.messages_in), s.map((p) => p.messages_out)]);
    chart("chart-connections", [{ label: "connections", stroke: "#2ca02c", width: 2, fill: "rgba(44,160,44,.15)" }],
          [t, s.map((p) => p.connections)]);
    chart("chart-latency", [{ label: "p50", stroke: "#9467bd", width: 2, spanGaps: true, points: { show: true, size: 6 } },
           { label: "p99", stroke: "#d62728", width: 2, spanGaps: true, points: { show: true, size: 6 } }],
          [t, s.map((p) => p.p50), s.map((p) => p.p99)]);
    for (const k of ["active_rooms", "connections"]) document.getElementById(k).textContent = d[k];
    document.getElementById("mps").textContent = d.messages_per_second;
    document.getElementById("dps").textContent = d.deliveries_per_second;
    document.getElementById("p50").textContent = fmt(d.latency_hour.p50);
    document.getElementById("p99").textContent = fmt(d.latency_hour.p99);
    const alert = document.getElementById("alert");
    alert.textContent = d.alert.state + (d.alert.median_ms === null ? "" : " (" + fmt(d.alert.median_ms) + " ms)");
    document.getElementById("alert-tile").className = "tile " + d.alert.state;
    rows(document.querySelector("#costs tbody"), [
      ["today", d.cost_today.here.total, d.cost_today.durable_objects.total, d.cost_today.hosted.total],
      ["month", d.cost_month.here.total, d.cost_month.durable_objects.total, d.cost_month.hosted.total],
    ]);
    rows(document.querySelector("#top-cost tbody"), d.top_rooms_by_cost.map((r) => [r.room, r.here, r.durable_objects, r.hosted]));
    rows(document.querySelector("#top-latency tbody"), d.top_rooms_by_latency.map((r) => [r.room, r.p50, r.p99, r.count]));
    const ops = [];
    for (const what of Object.keys(d.ops)) for (const code of Object.keys(d.ops[what])) ops.push([what, code, d.ops[what][code]]);
    rows(document.querySelector("#ops tbody"), ops);
    document.getElementById("updated").textContent = "updated " + new Date(d.now * 1000).toISOString().slice(11, 19) + " UTC";
    document.body.dataset.rendered = String(Date.now());
  }

  async function refresh() {
    try {
      const response = await fetch(window.OPS_DATA_URL, { credentials: "same-origin" });
      if (response.ok) render(await response.json());
    } catch (e) { /* the next refresh retries */ }
  }

  render(JSON.parse(document.getElementById("ops-data").textContent));
  setInterval(refresh, REFRESH_MS);
})();
