// Progressive enhancement only: every action also works as a plain form without this file.
// Clicking the slice viewer fills the "add region" form with the clicked pixel.
document.addEventListener("DOMContentLoaded", () => {
  const img = document.getElementById("slice");
  const form = document.getElementById("add-region");
  if (!img || !form) return;
  img.addEventListener("click", (event) => {
    const rect = img.getBoundingClientRect();
    const x = Math.floor((event.clientX - rect.left) * img.naturalWidth / rect.width);
    const y = Math.floor((event.clientY - rect.top) * img.naturalHeight / rect.height);
    form.elements.x.value = x;
    form.elements.y.value = y;
    form.elements.x.focus();
  });
});
