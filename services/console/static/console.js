// Progressive enhancements only: every page works without this file.
// - copy buttons (data-copy) for correlation ids;
// - the live tail: server-sent events from /audit/tail/events into the table;
// - a link marked data-follow (the setup page's test sign-in) is followed at once.
"use strict";
document.documentElement.classList.add("js");

document.addEventListener("DOMContentLoaded", function () {
  if (navigator.clipboard) {
    document.querySelectorAll("button.copy[data-copy]").forEach(function (button) {
      button.hidden = false;
      button.addEventListener("click", function () {
        navigator.clipboard.writeText(button.dataset.copy).then(function () {
          button.textContent = "Copied";
          setTimeout(function () { button.textContent = "Copy"; }, 1500);
        });
      });
    });
  }

  var follow = document.querySelector("a[data-follow]");
  if (follow) { window.location.assign(follow.href); }

  var table = document.getElementById("tail");
  if (table && window.EventSource) {
    var body = table.querySelector("tbody");
    var source = new EventSource(table.dataset.events);
    source.addEventListener("outcome", function (event) {
      var o = JSON.parse(event.data);
      var row = document.createElement("tr");
      row.className = "result-" + o.result;
      // textContent only: values from the audit trail are never parsed as HTML.
      [o.completed_at, o.tenant, o.source, o.operation, o.user_name || "", o.result, o.error || "",
       o.correlation_id].forEach(function (value) {
        var cell = document.createElement("td");
        cell.textContent = value;
        row.appendChild(cell);
      });
      body.insertBefore(row, body.firstChild);
      while (body.children.length > 500) { body.removeChild(body.lastChild); }
    });
  }
});
