// The profile's "Notify me on this device when Tidings is closed": the browser's permission
// prompt only after that click, then the service worker (/sw.js), the push subscription with
// the site's VAPID key, and POST /push/subscriptions. The list marks this device; removing it
// there also unsubscribes the browser.
(function () {
  "use strict";
  var section = document.getElementById("devices");
  if (!section) return;
  var button = document.getElementById("push_optin");
  var status = document.getElementById("push_status");
  var meta = document.querySelector('meta[name="csrf-token"]');

  function say(text) { status.textContent = text; }

  if (!("serviceWorker" in navigator) || !("PushManager" in window) || !("Notification" in window)) {
    say(section.getAttribute("data-unsupported"));
    return;
  }

  function keyBytes(base64url) {
    var text = atob(base64url.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((base64url.length + 3) % 4));
    var bytes = new Uint8Array(text.length);
    for (var i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return bytes;
  }

  function rowOf(endpoint) {
    var rows = section.querySelectorAll("[data-endpoint]");
    for (var i = 0; i < rows.length; i++) if (rows[i].getAttribute("data-endpoint") === endpoint) return rows[i];
    return null;
  }

  function send(method, body) {
    return fetch(section.getAttribute("data-subscriptions-url"), {
      method: method,
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": meta ? meta.getAttribute("content") : "" },
      body: JSON.stringify(body),
    }).then(function (r) {
      if (r.ok) return r;
      return r.json().catch(function () { return { error: r.status + " " + r.statusText }; })
        .then(function (answer) { throw new Error(answer.error || r.status); });
    });
  }

  var registration = navigator.serviceWorker.register("/sw.js", { scope: "/" });

  // Whether the browser's subscription was made with the site's key (a site whose key changed
  // gets 403s from push services for the old ones: such a device must subscribe again).
  function ours(subscription) {
    var key = subscription && subscription.options && subscription.options.applicationServerKey;
    if (!key) return true; // the browser does not say: trust the server's list
    var mine = keyBytes(section.getAttribute("data-vapid-key"));
    var theirs = new Uint8Array(key);
    if (theirs.length !== mine.length) return false;
    for (var i = 0; i < mine.length; i++) if (theirs[i] !== mine[i]) return false;
    return true;
  }

  function show(subscription) {
    var row = subscription && ours(subscription) && rowOf(subscription.endpoint);
    if (row) {
      row.querySelector(".this-device").hidden = false;
      say(section.getAttribute("data-notified"));
    }
    button.hidden = !!row;
  }

  registration.then(function (reg) { return reg.pushManager.getSubscription(); }).then(show, function () { button.hidden = false; });

  function subscribe(reg) {
    var options = { userVisibleOnly: true, applicationServerKey: keyBytes(section.getAttribute("data-vapid-key")) };
    return reg.pushManager.getSubscription().then(function (old) {
      // Subscribed before with another key (the site's key changed): start afresh.
      if (old && !ours(old)) return old.unsubscribe().then(function () { return reg.pushManager.subscribe(options); });
      return reg.pushManager.subscribe(options);
    });
  }

  button.addEventListener("click", function () {
    button.disabled = true;
    say("");
    Notification.requestPermission()
      .then(function (permission) {
        if (permission !== "granted") throw new Error(section.getAttribute("data-blocked"));
        return registration;
      })
      .then(function () { return navigator.serviceWorker.ready; })
      .then(subscribe)
      .then(function (subscription) { return send("POST", subscription.toJSON()); })
      .then(function () { window.location.reload(); })
      .catch(function (err) {
        var text = err && err.message ? err.message : String(err);
        say(text === section.getAttribute("data-blocked") ? text : section.getAttribute("data-failed") + " " + text);
        button.disabled = false;
      });
  });

  // Removing this device: the browser forgets its subscription too (the form then removes the row).
  Array.prototype.forEach.call(section.querySelectorAll("form.remove-device"), function (form) {
    form.addEventListener("submit", function (e) {
      if (form.getAttribute("data-unsubscribed")) return;
      e.preventDefault();
      registration
        .then(function (reg) { return reg.pushManager.getSubscription(); })
        .then(function (subscription) {
          var row = form.closest("[data-endpoint]");
          if (subscription && row && subscription.endpoint === row.getAttribute("data-endpoint")) return subscription.unsubscribe();
          return null;
        })
        .catch(function () { return null; })
        .then(function () { form.setAttribute("data-unsubscribed", "1"); form.submit(); });
    });
  });
})();
