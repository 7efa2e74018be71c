// outboxkit dashboard: small progressive enhancements. Every page works
// without this file; the Content-Security-Policy allows no inline script.
"use strict";
document.addEventListener("submit", function (e) {
  var form = e.target;
  var msg = form.getAttribute("data-confirm");
  if (msg && !window.confirm(msg)) {
    e.preventDefault();
    return;
  }
  // One click, one action: a second click while the first is on its way
  // would only meet "not in a state that allows this action".
  var buttons = form.querySelectorAll("button[type=submit]");
  window.setTimeout(function () {
    for (var i = 0; i < buttons.length; i++) buttons[i].disabled = true;
  }, 0);
});
