// Shared by every page: the token of this tab (session storage, never a cookie or a URL) and the
// header's sign-in state.
"use strict";
window.ESI = (function () {
  const KEY = "esi-token";
  function token() { return sessionStorage.getItem(KEY); }
  function headers(extra) {
    const out = Object.assign({}, extra || {});
    const t = token();
    if (t) out.Authorization = "Bearer " + t;
    return out;
  }
  function tokenId(t) {
    const match = /^esi_([0-9a-f]+)_/.exec(t || "");
    return match ? match[1] : "?";
  }
  function showSession() {
    const el = document.getElementById("session");
    if (!el || el.dataset.authRequired !== "true") return;
    const t = token();
    el.replaceChildren();
    if (t) {
      const out = document.createElement("button");
      out.type = "button";
      out.className = "link";
      out.textContent = "Sign out";
      out.addEventListener("click", () => { sessionStorage.removeItem(KEY); location.assign("/sign-in"); });
      el.append("Signed in with token " + tokenId(t) + " · ", out);
    } else {
      const link = document.createElement("a");
      link.href = "/sign-in";
      link.textContent = "Sign in";
      el.append(link);
    }
  }
  document.addEventListener("DOMContentLoaded", showSession);
  return {
    token,
    headers,
    tokenId,
    showSession,
    signIn(t) { sessionStorage.setItem(KEY, t); showSession(); },
    signOut() { sessionStorage.removeItem(KEY); showSession(); },
  };
})();
