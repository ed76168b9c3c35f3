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

  // The character's progress towards a training, as the last decision's answer gave it.
  function showProgress(slug, approved, needed) {
    document.querySelectorAll('[data-progress-for="' + CSS.escape(slug) + '"]').forEach((box) => {
      const bar = box.querySelector("progress");
      if (bar) bar.value = Math.min(approved, needed);
      const count = box.querySelector(".approved-count");
      if (count) count.textContent = String(approved);
    });
  }

  function setUpQueue(queue) {
    let current = 0;
    const cards = () => Array.from(queue.querySelectorAll(".card:not(.decided)"));
    const remaining = document.getElementById("remaining");
    const decidedList = document.getElementById("decided");
    const reviewerBox = document.getElementById("reviewer-box");
    const viewer = makeViewer(document.getElementById("viewer"));

    function hasReviewer() {
      return !reviewerBox || reviewerBox.dataset.reviewer !== "";
    }

    // No decision without a name: the first key press asks for it instead.
    function askReviewer() {
      if (viewer) viewer.close();
      reviewerBox.classList.add("reviewer-asked");
      reviewerBox.querySelector("input[name=reviewer]").focus();
    }

    function select(index) {
      queue.querySelectorAll(".card.current").forEach((card) => card.classList.remove("current"));
      const all = cards();
      if (!all.length) {
        current = 0;
        if (viewer) viewer.close();
        return;
      }
      current = Math.max(0, Math.min(index, all.length - 1));
      all[current].classList.add("current");
      if (viewer && viewer.isOpen()) viewer.show(all[current], all[current + 1]);
      else all[current].scrollIntoView({ block: "nearest" });
    }

    function currentCard() {
      return cards()[current] || null;
    }

    // A card's buttons: in the card, or in the viewer while it shows that card.
    function actionsOf(card) {
      return card.querySelector(".actions") || (viewer && viewer.actionsOf(card));
    }

    function showError(card, message) {
      const box = card.querySelector(".card-error");
      box.textContent = message;
      box.hidden = false;
      if (viewer && viewer.isOpen()) viewer.showError(message);
    }

    // A decided card leaves the queue for the "Decided on this page" list below it.
    function leaveQueue(card, kind) {
      const actions = actionsOf(card);
      if (actions) actions.remove();
      card.classList.remove("current");
      card.classList.add("decided", "decided-" + kind);
      card.querySelector(".pick").checked = false;
      decidedList.hidden = false;
      decidedList.querySelector(".decided-grid").prepend(card);
      const count = decidedList.querySelectorAll(".card").length;
      document.getElementById("decided-count").textContent = count + " decided";
      if (remaining) remaining.textContent = cards().length + " left on this page";
    }

    async function decide(form) {
      const card = form.closest(".card") || (viewer && viewer.card());
      if (!hasReviewer()) {
        askReviewer();
        return;
      }
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
        const note = document.createElement("p");
        note.className = "notice";
        note.setAttribute("role", "status");
        note.textContent = result.body.message;
        card.appendChild(note);
        leaveQueue(card, result.body.status);
        showProgress(result.body.character, result.body.approved, result.body.needed);
        if (viewer && result.body.status === "approved") viewer.approved(card);
        select(current);
      } else if (result.status === 409) {
        // Someone else decided first: their outcome stands, this card is done.
        showError(card, result.body.error);
        leaveQueue(card, "conflict");
        select(current);
      } else {
        showError(card, result.body.error || "the server answered " + result.status);
        form.querySelectorAll("button").forEach((b) => (b.disabled = false));
      }
    }

    document.addEventListener("submit", (event) => {
      const form = event.target;
      if (!(form instanceof HTMLFormElement) || !form.classList.contains("decide")) return;
      event.preventDefault();
      decide(form);
    });

    queue.addEventListener("click", (event) => {
      const card = event.target instanceof Element ? event.target.closest(".card") : null;
      if (!card || card.classList.contains("decided")) return;
      select(cards().indexOf(card));
      // The thumbnail opens the single-image view (a new tab without the script).
      if (viewer && event.target.closest("a.open-full")) {
        event.preventDefault();
        viewer.show(card, cards()[current + 1]);
      }
    });

    document.addEventListener("keydown", (event) => {
      if (event.altKey || event.metaKey) return;
      const card = currentCard();
      if (!card) return;
      const actions = actionsOf(card);
      const panel = actions && actions.querySelector(".reject-panel");
      const rejecting = panel && panel.open;
      const viewing = viewer && viewer.isOpen();
      if (event.key === "Escape" && (rejecting || viewing)) {
        if (rejecting) panel.open = false;
        else viewer.close();
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
      if (viewing && viewer.key(event.key)) {
        event.preventDefault();
        return;
      }
      switch (event.key) {
        case "a":
          if (!hasReviewer()) askReviewer();
          else if (actions) actions.querySelector("form.approve").requestSubmit();
          break;
        case "r":
          if (!hasReviewer()) askReviewer();
          else if (panel) {
            panel.open = true;
            panel.querySelector("input[name=category]").focus();
          }
          break;
        case "j":
        case "n":
          select(current + 1);
          break;
        case "k":
        case "p":
          select(current - 1);
          break;
        case "o":
          if (viewer) viewer.show(card, cards()[current + 1]);
          break;
        case "x": {
          const pick = card.querySelector(".pick");
          pick.checked = !pick.checked;
          pick.dispatchEvent(new Event("change", { bubbles: true }));
          break;
        }
        case "t":
          focusTagging(card);
          break;
        default:
          return;
      }
      event.preventDefault();
    });

    if (reviewerBox) setUpReviewer(reviewerBox);
    select(0);
  }

  // The reviewer's name, given once: the server keeps it in a cookie of this browser.
  function setUpReviewer(box) {
    const form = box.querySelector("form");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const result = await postForm(form);
      if (!result.body.ok) {
        form.querySelector("input[name=reviewer]").setCustomValidity(result.body.error);
        form.reportValidity();
        return;
      }
      box.dataset.reviewer = result.body.reviewer;
      box.classList.remove("reviewer-missing", "reviewer-asked");
      let shown = box.querySelector("#reviewer-name");
      if (!shown) {
        const line = document.createElement("span");
        line.append("Reviewing as ");
        shown = document.createElement("strong");
        shown.id = "reviewer-name";
        line.append(shown);
        box.prepend(line);
      }
      shown.textContent = result.body.reviewer;
      const input = form.querySelector("input[name=reviewer]");
      input.value = "";
      input.blur();
    });
    form.querySelector("input[name=reviewer]").addEventListener("input", (event) => {
      event.target.setCustomValidity("");
    });
  }

  // --- The single-image view --------------------------------------------------------------------

  // Full resolution with zoom, the generation metadata, the rejection it answers and the
  // character's approved images; the card's own approve/reject forms move into it while shown.
  function makeViewer(box) {
    if (!box) return null;
    let image = box.querySelector("#viewer-image");
    const slot = box.querySelector("#viewer-actions");
    const details = new Map();
    const ZOOM_STEP = 1.25;
    let shown = null;
    let scale = 0; // 0: fit the screen

    function load(card) {
      const id = card.dataset.imageId;
      if (!details.has(id)) {
        const answer = fetch("/images/" + id + "/details.json", {
          headers: { Accept: "application/json" },
          credentials: "same-origin",
        }).then((response) => {
          if (!response.ok) throw new Error("the server answered " + response.status);
          return response.json();
        });
        answer.catch(() => details.delete(id));
        details.set(id, answer);
      }
      return details.get(id);
    }

    // The next image, fetched and decoded while this one is judged: that element itself is
    // shown next, so nothing is decoded again.
    let preloaded = null;
    function picture(id) {
      const element = new Image();
      element.src = "/images/" + id;
      element.dataset.imageId = id;
      return element;
    }
    function preload(card) {
      if (!card) return;
      load(card).catch(() => {});
      preloaded = picture(card.dataset.imageId);
      preloaded.decode().catch(() => {});
    }
    function pictureFor(id) {
      const ready = preloaded && preloaded.dataset.imageId === id ? preloaded : picture(id);
      preloaded = null;
      ready.id = "viewer-image";
      ready.alt = "image " + id + " at full size";
      return ready;
    }

    function putBack() {
      const actions = slot.querySelector(".actions");
      if (shown && actions) shown.querySelector(".card-error").after(actions);
      slot.replaceChildren();
    }

    function zoom(next) {
      scale = next;
      image.classList.toggle("fit", scale === 0);
      image.style.width = scale === 0 ? "" : Math.round(image.naturalWidth * scale) + "px";
      box.dataset.zoom = scale === 0 ? "fit" : String(Math.round(scale * 100) / 100);
    }

    function effectiveScale() {
      return scale || image.clientWidth / (image.naturalWidth || 1);
    }

    function text(tag, value, className) {
      const node = document.createElement(tag);
      node.textContent = value;
      if (className) node.className = className;
      return node;
    }

    function thumb(id, href, alt) {
      const link = document.createElement("a");
      link.href = href;
      link.target = "_blank";
      link.rel = "noopener";
      const img = document.createElement("img");
      img.src = "/images/" + id + "/thumb";
      img.alt = alt;
      img.loading = "lazy";
      link.append(img);
      return link;
    }

    // Why the image is this character's: the identification record of its provenance.
    function renderWhy(why) {
      const section = box.querySelector("#viewer-why");
      if (!section) return;
      section.hidden = !why;
      if (!why) return;
      const lines = [];
      if (why.cluster_id) {
        lines.push(text("p", "Labelled by hand: candidate cluster " + why.cluster_id +
          " was named this character on the Clusters tab.", "why-cluster"));
      }
      if (why.method) {
        let line = "By " + why.method;
        if (why.method === "VLM" && why.vlm) line += " (" + why.vlm + "), since reference matching was unsure";
        else if (why.matcher) line += " (" + why.matcher + ")";
        if (why.threshold !== null) line += "; a match needs " + why.threshold.toFixed(3);
        lines.push(text("p", line + ".", "why-method"));
      }
      for (const row of why.scores) {
        lines.push(text("p", row.character + " " + row.score.toFixed(3) +
          (row.passes ? " (reaches the threshold)" : " (below)"), "why-score"));
      }
      if (why.vlm_answer) lines.push(text("p", "The VLM answered: " + why.vlm_answer, "prompt"));
      if (why.answer && !why.scores.length && !why.vlm_answer) {
        lines.push(text("p", (why.identifier || "The identifier") + " answered: " + why.answer, "prompt"));
      }
      section.querySelector(".why-lines").replaceChildren(...lines);
    }

    function render(data) {
      box.querySelector("#viewer-size").textContent =
        data.width + "×" + data.height + " · " + data.origin + " · " + data.status;
      box.querySelector("#viewer-tags").replaceChildren(
        ...data.tags.map((tag) => text("span", tag, "tag")));
      const meta = box.querySelector("#viewer-meta");
      meta.replaceChildren();
      for (const [key, value] of Object.entries(data.metadata)) {
        meta.append(text("dt", key), text("dd", String(value)));
      }
      const answers = box.querySelector("#viewer-answers");
      answers.hidden = !data.answers.length;
      answers.querySelector(".viewer-answer-list").replaceChildren(...data.answers.map((a) => {
        const item = document.createElement("div");
        item.className = "viewer-answer";
        item.append(
          thumb(a.image_id, "/images/" + a.image_id, "the rejected image " + a.image_id),
          text("p", "Rejected #" + a.image_id + (a.reviewer ? " by " + a.reviewer : "") + ": " +
            (a.categories.join(", ") || "no category")),
        );
        if (a.notes) item.append(text("p", a.notes, "muted"));
        if (a.prompt_edit) item.append(text("p", "New prompt: " + a.prompt_edit, "prompt"));
        return item;
      }));
      renderWhy(data.why);
      box.querySelector("#viewer-character").textContent = data.character_name;
      box.querySelector("#viewer-approved-count").textContent =
        data.approved_count + " / " + data.needed;
      const approved = box.querySelector("#viewer-approved");
      approved.replaceChildren(...data.approved.map((a) =>
        thumb(a.image_id, "/images/" + a.image_id, "approved image " + a.image_id)));
      if (!data.approved.length) approved.append(text("p", "none approved yet", "muted"));
    }

    async function show(card, upcoming) {
      putBack();
      shown = card;
      const id = card.dataset.imageId;
      box.hidden = false;
      document.body.classList.add("viewer-open");
      delete box.dataset.ready;
      box.dataset.imageId = id;
      const actions = card.querySelector(".actions");
      if (actions) slot.append(actions);
      box.querySelector("#viewer-title").textContent = card.querySelector("h2").textContent;
      const next = pictureFor(id);
      image.replaceWith(next);
      image = next;
      zoom(0);
      try {
        const [data] = await Promise.all([load(card), image.decode().catch(() => {})]);
        if (shown !== card) return;
        render(data);
        box.dataset.ready = id;
      } catch (error) {
        if (shown === card) showError("Could not load the details: " + error.message);
      }
      preload(upcoming);
    }

    function close() {
      if (!shown) return;
      putBack();
      box.hidden = true;
      document.body.classList.remove("viewer-open");
      delete box.dataset.ready;
      shown.scrollIntoView({ block: "nearest" });
      shown = null;
    }

    function showError(message) {
      slot.append(text("p", message, "error"));
    }

    // An approved image joins the comparisons of its character's images already loaded.
    function approved(card) {
      const id = Number(card.dataset.imageId);
      for (const answer of details.values()) {
        answer.then((data) => {
          if (data.character !== card.dataset.character) return;
          if (data.approved.some((a) => a.image_id === id)) return;
          data.approved.unshift({ image_id: id, thumb: "/images/" + id + "/thumb" });
          data.approved_count += 1;
        }).catch(() => {});
      }
    }

    // The viewer's own keys; false for the ones the queue handles.
    function key(name) {
      switch (name) {
        case "z":
          zoom(scale === 0 ? 1 : 0);
          return true;
        case "+":
        case "=":
          zoom(effectiveScale() * ZOOM_STEP);
          return true;
        case "-":
          zoom(effectiveScale() / ZOOM_STEP);
          return true;
        case "o":
          close();
          return true;
        default:
          return false;
      }
    }

    box.querySelector(".viewer-stage").addEventListener("click", (event) => {
      if (event.target === image) zoom(scale === 0 ? 1 : 0);
    });
    return {
      show: show,
      close: close,
      key: key,
      approved: approved,
      showError: showError,
      isOpen: () => shown !== null,
      card: () => shown,
      actionsOf: (card) => (card === shown ? slot.querySelector(".actions") : null),
    };
  }

  // --- Tags and asset types (Approve and Gallery) -----------------------------------------------

  function focusTagging(card) {
    const form = document.getElementById("tag-form");
    if (!form) return;
    const picked = document.querySelectorAll(".pick:checked");
    if (!picked.length && card) {
      card.querySelector(".pick").checked = true;
      form.dispatchEvent(new Event("change"));
    }
    form.querySelector("input[name=add]").focus();
  }

  function setUpTagging(form) {
    const label = document.getElementById("tag-selected");
    const errorBox = form.querySelector(".tag-error");
    const picks = () => Array.from(document.querySelectorAll('input.pick[form="tag-form"]'));

    function count() {
      const chosen = picks().filter((p) => p.checked).length;
      if (label && picks().length) {
        label.textContent = chosen ? chosen + " selected image(s)" : "the selected images";
      }
    }

    function showTags(id, tags) {
      document.querySelectorAll('[data-tags-for="' + id + '"]').forEach((box) => {
        box.replaceChildren(...tags.map((tag) => {
          const span = document.createElement("span");
          span.className = "tag";
          span.textContent = tag;
          return span;
        }));
      });
    }

    document.addEventListener("change", (event) => {
      if (event.target instanceof HTMLInputElement && event.target.classList.contains("pick")) {
        count();
      }
    });
    form.addEventListener("change", count);

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      errorBox.hidden = true;
      let result;
      try {
        result = await postForm(form);
      } catch (error) {
        result = { status: 0, body: { ok: false, error: "Network error: nothing was saved." } };
      }
      if (!result.body.ok) {
        errorBox.textContent = result.body.error || "the server answered " + result.status;
        errorBox.hidden = false;
        return;
      }
      for (const [id, tags] of Object.entries(result.body.tags)) showTags(id, tags);
      picks().forEach((p) => (p.checked = false));
      ["add", "remove", "asset_type"].forEach((name) => (form.elements[name].value = ""));
      count();
      form.dataset.saved = String(Object.keys(result.body.tags).length);
      form.querySelector("input[name=add]").blur();
    });
    count();
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
    const tagForm = document.getElementById("tag-form");
    if (tagForm) setUpTagging(tagForm);
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
  // A Characters card's image counts and progress towards a training, as the state says now.
  function showCounts(card, state) {
    const bar = card.querySelector("progress");
    const needed = bar ? Number(bar.max) : 0;
    if (bar) bar.value = Math.min(state.approved, needed);
    const progress = card.querySelector(".progress-text");
    if (progress) progress.textContent = `${state.approved} / ${needed} approved`;
    let total = 0;
    for (const [status, count] of Object.entries(state.counts)) {
      total += count;
      const span = card.querySelector(`.count-${status}`);
      if (span) span.textContent = `${count} ${status}`;
    }
    const counts = card.querySelector(".counts");
    if (counts && counts.firstChild) counts.firstChild.textContent = `${total} — `;
  }
  function render(box, state) {
    const label = box.querySelector(".state-label");
    label.textContent = state ? state.label : "";
    const card = box.closest("section.character");
    if (card && state && state.counts) showCounts(card, state);
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

// Train tab (seed 003's wizard): each change asks /train/plan.json for the image count, shot
// distribution, caption preview, presets and the line of any step that cannot go on, and
// mirrors the choices into the Start form.
(function trainWizard() {
  const form = document.getElementById("train-form");
  if (!form) return;
  const byId = (id) => document.getElementById(id);
  let timer = null;
  function choices() {
    const data = new FormData(form);
    return new URLSearchParams([...data.entries()].map(([k, v]) => [k, String(v)]));
  }
  function show(plan) {
    const count = byId("train-count");
    if (count) count.querySelector("strong").textContent = String(plan.count);
    for (const cell of document.querySelectorAll("#train-shots td[data-shot]")) {
      cell.textContent = String(plan.shots[cell.dataset.shot] || 0);
    }
    const captions = byId("train-captions");
    if (captions) {
      captions.replaceChildren(...plan.captions.map((text) => {
        const item = document.createElement("li");
        item.textContent = text;
        return item;
      }));
    }
    for (const preset of plan.presets) {
      const span = document.querySelector(`.preset-steps[data-preset="${preset.name}"]`);
      if (span) span.textContent = `${preset.epochs} epochs, ${preset.steps} steps, ${preset.estimate}`;
    }
    for (const step of ["checkpoint", "dataset", "captions", "preset"]) {
      const line = byId(`problem-${step}`);
      if (!line) continue;
      line.textContent = plan.problems[step] || "";
      line.hidden = !plan.problems[step];
    }
    const start = byId("train-start");
    if (start) start.disabled = !plan.ready;
    const ready = byId("train-ready");
    if (ready) ready.textContent = plan.ready ? "ready" : "fix the step marked above first";
    const params = choices();
    for (const mirror of document.querySelectorAll("input[data-mirror]")) {
      mirror.value = params.get(mirror.dataset.mirror) || "";
    }
  }
  async function refresh() {
    const response = await fetch(`/train/plan.json?${choices()}`, { headers: { accept: "application/json" } });
    if (response.ok) {
      show(await response.json());
      document.body.dataset.planUpdated = String(Date.now());
    }
  }
  form.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(refresh, 250); });
  // A new character changes every step: load its page.
  byId("train-character").addEventListener("change", () => form.submit());
})();
