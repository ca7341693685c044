// Tidings in the browser: one EventSource per page drives the badge, toasts and progress bars.
// Every event is also re-dispatched on `document` as a "tidings:<name>" CustomEvent.
(function () {
  "use strict";

  // Show n unread messages in the navbar badge; hidden (not removed) at 0.
  function set_message_count(n) {
    var badge = document.getElementById("message_count");
    if (!badge) return;
    badge.textContent = String(n);
    badge.classList.toggle("invisible", !n);
  }
  window.set_message_count = set_message_count;

  // A small Bootstrap toast. Text goes in with textContent: message bodies are never HTML.
  function showToast(title, body, href) {
    var box = document.getElementById("toasts");
    if (!box) return;
    var toast = document.createElement("div");
    toast.className = "toast show";
    toast.setAttribute("role", "status");
    var head = document.createElement("div");
    head.className = "toast-header";
    var strong = document.createElement("strong");
    strong.className = "me-auto";
    strong.textContent = title;
    var close = document.createElement("button");
    close.type = "button";
    close.className = "btn-close";
    close.setAttribute("aria-label", "Close");
    close.addEventListener("click", function () { toast.remove(); });
    head.appendChild(strong);
    head.appendChild(close);
    var content = document.createElement(href ? "a" : "div");
    content.className = "toast-body d-block";
    if (href) content.href = href;
    content.textContent = body;
    toast.appendChild(head);
    toast.appendChild(content);
    box.appendChild(toast);
    setTimeout(function () { toast.remove(); }, 8000);
  }
  window.tidingsToast = showToast;

  var handlers = {
    unread_message_count: function (n) { set_message_count(n.data); },
    new_message: function (n, live) {
      if (live && n.data) showToast("Message from " + n.data.sender, n.data.preview, "/messages");
    },
    announcement: function (n, live) {
      if (live) showToast("Announcement", typeof n.data === "string" ? n.data : JSON.stringify(n.data));
    }
  };

  function deliver(n, live) {
    var handler = handlers[n.name];
    if (handler) handler(n, live);
    document.dispatchEvent(new CustomEvent("tidings:" + n.name, { detail: n }));
  }

  var body = document.body;
  var streamUrl = body.getAttribute("data-stream-url");
  if (!streamUrl) return; // not logged in
  var pollUrl = body.getAttribute("data-poll-url");
  var loginUrl = body.getAttribute("data-login-url");
  var lastId = body.getAttribute("data-last-event-id") || "0";
  var eventKinds = (body.getAttribute("data-event-kinds") || "").split(" ").filter(Boolean);
  var retryDelay = 1000;
  var source = null;

  function toLogin() {
    window.location.href = loginUrl + "?next=" + encodeURIComponent(location.pathname + location.search);
  }

  function onEvent(e) {
    if (e.lastEventId) lastId = e.lastEventId;
    retryDelay = 1000;
    var n;
    try { n = JSON.parse(e.data); } catch (err) { return; }
    deliver(n, true);
  }

  function connect() {
    source = new EventSource(streamUrl + "?last_event_id=" + encodeURIComponent(lastId));
    // Every kind the server declares (app/notifications/kinds.py), not a list kept here.
    eventKinds.forEach(function (name) { source.addEventListener(name, onEvent); });
    source.onmessage = onEvent;
    source.onopen = function () {
      retryDelay = 1000;
      body.setAttribute("data-stream-state", "open");
    };
    source.onerror = function () {
      // CONNECTING: the browser retries by itself, sending Last-Event-ID.
      // CLOSED: the server answered with something other than a 200 stream.
      body.setAttribute("data-stream-state", source.readyState === EventSource.CLOSED ? "closed" : "connecting");
      if (source.readyState !== EventSource.CLOSED) return;
      source.close();
      fetch(pollUrl + "?since=" + Date.now() / 1000, { credentials: "same-origin" })
        .then(function (r) {
          if (r.status === 401) { toLogin(); return; }
          setTimeout(connect, retryDelay);
          retryDelay = Math.min(retryDelay * 2, 30000);
        })
        .catch(function () {
          setTimeout(connect, retryDelay);
          retryDelay = Math.min(retryDelay * 2, 30000);
        });
    };
  }

  // Without EventSource: poll /notifications?since= with a timestamp cursor.
  function poll() {
    var since = 0;
    var first = true;
    function tick() {
      fetch(pollUrl + "?since=" + since, { credentials: "same-origin" })
        .then(function (r) {
          if (r.status === 401) { toLogin(); return null; }
          return r.ok ? r.json() : null;
        })
        .then(function (list) {
          if (list) {
            list.forEach(function (n) {
              since = Math.max(since, n.timestamp);
              deliver(n, !first);
            });
            first = false;
          }
        })
        .catch(function () {})
        .then(function () { setTimeout(tick, 10000); });
    }
    tick();
  }

  if (window.EventSource) connect(); else poll();
  window.addEventListener("pagehide", function () { if (source) source.close(); });
})();
