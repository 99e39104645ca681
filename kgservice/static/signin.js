"use strict";
document.addEventListener("DOMContentLoaded", function () {
  const form = document.getElementById("sign-in");
  const input = document.getElementById("token");
  const status = document.getElementById("sign-in-status");
  const out = document.getElementById("sign-out");
  function show() {
    const t = ESI.token();
    status.textContent = t ? "Signed in with token " + ESI.tokenId(t) + " in this tab." : "Not signed in.";
    out.hidden = !t;
  }
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const t = input.value.trim();
    if (!/^esi_[0-9a-f]+_\S+$/.test(t)) {
      status.textContent = "That is not an ESI-KG token: it reads esi_<id>_<secret>.";
      input.setAttribute("aria-invalid", "true");
      return;
    }
    input.removeAttribute("aria-invalid");
    input.value = "";
    ESI.signIn(t);
    show();
  });
  out.addEventListener("click", function () { ESI.signOut(); show(); input.focus(); });
  show();
});
