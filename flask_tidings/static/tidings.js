// Flask-Tidings in the browser: one notification stream per browser and login, shared by its tabs.
//
// The tabs elect a leader with the Web Locks API; only the leader holds an EventSource, and it
// relays every event (and a beat each second) to the other tabs on a BroadcastChannel named for
// the user and login. When the leader goes away (closed, navigated, discarded) the next tab in
// the lock's queue leads at once, resuming from the newest id any tab saw; when it stops beating
// (the browser froze it) a follower steals the lock. Without Web Locks or BroadcastChannel every
// tab opens its own stream; without EventSource, tabs poll /notifications?since=.
//
// Presence: the tab holding the stream (the leader, or a tab on its own) tells the server, by
// POST to data-presence-url, whether any of the browser's tabs is visible ("looking"): when that
// changes (debounced) and whenever its stream (re)opens. Followers report their visibility on
// the channel. The POST carries the page's CSRF token from <meta name="csrf-token">, if any.
//
// This is transport only. A page shows events by registering handlers, in a script after this
// one (the stream starts at DOMContentLoaded): `Tidings.on("kind", function (n, live) { ... })` (`n` is the Notification object; `live`
// is false for what a poller's first request finds). Every event is also re-dispatched on
// `document` as a "tidings:<name>" CustomEvent. Pure parts live in tidings-core.js.
(function () {
  "use strict";
  var core = window.TidingsCore;

  var handlers = {};
  var api = {
    // Call handler(n, live) for each notification of `kind` this tab receives, once per id.
    on: function (kind, handler) {
      (handlers[kind] = handlers[kind] || []).push(handler);
      return api;
    },
  };
  window.Tidings = api;

  var body = document.body;
  var streamUrl = body.getAttribute("data-stream-url");
  if (!streamUrl) return; // not logged in
  var pollUrl = body.getAttribute("data-poll-url");
  var presenceUrl = body.getAttribute("data-presence-url");
  var loginUrl = body.getAttribute("data-login-url");
  var scope = body.getAttribute("data-stream-scope");
  var kinds = {};
  try { kinds = JSON.parse(body.getAttribute("data-event-kinds") || "{}") || {}; } catch (err) { kinds = {}; }
  var eventKinds = Object.keys(kinds);
  var cursor = new core.Cursor(body.getAttribute("data-last-event-id"));
  var seen = new core.Seen(kinds);
  var BEAT_MS = 1000;
  var watchdog = new core.Watchdog(3500);

  function deliver(n, live) {
    if (!seen.admit(n)) return;
    (handlers[n.name] || []).forEach(function (handler) {
      try { handler(n, live); } catch (err) { if (window.console) console.error(err); }
    });
    document.dispatchEvent(new CustomEvent("tidings:" + n.name, { detail: n }));
  }

  function setState(state, role) {
    body.setAttribute("data-stream-state", state);
    if (role) body.setAttribute("data-stream-role", role);
  }

  function toLogin() {
    window.location.href = loginUrl + "?next=" + encodeURIComponent(location.pathname + location.search);
  }

  // -- the stream: in the leader tab, or in every tab when they cannot share -----------------

  var source = null;
  var attempts = 0;
  var retryTimer = null;
  var relay = null; // the BroadcastChannel, when tabs share
  var role = "own";

  function onEvent(e) {
    attempts = 0;
    var n;
    try { n = JSON.parse(e.data); } catch (err) { return; }
    if (e.lastEventId) cursor.advance(e.lastEventId);
    if (relay) relay.postMessage({ type: "event", n: n, cursor: cursor.id });
    deliver(n, true);
  }

  function connect() {
    clearTimeout(retryTimer);
    if (source) source.close();
    source = new EventSource(streamUrl + "?last_event_id=" + encodeURIComponent(String(cursor.id)));
    // Every kind the server declares (Tidings(kinds=...)), not a list kept here.
    eventKinds.forEach(function (name) { source.addEventListener(name, onEvent); });
    source.onmessage = onEvent;
    source.onopen = function () {
      attempts = 0;
      setState("open");
      reportLooking(true); // a new stream on the server starts as not looking
    };
    source.onerror = function () {
      // CONNECTING: the browser retries by itself (after the server's retry:), with Last-Event-ID.
      // CLOSED: the server answered with something other than a 200 stream (401, 429, 503).
      if (!source) return;
      setState(source.readyState === EventSource.CLOSED ? "closed" : "connecting");
      if (source.readyState !== EventSource.CLOSED) return;
      source.close();
      source = null;
      // Why: a 401 (logged out), a server that can never hold a stream (it says so in a
      // header: fall back to polling), or anything else (try again later).
      fetch(streamUrl, { method: "HEAD", credentials: "same-origin" })
        .then(function (r) {
          if (r.status === 401) { loggedOut(); return; }
          var why = r.headers.get("X-Tidings-Unavailable");
          if (why) { fallBack(why); return; }
          retryLater();
        })
        .catch(retryLater);
    };
  }

  // This server cannot hold streams (`flask run`, a sync worker): every tab polls instead, and
  // the page is told why once (the console, and a `tidings:fallback` event on document).
  function fallBack(why) {
    if (relay) relay.postMessage({ type: "poll" });
    if (window.console) console.warn("Tidings: no live stream here (" + why + "); polling every 10 s instead.");
    document.dispatchEvent(new CustomEvent("tidings:fallback", { detail: { reason: why } }));
    pollInstead();
  }

  function pollInstead() {
    if (relay) unshare();
    else disconnect();
    poll();
  }

  function retryLater() {
    clearTimeout(retryTimer);
    retryTimer = setTimeout(connect, core.backoff(attempts++, 1000, 30000));
  }

  function disconnect() {
    clearTimeout(retryTimer);
    if (source) source.close();
    source = null;
  }

  function loggedOut() {
    if (relay) relay.postMessage({ type: "logout" });
    toLogin();
  }

  // A prompt reconnect when the network or the tab comes back, rather than at the backoff's end.
  function reconnectNow() {
    if ((role === "own" || role === "leader") && (!source || source.readyState === EventSource.CLOSED)) {
      attempts = 0;
      connect();
    }
  }
  window.addEventListener("online", reconnectNow);
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") reconnectNow();
  });

  // -- presence: is any tab of this browser looking? ----------------------------------------------

  var tabId = Math.random().toString(36).slice(2);
  var LOOKING_MS = 5000; // a follower's "visible" counts this long unless repeated
  var othersLooking = {}; // follower tab id -> until when its "visible" counts (ms)
  var reported = null;
  var reportTimer = null;
  var meta = document.querySelector('meta[name="csrf-token"]');

  function visible() { return document.visibilityState === "visible"; }

  function looking() {
    if (visible()) return true;
    var now = Date.now();
    return Object.keys(othersLooking).some(function (id) { return othersLooking[id] > now; });
  }

  var SETTLE_MS = 300; // switching tabs hides one a moment before the next one shows
  var lookingFailures = 0;
  var lookingRetry = null;
  var retrying = false; // a report that failed waits for its backoff: nothing else sends meanwhile

  function sendLooking(value) {
    reported = value;
    var headers = { "Content-Type": "application/json" };
    if (meta) headers["X-CSRFToken"] = meta.getAttribute("content");
    fetch(presenceUrl, {
      method: "POST", credentials: "same-origin", keepalive: true, headers: headers,
      body: JSON.stringify({ looking: value }),
    }).then(function (r) {
      if (r.ok) { lookingFailures = 0; return; }
      if (r.status === 401) return; // logged out: the stream says so too
      throw new Error(String(r.status));
    }).catch(function () {
      // Not heard (a 429, a 503, the network): the server must not keep a stale "looking",
      // which would hold back pushes; say it again, backing off.
      reported = null;
      retrying = true;
      clearTimeout(lookingRetry);
      lookingRetry = setTimeout(function () {
        retrying = false;
        reportLooking(true);
      }, core.backoff(lookingFailures++, 2000, 60000));
    });
  }

  // The stream's tab says whether any tab looks, when that changed and has held for SETTLE_MS;
  // a tab with no other tab to switch to says "no longer" at once (a hidden page may not run
  // again). `force`: say it even if it did not change.
  function reportLooking(force) {
    if (!presenceUrl || (role !== "leader" && role !== "own") || retrying) return;
    if (force) reported = null;
    clearTimeout(reportTimer);
    function say() {
      if (role !== "leader" && role !== "own") return; // a demoted leader says nothing more
      var value = looking();
      if (reported !== value) sendLooking(value);
    }
    if (!looking() && Object.keys(othersLooking).length === 0) say();
    else reportTimer = setTimeout(say, SETTLE_MS);
  }

  function tellLeader() {
    if (relay && role === "follower") relay.postMessage({ type: "looking", tab: tabId, visible: visible() });
  }

  document.addEventListener("visibilitychange", function () {
    tellLeader();
    reportLooking(false);
  });

  // -- sharing one stream between tabs ----------------------------------------------------------

  var election = null;
  var beatTimer = null;
  var watchTimer = null;
  var watchTicks = 0;

  function lead() {
    role = "leader";
    othersLooking = {};
    setState("connecting", "leader");
    connect();
    clearInterval(beatTimer);
    beatTimer = setInterval(function () {
      relay.postMessage({ type: "beat", cursor: cursor.id, open: !!source && source.readyState === 1 });
      reportLooking(false); // a follower that vanished stops counting
    }, BEAT_MS);
  }

  function follow() {
    role = "follower";
    clearInterval(beatTimer);
    disconnect();
    watchdog.beat();
    setState("connecting", "follower");
    tellLeader();
  }

  function onRelay(e) {
    var msg = e.data || {};
    if (msg.type === "looking") { // from a follower: only the leader listens
      if (role === "leader" && msg.tab) {
        othersLooking[msg.tab] = msg.visible ? Date.now() + LOOKING_MS : 0;
        reportLooking(false);
      }
      return;
    }
    if (msg.cursor) cursor.advance(msg.cursor);
    if (role === "leader") return; // a stolen-from leader learns it from the lock, not from here
    watchdog.beat();
    if (msg.type === "event" && msg.n) {
      setState("open", "follower");
      deliver(msg.n, true);
    } else if (msg.type === "beat") {
      setState(msg.open ? "open" : "connecting", "follower");
    } else if (msg.type === "logout") {
      toLogin();
    } else if (msg.type === "poll") {
      pollInstead();
    }
  }

  function share() {
    relay = new BroadcastChannel("tidings:" + scope);
    relay.onmessage = onRelay;
    follow();
    election = new core.Election(navigator.locks, "tidings-stream:" + scope, lead, follow);
    election.start();
    clearInterval(watchTimer);
    watchTimer = setInterval(function () {
      if (role === "follower" && visible() && ++watchTicks % 4 === 0) tellLeader(); // every 2 s
      // A leader that stopped beating (frozen by the browser) must not silence the others.
      if (role === "follower" && watchdog.expired()) {
        watchdog.beat(); // one steal per timeout, however many followers noticed
        setTimeout(function () { if (role === "follower") election.steal(); }, Math.random() * 500);
      }
    }, 500);
  }

  function unshare() {
    clearInterval(beatTimer);
    clearInterval(watchTimer);
    if (election) election.resign();
    election = null;
    disconnect();
    if (relay) relay.close();
    relay = null;
  }

  // -- start, and the page's lifecycle -----------------------------------------------------------

  function start() {
    if (!window.EventSource) { poll(); return; }
    if (scope && core.canShare(window)) { share(); return; }
    role = "own";
    setState("connecting", "own");
    connect();
  }

  // Without EventSource: poll /notifications?since= with a timestamp cursor.
  function poll() {
    var since = 0;
    var first = true;
    role = "own";
    setState("polling", "own");
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

  // Leaving (or entering the back/forward cache): give the stream and the lock up at once, so
  // another tab leads; coming back from the cache: take part again.
  window.addEventListener("pagehide", function () { if (relay) unshare(); else disconnect(); });
  window.addEventListener("pageshow", function (e) { if (e.persisted) start(); });
  // Start once the page's own scripts (after this one) have registered their handlers.
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else setTimeout(start, 0);
})();
