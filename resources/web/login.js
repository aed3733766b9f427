// The login page: carries ?next= into the form and shows a failed attempt.
// Values from the URL go in with .value / .textContent only.
"use strict";
(function () {
  const q = new URLSearchParams(location.search);
  const next = q.get("next");
  if (next && next.startsWith("/") && !next.startsWith("//")) {
    document.getElementById("next").value = next;
  }
  if (q.get("error")) {
    const p = document.getElementById("login-error");
    p.textContent = "Wrong user name or password.";
    p.hidden = false;
  }
})();
