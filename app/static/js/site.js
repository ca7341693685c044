// How Tidings' pages show notifications: the badge, toasts. The stream itself is Flask-Tidings'
// browser client (window.Tidings, loaded before this script); task progress bars are tasks.js.
(function () {
  "use strict";

  // Show n unread messages wherever the page shows the count: the navbar badge (hidden, not
  // removed, at 0), its copy on the collapsed phone navbar, and counts in the page itself.
  function set_message_count(n) {
    document.querySelectorAll("[data-unread-count]").forEach(function (el) {
      el.textContent = String(n);
      if (el.classList.contains("badge")) el.classList.toggle("invisible", !n);
    });
    document.querySelectorAll("[data-unread-plural]").forEach(function (el) {
      el.textContent = Number(n) === 1 ? "" : "s";
    });
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

  window.Tidings
    .on("unread_message_count", function (n) { set_message_count(n.data); })
    .on("new_message", function (n, live) {
      if (live && n.data) showToast("Message from " + n.data.sender, n.data.preview, "/messages");
    })
    .on("announcement", function (n, live) {
      if (live) showToast("Announcement", typeof n.data === "string" ? n.data : JSON.stringify(n.data));
    });
})();
