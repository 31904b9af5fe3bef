// Conveyor web UI: a little JavaScript on top of server-rendered pages.
// - live regions ([data-refresh]) re-rendered by the server and swapped in every few seconds
// - actions (trigger, cancel, re-run, drain, resume, enable/disable, delete) through the
//   JSON API with fetch()
// - the build log: tail first, older parts on demand, live through Server-Sent Events,
//   ANSI colours turned into <span class="ansi-…"> (no inline styles: the CSP forbids them).
"use strict";

// ---- API calls -------------------------------------------------------------------------

function cookie(name) {
  const hit = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
  return hit ? decodeURIComponent(hit.slice(name.length + 1)) : null;
}

async function api(method, url, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    const csrf = cookie("conveyor_csrf");
    if (csrf) headers["X-CSRF-Token"] = csrf;
  }
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  const type = response.headers.get("Content-Type") || "";
  if (type.includes("json")) data = await response.json();
  if (!response.ok) {
    const detail = data && (data.detail || data.title);
    const errors = data && Array.isArray(data.errors) ? " " + data.errors.join("; ") : "";
    throw new Error((detail || `${response.status} ${response.statusText}`) + errors);
  }
  return data;
}

function flash(message) {
  const box = document.querySelector(".flash");
  if (!box) return;
  box.textContent = message;
  box.hidden = !message;
}

// ---- live regions ------------------------------------------------------------------------

const regions = [];

async function refreshRegion(region) {
  if (region.busy) return;
  region.busy = true;
  try {
    const response = await fetch(region.el.dataset.refresh, { credentials: "same-origin" });
    if (response.redirected || !response.ok) return; // logged out or server trouble: keep what we show
    const html = await response.text();
    if (html !== region.last && !region.el.contains(document.activeElement)) {
      region.el.innerHTML = html;
      region.last = html;
      document.dispatchEvent(new CustomEvent("conveyor:refreshed", { detail: region.el }));
    }
    if (region.el.querySelector("[data-finished]")) region.el.dataset.stopped = "";
  } catch (err) {
    // network blip: the next tick retries
  } finally {
    region.busy = false;
  }
}

// Parts marked data-events are refreshed when /ui/events says something changed; while
// that stream is up they poll only every EVENTS_FALLBACK ms, as a safety net. Other
// parts (a running build's steps, the cluster's heartbeats) poll at their interval.
const EVENTS_FALLBACK = 30000;
let eventsUp = false;

function startRegions() {
  document.querySelectorAll("[data-refresh]").forEach((el) => {
    const region = { el, last: null, busy: false, at: Date.now() };
    regions.push(region);
    const seconds = Number(el.dataset.interval || 5);
    setInterval(() => {
      if (document.hidden || "stopped" in el.dataset) return;
      if ("events" in el.dataset && eventsUp && Date.now() - region.at < EVENTS_FALLBACK) return;
      region.at = Date.now();
      refreshRegion(region);
    }, seconds * 1000);
  });
  if (!regions.some((r) => "events" in r.el.dataset)) return;
  const source = new EventSource("/ui/events", { withCredentials: true });
  source.addEventListener("ready", () => (eventsUp = true));
  source.addEventListener("error", () => (eventsUp = false)); // it reconnects by itself
  source.addEventListener("change", () => {
    regions.forEach((r) => {
      if (!("events" in r.el.dataset) || "stopped" in r.el.dataset) return;
      r.at = Date.now();
      refreshRegion(r);
    });
  });
}

function refreshAllNow() {
  regions.forEach((r) => {
    delete r.el.dataset.stopped;
    refreshRegion(r);
  });
}

// ---- actions -------------------------------------------------------------------------------

function parametersOf(form) {
  const parameters = {};
  form.querySelectorAll("input, select").forEach((field) => {
    if (!field.name) return;
    if (field.dataset.type === "boolean") parameters[field.name] = field.checked ? "true" : "false";
    else if (field.value !== "") parameters[field.name] = field.value;
  });
  return parameters;
}

async function startBuild(url, parameters) {
  const build = await api("POST", url, { parameters });
  window.location.assign(`/ui/builds/${build.id}`);
}

document.addEventListener("submit", async (event) => {
  const form = event.target.closest("form[data-trigger]");
  if (!form) return;
  event.preventDefault();
  const error = form.querySelector(".form-error");
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    await startBuild(form.dataset.trigger, parametersOf(form));
  } catch (err) {
    error.textContent = err.message;
    error.hidden = false;
    button.disabled = false;
  }
});

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-post], button[data-rerun], button[data-delete]");
  if (!button) return;
  if (button.dataset.delete && !window.confirm(button.dataset.confirm || "Delete?")) return;
  button.disabled = true;
  flash("");
  try {
    if (button.dataset.delete) {
      await api("DELETE", button.dataset.delete);
      window.location.assign(button.dataset.then || "/ui/");
      return;
    }
    if (button.dataset.rerun) {
      await startBuild(button.dataset.rerun, JSON.parse(button.dataset.params || "{}"));
      return;
    }
    await api("POST", button.dataset.post);
    refreshAllNow();
  } catch (err) {
    flash(err.message);
  } finally {
    button.disabled = false;
  }
});

// Artifact links are plain links: with a login session the browser sends the session
// cookie and downloads natively (streamed to disk, any size). Without one (the page is
// reached with an API token in an Authorization header, which browsers never add to a
// download), fetch it with the same credentials and hand the bytes over as a blob.
document.addEventListener("click", async (event) => {
  const link = event.target.closest("a[data-artifact]");
  if (!link || cookie("conveyor_csrf")) return;
  event.preventDefault();
  flash("");
  try {
    const response = await fetch(link.href, { credentials: "same-origin" });
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    const url = URL.createObjectURL(await response.blob());
    const save = document.createElement("a");
    save.href = url;
    save.download = link.dataset.artifact;
    document.body.appendChild(save);
    save.click();
    save.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (err) {
    flash(`Could not download ${link.dataset.artifact}: ${err.message}`);
  }
});

// ---- build state -------------------------------------------------------------------------

const FINISHED = ["succeeded", "failed", "cancelled", "timed_out", "lost"];

function applyBuildState(state) {
  const finished = FINISHED.includes(state);
  document.querySelectorAll("[data-running-only]").forEach((el) => (el.hidden = finished));
  document.querySelectorAll("[data-finished-only]").forEach((el) => (el.hidden = !finished));
  document.querySelectorAll("[data-build-state]").forEach((el) => {
    el.dataset.buildState = state;
    el.innerHTML = `<span class="state state-${state}">${state.replace("_", " ")}</span>`;
  });
}

document.addEventListener("conveyor:refreshed", (event) => {
  const el = event.detail.querySelector("[data-build-state]");
  if (el) applyBuildState(el.dataset.buildState);
});

// ---- ANSI → HTML ------------------------------------------------------------------------

function escapeHtml(text) {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

// Nearest of the 16 basic colours for 256-colour and true-colour codes.
const BASIC = [
  [0, 0, 0], [205, 49, 49], [13, 188, 121], [229, 229, 16], [36, 114, 200], [188, 63, 188],
  [17, 168, 205], [229, 229, 229], [102, 102, 102], [241, 76, 76], [35, 209, 139],
  [245, 245, 67], [59, 142, 234], [214, 112, 214], [41, 184, 219], [255, 255, 255],
];
function nearestBasic(r, g, b) {
  let best = 0;
  let bestDistance = Infinity;
  BASIC.forEach(([R, G, B], i) => {
    const d = (R - r) ** 2 + (G - g) ** 2 + (B - b) ** 2;
    if (d < bestDistance) [best, bestDistance] = [i, d];
  });
  return best;
}
function from256(n) {
  if (n < 16) return n;
  if (n >= 232) {
    const v = 8 + (n - 232) * 10;
    return nearestBasic(v, v, v);
  }
  const c = n - 16;
  const level = (x) => (x === 0 ? 0 : 55 + x * 40);
  return nearestBasic(level(Math.floor(c / 36)), level(Math.floor(c / 6) % 6), level(c % 6));
}

class AnsiState {
  constructor() {
    this.reset();
  }
  reset() {
    this.fg = null;
    this.bg = null;
    this.bold = false;
    this.dim = false;
    this.italic = false;
    this.underline = false;
  }
  classes() {
    const c = [];
    if (this.fg !== null) c.push(`ansi-fg-${this.fg}`);
    if (this.bg !== null) c.push(`ansi-bg-${this.bg}`);
    if (this.bold) c.push("ansi-bold");
    if (this.dim) c.push("ansi-dim");
    if (this.italic) c.push("ansi-italic");
    if (this.underline) c.push("ansi-underline");
    return c.join(" ");
  }
  apply(params) {
    const codes = params === "" ? [0] : params.split(";").map((p) => Number(p || 0));
    for (let i = 0; i < codes.length; i++) {
      const code = codes[i];
      if (code === 0) this.reset();
      else if (code === 1) this.bold = true;
      else if (code === 2) this.dim = true;
      else if (code === 3) this.italic = true;
      else if (code === 4) this.underline = true;
      else if (code === 22) this.bold = this.dim = false;
      else if (code === 23) this.italic = false;
      else if (code === 24) this.underline = false;
      else if (code >= 30 && code <= 37) this.fg = code - 30;
      else if (code >= 90 && code <= 97) this.fg = code - 90 + 8;
      else if (code === 39) this.fg = null;
      else if (code >= 40 && code <= 47) this.bg = code - 40;
      else if (code >= 100 && code <= 107) this.bg = code - 100 + 8;
      else if (code === 49) this.bg = null;
      else if (code === 38 || code === 48) {
        let colour = null;
        if (codes[i + 1] === 5) {
          colour = from256(codes[i + 2] || 0);
          i += 2;
        } else if (codes[i + 1] === 2) {
          colour = nearestBasic(codes[i + 2] || 0, codes[i + 3] || 0, codes[i + 4] || 0);
          i += 4;
        }
        if (code === 38) this.fg = colour;
        else this.bg = colour;
      }
    }
  }
}

// Escape sequences: SGR (colours) are applied; other CSI and OSC sequences are dropped.
const ESCAPES = /\x1b\[([0-9;?]*)([A-Za-z])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][A-Za-z0-9]|\x1b[=>78]/g;

function ansiToHtml(text, state) {
  let html = "";
  let last = 0;
  const emit = (chunk) => {
    if (!chunk) return;
    const cls = state.classes();
    html += cls ? `<span class="${cls}">${escapeHtml(chunk)}</span>` : escapeHtml(chunk);
  };
  text.replace(ESCAPES, (match, params, command, index) => {
    emit(text.slice(last, index));
    last = index + match.length;
    if (command === "m") state.apply(params);
    return match;
  });
  emit(text.slice(last));
  return html;
}

// ---- the log viewer ------------------------------------------------------------------------

class LogView {
  constructor(section) {
    this.section = section;
    this.id = section.dataset.log;
    this.box = section.querySelector("[data-log-lines]");
    this.status = section.querySelector("[data-log-status]");
    this.older = section.querySelector("[data-log-older]");
    this.newer = section.querySelector("[data-log-newer]");
    this.follow = section.querySelector("[data-log-follow]");
    this.generation = 0; // bumped whenever the view is reloaded: stale streams stop
    this.older.addEventListener("click", () => this.loadOlder());
    this.newer.addEventListener("click", () => this.loadNewer());
    this.box.addEventListener("scroll", () => {
      const atBottom = this.box.scrollHeight - this.box.scrollTop - this.box.clientHeight < 24;
      if (!atBottom && this.follow.checked && !this.scrolling) this.follow.checked = false;
    });
    this.follow.addEventListener("change", () => this.scrollToEnd());
    window.addEventListener("hashchange", () => this.showAnchor());
  }

  // Line-number links are for pointing and sharing; they are left out of the Tab order
  // (a log has thousands), the log box itself is focusable and scrolls with the keys.
  lineElement(number) {
    const line = document.createElement("div");
    line.className = "line";
    line.id = `L${number}`;
    line.innerHTML = `<a class="ln" href="#L${number}" tabindex="-1" aria-label="line ${number}">${number}</a><span class="txt"></span>`;
    return line;
  }

  // Appends text at the end (it may end in the middle of a line).
  append(text) {
    const parts = text.split("\n");
    const fragment = document.createDocumentFragment();
    parts.forEach((part, i) => {
      const lastPart = i === parts.length - 1;
      if (lastPart && part === "") return;
      if (!this.current) {
        this.current = this.lineElement(this.nextLine++);
        fragment.appendChild(this.current);
      }
      const clean = part.includes("\r") ? part.replace(/\r+$/, "").split("\r").pop() : part;
      this.current.lastChild.insertAdjacentHTML("beforeend", ansiToHtml(clean, this.ansi));
      if (!lastPart) this.current = null;
    });
    this.box.appendChild(fragment);
    this.scrollToEnd();
  }

  scrollToEnd() {
    if (!this.follow.checked) return;
    this.scrolling = true;
    this.box.scrollTop = this.box.scrollHeight;
    requestAnimationFrame(() => (this.scrolling = false));
  }

  // Lines before what we show, rendered separately (own colour state) and put on top.
  prepend(window_) {
    const fragment = document.createDocumentFragment();
    const ansi = new AnsiState();
    let number = window_.first_line;
    const lines = window_.text.split("\n");
    if (lines[lines.length - 1] === "") lines.pop();
    lines.forEach((text) => {
      const line = this.lineElement(number++);
      line.lastChild.innerHTML = ansiToHtml(text.replace(/\r+$/, "").split("\r").pop(), ansi);
      fragment.appendChild(line);
    });
    const before = this.box.scrollHeight;
    this.box.insertBefore(fragment, this.box.firstChild);
    this.box.scrollTop += this.box.scrollHeight - before;
    this.start = window_.start;
    this.firstLine = window_.first_line;
    this.older.hidden = this.start === 0;
  }

  async loadOlder() {
    this.older.disabled = true;
    try {
      const url = `/ui/builds/${this.id}/log-window?end=${this.start}&end_line=${this.firstLine}`;
      this.prepend(await api("GET", url));
    } catch (err) {
      flash(`Could not load older lines: ${err.message}`);
    } finally {
      this.older.disabled = false;
    }
  }

  async loadNewer() {
    this.newer.disabled = true;
    try {
      const url = `/ui/builds/${this.id}/log-window?start=${this.offset}&start_line=${this.nextLine}`;
      const window_ = await api("GET", url);
      this.offset = window_.end;
      this.append(window_.text);
      this.atBottom(window_);
    } catch (err) {
      flash(`Could not load newer lines: ${err.message}`);
    } finally {
      this.newer.disabled = false;
    }
  }

  // (Re)load the view: the tail, or the part around one line (query "line=N").
  async load(query) {
    this.generation++;
    if (this.source) this.source.close();
    this.box.textContent = "";
    this.ansi = new AnsiState();
    this.current = null;
    const window_ = await api("GET", `/ui/builds/${this.id}/log-window${query}`);
    this.start = window_.start;
    this.firstLine = window_.first_line;
    this.nextLine = window_.first_line;
    this.offset = window_.end;
    this.older.hidden = this.start === 0;
    this.append(window_.text);
    this.atBottom(window_);
  }

  // What happens below the shown part: more to page through, the live stream, or the end.
  atBottom(window_) {
    const reachedEnd = window_.end >= window_.size;
    this.newer.hidden = reachedEnd;
    if (!reachedEnd) {
      this.status.textContent = `Showing lines ${this.firstLine}–${this.nextLine - 1}.`;
    } else if (FINISHED.includes(window_.state)) {
      this.finish(window_.state);
    } else {
      this.status.textContent = "Following the live log…";
      this.stream();
    }
  }

  wantedLine() {
    const match = /^#L(\d+)$/.exec(window.location.hash);
    return match ? Number(match[1]) : null;
  }

  async init() {
    const wanted = this.wantedLine();
    if (wanted) this.follow.checked = false;
    await this.load(wanted ? `?line=${wanted}` : "");
    await this.showAnchor();
  }

  // A #L123 link: mark the line, loading the part of the log around it if needed.
  async showAnchor() {
    const wanted = this.wantedLine();
    if (!wanted) return;
    this.box.querySelectorAll(".line.hl").forEach((el) => el.classList.remove("hl"));
    if (!document.getElementById(`L${wanted}`)) {
      this.follow.checked = false;
      await this.load(`?line=${wanted}`);
    }
    const line = document.getElementById(`L${wanted}`);
    if (line) {
      this.follow.checked = false;
      line.classList.add("hl");
      line.scrollIntoView({ block: "center" });
    }
  }

  stream() {
    const generation = this.generation;
    const source = new EventSource(`/api/v1/builds/${this.id}/log/stream?offset=${this.offset}`, {
      withCredentials: true,
    });
    this.source = source;
    source.addEventListener("log", (event) => {
      const data = JSON.parse(event.data);
      if (generation !== this.generation || data.offset !== this.offset) return; // stale or replayed
      this.offset = data.next_offset;
      this.append(data.text);
    });
    source.addEventListener("end", (event) => {
      source.close();
      if (generation === this.generation) this.finish(JSON.parse(event.data).state);
    });
    source.addEventListener("error", () => {
      // EventSource would reconnect from the first offset: reopen from where we are.
      source.close();
      if (generation === this.generation && !this.ended) setTimeout(() => this.stream(), 2000);
    });
  }

  finish(state) {
    this.ended = true;
    this.status.textContent = `Build ${state.replace("_", " ")}. ${this.nextLine - 1} lines.`;
    this.section.dataset.state = state;
    applyBuildState(state);
    refreshAllNow();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  startRegions();
  const section = document.querySelector("section[data-log]");
  if (section) {
    const view = new LogView(section);
    view.init().catch((err) => (view.status.textContent = `Could not load the log: ${err.message}`));
  }
});
