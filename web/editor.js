// The SPARQL editor of the query page: CodeMirror 6 with its SPARQL mode, bundled into
// kgservice/static/vendor/editor.js by hatch_build.py. The page works without it (a textarea);
// with it, the textarea is hidden behind the editor and kept up to date.
//
// The editor lives in a shadow root: CodeMirror's style module then uses a constructed style
// sheet (adoptedStyleSheets), which the page's Content-Security-Policy (style-src 'self', no
// inline style) allows; in the document itself it would insert a <style> element, which the
// policy blocks. The shadow root loads the editor's own sheet from this server.
import { EditorView, basicSetup } from "codemirror";
import { StreamLanguage } from "@codemirror/language";
import { sparql } from "@codemirror/legacy-modes/mode/sparql";

function attach(textarea, { label, stylesheet }) {
  const host = document.createElement("div");
  host.className = "cm-host";
  const shadow = host.attachShadow({ mode: "open" });
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = stylesheet;
  shadow.append(link);
  const view = new EditorView({
    doc: textarea.value,
    root: shadow,
    parent: shadow,
    extensions: [
      basicSetup,
      StreamLanguage.define(sparql),
      EditorView.lineWrapping,
      EditorView.contentAttributes.of({ "aria-label": label }),
      EditorView.updateListener.of((update) => {
        if (update.docChanged) textarea.value = update.state.doc.toString();
      }),
    ],
  });
  textarea.hidden = true;
  textarea.after(host);
  return {
    getValue: () => view.state.doc.toString(),
    setValue(text) {
      view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: text } });
    },
    focus: () => view.focus(),
  };
}

window.ESIEditor = { attach };
