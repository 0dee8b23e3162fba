// SDP dashboard: the little the server cannot do. No inline scripts anywhere,
// so the Content-Security-Policy can forbid them.
(function () {
  "use strict";
  // A reader at the bottom of a live log keeps following it; one who
  // scrolled up to read is left where they are.
  var following = true;
  function box() { return document.getElementById("log-box"); }
  document.addEventListener("scroll", function (e) {
    var b = box();
    if (b && e.target === b) {
      following = b.scrollHeight - b.scrollTop - b.clientHeight < 40;
    }
  }, true);
  document.addEventListener("htmx:wsAfterMessage", function () {
    var b = box();
    if (b && following) { b.scrollTop = b.scrollHeight; }
  });
  document.addEventListener("DOMContentLoaded", function () {
    var b = box();
    if (b) { b.scrollTop = b.scrollHeight; }
  });
  // Live connection state, for people and for the browser tests.
  document.addEventListener("htmx:wsOpen", function () { document.body.dataset.live = "open"; });
  document.addEventListener("htmx:wsClose", function () { document.body.dataset.live = "closed"; });
})();
