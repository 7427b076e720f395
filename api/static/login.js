// The sign-in form: POST /login sets the session cookie; the page then reloads, signed in.
"use strict";
(() => {
  const form = document.getElementById("login");
  const error = document.getElementById("login-error");
  document.getElementById("who").value = localStorage.getItem("catsdogs.who") || "";
  document.getElementById("token").focus();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const response = await fetch("/login", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      credentials: "same-origin",
      body: JSON.stringify({ token: form.token.value }),
    });
    if (!response.ok) {
      const data = await response.json().catch(() => null);
      error.textContent = data && data.detail ? data.detail : `Sign-in failed (${response.status})`;
      form.token.focus();
      return;
    }
    localStorage.setItem("catsdogs.who", form.who.value.trim());
    location.reload();
  });
})();
