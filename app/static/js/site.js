// How Tidings' pages show notifications: the badge, the tab's title and icon, toasts. The stream
// itself is Flask-Tidings' browser client (window.Tidings, loaded before this script); the
// conversation pages and task progress bars have their own scripts.
(function () {
  "use strict";

  var i18n = window.tidingsI18n;
  var baseTitle = document.title.replace(/^\(\d+\) /, "");
  var favicon = document.getElementById("favicon");

  // Show n unread messages wherever the page shows the count: the navbar badge (hidden, not
  // removed, at 0), its copy on the collapsed phone navbar, counts in the page itself, the
  // tab's title ("(3) Tidings") and its icon (a red dot while anything is unread).
  function set_message_count(n) {
    n = Number(n) || 0;
    document.querySelectorAll("[data-unread-count]").forEach(function (el) {
      el.textContent = String(n);
      if (el.classList.contains("badge")) el.classList.toggle("invisible", !n);
    });
    document.querySelectorAll("[data-unread-sentence]").forEach(function (el) {
      el.textContent = i18n.n("unread", n);
    });
    document.title = (n ? "(" + n + ") " : "") + baseTitle;
    if (favicon) favicon.href = favicon.getAttribute(n ? "data-icon-unread" : "data-icon");
  }
  window.set_message_count = set_message_count;

  // The conversation this tab shows, if it is on screen: its messages need no toast.
  function lookingAt(username) {
    var thread = document.getElementById("thread");
    return !!thread && thread.getAttribute("data-with") === username &&
      thread.getAttribute("data-live") === "1" && document.visibilityState === "visible";
  }

  // Toasts: one per sender ("alice: 3 new messages"), the newest on top, a few at most.
  var MAX_TOASTS = 3;
  var TOAST_MS = 8000;
  var toasts = {}; // key -> {el, count, timer}

  // Bidirectional embeddings, overrides and isolates are removed from what others wrote (app/text.py).
  var BIDI_CONTROLS = /[\u202A-\u202E\u2066-\u2069]/g;
  function plain(text) { return String(text).replace(BIDI_CONTROLS, ""); }

  function element(tag, className, text) {
    var el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined) el.textContent = text; // never HTML: message bodies are text
    return el;
  }

  function showToast(key, title, body, href) {
    var box = document.getElementById("toasts");
    if (!box) return;
    var t = toasts[key];
    if (!t) {
      t = toasts[key] = { count: 0, el: element("div", "toast show") };
      t.el.setAttribute("role", "status");
      t.el.setAttribute("data-toast-key", key);
      var head = element("div", "toast-header");
      head.appendChild(element("strong", "me-auto toast-title"));
      var close = element("button", "btn-close");
      close.type = "button";
      close.setAttribute("aria-label", i18n.t("close"));
      close.addEventListener("click", function () { dismiss(key); });
      head.appendChild(close);
      t.el.appendChild(head);
      t.el.appendChild(element(href ? "a" : "div", "toast-body d-block"));
    }
    t.count += 1;
    t.el.querySelector(".toast-title").textContent = plain(typeof title === "function" ? title(t.count) : title);
    var content = t.el.querySelector(".toast-body");
    content.textContent = plain(body);
    if (href) content.href = href;
    box.insertBefore(t.el, box.firstChild);
    // A few passing toasts at most; services' toasts stay until dismissed, apart from these.
    var passing = box.querySelectorAll('.toast:not([data-toast-key^="service:"])');
    for (var i = MAX_TOASTS; i < passing.length; i++) dismiss(passing[i].getAttribute("data-toast-key"));
    clearTimeout(t.timer);
    t.timer = setTimeout(function () { dismiss(key); }, TOAST_MS);
  }

  function dismiss(key) {
    var t = toasts[key];
    if (!t) return;
    clearTimeout(t.timer);
    t.el.remove();
    delete toasts[key];
  }
  window.tidingsToast = function (title, body, href) { showToast("toast:" + Math.random(), title, body, href); };
  window.tidingsDismissToasts = function (sender) { dismiss("from:" + sender); };

  // Services' notifications (NOTIFICATION_KINDS_FILE): a toast from the kind's templates,
  // filled from the data as text, that stays until dismissed; a tab opened later shows what
  // is still stored. A link is followed only to this site or over https.
  var services = { kinds: {}, pending: [] };
  var servicesEl = document.getElementById("service_notifications");
  try { services = JSON.parse(servicesEl.textContent) || services; } catch (e) { /* none */ }

  function fillText(template, data) {
    return String(template || "").replace(/\{(\w+)\}/g, function (all, field) {
      var v = data[field];
      return v === undefined || v === null ? "" : typeof v === "object" ? JSON.stringify(v) : String(v);
    });
  }

  function fillLink(template, data) {
    var href = String(template).replace(/\{(\w+)\}/g, function (all, field) {
      var v = data[field];
      return v === undefined || v === null ? "" : encodeURIComponent(String(v));
    });
    var url;
    try { url = new URL(href, window.location.href); } catch (e) { return null; }
    if (url.origin === window.location.origin) return url.pathname + url.search + url.hash;
    return url.protocol === "https:" ? url.href : null;
  }

  function showService(n) {
    var shown = services.kinds[n.name];
    if (!shown || n.id === undefined || n.id === null) return;
    var data = n.data && typeof n.data === "object" ? n.data : {};
    var key = "service:" + n.id;
    if (toasts[key]) return;
    showToast(key, fillText(shown.title, data), fillText(shown.body, data), shown.link ? fillLink(shown.link, data) : null);
    var t = toasts[key];
    clearTimeout(t.timer); // stays until dismissed
    t.el.setAttribute("data-kind", n.name);
    t.el.querySelector(".btn-close").addEventListener("click", function () {
      fetch("/notifications/" + encodeURIComponent(n.id) + "/dismiss", {
        method: "POST",
        headers: { "X-CSRFToken": servicesEl.getAttribute("data-csrf") },
        credentials: "same-origin",
      }).catch(function () {});
    });
  }

  Object.keys(services.kinds).forEach(function (name) {
    window.Tidings.on(name, function (n) { showService(n); });
  });
  (services.pending || []).forEach(showService);

  window.Tidings
    .on("unread_message_count", function (n) { set_message_count(n.data); })
    .on("new_message", function (n, live) {
      var d = n.data;
      if (!live || !d || typeof d.sender !== "string" || lookingAt(d.sender)) return;
      showToast(
        "from:" + d.sender,
        function (count) {
          return count > 1 ? i18n.n("new_messages", count, { name: d.sender }) : i18n.t("message_from", { name: d.sender });
        },
        String(d.preview || ""),
        "/messages/" + encodeURIComponent(d.sender)
      );
    })
    .on("announcement", function (n, live) {
      if (live) window.tidingsToast(i18n.t("announcement"), typeof n.data === "string" ? n.data : JSON.stringify(n.data));
    });
})();
