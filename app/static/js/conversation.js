// One conversation, live: new messages appear (and are read while the tab is in sight), "Seen"
// under the last message sent, "bob is typing…", and the reply box (Enter sends, Shift+Enter
// starts a new line; the text stays until the server has taken it).
(function () {
  "use strict";
  var i18n = window.tidingsI18n;
  var thread = document.getElementById("thread");
  var form = document.getElementById("reply_form");
  if (!thread || !form) return;
  var other = thread.getAttribute("data-with");
  var live = thread.getAttribute("data-live") === "1";
  var csrf = thread.getAttribute("data-csrf");
  var lastId = Number(thread.getAttribute("data-last-id")) || 0;
  var box = form.querySelector("textarea");
  var counter = document.getElementById("char_count");
  var typingLine = document.getElementById("typing");
  var seenLine = document.getElementById("seen");
  var MAX = Number(box.getAttribute("data-max")) || 2000;
  var TYPING_EVERY_MS = 2000; // while typing, one signal per 2 s at most
  var TYPING_SHOWN_MS = 4000; // the other side shows it this long after the last signal

  function post(url) {
    return fetch(url, {
      method: "POST",
      headers: { "X-CSRFToken": csrf, Accept: "application/json" },
      credentials: "same-origin",
    });
  }

  function scrollToEnd() {
    form.scrollIntoView({ block: "end" });
  }

  // -- what arrives --------------------------------------------------------------------------

  var unreadHere = false;
  function readIfLooking() {
    if (!unreadHere || document.visibilityState !== "visible") return;
    unreadHere = false;
    if (window.tidingsDismissToasts) window.tidingsDismissToasts(other);
    post(thread.getAttribute("data-read-url")).catch(function () { unreadHere = true; });
  }
  document.addEventListener("visibilitychange", readIfLooking);

  // "Seen" under my last message, once the receipt covers it (its id or a later one).
  function showSeen(receipt) {
    var mine = thread.querySelectorAll(".message.mine");
    var last = mine.length ? mine[mine.length - 1] : null;
    var show = !!(receipt && last && Number(receipt.message_id) >= Number(last.getAttribute("data-message-id")));
    seenLine.hidden = !show;
    if (!show) return;
    last.insertAdjacentElement("afterend", seenLine);
    i18n.times.set(seenLine.querySelector("time"), receipt.at);
  }

  var fetching = false;
  var again = false;
  function fetchNewer() {
    if (fetching) { again = true; return; }
    fetching = true;
    fetch(thread.getAttribute("data-newer-url") + "?after=" + lastId, {
      headers: { Accept: "application/json" },
      credentials: "same-origin",
    })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (page) {
        if (!page || page.last_id <= lastId) return;
        var empty = document.getElementById("empty_thread");
        if (empty) empty.remove();
        thread.insertAdjacentHTML("beforeend", page.html); // rendered (and escaped) by the server
        i18n.times.render(thread);
        lastId = page.last_id;
        if (page.unread) {
          unreadHere = true;
          hideTyping();
          readIfLooking();
        }
        showSeen(page.seen);
        scrollToEnd();
        if (page.more) again = true; // more than a page arrived (after a reconnect): go on
      })
      .catch(function () {})
      .then(function () {
        fetching = false;
        if (again) { again = false; fetchNewer(); }
      });
  }

  var typingTimer = null;
  function hideTyping() {
    clearTimeout(typingTimer);
    typingLine.textContent = "";
  }

  if (live) {
    window.Tidings
      .on("conversation", function (n) {
        var d = n.data || {};
        if (d.with === other && Number(d.message_id) > lastId) fetchNewer();
      })
      .on("message_read", function (n) {
        var d = n.data || {};
        if (d.by === other) showSeen(d);
      })
      .on("typing", function (n) {
        var d = n.data || {};
        if (d.from !== other) return;
        typingLine.textContent = i18n.t("is_typing", { name: other });
        clearTimeout(typingTimer);
        typingTimer = setTimeout(hideTyping, TYPING_SHOWN_MS);
      });
  }

  // -- the reply box ---------------------------------------------------------------------------

  function count() {
    var n = Array.from(box.value.trim()).length; // characters, as the server counts them
    counter.textContent = n > MAX - 200 ? n.toLocaleString(i18n.lang) + " / " + MAX.toLocaleString(i18n.lang) : "";
    counter.classList.toggle("over", n > MAX);
  }

  var typingSent = 0;
  box.addEventListener("input", function () {
    count();
    var now = Date.now();
    if (live && box.value.trim() && now - typingSent > TYPING_EVERY_MS) {
      typingSent = now;
      post(thread.getAttribute("data-typing-url")).catch(function () {});
    }
  });

  box.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });

  function showError(text) {
    var alert = document.getElementById("reply_error");
    if (!alert) {
      alert = document.createElement("div");
      alert.className = "alert alert-danger";
      alert.setAttribute("role", "alert");
      alert.id = "reply_error";
      box.parentNode.insertBefore(alert, box);
    }
    alert.textContent = text;
  }

  var sending = false;
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    if (sending) return;
    sending = true;
    fetch(form.action, {
      method: "POST",
      body: new FormData(form),
      headers: { Accept: "application/json" },
      credentials: "same-origin",
    })
      .then(function (r) {
        // A proxy's error page is not JSON: the answer is then just "not sent".
        return r.json().catch(function () { return {}; }).then(function (body) { return { ok: r.ok, body: body }; });
      })
      .then(function (res) {
        // Only an id means stored: a login that ended answers with the login page (a 200).
        if (!res.ok || typeof res.body.id !== "number") {
          showError(res.body.error || i18n.t("not_sent"));
          return;
        }
        if (!live) { // an older page: the new message is on the newest one
          window.location.href = form.action + "#m" + res.body.id;
          return;
        }
        var alert = document.getElementById("reply_error");
        if (alert) alert.remove();
        box.value = "";
        typingSent = 0;
        count();
        fetchNewer();
      })
      .catch(function () { showError(i18n.t("unreachable")); })
      .then(function () { sending = false; box.focus(); });
  });

  count();
  if (!seenLine.hidden) {
    var mine = thread.querySelectorAll(".message.mine");
    if (mine.length) mine[mine.length - 1].insertAdjacentElement("afterend", seenLine);
  }
  if (live) scrollToEnd();
})();
