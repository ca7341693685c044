// The parts of Flask-Tidings' browser client that need no browser: backoff, the shared cursor,
// the per-tab filter that handles no event twice, the leader's watchdog and the election over
// the Web Locks API. tidings.js uses them as window.TidingsCore; node's test runner
// (tests/js/, `make test`) requires this file directly.
(function (root, factory) {
  "use strict";
  var core = factory();
  if (typeof module === "object" && module.exports) module.exports = core;
  else root.TidingsCore = core;
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";

  // Exponential backoff with full jitter: a delay anywhere in [0, min(cap, base * 2^attempt)),
  // so browsers cut off together (a deploy, a proxy restart) do not come back together.
  function backoff(attempt, base, cap, random) {
    var ceiling = Math.min(cap, base * Math.pow(2, Math.max(0, attempt)));
    return Math.floor((random || Math.random)() * ceiling);
  }

  // The newest notification id any tab of this login has seen: where a new leader resumes.
  function Cursor(initial) {
    this.id = Number(initial) || 0;
  }
  Cursor.prototype.advance = function (id) {
    var n = Number(id);
    if (!isFinite(n) || n <= this.id) return false;
    this.id = n;
    return true;
  };

  // What a notification replaces, by the server's rule (Kind.key): its name, or, for a kind
  // declared with a `per` field, its name and that field's value. `kinds` maps each declared
  // name to its `per` field or null (the page's data-event-kinds).
  function keyOf(n, kinds) {
    var per = kinds && Object.prototype.hasOwnProperty.call(kinds, n.name) ? kinds[n.name] : null;
    if (per && n.data && typeof n.data === "object" && n.data[per]) return n.name + ":" + n.data[per];
    return n.name;
  }

  // One tab's memory of what it handled: a stored notification (with an id) is handled once,
  // whether it came from this tab's own stream, a relay, or a replay after a hand-over.
  function Seen(kinds) {
    this.kinds = kinds || {};
    this.byKey = {};
  }
  Seen.prototype.admit = function (n) {
    if (n.id === undefined || n.id === null) return true; // ephemeral: relayed exactly once
    var key = keyOf(n, this.kinds);
    if (this.byKey[key] !== undefined && n.id <= this.byKey[key]) return false;
    this.byKey[key] = n.id;
    return true;
  };

  // Followers' view of the leader: alive while it beats (it relays each event and beats every
  // second while its page runs); a frozen or vanished leader stops beating.
  function Watchdog(timeoutMs, now) {
    this.timeoutMs = timeoutMs;
    this.now = now || Date.now;
    this.last = this.now();
  }
  Watchdog.prototype.beat = function () {
    this.last = this.now();
  };
  Watchdog.prototype.expired = function () {
    return this.now() - this.last > this.timeoutMs;
  };

  // Whether this browser can share one stream between tabs.
  function canShare(win) {
    return !!(win && win.navigator && win.navigator.locks && win.navigator.locks.request && win.BroadcastChannel);
  }

  // Leadership of one login's stream through an exclusive Web Lock. onLead(resign) runs when
  // this tab gets the lock; onLose() when it loses it (stolen by a follower that saw this tab
  // stop beating, typically after the browser froze it). Returns {resign, steal}.
  function Election(locks, name, onLead, onLose) {
    var self = this;
    self.leading = false;
    self.stopped = false;
    var release = null;

    function request(options) {
      return locks
        .request(name, options, function () {
          if (self.stopped) return undefined;
          self.leading = true;
          return new Promise(function (resolve) {
            release = resolve;
            onLead();
          });
        })
        .then(
          function () {
            return undefined;
          },
          function () {
            // AbortError: another tab stole the lock. Follow, and queue again.
            if (self.leading) {
              self.leading = false;
              release = null;
              onLose();
            }
            if (!self.stopped) request({});
          }
        );
    }

    self.start = function () {
      request({});
    };
    // Take the lock from a leader that stopped beating.
    self.steal = function () {
      if (!self.leading && !self.stopped) request({ steal: true });
    };
    // Give the lock up (the page goes away): the next tab in the queue leads at once.
    self.resign = function () {
      self.stopped = true;
      self.leading = false;
      if (release) release();
      release = null;
    };
  }

  return {
    backoff: backoff,
    Cursor: Cursor,
    Seen: Seen,
    Watchdog: Watchdog,
    Election: Election,
    canShare: canShare,
    keyOf: keyOf,
  };
});
