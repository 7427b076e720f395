// The jobs list (polled every 2 s, so running jobs' progress moves) and the form that submits a folder.
"use strict";
(() => {
  const { api, el, announce } = window.catsdogs;
  const POLL_MS = 2000;
  const PAGE_SIZE = 20;
  const body = document.querySelector("#jobs tbody");
  const older = document.getElementById("older");
  const newer = document.getElementById("newer");
  const state = { before: null, newerPages: [], next: null, status: "" };

  async function load() {
    const params = new URLSearchParams({ limit: PAGE_SIZE });
    if (state.before !== null) params.set("before", state.before);
    if (state.status) params.set("status", state.status);
    const page = await api("GET", `/jobs?${params}`);
    render(page.items);
    state.next = page.next_before;
    older.disabled = state.next === null;
    newer.disabled = state.newerPages.length === 0;
  }

  function render(jobs) {
    document.getElementById("no-jobs").hidden = jobs.length > 0;
    const rows = new Map([...body.rows].map((row) => [row.dataset.id, row]));
    const sameRows = jobs.length === rows.size && jobs.every((job, i) => body.rows[i].dataset.id === String(job.id));
    if (!sameRows) body.replaceChildren(...jobs.map((job) => rows.get(String(job.id)) || newRow(job)));
    for (const job of jobs) fill(body.querySelector(`tr[data-id="${job.id}"]`), job);
  }

  function newRow(job) {
    const row = el("tr", { "data-id": job.id });
    const link = el("a", { href: `/view/${job.id}`, text: `#${job.id}` });
    // The review queue: the results below the model's uncertainty threshold, least confident first.
    const review = el("a", { href: `/view/${job.id}?uncertain=true&order=confidence`, class: "review",
                             text: "review", "aria-label": `Review job ${job.id}'s uncertain results` });
    row.append(el("th", { scope: "row" }, link, " ", review));
    for (const name of ["folder", "status", "progress", "done", "reused", "failed", "skipped", "corrections", "model"]) {
      const numeric = ["done", "reused", "failed", "skipped", "corrections"].includes(name);
      row.append(el("td", { class: numeric ? `num ${name}` : name }));
    }
    const bar = el("progress", { "aria-label": `Job ${job.id} progress` });
    row.querySelector(".progress").append(bar, el("span", { class: "progress-text" }));
    return row;
  }

  function fill(row, job) {
    const c = job.counts;
    const settled = c.done + c.failed;
    const set = (name, text) => { row.querySelector(`.${name}`).textContent = text; };
    set("folder", job.folder);
    row.querySelector(".folder").title = job.folder;
    const status = row.querySelector(".status");
    status.textContent = job.status.replace("_", " ");
    status.dataset.status = job.status;
    const bar = row.querySelector("progress");
    bar.max = Math.max(c.total, 1);
    bar.value = settled;
    const total = job.listing_complete ? `${c.total}` : `${c.total}+`;
    row.querySelector(".progress-text").textContent = `${settled} / ${total}`;
    set("done", c.done);
    set("reused", c.reused);
    set("failed", c.failed);
    set("skipped", c.skipped);
    set("corrections", job.corrections);
    set("model", job.model_version);
  }

  document.getElementById("submit-job").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const message = document.getElementById("submit-message");
    message.className = "message";
    try {
      const job = await api("POST", "/jobs", { folder: form.folder.value.trim() });
      message.textContent = `Job ${job.id} created for ${job.folder}.`;
      form.reset();
      state.before = null;
      state.newerPages = [];
      await load();
    } catch (error) {
      message.className = "message error";
      message.textContent = `Not submitted: ${error.message}`;
      form.folder.focus();
    }
  });

  document.getElementById("status-filter").addEventListener("change", (event) => {
    state.status = event.target.value;
    state.before = null;
    state.newerPages = [];
    load().catch((error) => announce(error.message));
  });
  older.addEventListener("click", () => {
    state.newerPages.push(state.before);
    state.before = state.next;
    load();
  });
  newer.addEventListener("click", () => {
    state.before = state.newerPages.pop();
    load();
  });

  load().catch((error) => announce(`Cannot load the jobs: ${error.message}`));
  setInterval(() => {
    if (!document.hidden) load().catch(() => {});  // the next poll tries again
  }, POLL_MS);
})();
