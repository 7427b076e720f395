// A job's results: filters, keyset pages, a large view, and review by keyboard (c, d, x, u, arrows).
"use strict";
(() => {
  const { api, el, announce, percent } = window.catsdogs;
  const PAGE_SIZE = 48;
  const POLL_MS = 2000;
  const KEYS = { c: "cat", d: "dog", x: "neither" };
  const FINAL = new Set(["succeeded", "failed", "partially_failed", "cancelled"]);
  const jobId = Number(document.getElementById("results-page").dataset.job);
  const grid = document.getElementById("grid");
  const form = document.getElementById("filters");
  const large = document.getElementById("large");
  const state = {
    filters: {}, cursor: null, previous: [], next: null, items: [], undo: [], large: -1, saving: Promise.resolve(),
  };

  // --- the job --------------------------------------------------------------------------------------------

  async function loadJob() {
    const job = await api("GET", `/jobs/${jobId}`);
    const c = job.counts;
    const summary = document.getElementById("job-summary");
    summary.replaceChildren(
      el("span", { class: "folder", text: job.folder }), " · ",
      el("span", { class: "status", "data-status": job.status, text: job.status.replace("_", " ") }),
      ` · ${c.done + c.failed} of ${c.total}${job.listing_complete ? "" : "+"} done: ${c.done} classified,`,
      ` ${c.failed} failed, ${c.skipped} skipped · corrections: `,
      el("strong", { id: "corrections", text: job.corrections }),
      ` · model ${job.model_version}`,
    );
    return job;
  }

  async function pollJob() {
    const job = await loadJob().catch(() => null);
    if (!job || !FINAL.has(job.status)) setTimeout(pollJob, POLL_MS);
  }

  // --- pages of results -----------------------------------------------------------------------------------

  function readFilters() {
    const filters = {};
    for (const field of form.elements) {
      if (field.name && field.value !== "") filters[field.name] = field.value;
    }
    const query = new URLSearchParams(filters).toString();
    history.replaceState(null, "", query ? `${location.pathname}?${query}` : location.pathname);
    return filters;
  }

  function writeFilters() {
    const query = new URLSearchParams(location.search);
    for (const field of form.elements) {
      if (field.name && query.has(field.name)) field.value = query.get(field.name);
    }
  }

  async function loadPage() {
    grid.setAttribute("aria-busy", "true");
    const params = new URLSearchParams({ ...state.filters, limit: PAGE_SIZE });
    if (state.cursor) {
      params.set("after", state.cursor.after);
      if (state.cursor.confidence !== null) params.set("after_confidence", state.cursor.confidence);
    }
    const page = await api("GET", `/jobs/${jobId}/results?${params}`);
    state.items = page.items;
    state.next = page.next_after === null ? null : { after: page.next_after, confidence: page.next_after_confidence };
    grid.replaceChildren(...state.items.map((item, index) => el("li", {}, card(item, index))));
    document.getElementById("empty").hidden = state.items.length > 0;
    document.getElementById("next").disabled = state.next === null;
    document.getElementById("previous").disabled = state.previous.length === 0;
    document.getElementById("page-number").textContent = `Page ${state.previous.length + 1}`;
    grid.setAttribute("aria-busy", "false");
  }

  function name(item) {
    return item.path.split("/").pop();
  }

  function card(item, index) {
    const button = el("button", { type: "button", class: "card", "data-id": item.id, "data-index": index });
    if (item.status === "failed") {
      button.classList.add("is-failed");
      button.append(el("span", { class: "failure", text: `Failed: ${item.error}` }));
    } else {
      button.append(el("img", {
        src: `/results/${item.id}/thumbnail`, alt: `Photo ${name(item)}`, loading: "lazy", width: 160, height: 160,
      }));
    }
    button.append(labelLine(item), el("span", { class: "name", text: name(item) }));
    button.addEventListener("click", () => openLarge(index));
    return button;
  }

  function labelLine(item) {
    const model = item.label === null ? "no label" : `${item.label} ${percent(item.confidence)}`;
    if (item.corrected_label === null) {
      const label = el("span", { class: "label", text: model });
      if (item.uncertain) label.title = "uncertain: below the model's threshold";
      return label;
    }
    return el("span", { class: "label" },
      el("span", { class: "corrected", text: `✎ ${item.corrected_label}` }),
      " ", el("span", { class: "model-label", text: `model: ${model}` }));
  }

  function update(index, item) {
    state.items[index] = item;
    const old = grid.querySelector(`.card[data-index="${index}"]`);
    const focused = document.activeElement === old;
    const fresh = card(item, index);
    old.replaceWith(fresh);
    if (focused) fresh.focus();
    if (state.large === index) showLarge(index);
  }

  function cards() {
    return [...grid.querySelectorAll(".card")];
  }

  function focusCard(index) {
    const all = cards();
    if (all.length === 0) return;
    all[Math.max(0, Math.min(index, all.length - 1))].focus();
  }

  function columns() {
    return getComputedStyle(grid).gridTemplateColumns.split(" ").length;
  }

  // --- review ---------------------------------------------------------------------------------------------

  // Changes are sent one after another, in the order of the keys pressed.
  function enqueue(change) {
    state.saving = state.saving.then(change).catch((error) => announce(`Not saved: ${error.message}`));
  }

  function correct(index, label) {
    const item = state.items[index];
    state.undo.push(item.id);
    grid.querySelector(`.card[data-index="${index}"]`).classList.add("is-saving");
    enqueue(async () => {
      const who = localStorage.getItem("catsdogs.who") || null;
      const out = await api("POST", `/results/${item.id}/correction`, { label, who });
      showCorrections(out.job_corrections);
      replaceItem(out.result);
      announce(`${name(item)}: ${label}`);
    });
  }

  function undo(index) {
    const id = state.undo.length ? state.undo.pop() : state.items[index] && state.items[index].id;
    if (id === undefined) return;
    enqueue(async () => {
      const out = await api("DELETE", `/results/${id}/correction`);
      showCorrections(out.job_corrections);
      const at = replaceItem(out.result);
      if (at >= 0 && !large.open) focusCard(at);
      announce(`Undone: ${name(out.result)} is ${out.result.corrected_label || out.result.label} again`);
    });
  }

  function replaceItem(item) {
    const index = state.items.findIndex((shown) => shown.id === item.id);
    if (index >= 0) update(index, item);
    return index;
  }

  function showCorrections(count) {
    const counter = document.getElementById("corrections");
    if (counter) counter.textContent = count;
  }

  // Past either end of the page, the focus moves on to the next or the previous page.
  function move(index) {
    if (index >= state.items.length) {
      if (state.next !== null && !large.open) turnPage(1);
    } else if (index < 0) {
      if (state.previous.length && !large.open) turnPage(-1, true);
    } else if (large.open) {
      showLarge(index);
    } else {
      focusCard(index);
    }
  }

  function turnPage(direction, focusLast = false) {
    if (direction > 0) {
      state.previous.push(state.cursor);
      state.cursor = state.next;
    } else {
      state.cursor = state.previous.pop();
    }
    loadPage()
      .then(() => focusCard(focusLast ? state.items.length - 1 : 0))
      .catch((error) => announce(`Cannot load the results: ${error.message}`));
  }

  document.addEventListener("keydown", (event) => {
    if (event.altKey || event.ctrlKey || event.metaKey || event.target.closest("input, select, textarea")) return;
    const focused = document.activeElement.closest && document.activeElement.closest(".card");
    const index = large.open ? state.large : focused ? Number(focused.dataset.index) : -1;
    if (index < 0) return;
    const key = event.key.toLowerCase();
    const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(), ArrowUp: -columns() }[event.key];
    if (KEYS[key]) {
      correct(index, KEYS[key]);
      move(index + 1);
    } else if (key === "u") {
      undo(index);
    } else if (step !== undefined) {
      move(index + (large.open ? Math.sign(step) : step));
    } else {
      return;
    }
    event.preventDefault();
  });

  // --- the large view -------------------------------------------------------------------------------------

  function openLarge(index) {
    showLarge(index);
    if (!large.open) large.showModal();
  }

  function showLarge(index) {
    const item = state.items[index];
    state.large = index;
    const image = document.getElementById("large-image");
    image.hidden = item.status === "failed";
    if (!image.hidden) {
      image.src = `/results/${item.id}/thumbnail?size=large`;
      image.alt = `Photo ${name(item)}, large`;
    }
    const corrected = item.corrected_label === null ? "" : `; corrected to ${item.corrected_label}`;
    const outcome = item.status === "failed" ? `failed: ${item.error}` : `${item.label} ${percent(item.confidence)}`;
    document.getElementById("large-caption").textContent = `${item.path} · ${outcome}${corrected}`;
  }

  large.addEventListener("close", () => {
    focusCard(state.large);
    state.large = -1;
  });
  document.getElementById("close-large").addEventListener("click", () => large.close());

  // --- paging and filters ---------------------------------------------------------------------------------

  document.getElementById("next").addEventListener("click", () => turnPage(1));
  document.getElementById("previous").addEventListener("click", () => turnPage(-1));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    state.filters = readFilters();
    state.cursor = null;
    state.previous = [];
    loadPage().catch((error) => announce(`Cannot load the results: ${error.message}`));
  });

  writeFilters();
  state.filters = readFilters();
  pollJob();
  loadPage().catch((error) => announce(`Cannot load the results: ${error.message}`));
})();
