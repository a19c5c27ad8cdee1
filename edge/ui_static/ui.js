// The line page refreshes its figures from /api/status every second; the review page labels items with a click or
// a number key. Without this script both pages still work: the figures are those of the page load, and the review
// buttons post the plain form.
"use strict";

function fmt(value, kind) {  // as edge/ui_table.py's fmt()
  if (kind === "n") return String(value || 0);
  if (kind === "mode") return value ? "(" + value + ")" : "";
  if (value === null || value === undefined) return "-";
  if (kind === "pct") return (value * 100).toFixed(1) + " %";
  if (kind === "ms") return value.toFixed(2);
  if (kind === "rate") return value.toFixed(1);
  if (kind === "updown") return value ? "up" : "DOWN";
  if (kind === "alarm") return value ? "ALARM" : "ok";
  if (kind === "state") return value ? "running" : "stopped";
  if (kind === "sizes") return ["p20", "p50", "p80"].map((q) => value[q].toFixed(1)).join(" / ");
  return String(value);
}

function lookup(status, key) {
  let value = status;
  for (const part of key.split(".")) value = (value && typeof value === "object") ? value[part] : undefined;
  if ((value === undefined || value === null) && (key.startsWith("per_") || key.startsWith("items"))) return 0;
  return value;
}

function thumbs(items) {
  const list = document.getElementById("recent");
  const stems = items.map((i) => i.stem).join(",");
  if (list.dataset.stems === stems) return;
  list.dataset.stems = stems;
  list.replaceChildren(...items.map((item) => {
    const li = document.createElement("li");
    const img = document.createElement("img");
    img.src = "/review/" + encodeURIComponent(item.stem) + ".jpg";
    img.alt = item.stem; img.width = 96; img.height = 96;
    const saved = document.createElement("span"); saved.textContent = item.saved;
    const top = document.createElement("span");
    top.textContent = item.top3.map((t) => t.label + " " + t.p.toFixed(2)).join("\n");
    li.append(img, saved, top);
    return li;
  }));
  if (!items.length) { const li = document.createElement("li"); li.textContent = "none yet"; list.append(li); }
}

function trend(minutes) {  // as edge/ui.py's _trend_svg()
  const svg = document.getElementById("trend");
  if (!minutes.length) return;
  const top = Math.max(...minutes.map((m) => m.items_per_s)) || 1;
  const step = 600 / Math.max(minutes.length - 1, 1);
  const line = (values, cls) => {
    const poly = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    poly.setAttribute("class", cls); poly.setAttribute("fill", "none");
    poly.setAttribute("points", values.map((v, i) => (i * step).toFixed(1) + "," + (80 - v * 76).toFixed(1)).join(" "));
    return poly;
  };
  svg.replaceChildren(line(minutes.map((m) => m.items_per_s / top), "rate"),
                      line(minutes.map((m) => m.recheck_share || 0), "share"));
}

async function refresh() {
  try {
    const response = await fetch("/api/status", {cache: "no-store"});
    if (!response.ok) throw new Error(response.status);
    const status = await response.json();
    for (const cell of document.querySelectorAll("[data-key]")) {
      cell.textContent = fmt(lookup(status, cell.dataset.key), cell.dataset.fmt);
    }
    document.getElementById("figures-box").classList.toggle("alarm", status.alarm_active);
    const drift = status.drift || {};
    document.getElementById("drift").hidden = !drift.alarm;
    document.getElementById("drift-message").textContent = drift.message || "";
    document.getElementById("blind").hidden = !status.blind;
    document.getElementById("blind-message").textContent = status.blind || "";
    thumbs(status.review);
    trend(status.trends);
    document.getElementById("belt-view").src = "/frame.jpg?" + Date.now();
    document.body.dataset.refreshed = String(Date.now());
  } catch (error) {
    document.getElementById("state").textContent = "no answer from the runner";
  }
}

function reviewPage() {
  const field = document.getElementById("token");
  const message = document.getElementById("message");
  const query = new URLSearchParams(location.search);
  if (query.get("token")) {  // ?token= is kept for this tab, and taken out of the address bar
    sessionStorage.setItem("mineralnet-token", query.get("token"));
    history.replaceState(null, "", location.pathname);
  }
  if (!field.value) field.value = sessionStorage.getItem("mineralnet-token") || "";
  field.addEventListener("change", () => sessionStorage.setItem("mineralnet-token", field.value));
  const items = () => Array.from(document.querySelectorAll(".queue li.item"));
  function current() {
    const all = items();
    const mark = all.find((li) => !li.classList.contains("done")) || null;
    all.forEach((li) => li.classList.toggle("current", li === mark));
    return mark;
  }
  async function label(li, chosen) {
    const response = await fetch("/api/label", {
      method: "POST", headers: {"Content-Type": "application/json", "X-Token": field.value},
      body: JSON.stringify({stem: li.dataset.stem, label: chosen}),
    });
    const answer = await response.json();
    if (!response.ok) {
      message.textContent = response.status + ": " + answer.error; message.className = "error";
      return;
    }
    message.textContent = li.dataset.stem + ": " + answer.label; message.className = "";
    li.classList.add("done");
    li.querySelector(".answer").textContent = "labelled: " + answer.label;
    li.querySelectorAll("button").forEach((b) => b.classList.toggle("chosen", b.dataset.label === answer.label));
    current();
  }
  document.getElementById("review").addEventListener("submit", (event) => {
    event.preventDefault();
    const button = event.submitter;
    if (button) label(button.closest("li"), button.dataset.label);
  });
  document.addEventListener("keydown", (event) => {
    if (event.target === field || !/^[1-9]$/.test(event.key)) return;
    const li = current();
    const button = li && li.querySelectorAll("button")[Number(event.key) - 1];
    if (button) { event.preventDefault(); label(li, button.dataset.label); }
  });
  current();
}

document.addEventListener("DOMContentLoaded", () => {
  if (document.body.dataset.page === "line") { refresh(); setInterval(refresh, 1000); }
  if (document.body.dataset.page === "review") reviewPage();
});
