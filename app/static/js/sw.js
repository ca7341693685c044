// Tidings' service worker (served at /sw.js, scope /): it shows what the site pushes to this
// device while no Tidings tab is looking (app/push/). Every push shows a notification: browsers
// revoke the subscriptions of sites whose pushes show nothing.
"use strict";

self.addEventListener("install", function () { self.skipWaiting(); });
self.addEventListener("activate", function (event) { event.waitUntil(self.clients.claim()); });

// A push's JSON: {"title", "body", "url" (a path of this site), "tag"}.
function parse(data) {
  if (!data) return {};
  try {
    var n = data.json();
    return n && typeof n === "object" ? n : {};
  } catch (err) {
    return { body: data.text() };
  }
}

// Only this site's pages: a push cannot send a click elsewhere.
function target(url) {
  try {
    var u = new URL(url || "/", self.location.origin);
    return u.origin === self.location.origin ? u.href : self.location.origin + "/";
  } catch (err) {
    return self.location.origin + "/";
  }
}

self.addEventListener("push", function (event) {
  var n = parse(event.data);
  var title = typeof n.title === "string" && n.title ? n.title : "Tidings";
  var options = {
    body: typeof n.body === "string" ? n.body : "",
    tag: typeof n.tag === "string" && n.tag ? n.tag : "tidings",
    renotify: true, // a newer push of the same tag replaces the last, and is heard
    icon: "/static/favicon.svg",
    data: { url: target(n.url) },
  };
  event.waitUntil(self.registration.showNotification(title, options));
});

// A click focuses a Tidings tab already on that page, else opens it (while the click still
// allows a window to open), else brings an open Tidings tab to the front.
self.addEventListener("notificationclick", function (event) {
  event.notification.close();
  var url = (event.notification.data && event.notification.data.url) || target("/");
  event.waitUntil(
    self.clients.matchAll({ type: "window", includeUncontrolled: true }).then(function (tabs) {
      var same = tabs.filter(function (tab) { return tab.url === url; })[0];
      if (same) return same.focus();
      var ours = tabs.filter(function (tab) { return tab.url.indexOf(self.location.origin + "/") === 0; })[0];
      return self.clients.openWindow(url).then(
        function (opened) { return opened || (ours && ours.focus()); },
        function () { return ours && ours.focus(); }
      );
    })
  );
});
