// The query page: the editor (CodeMirror, when it was built), the named queries as examples, the
// results as a table and as downloads. A named query left as loaded runs as GET /queries/<name>
// with its parameters bound by the server; anything else is sent to /sparql.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  const ESI_NS = "https://w3id.org/esi-kg/ontology#";
  const PREFIXES = [["esi:", ESI_NS], ["xsd:", "http://www.w3.org/2001/XMLSchema#"],
    ["rdfs:", "http://www.w3.org/2000/01/rdf-schema#"], ["owl:", "http://www.w3.org/2002/07/owl#"]];
  const examples = JSON.parse(document.getElementById("examples").textContent);
  const byName = Object.fromEntries(examples.map((q) => [q.name, q]));
  const textarea = document.getElementById("query");
  const editor = window.ESIEditor
    ? window.ESIEditor.attach(textarea, { label: "SPARQL query", stylesheet: "/static/editor.css" })
    : { getValue: () => textarea.value, setValue: (t) => { textarea.value = t; } };
  const select = document.getElementById("example");
  const params = document.getElementById("params");
  const status = document.getElementById("query-status");
  const results = document.getElementById("results");
  const table = document.getElementById("results-table");
  const text = document.getElementById("results-text");

  function selected() {
    const q = byName[select.value];
    return q && editor.getValue() === q.text ? q : null;
  }

  select.addEventListener("change", function () {
    const q = byName[select.value];
    document.getElementById("example-summary").textContent = q ? q.description : "";
    params.replaceChildren();
    if (!q) return;
    editor.setValue(q.text);
    for (const p of q.params) {
      const div = document.createElement("div");
      div.className = "field";
      const label = document.createElement("label");
      label.htmlFor = "param-" + p.name;
      label.textContent = p.name + " (" + p.type + ")";
      const input = document.createElement("input");
      input.id = "param-" + p.name;
      if (p.type === "code") input.setAttribute("list", "codes");
      input.dataset.param = p.name;
      input.value = p.example || "";
      input.required = !!p.required;
      const hint = document.createElement("p");
      hint.className = "hint";
      hint.id = "param-" + p.name + "-hint";
      hint.textContent = p.description;
      input.setAttribute("aria-describedby", hint.id);
      div.append(label, input, hint);
      params.append(div);
    }
  });

  // Codes offered for code parameters: every code of the vocabulary (an open endpoint).
  fetch("/vocabulary").then((r) => r.json()).then((vocabulary) => {
    const list = document.createElement("datalist");
    list.id = "codes";
    const seen = new Set();
    for (const groups of Object.values(vocabulary)) {
      for (const entries of Object.values(groups)) {
        for (const e of entries) {
          if (seen.has(e.code)) continue;
          seen.add(e.code);
          const option = document.createElement("option");
          option.value = e.code;
          option.label = e.label;
          list.append(option);
        }
      }
    }
    document.body.append(list);
  });

  // /query?example=case-explanations&case=… (linked from a stored case) loads that query with its values.
  const asked = new URLSearchParams(location.search);
  if (byName[asked.get("example")]) {
    select.value = asked.get("example");
    select.dispatchEvent(new Event("change"));
    params.querySelectorAll("input[data-param]").forEach((i) => {
      if (asked.has(i.dataset.param)) i.value = asked.get(i.dataset.param);
    });
  }

  function request(accept) {
    const q = selected();
    const headers = ESI.headers({ Accept: accept });
    if (q) {
      const args = new URLSearchParams();
      params.querySelectorAll("input[data-param]").forEach((i) => { if (i.value) args.set(i.dataset.param, i.value); });
      return { label: "GET /queries/" + q.name, promise: fetch("/queries/" + q.name + "?" + args, { headers }) };
    }
    headers["Content-Type"] = "application/x-www-form-urlencoded";
    const body = new URLSearchParams({ query: editor.getValue() });
    return { label: "POST /sparql", promise: fetch("/sparql", { method: "POST", headers, body }) };
  }

  async function problemText(response) {
    try {
      const p = await response.json();
      const detail = (p.violations || []).map((v) => v.path + ": " + v.message).join("; ");
      return (p.title || response.status) + (p.detail ? ": " + p.detail : "") + (detail ? " (" + detail + ")" : "");
    } catch (e) {
      return String(response.status);
    }
  }

  function short(iri) {
    for (const [prefix, ns] of PREFIXES) if (iri.startsWith(ns)) return prefix + iri.slice(ns.length);
    return iri;
  }

  function cell(term) {
    const td = document.createElement("td");
    if (!term) return td;
    if (term.type === "uri" && term.value.startsWith(ESI_NS)) {
      const a = document.createElement("a");
      a.href = "/docs#" + term.value.slice(ESI_NS.length);
      a.textContent = short(term.value);
      td.append(a);
    } else {
      td.textContent = term.type === "uri" ? short(term.value) : term.value;
    }
    return td;
  }

  function showTable(data) {
    table.replaceChildren();
    text.hidden = true;
    table.hidden = false;
    const caption = table.createCaption();
    if ("boolean" in data) {
      caption.textContent = "ASK: " + data.boolean;
      return;
    }
    const vars = data.head.vars;
    const rows = data.results.bindings;
    caption.textContent = rows.length + (rows.length === 1 ? " row" : " rows");
    const head = table.createTHead().insertRow();
    for (const v of vars) {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = v;
      head.append(th);
    }
    const body = table.createTBody();
    for (const row of rows) {
      const tr = body.insertRow();
      for (const v of vars) tr.append(cell(row[v]));
    }
  }

  document.getElementById("query-form").addEventListener("submit", async function (event) {
    event.preventDefault();
    const { label, promise } = request("application/sparql-results+json, text/turtle;q=0.9");
    status.textContent = "Running (" + label + ")…";
    const started = performance.now();
    let response;
    try {
      response = await promise;
    } catch (error) {
      status.textContent = "The service did not answer: " + error.message;
      return;
    }
    if (!response.ok) {
      results.hidden = true;
      status.textContent = "Refused (" + label + "): " + await problemText(response);
      return;
    }
    const type = response.headers.get("Content-Type") || "";
    if (type.includes("json")) {
      showTable(await response.json());
    } else {
      table.hidden = true;
      text.hidden = false;
      text.textContent = await response.text();
    }
    results.hidden = false;
    status.textContent = "Done (" + label + ") in " + Math.round(performance.now() - started) + " ms.";
  });

  document.querySelectorAll("button[data-format]").forEach((button) => {
    button.addEventListener("click", async function () {
      const { label, promise } = request(button.dataset.format);
      status.textContent = "Downloading " + button.dataset.ext.toUpperCase() + " (" + label + ")…";
      const response = await promise;
      if (!response.ok) {
        status.textContent = "Refused (" + label + "): " + await problemText(response);
        return;
      }
      const link = document.createElement("a");
      link.href = URL.createObjectURL(await response.blob());
      link.download = (selected() ? selected().name : "results") + "." + button.dataset.ext;
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
      status.textContent = "Downloaded " + link.download + ".";
    });
  });
});
