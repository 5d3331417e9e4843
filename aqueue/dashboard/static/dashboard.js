// The little JavaScript of the dashboard: select all, confirmations, local times, refresh.
"use strict";
(function () {
  function localTimes(root) {
    root.querySelectorAll("time[data-epoch]").forEach(function (el) {
      var at = new Date(parseFloat(el.dataset.epoch) * 1000);
      el.textContent = at.toLocaleString();
      el.title = at.toISOString();
    });
  }
  document.addEventListener("click", function (event) {
    var target = event.target;
    if (target.matches && target.matches("button[data-confirm]")) {
      if (!window.confirm(target.dataset.confirm)) event.preventDefault();
    }
  });
  document.addEventListener("change", function (event) {
    var target = event.target;
    if (target.matches && target.matches("input.select-all")) {
      target.closest("form").querySelectorAll("input[name=message_id]").forEach(function (box) {
        box.checked = target.checked;
      });
    }
  });
  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    var live = document.getElementById("live");
    if (!live) return;
    var seconds = Math.max(parseFloat(live.dataset.refresh) || 5, 1);
    setInterval(function () {
      if (document.hidden) return;
      fetch(window.location.href, { credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (text) {
          if (!text) return;
          // Server-rendered (escaped) markup of the same page, swapped in place.
          var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("live");
          if (fresh) { live.replaceWith(fresh); live = fresh; localTimes(live); }
        })
        .catch(function () {});
    }, seconds * 1000);
  });
})();
