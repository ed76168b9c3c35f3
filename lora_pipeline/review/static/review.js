// The review app's small script: keyboard shortcuts and in-place decisions on the Approve tab,
// character settings and live job status on the Generate tab. Every form also works without it.
"use strict";

(function () {
  // Whether a key press is text being typed (checkboxes and buttons take shortcuts).
  function typing(target) {
    if (!(target instanceof HTMLElement)) return false;
    if (target instanceof HTMLInputElement) {
      return !["checkbox", "radio", "button", "submit"].includes(target.type);
    }
    return target.isContentEditable || ["TEXTAREA", "SELECT"].includes(target.tagName);
  }

  async function postForm(form) {
    const response = await fetch(form.action, {
      method: "POST",
      body: new FormData(form),
      headers: { Accept: "application/json" },
      credentials: "same-origin",
    });
    let body = {};
    try {
      body = await response.json();
    } catch (error) {
      body = { ok: false, error: "the server answered " + response.status };
    }
    return { status: response.status, body: body };
  }

  // --- Approve tab ------------------------------------------------------------------------------

  function setUpQueue(queue) {
    let current = 0;
    const cards = () => Array.from(queue.querySelectorAll(".card:not(.decided)"));
    const remaining = document.getElementById("remaining");

    function select(index) {
      const all = cards();
      if (!all.length) return;
      current = Math.max(0, Math.min(index, all.length - 1));
      all.forEach((card, i) => card.classList.toggle("current", i === current));
      all[current].scrollIntoView({ block: "nearest" });
    }

    function currentCard() {
      return cards()[current] || null;
    }

    function showError(card, message) {
      const box = card.querySelector(".card-error");
      box.textContent = message;
      box.hidden = false;
    }

    async function decide(form) {
      const card = form.closest(".card");
      form.querySelectorAll("button").forEach((b) => (b.disabled = true));
      let result;
      try {
        result = await postForm(form);
      } catch (error) {
        showError(card, "Network error: nothing was recorded; try again.");
        form.querySelectorAll("button").forEach((b) => (b.disabled = false));
        return;
      }
      if (result.body.ok) {
        card.classList.add("decided", "decided-" + result.body.status);
        card.querySelector(".actions").remove();
        const note = document.createElement("p");
        note.className = "notice";
        note.setAttribute("role", "status");
        note.textContent = result.body.message;
        card.appendChild(note);
        if (remaining) remaining.textContent = cards().length + " left on this page";
        select(current);
      } else if (result.status === 409) {
        // Someone else decided first: their outcome stands, this card is done.
        card.classList.add("decided", "decided-conflict");
        card.querySelector(".actions").remove();
        showError(card, result.body.error);
        select(current);
      } else {
        showError(card, result.body.error || "the server answered " + result.status);
        form.querySelectorAll("button").forEach((b) => (b.disabled = false));
      }
    }

    queue.addEventListener("submit", (event) => {
      const form = event.target;
      if (!(form instanceof HTMLFormElement) || !form.classList.contains("decide")) return;
      event.preventDefault();
      decide(form);
    });

    queue.addEventListener("click", (event) => {
      const card = event.target instanceof Element ? event.target.closest(".card") : null;
      if (card && !card.classList.contains("decided")) select(cards().indexOf(card));
    });

    document.addEventListener("keydown", (event) => {
      if (event.altKey || event.metaKey) return;
      const card = currentCard();
      if (!card) return;
      const panel = card.querySelector(".reject-panel");
      const rejecting = panel && panel.open;
      if (event.key === "Escape" && rejecting) {
        panel.open = false;
        event.preventDefault();
        return;
      }
      if (event.key === "Enter" && rejecting && (event.ctrlKey || !typing(event.target))) {
        event.preventDefault();
        panel.querySelector("form").requestSubmit();
        return;
      }
      if (typing(event.target) || event.ctrlKey) return;
      if (rejecting) {
        // While the reject panel is open only its own keys work: no stray approve.
        if (/^[1-6]$/.test(event.key)) {
          const box = panel.querySelectorAll("input[name=category]")[Number(event.key) - 1];
          if (box) box.checked = !box.checked;
          event.preventDefault();
        }
        return;
      }
      switch (event.key) {
        case "a":
          card.querySelector("form.approve").requestSubmit();
          break;
        case "r":
          panel.open = true;
          panel.querySelector("input[name=category]").focus();
          break;
        case "j":
        case "n":
          select(current + 1);
          break;
        case "k":
        case "p":
          select(current - 1);
          break;
        default:
          return;
      }
      event.preventDefault();
    });

    select(0);
  }

  // --- Generate tab -----------------------------------------------------------------------------

  function setUpGenerate() {
    const select = document.getElementById("generate-character");
    const settings = document.getElementById("character-settings");
    if (select && settings) {
      const show = () => {
        const option = select.selectedOptions[0];
        if (option) settings.textContent = option.dataset.settings || "";
      };
      select.addEventListener("change", show);
      show();
    }
    const body = document.getElementById("jobs-body");
    if (!body) return;

    // The clip a video job made: a player (or the picture of an animation) and a link.
    function outputCell(job) {
      const td = document.createElement("td");
      td.className = "job-output";
      if (!job.output) return td;
      const media = document.createElement(job.output_kind === "video" ? "video" : "img");
      media.src = job.output;
      media.width = 160;
      if (job.output_kind === "video") {
        media.controls = true;
        media.preload = "metadata";
      } else {
        media.alt = "output of job " + job.id;
      }
      const link = document.createElement("a");
      link.href = job.output;
      link.target = "_blank";
      link.rel = "noopener";
      link.textContent = job.output_name;
      td.append(media, document.createElement("br"), link);
      return td;
    }

    function row(job) {
      const tr = document.createElement("tr");
      tr.dataset.jobId = job.id;
      tr.dataset.signature = JSON.stringify(job);
      tr.className = "status-" + job.status;
      const cells = [job.id, job.character, job.kind, job.status, job.backend, job.seed,
        job.created_at, job.error];
      cells.forEach((value, i) => {
        const td = document.createElement("td");
        td.textContent = String(value);
        if (i === 3) td.className = "job-status";
        tr.appendChild(td);
      });
      tr.appendChild(outputCell(job));
      return tr;
    }

    // An unchanged job keeps its row, so a clip being watched is not reloaded by the poll.
    function rowFor(job) {
      const old = body.querySelector('tr[data-job-id="' + job.id + '"]');
      return old && old.dataset.signature === JSON.stringify(job) ? old : row(job);
    }

    async function refresh() {
      try {
        const response = await fetch("/jobs.json", { headers: { Accept: "application/json" } });
        if (!response.ok) return;
        const data = await response.json();
        if (data.jobs.length) body.replaceChildren(...data.jobs.map(rowFor));
        const active = data.jobs.some((j) => j.status === "pending" || j.status === "running");
        window.setTimeout(refresh, active ? 2000 : 10000);
      } catch (error) {
        window.setTimeout(refresh, 10000);
      }
    }
    window.setTimeout(refresh, 2000);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const queue = document.getElementById("queue");
    if (queue) setUpQueue(queue);
    if (document.body.dataset.page === "generate") setUpGenerate();
  });
})();

// Pipeline state (Characters and Approve tabs): polled, so that a regeneration queued behind a
// training, a training's step, loss, ETA and pauses, its evaluation and the release it made
// show without a reload.
(function pipelineState() {
  const POLL_MS = 2000;
  function boxes() { return document.querySelectorAll(".pipeline-state[data-state-for]"); }
  if (!boxes().length) return;
  function render(box, state) {
    const label = box.querySelector(".state-label");
    label.textContent = state ? state.label : "";
    const list = box.querySelector(".state-lines");
    list.replaceChildren();
    for (const line of (state ? state.lines : [])) {
      const item = document.createElement("li");
      item.className = `state-${line.kind} state-${line.state}`;
      const text = line.url ? document.createElement("a") : document.createElement("span");
      if (line.url) { text.href = line.url; text.target = "_blank"; text.rel = "noopener"; }
      text.textContent = line.text;
      item.append(text);
      list.append(item);
    }
    let sample = box.querySelector("img.state-sample");
    const url = state && state.training && state.training.sample_url;
    if (url) {
      if (!sample) {
        sample = document.createElement("img");
        sample.className = "state-sample";
        sample.alt = `latest training sample of ${box.dataset.stateFor}`;
        box.append(sample);
      }
      // The file is replaced at each epoch: a changing query makes the browser fetch it again.
      const fresh = `${url}?step=${state.training.step}`;
      if (sample.getAttribute("src") !== fresh) sample.setAttribute("src", fresh);
    } else if (sample) {
      sample.remove();
    }
  }
  async function poll() {
    try {
      const response = await fetch("/state.json", { headers: { accept: "application/json" } });
      if (response.ok) {
        const body = await response.json();
        for (const box of boxes()) render(box, body.characters[box.dataset.stateFor]);
        document.body.dataset.stateUpdated = String(Date.now());
      }
    } catch (error) {
      // The app restarting: try again at the next tick.
    }
    setTimeout(poll, POLL_MS);
  }
  setTimeout(poll, POLL_MS);
})();
