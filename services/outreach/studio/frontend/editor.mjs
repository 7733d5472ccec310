// The studio's template editor: CodeMirror 6 with Jinja highlighting over each
// <textarea data-editor="html|text">. The textarea stays the form field (and the
// fallback without JavaScript); every edit is copied back to it and announced with an
// "input" event, which the live preview listens to.
import { EditorView, basicSetup } from "codemirror";
import { jinja } from "@codemirror/lang-jinja";
import { EditorState } from "@codemirror/state";

function attach(textarea) {
  const label = textarea.labels && textarea.labels[0] ? textarea.labels[0].textContent : "";
  const view = new EditorView({
    state: EditorState.create({
      doc: textarea.value,
      extensions: [
        basicSetup,
        jinja(),
        EditorView.lineWrapping,
        EditorState.readOnly.of(textarea.readOnly),
        EditorView.contentAttributes.of({ "aria-label": label.trim() }),
        EditorView.updateListener.of((update) => {
          if (update.docChanged) {
            textarea.value = update.state.doc.toString();
            textarea.dispatchEvent(new Event("input", { bubbles: true }));
          }
        }),
      ],
    }),
  });
  textarea.insertAdjacentElement("afterend", view.dom);
  textarea.hidden = true;
  textarea.editorView = view;
  view.dom.dataset.for = textarea.id;
}

function start() {
  document.querySelectorAll("textarea[data-editor]").forEach(attach);
  window.studioEditors = {
    // The line of a problem: scroll to it and put the cursor there.
    goTo(id, line) {
      const textarea = document.getElementById(id);
      const view = textarea && textarea.editorView;
      if (!view || !line) return;
      const pos = view.state.doc.line(Math.min(line, view.state.doc.lines)).from;
      view.dispatch({ selection: { anchor: pos }, scrollIntoView: true });
      view.focus();
    },
  };
}

if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", start);
} else {
  start();
}
