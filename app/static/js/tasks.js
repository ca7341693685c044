// Export cards, live: "Preparing… N%", then "Ready · Download" or "Failed · Retry", driven by
// "task_progress" notifications; a finished card can be dismissed.
(function () {
  "use strict";
  var i18n = window.tidingsI18n;
  // Only this site's own export downloads become links: a channel message could carry anything.
  function safeDownload(url) {
    var u;
    try { u = new URL(String(url), window.location.href); } catch (e) { return null; }
    if (u.origin !== window.location.origin || !/^\/exports\/[A-Za-z0-9-]+$/.test(u.pathname)) return null;
    return u.pathname;
  }

  function el(tag, className, text) {
    var e = document.createElement(tag);
    e.className = className;
    e.textContent = text;
    return e;
  }

  function finish(card, status, words, action) {
    status.textContent = "";
    status.appendChild(words);
    status.appendChild(document.createTextNode(" · "));
    status.appendChild(action);
    card.querySelector(".progress").classList.add("d-none");
    card.querySelector(".task-dismiss").hidden = false;
  }

  // The page is rendered without inline styles (CSP style-src 'self'): size the bars here.
  document.querySelectorAll(".task .progress-bar[data-progress]").forEach(function (bar) {
    bar.style.width = Math.max(0, Math.min(100, Number(bar.getAttribute("data-progress")) || 0)) + "%";
  });
  document.addEventListener("tidings:task_progress", function (e) {
    var d = e.detail.data || {};
    var card = document.querySelector('.task[data-task-id="' + CSS.escape(String(d.task_id)) + '"]');
    if (!card) return;
    var bar = card.querySelector(".progress-bar");
    var status = card.querySelector(".task-status");
    var progress = Math.max(0, Math.min(100, Number(d.progress) || 0));
    bar.style.width = progress + "%";
    card.querySelector(".progress").setAttribute("aria-valuenow", String(progress));
    if (d.status === "failed") {
      var retry = el("button", "btn btn-link btn-sm p-0 align-baseline task-retry", i18n.t("retry"));
      retry.type = "submit";
      retry.setAttribute("form", "export_form");
      finish(card, status, el("span", "text-danger", i18n.t("failed")), retry);
    } else if (progress >= 100 && safeDownload(d.download_url)) {
      var link = el("a", "task-download", i18n.t("download"));
      link.href = safeDownload(d.download_url);
      finish(card, status, el("span", "text-success", i18n.t("ready")), link);
    } else {
      status.textContent = i18n.t("preparing", { num: progress });
    }
  });
})();
