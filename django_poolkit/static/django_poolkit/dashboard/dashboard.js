/* django-poolkit dashboard: refresh the figures every few seconds from the staff-only JSON
   endpoint, and not at all while the tab is hidden. Without JavaScript, a reload does it. */
(function () {
  "use strict";
  var root = document.getElementById("poolkit-dashboard");
  var every = root ? Number(root.getAttribute("data-interval")) * 1000 : 0;
  if (!root || !every || !window.fetch) { return; }
  var status = document.getElementById("pk-refresh-status");
  var timer = null;
  var busy = false;
  function say(text) { status.textContent = text; }
  function refresh() {
    if (busy || document.hidden) { return; }
    busy = true;
    var open = Array.prototype.map.call(root.querySelectorAll("details[open][id]"),
                                        function (node) { return node.id; });
    fetch(root.getAttribute("data-url"), {credentials: "same-origin", cache: "no-store",
                                          headers: {"Accept": "application/json"}})
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (answer) {
        document.getElementById("pk-body").innerHTML = answer.html;
        open.forEach(function (id) {
          var node = document.getElementById(id);
          if (node) { node.open = true; }
        });
        root.setAttribute("data-refreshes", String(Number(root.getAttribute("data-refreshes")) + 1));
        say("Updated " + new Date().toLocaleTimeString() + "; refreshing every " + every / 1000 + " s.");
      })
      .catch(function (error) {
        say("Refresh failed (" + error.message + "): the figures below are from the last good one.");
      })
      .then(function () { busy = false; });
  }
  function schedule() {
    window.clearInterval(timer);
    timer = document.hidden ? null : window.setInterval(refresh, every);
  }
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) { say("Auto-refresh paused while this tab is hidden."); } else { refresh(); }
    schedule();
  });
  say("Refreshing every " + every / 1000 + " s.");
  schedule();
}());
