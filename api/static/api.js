// Shared by every page: calls to the JSON API with the session cookie and the page's CSRF token.
"use strict";
(() => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = csrf;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) {  // the session expired: the page shows the sign-in form
      location.reload();
      throw new Error("signed out");
    }
    const data = response.status === 204 ? null : await response.json().catch(() => null);
    if (!response.ok) throw new Error(data && data.detail ? data.detail : `${response.status} ${response.statusText}`);
    return data;
  }

  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : value);
    }
    node.append(...children.filter((child) => child !== null && child !== undefined));
    return node;
  }

  function announce(text) {
    document.getElementById("status").textContent = text;
  }

  function percent(confidence) {
    return confidence === null ? "" : `${Math.round(confidence * 100)}%`;
  }

  const logout = document.getElementById("logout");
  if (logout) {
    logout.addEventListener("click", async () => {
      await api("POST", "/logout");
      location.assign("/");
    });
  }

  window.catsdogs = { api, el, announce, percent };
})();
