// The clinician's form, enhanced: rows are added and removed in place, and the form is sent with
// the tab's token as an Authorization header; the server's page (answer or errors at their
// fields) replaces this one's content. Without this script the form posts and works as it is.
"use strict";
(function () {
  function enhance(root) {
    root.querySelectorAll(".default-submit").forEach((b) => b.remove());
    root.querySelectorAll("button.add, button.remove").forEach((b) => {
      b.type = "button";
      b.removeAttribute("formaction");
    });
  }

  function renumber(list) {
    const block = list.dataset.block;
    const names = new RegExp("^" + block.replace(/[[\]().]/g, "\\$&") + "\\[\\d+\\]");
    const ids = new RegExp("^f-" + block + "-\\d+(?=-|$)");
    [...list.children].forEach((row, i) => {
      [row, ...row.querySelectorAll("*")].forEach((el) => {
        if (el.name) el.name = el.name.replace(names, block + "[" + i + "]");
        if (el.value && el.classList.contains("remove")) el.value = "remove:" + block + "[" + i + "]";
        ["id", "for", "aria-describedby"].forEach((attr) => {
          const value = el.getAttribute(attr);
          if (value) el.setAttribute(attr, value.split(" ").map((v) => v.replace(ids, "f-" + block + "-" + i)).join(" "));
        });
      });
      const label = row.querySelector("button.remove .visually-hidden");
      if (label) label.textContent = label.textContent.replace(/\d+$/, String(i + 1));
    });
  }

  function blankRow(row) {
    const copy = row.cloneNode(true);
    copy.classList.remove("invalid");
    copy.querySelectorAll(".error").forEach((e) => e.remove());
    copy.querySelectorAll(".invalid").forEach((e) => e.classList.remove("invalid"));
    copy.querySelectorAll("input, select").forEach((el) => {
      el.value = "";
      el.removeAttribute("aria-invalid");
      const hints = (el.getAttribute("aria-describedby") || "").split(" ").filter((id) => id.endsWith("-hint"));
      if (hints.length) el.setAttribute("aria-describedby", hints.join(" "));
      else el.removeAttribute("aria-describedby");
    });
    return copy;
  }

  document.addEventListener("click", function (event) {
    const button = event.target.closest("button.add, button.remove");
    if (!button) return;
    if (button.classList.contains("add")) {
      const list = button.parentElement.querySelector("ol.rows");
      const row = blankRow(list.lastElementChild);
      list.append(row);
      renumber(list);
      row.querySelector("input, select").focus();
    } else {
      const row = button.closest("li.row");
      const list = row.parentElement;
      if (list.children.length === 1) list.append(blankRow(row));
      row.remove();
      renumber(list);
      list.parentElement.querySelector("legend").scrollIntoView({ block: "nearest" });
      (list.querySelector("input, select") || list.parentElement).focus();
    }
  });

  document.addEventListener("submit", async function (event) {
    const form = event.target;
    if (form.getAttribute("id") !== "case-form") return; // not form.id: the form has an input named "id"
    event.preventDefault();
    const submitter = event.submitter;
    const action = (submitter && submitter.getAttribute("formaction")) || form.getAttribute("action");
    const status = document.getElementById("busy");
    form.setAttribute("aria-busy", "true");
    status.textContent = "Sending the case…";
    let response;
    try {
      response = await fetch(action, {
        method: "POST",
        headers: ESI.headers({ Accept: "text/html", "Content-Type": "application/x-www-form-urlencoded" }),
        body: new URLSearchParams(new FormData(form)),
      });
    } catch (error) {
      status.textContent = "The service did not answer: " + error.message;
      form.removeAttribute("aria-busy");
      return;
    }
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const main = page.querySelector("main");
    if (!main) {
      status.textContent = "The service answered " + response.status + " without a page.";
      form.removeAttribute("aria-busy");
      return;
    }
    document.querySelector("main").replaceChildren(...main.childNodes);
    enhance(document);
    ESI.showSession();
    const outcome = document.getElementById("outcome");
    document.getElementById("busy").textContent = response.ok ? "Answered." : "Not answered: " + response.status + ".";
    if (outcome && outcome.children.length) outcome.focus();
  });

  document.addEventListener("DOMContentLoaded", () => enhance(document));
})();
