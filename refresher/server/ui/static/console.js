// Progressive enhancement only: every action works as a plain form without this file.
"use strict";
document.addEventListener("submit", function (event) {
  var form = event.target;
  var ask = form.getAttribute("data-confirm");
  if (ask && !window.confirm(ask)) { event.preventDefault(); }
});
document.addEventListener("click", function (event) {
  var button = event.target.closest("[data-reauth]");
  if (!button) { return; }
  event.preventDefault();
  var form = button.form;
  var body = new URLSearchParams(new FormData(form));
  body.set("action", "reauth_link");
  // form.action would be the buttons named "action": read the attribute
  fetch(form.getAttribute("action"), { method: "POST", body: body, credentials: "same-origin",
                       headers: { "Content-Type": "application/x-www-form-urlencoded" } })
    .then(function (answer) { return answer.json(); })
    .then(function (data) {
      var out = document.getElementById("reauth-link");
      var note = document.getElementById("reauth-note");
      if (!data.url) { note.textContent = data.error || "No link available."; return; }
      out.hidden = false; out.value = data.url; out.select();
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(data.url).then(function () { note.textContent = "Copied to the clipboard."; },
          function () { note.textContent = "Select the link and copy it."; });
      } else { note.textContent = "Select the link and copy it."; }
    })
    .catch(function () { document.getElementById("reauth-note").textContent = "Could not get a link."; });
});
