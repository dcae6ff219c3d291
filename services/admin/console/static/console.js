// Progressive enhancement only: every page works without it.
// A region marked data-refresh="N" (a job still running) reloads the page every N seconds until it ends.
document.addEventListener("DOMContentLoaded", () => {
  const region = document.querySelector("[data-refresh]");
  if (region) {
    const seconds = Number(region.getAttribute("data-refresh")) || 2;
    window.setTimeout(() => window.location.reload(), seconds * 1000);
  }
});
