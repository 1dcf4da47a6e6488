// Submit page: switch between the zoom and image forms without a reload, and edit the prompt
// schedule's rows. The forms work without this script (both tabs are plain links).
(function () {
  "use strict";
  document.querySelectorAll("[data-tab]").forEach(function (tab) {
    tab.addEventListener("click", function (event) {
      event.preventDefault();
      var kind = tab.dataset.tab;
      document.querySelectorAll("[data-tab]").forEach(function (t) {
        t.setAttribute("aria-selected", String(t === tab));
      });
      document.querySelectorAll(".job-form").forEach(function (form) {
        form.hidden = form.dataset.kind !== kind;
      });
      history.replaceState(null, "", "?kind=" + kind);
    });
  });

  var body = document.querySelector("#schedule tbody");
  if (!body) return;
  body.addEventListener("click", function (event) {
    if (!event.target.classList.contains("remove-row")) return;
    var row = event.target.closest("tr");
    if (body.rows.length > 1) row.remove();
    else row.querySelectorAll("input").forEach(function (input) { input.value = ""; });
  });
  document.getElementById("add-row").addEventListener("click", function () {
    var row = body.rows[body.rows.length - 1].cloneNode(true);
    row.querySelectorAll("input").forEach(function (input) { input.value = ""; });
    body.appendChild(row);
  });
})();
