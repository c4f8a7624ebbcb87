/* Progressive enhancement only: every page works without this file. */
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  document.addEventListener("DOMContentLoaded", function () {
    // Filter selects apply at once instead of waiting for the "Apply" button.
    document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
      select.addEventListener("change", function () {
        if (select.form) select.form.submit();
      });
    });

    // "Copy" buttons next to checksums.
    if (navigator.clipboard) {
      document.querySelectorAll(".copy-btn[data-copy]").forEach(function (button) {
        button.hidden = false;
        button.addEventListener("click", function () {
          navigator.clipboard.writeText(button.getAttribute("data-copy")).then(function () {
            var label = button.textContent;
            button.textContent = "Copied";
            setTimeout(function () { button.textContent = label; }, 1500);
          });
        });
      });
    }

    // Keep a double-clicked submit from posting a form twice.
    document.querySelectorAll("form[method=post]").forEach(function (form) {
      form.addEventListener("submit", function () {
        form.querySelectorAll("button[type=submit]").forEach(function (b) {
          setTimeout(function () { b.disabled = true; }, 0);
        });
      });
    });
  });
})();
