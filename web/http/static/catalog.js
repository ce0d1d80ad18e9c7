// /catalog: search and modality filter. Needs console.js.
"use strict";

function initCatalog() {
  const search = $("#catalog-search");
  const modality = $("#catalog-modality");
  const rows = [...document.querySelectorAll("#catalog-table tbody tr[data-model]")];
  const apply = () => {
    const q = search.value.trim().toLowerCase();
    let shown = 0;
    for (const row of rows) {
      const visible = row.dataset.model.toLowerCase().includes(q) && (!modality.value || row.dataset.modality === modality.value);
      row.hidden = !visible;
      shown += visible;
    }
    $("#catalog-empty").hidden = shown > 0 || rows.length === 0;
  };
  search.addEventListener("input", apply);
  modality.addEventListener("change", apply);
}

onPage("catalog", initCatalog);
