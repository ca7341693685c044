// Live progress bars for background tasks, driven by "task_progress" notifications.
(function () {
  "use strict";
  // Only this site's own export downloads become links: a channel message could carry anything.
  function safeDownload(url) {
    var u;
    try { u = new URL(String(url), window.location.href); } catch (e) { return null; }
    if (u.origin !== window.location.origin || !/^\/exports\/[A-Za-z0-9-]+$/.test(u.pathname)) return null;
    return u.pathname;
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
      bar.classList.add("bg-danger");
      status.textContent = "";
      var failed = document.createElement("span");
      failed.className = "text-danger";
      failed.textContent = "Failed";
      status.appendChild(failed);
    } else if (progress >= 100 && safeDownload(d.download_url)) {
      bar.classList.add("bg-success");
      status.textContent = "";
      var link = document.createElement("a");
      link.className = "task-download";
      link.href = safeDownload(d.download_url);
      link.textContent = "Download";
      status.appendChild(link);
    } else {
      status.textContent = progress + "%";
    }
  });
})();
