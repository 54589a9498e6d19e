// The status page: renders the server's data, and renders it again after each change
// the server announces on its event stream (debounced), without reloading the page.
// Everything is built with DOM methods and textContent: nothing from the data is ever
// parsed as HTML.
(function () {
  "use strict";

  var root = document.getElementById("status");
  var dataUrl = root.dataset.dataUrl;
  var streamUrl = root.dataset.streamUrl;
  var loginUrl = root.dataset.loginUrl;
  var DEBOUNCE_MS = 500;
  // The importing nodes' figures are written a second or so after their records (each
  // worker adds them up first): look once more after a burst of changes has settled.
  var SETTLE_MS = 2500;
  var REFRESH_MS = 60000; // export states and relative times change without a feed entry
  var RECONNECT_MS = 5000;

  var data = JSON.parse(document.getElementById("initial-data").textContent);
  var source = null;
  var pending = null;
  var fetching = false;
  var fetchAgain = false;

  // Helpers -------------------------------------------------------------------------

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function when(ms) {
    if (!ms) return "never";
    var d = new Date(ms);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) +
      " " + pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds()) + " UTC";
  }

  function ago(ms) {
    if (!ms) return "";
    var s = Math.round((data.generated_at - ms) / 1000);
    var future = s < 0;
    s = Math.abs(s);
    var text = s < 90 ? s + " s" : s < 5400 ? Math.round(s / 60) + " min" :
      s < 172800 ? (s / 3600).toFixed(1) + " h" : (s / 86400).toFixed(1) + " days";
    return future ? "in " + text : text + " ago";
  }

  function timeNode(ms) {
    var node = el("time", null, ms ? ago(ms) : "never");
    if (ms) {
      node.dateTime = new Date(ms).toISOString();
      node.title = when(ms);
    }
    return node;
  }

  function row(list, label, value) {
    list.appendChild(el("dt", null, label));
    var dd = el("dd");
    if (value instanceof Node) dd.appendChild(value); else dd.textContent = value;
    list.appendChild(dd);
  }

  function empty(text) { return el("p", "muted empty", text); }

  // Sections ------------------------------------------------------------------------

  function renderHealth() {
    var badge = document.getElementById("health-badge");
    badge.textContent = data.health.status;
    badge.dataset.status = data.health.status;
    var list = clear(document.getElementById("checks"));
    (data.health.checks || []).forEach(function (check) {
      var item = el("li", check.ok ? "ok" : "failing");
      item.appendChild(el("span", "check-name", check.name));
      item.appendChild(el("span", "check-state", check.ok ? "ok" : "failing"));
      if (check.reason) item.appendChild(el("span", "check-reason muted", check.reason));
      list.appendChild(item);
    });
  }

  function renderCameras() {
    var list = clear(document.getElementById("camera-list"));
    document.getElementById("camera-count").textContent = data.cameras.length || "";
    if (!data.cameras.length) list.appendChild(empty("No camera has been heard from yet."));
    data.cameras.forEach(function (camera) {
      var card = el("article", "card camera " + (camera.connected ? "connected" : "seen"));
      card.dataset.cameraId = camera.camera_id;
      var head = el("header");
      head.appendChild(el("h3", null, camera.camera_id));
      head.appendChild(el("span", "pill", camera.connected ? "connected" : "seen"));
      card.appendChild(head);
      var facts = el("dl");
      row(facts, "last heard", timeNode(camera.last_seen));
      row(facts, "events", camera.event_count);
      row(facts, "files", camera.file_count);
      var status = camera.status_summary;
      if (status) {
        if (status.institution) row(facts, "where", status.institution);
        var kit = [status.lens, status.sensor].filter(Boolean).join(", ");
        if (kit) row(facts, "camera", kit);
        if (status.latitude !== null && status.longitude !== null) {
          row(facts, "position", status.latitude.toFixed(3) + ", " + status.longitude.toFixed(3));
        }
        row(facts, "status since", timeNode(status.since));
      } else {
        row(facts, "status", "none in force");
      }
      card.appendChild(facts);
      list.appendChild(card);
    });
  }

  function renderEvents() {
    var list = clear(document.getElementById("event-list"));
    if (!data.events.length) list.appendChild(empty("No event has been stored yet."));
    data.events.forEach(function (event) {
      var card = el("figure", "event");
      card.dataset.eventId = event.event_id;
      if (event.thumbnail) {
        var img = el("img", "thumb");
        img.src = event.thumbnail;
        img.alt = event.thumbnail_name ? "Image " + event.thumbnail_name + " of event from " + event.camera_id : "";
        img.loading = "lazy";
        img.decoding = "async";
        img.addEventListener("error", function () {
          var placeholder = el("div", "thumb placeholder", "no preview");
          if (img.parentNode) img.parentNode.replaceChild(placeholder, img);
        });
        card.appendChild(img);
      } else {
        card.appendChild(el("div", "thumb placeholder", "no image"));
      }
      var caption = el("figcaption");
      caption.appendChild(el("strong", null, event.camera_id));
      caption.appendChild(el("span", "muted", " " + event.type.replace(/^meteorpi:/, "")));
      caption.appendChild(el("br"));
      var t = timeNode(event.time);
      t.textContent = when(event.time);
      caption.appendChild(t);
      caption.appendChild(el("span", "muted", " · " + event.file_count + (event.file_count === 1 ? " file" : " files")));
      card.appendChild(caption);
      list.appendChild(card);
    });
  }

  function bytes(n) {
    var units = ["B", "KiB", "MiB", "GiB", "TiB"];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }

  function renderNodes() {
    var list = clear(document.getElementById("node-list"));
    if (!data.nodes.length) list.appendChild(empty("No node has imported here yet."));
    data.nodes.forEach(function (node) {
      var card = el("article", "card node" + (node.last_problem ? " problem" : ""));
      card.dataset.user = node.user;
      card.appendChild(el("h3", null, node.user));
      var facts = el("dl");
      row(facts, "last import", timeNode(node.last_import_at_ms));
      row(facts, "last 24 h", node.last_24h.entities + " records, " + bytes(node.last_24h.bytes));
      row(facts, "in all", node.total.entities + " records, " + bytes(node.total.bytes));
      if (node.origin_server) row(facts, "server", node.origin_server.slice(0, 12) + "…");
      if (node.last_problem) {
        var problem = el("span", "error-text", (node.last_problem.message || node.last_problem.kind) + " ");
        problem.appendChild(timeNode(node.last_problem.at_ms));
        row(facts, "last problem", problem);
      }
      card.appendChild(facts);
      list.appendChild(card);
    });
  }

  function renderExports() {
    var list = clear(document.getElementById("export-list"));
    if (!data.exports.length) list.appendChild(empty("No export configured."));
    data.exports.forEach(function (target) {
      var state = target.state || "unknown";
      var card = el("article", "card export state-" + state);
      card.dataset.exportName = target.name;
      var head = el("header");
      head.appendChild(el("h3", null, target.name));
      head.appendChild(el("span", "pill", state.replace(/_/g, " ")));
      card.appendChild(head);
      var facts = el("dl");
      row(facts, "target", target.target_url || "");
      var backlog = target.backlog || {};
      row(facts, "backlog", backlog.counted ? backlog.pending + " to send" :
        "not counted until the target answers");
      if (backlog.failed) row(facts, "given up", backlog.failed);
      if (target.sent) row(facts, "sent", target.sent.entities + " records, " + bytes(target.sent.bytes));
      row(facts, "last success", timeNode(target.last_success_at_ms));
      if (target.last_error) {
        var error = el("span", "error-text", target.last_error + " ");
        error.appendChild(timeNode(target.last_error_at_ms));
        row(facts, "last error", error);
      }
      if (target.until_ms) row(facts, "next attempt", timeNode(target.until_ms));
      if (target.disabled_reason) row(facts, "disabled", target.disabled_reason);
      card.appendChild(facts);
      list.appendChild(card);
    });
  }

  function render() {
    renderHealth();
    renderCameras();
    renderEvents();
    renderNodes();
    renderExports();
    var updated = document.getElementById("updated");
    updated.textContent = when(data.generated_at);
    updated.dateTime = new Date(data.generated_at).toISOString();
    root.dataset.sequence = data.sequence;
  }

  // Following changes ----------------------------------------------------------------

  function setLive(state) {
    var live = document.getElementById("live");
    live.dataset.state = state;
    live.textContent = state;
  }

  function refresh() {
    if (fetching) { fetchAgain = true; return; }
    fetching = true;
    fetch(dataUrl, { credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (response) {
        if (response.status === 401) { window.location.assign(loginUrl); return null; }
        if (!response.ok) throw new Error("status " + response.status);
        return response.json();
      })
      .then(function (fresh) {
        if (fresh) { data = fresh; render(); }
      })
      .catch(function () { setLive("offline"); })
      .then(function () {
        fetching = false;
        if (fetchAgain) { fetchAgain = false; refresh(); }
      });
  }

  var settling = null;

  function changed() {
    if (settling !== null) window.clearTimeout(settling);
    settling = window.setTimeout(function () { settling = null; refresh(); }, SETTLE_MS);
    if (pending !== null) return;
    pending = window.setTimeout(function () { pending = null; refresh(); }, DEBOUNCE_MS);
  }

  function follow() {
    if (!window.EventSource) { setLive("polling"); return; }
    source = new EventSource(streamUrl + "?since=" + encodeURIComponent(data.sequence));
    source.addEventListener("open", function () { setLive("live"); });
    source.addEventListener("change", changed);
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (the session ended, say): find out why, and try again later from
        // what the page shows now.
        setLive("offline");
        source = null;
        refresh();
        window.setTimeout(follow, RECONNECT_MS);
      } else {
        setLive("reconnecting");
      }
    });
  }

  render();
  follow();
  window.setInterval(refresh, REFRESH_MS);
})();
