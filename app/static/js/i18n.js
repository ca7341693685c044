// The page's language in script: its texts (rendered by the server into #page_texts, in the
// page's language) and its times (every <time datetime> shown in the browser's own time zone and
// language, "3 minutes ago" kept fresh). Live events carry data; the page makes the sentences.
(function () {
  "use strict";
  var texts = {};
  try { texts = JSON.parse(document.getElementById("page_texts").textContent) || {}; } catch (e) { texts = {}; }
  var lang = texts.lang || document.documentElement.lang || "en";

  function fill(template, vars) {
    // One pass: "%%" in the template is "%", and a filled-in value is never read again.
    return String(template).replace(/%%|%\((\w+)\)[sd]/g, function (all, name) {
      if (all === "%%") return "%";
      return vars && vars[name] !== undefined ? String(vars[name]) : all;
    });
  }

  var plural = window.Intl && Intl.PluralRules ? new Intl.PluralRules(lang) : null;

  // t("key", {name: …}): a text; n("key", count, {…}): the plural form for count.
  function t(key, vars) {
    return fill(texts[key] !== undefined ? texts[key] : key, vars);
  }
  function n(key, count, vars) {
    var forms = texts[key] || {};
    var form = plural ? plural.select(count) : count === 1 ? "one" : "other";
    var v = Object.assign({ num: count }, vars || {});
    return fill(forms[form] || forms.other || key, v);
  }

  // -- times --------------------------------------------------------------------------------
  var absolute = {
    date: new Intl.DateTimeFormat(lang, { dateStyle: "medium" }),
    datetime: new Intl.DateTimeFormat(lang, { dateStyle: "medium", timeStyle: "short" }),
  };
  var relative = Intl.RelativeTimeFormat ? new Intl.RelativeTimeFormat(lang, { numeric: "auto" }) : null;
  var STEPS = [[60, "second"], [3600, "minute"], [86400, "hour"], [7 * 86400, "day"]];

  function ago(date) {
    var seconds = (date.getTime() - Date.now()) / 1000;
    var size = Math.abs(seconds);
    if (!relative || size >= STEPS[STEPS.length - 1][0]) return null; // a week on: the date
    if (size < 45) return relative.format(0, "second"); // "now"
    var unit = 1;
    for (var i = 0; i < STEPS.length; i++) {
      if (size < STEPS[i][0]) return relative.format(Math.round(seconds / unit), STEPS[i][1]);
      unit = STEPS[i][0];
    }
    return null;
  }

  function show(el) {
    var date = new Date(el.getAttribute("datetime"));
    if (isNaN(date.getTime())) return;
    var style = el.getAttribute("data-style") || "datetime";
    var full = absolute.datetime.format(date);
    if (style === "relative") {
      el.textContent = ago(date) || full;
      el.title = full;
    } else {
      el.textContent = (absolute[style] || absolute.datetime).format(date);
    }
  }

  function render(root) {
    (root || document).querySelectorAll("time[datetime]").forEach(show);
  }

  // Set a <time> to `iso` (a live event's time) and show it.
  function set(el, iso, style) {
    el.setAttribute("datetime", iso);
    if (style) el.setAttribute("data-style", style);
    show(el);
  }

  window.tidingsI18n = { lang: lang, t: t, n: n, times: { render: render, set: set } };
  render(document);
  setInterval(function () { render(document); }, 30000);
})();
