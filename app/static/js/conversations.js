// The list of conversations, live: a conversation with news moves to the top with its last
// message and unread count ("conversation" notifications, sent to both people of a message).
(function () {
  "use strict";
  var i18n = window.tidingsI18n;
  var list = document.getElementById("conversations");
  if (!list) return;
  var me = list.getAttribute("data-me");
  var firstPage = list.getAttribute("data-first-page") === "1";

  function el(tag, className, text) {
    var e = document.createElement(tag);
    e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // A row like the server's (messages.html), for a conversation this page did not list.
  function newRow(username) {
    var row = el("a", "list-group-item list-group-item-action conversation-row d-flex justify-content-between gap-3");
    row.href = "/messages/" + encodeURIComponent(username);
    row.setAttribute("data-with", username);
    var left = el("span", "min-w-0 overflow-hidden");
    left.appendChild(el("span", "d-block fw-semibold conversation-with", username));
    left.appendChild(el("span", "d-block small text-body-secondary preview"));
    var right = el("span", "text-end text-nowrap");
    var small = el("small", "d-block text-body-secondary");
    var time = document.createElement("time");
    time.setAttribute("data-style", "relative");
    small.appendChild(time);
    right.appendChild(small);
    var badge = el("span", "badge text-bg-primary rounded-pill unread d-none");
    badge.appendChild(el("span", "n", "0"));
    badge.appendChild(el("span", "visually-hidden", " " + i18n.t("unread_short")));
    right.appendChild(badge);
    row.appendChild(left);
    row.appendChild(right);
    return row;
  }

  function byName(username) {
    var rows = list.querySelectorAll(".conversation-row");
    for (var i = 0; i < rows.length; i++) if (rows[i].getAttribute("data-with") === username) return rows[i];
    return null;
  }

  window.Tidings.on("conversation", function (n) {
    var d = n.data || {};
    if (typeof d.with !== "string") return;
    var row = byName(d.with);
    if (row && Number(row.getAttribute("data-last-id")) > Number(d.message_id)) return; // older news
    // A new message moves its conversation to the top; a read only changes its count.
    var moved = !row || Number(row.getAttribute("data-last-id")) < Number(d.message_id);
    if (!row) {
      if (!firstPage) return;
      row = newRow(d.with);
      var empty = document.getElementById("no_conversations");
      if (empty) empty.remove();
    }
    row.setAttribute("data-last-id", String(d.message_id));
    var preview = String(d.preview || "");
    row.querySelector(".preview").textContent = d.from === me ? i18n.t("you_prefix", { text: preview }) : preview;
    i18n.times.set(row.querySelector("time"), String(d.at || ""));
    var unread = Number(d.unread) || 0;
    var badge = row.querySelector(".unread");
    badge.querySelector(".n").textContent = String(unread);
    badge.classList.toggle("d-none", !unread);
    if (firstPage && moved) list.insertBefore(row, list.firstChild);
  });
})();
