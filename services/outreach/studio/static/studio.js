// Live preview: every edit re-renders the draft on the server (the same sandboxed
// renderer the workers use) for the chosen sample case, and shows its problems.
(function () {
  "use strict";
  const form = document.getElementById("editor-form");
  if (!form) return;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const channel = form.dataset.channel;
  const byId = (id) => document.getElementById(id);
  let timer = null;
  let inflight = null;
  let seq = 0;

  function value(id) {
    const el = byId(id);
    return el ? el.value : null;
  }

  function problemItem(p) {
    const li = document.createElement("li");
    li.className = p.severity;
    const sev = document.createElement("span");
    sev.className = "sev";
    sev.textContent = p.severity;
    li.append(sev);
    if (p.part) {
      const where = document.createElement(p.line ? "button" : "span");
      where.className = "where" + (p.line ? " link" : "");
      where.textContent = p.part + (p.line ? " line " + p.line : "");
      if (p.line) {
        where.type = "button";
        where.addEventListener("click", () => {
          const target = p.part === "subject" ? null : p.part;
          if (target && window.studioEditors) window.studioEditors.goTo(target, p.line);
        });
      }
      li.append(where);
    }
    li.append(document.createTextNode(" " + p.message));
    if (p.sample) {
      const hint = document.createElement("span");
      hint.className = "hint";
      hint.textContent = " (case: " + p.sample + ")";
      li.append(hint);
    }
    return li;
  }

  function show(result) {
    const error = byId("preview-error");
    error.hidden = !result.error;
    error.textContent = result.error
      ? (result.error_part ? result.error_part + (result.error_line ? " line " + result.error_line : "") + ": " : "") + result.error
      : "";
    if (channel === "email") {
      byId("pv-subject").textContent = result.subject || "";
      byId("pv-html").srcdoc = result.html || "";
      byId("pv-text").textContent = result.text || "";
    } else {
      byId("pv-text").textContent = result.text || "";
      const sms = result.sms;
      byId("pv-count").textContent = sms
        ? sms.characters + " characters · " + sms.encoding + " · " + sms.segments + " segment" + (sms.segments === 1 ? "" : "s")
        : "";
    }
    const box = byId("problems");
    box.replaceChildren();
    if (result.problems.length) {
      const ul = document.createElement("ul");
      ul.className = "problem-list";
      result.problems.forEach((p) => ul.append(problemItem(p)));
      box.append(ul);
    } else {
      const ok = document.createElement("p");
      ok.className = "ok";
      ok.textContent = "No problems: renders for every sample case.";
      box.append(ok);
    }
    const verdict = document.createElement("p");
    verdict.id = "publishable";
    verdict.dataset.ok = result.can_publish ? "yes" : "no";
    verdict.className = result.can_publish ? "ok" : "error-text";
    verdict.textContent = result.can_publish ? "Ready to publish." : "Cannot be published until the errors are fixed.";
    box.append(verdict);
    form.dataset.previewSeq = String(seq);
  }

  async function refresh() {
    seq += 1;
    const mine = seq;
    if (inflight) inflight.abort();
    inflight = new AbortController();
    const body = {
      kind: form.dataset.kind,
      channel: channel,
      locale: form.dataset.locale,
      subject: value("subject"),
      html: value("html"),
      text: value("text"),
      sample: value("sample"),
    };
    try {
      const response = await fetch("/api/preview", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(body),
        signal: inflight.signal,
        credentials: "same-origin",
      });
      if (response.status === 401) {
        byId("preview-error").hidden = false;
        byId("preview-error").textContent = "You were signed out. Save your text elsewhere and sign in again.";
        return;
      }
      const result = await response.json();
      if (mine === seq) show(result);
    } catch (err) {
      if (err.name !== "AbortError") {
        byId("preview-error").hidden = false;
        byId("preview-error").textContent = "The preview could not be updated: " + err.message;
      }
    }
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(refresh, 250);
  }

  form.addEventListener("input", schedule);
  const sample = byId("sample");
  if (sample) sample.addEventListener("change", refresh);
})();
