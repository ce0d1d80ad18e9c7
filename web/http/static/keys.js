// /keys: times in the browser's zone, copying a new key, and the revoke confirmation.
"use strict";

onPage("keys", () => {
  for (const node of document.querySelectorAll(".zone-label")) node.textContent = zoneLabel();
  for (const node of document.querySelectorAll("time[datetime]")) {
    node.title = node.getAttribute("datetime");
    node.textContent = fmtTime(node.getAttribute("datetime"));
  }

  // The secret is in this page only: make its history entry /keys, so that reloading or
  // coming back shows the list, never the secret (and does not post the form again).
  if ($("#key-created") || $("#keys-revoked")) history.replaceState(null, "", "/keys");

  const status = $("#copy-status");
  for (const button of document.querySelectorAll("button.copy")) {
    button.addEventListener("click", async () => {
      const input = document.getElementById(button.dataset.copy);
      input.select();
      try {
        await navigator.clipboard.writeText(input.value);
        status.textContent = "Copied to the clipboard.";
      } catch {
        status.textContent = "Select the text and copy it (this browser refused the clipboard).";
      }
    });
  }

  const dialog = $("#revoke-dialog");
  const form = $("#revoke-form");
  for (const button of document.querySelectorAll("button.revoke")) {
    button.addEventListener("click", () => {
      form.action = `/keys/${encodeURIComponent(button.dataset.keyId)}/revoke`;
      $("#revoke-prefix").textContent = `${button.dataset.prefix}…`;
      $("#revoke-current").hidden = button.dataset.current !== "yes";
      dialog.showModal();
      $("#revoke-cancel").focus();
    });
  }
  $("#revoke-cancel").addEventListener("click", () => dialog.close());
});
