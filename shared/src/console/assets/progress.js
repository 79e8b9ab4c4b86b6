// adsync console: refreshes the progress bars of a destination page while a backfill, refresh
// or purge runs. Reads the page's own JSON (same origin, the session cookie) every 1.5 s and
// stops once every bar is at 100 % or nothing runs.
(function () {
  "use strict";
  var root = document.getElementById("progress-root");
  if (!root) { return; }
  var src = root.getAttribute("data-src");
  function tick() {
    fetch(src, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data) { return; }
        var running = false;
        (data.mappings || []).forEach(function (m) {
          var bar = document.getElementById("bar-" + m.segmentId);
          var label = document.getElementById("bar-label-" + m.segmentId);
          if (bar) { bar.value = m.percent; bar.textContent = m.percent + " %"; }
          if (label) { label.textContent = m.percent + " % · " + m.label; }
          var status = document.getElementById("status-" + m.segmentId);
          if (status && status.firstChild) { status.firstChild.textContent = m.status; status.className = "status-" + m.status; }
          var audience = document.getElementById("audience-" + m.segmentId);
          if (audience) { audience.textContent = m.audienceId; }
          if (m.percent < 100 && m.running) { running = true; }
        });
        if (running) { setTimeout(tick, 1500); }
      })
      .catch(function () { setTimeout(tick, 5000); });
  }
  setTimeout(tick, 1000);
})();
