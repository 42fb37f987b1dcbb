// The console's only script: keeps a secret's rollout and versions live
// (one poll a second) and sends Rotate and Rollback, each after a
// confirmation, with the per-run CSRF token in a header. Everything the
// broker says is put on the page as text (textContent), never as HTML.
"use strict";

(function () {
  const meta = (name) => {
    const m = document.querySelector(`meta[name="${name}"]`);
    return m ? m.getAttribute("content") : null;
  };
  const path = meta("coffer-path");
  const csrf = meta("coffer-csrf");
  if (!path) return;

  const $ = (id) => document.getElementById(id);
  const enc = (p) => p.split("/").map(encodeURIComponent).join("/");
  const say = (text, isError) => {
    const m = $("message");
    m.textContent = text;
    m.className = isError ? "error" : "";
  };
  const item = (text) => {
    const li = document.createElement("li");
    li.textContent = text;
    return li;
  };
  const fill = (list, items) => {
    const ul = $(list);
    ul.replaceChildren(...items.map(item));
  };
  const who = (w) => `${w.namespace}/${w.serviceAccount} pod=${w.pod || "-"}`;

  function renderRollout(r) {
    if (r.error) {
      $("rollout-text").textContent = r.error;
      return;
    }
    $("rollout-version").textContent = `v${r.currentVersion}`;
    const bar = $("bar");
    bar.max = Math.max(r.expected, 1);
    bar.value = r.applied;
    $("rollout-text").textContent =
      `${r.applied}/${r.expected} applied (${r.failed} failed, ${r.pending} pending)`;
    const watching = r.workloads.filter((w) => w.watching);
    const current = (w) => w.version === r.currentVersion;
    fill("failed", watching.filter((w) => current(w) && w.state === "failed")
      .map((w) => `${who(w)}: ${w.reason || "failed"}`));
    fill("pending", watching.filter((w) => !current(w) || w.state === "pending")
      .map((w) => `${who(w)} (at v${w.version})`));
    fill("applied", watching.filter((w) => current(w) && w.state === "applied")
      .map((w) => `${who(w)}` + (w.timeToApplyMs != null ? ` in ${w.timeToApplyMs} ms` : "")));
  }

  function renderVersions(versions) {
    const body = $("versions").tBodies[0];
    body.replaceChildren(...versions.map((v) => {
      const tr = document.createElement("tr");
      const cells = [`v${v.version}` + (v.current ? " (current)" : ""), v.createdAt, v.state];
      for (const text of cells) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      const td = document.createElement("td");
      if (!v.current && v.state === "live") {
        const b = document.createElement("button");
        b.type = "button";
        b.dataset.rollback = String(v.version);
        b.textContent = `Roll back to v${v.version}`;
        td.appendChild(b);
      }
      tr.appendChild(td);
      return tr;
    }));
  }

  let lastVersions = "";
  async function poll() {
    try {
      const res = await fetch(`/api/secret/${enc(path)}`, { credentials: "same-origin" });
      const data = await res.json();
      if (!res.ok) {
        $("rollout-text").textContent = data.error || `error ${res.status}`;
        return;
      }
      renderRollout(data.rollout);
      const key = JSON.stringify(data.versions);
      if (key !== lastVersions) {
        lastVersions = key;
        renderVersions(data.versions);
      }
    } catch (e) {
      $("rollout-text").textContent = "console unreachable";
    }
  }

  async function act(url, body, question) {
    if (!window.confirm(question)) {
      say("cancelled", false);
      return;
    }
    say("working…", false);
    try {
      const res = await fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "content-type": "application/json", "x-coffer-csrf": csrf },
        body: JSON.stringify(body),
      });
      const text = await res.text();
      let data = {};
      try { data = JSON.parse(text); } catch (e) { data = { error: text }; }
      if (res.ok) say(data.message, false);
      else say(`refused: ${data.error || res.status}`, true);
    } catch (e) {
      say("console unreachable", true);
    }
    poll();
  }

  $("rotate").addEventListener("click", () =>
    act(`/api/rotate/${enc(path)}`, {}, `Rotate ${path}? Every pod watching it gets a new value.`));
  $("versions").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-rollback]");
    if (!b) return;
    const to = Number(b.dataset.rollback);
    act(`/api/rollback/${enc(path)}`, { toVersion: to },
      `Roll ${path} back to version ${to}? Its value becomes current again as a new version.`);
  });

  poll();
  setInterval(poll, 1000);
})();
