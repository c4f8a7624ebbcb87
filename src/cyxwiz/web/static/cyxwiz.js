/* Progressive enhancement only: every page works without this file. */
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  document.addEventListener("DOMContentLoaded", function () {
    // Bar widths come from data-width: the Content-Security-Policy allows no inline styles.
    document.querySelectorAll("[data-width]").forEach(function (bar) {
      var width = parseFloat(bar.getAttribute("data-width"));
      if (isFinite(width)) bar.style.width = Math.max(0, Math.min(100, width)) + "%";
    });
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

    // Buttons that undo something ask first (without JavaScript they act at once).
    document.querySelectorAll("button[data-confirm]").forEach(function (button) {
      button.addEventListener("click", function (event) {
        if (!window.confirm(button.getAttribute("data-confirm"))) event.preventDefault();
      });
    });

    // License keys: a click selects the whole key, ready to copy.
    document.querySelectorAll("input.key-input[readonly]").forEach(function (input) {
      input.addEventListener("focus", function () { input.select(); });
    });

    // The account menu closes on a click elsewhere or on Escape.
    var menus = document.querySelectorAll("details.user-menu");
    document.addEventListener("click", function (event) {
      menus.forEach(function (menu) {
        if (menu.open && !menu.contains(event.target)) menu.open = false;
      });
    });
    document.addEventListener("keydown", function (event) {
      if (event.key !== "Escape") return;
      menus.forEach(function (menu) {
        if (menu.open) {
          menu.open = false;
          menu.querySelector("summary").focus();
        }
      });
    });

    // The playground's per-field form: "Add row", and "Edit as JSON" opening with the JSON
    // of what the fields hold (unless the JSON was edited by hand since).
    document.querySelectorAll("form.playground-fields").forEach(function (form) {
      var panel = form.closest(".playground");
      var editor = panel && panel.querySelector("details.playground-json-editor");
      var textarea = editor && editor.querySelector("textarea");
      var edited = false;
      if (textarea) textarea.addEventListener("input", function () { edited = true; });

      function number(text) {
        var value = Number(text);
        return text.trim() !== "" && isFinite(value) ? value : text;
      }

      function request() {
        if (form.getAttribute("data-kind") === "text") {
          var area = form.querySelector("textarea");
          var lines = area.value.split("\n").map(function (l) { return l.trim(); });
          return { inputs: lines.filter(function (l) { return l !== ""; }) };
        }
        var keyed = form.getAttribute("data-keyed") === "true";
        var rows = [];
        form.querySelectorAll("fieldset.playground-row").forEach(function (set) {
          var inputs = Array.prototype.slice.call(set.querySelectorAll("input"));
          if (inputs.every(function (i) { return i.value.trim() === ""; })) return;
          if (keyed) {
            var row = {};
            inputs.forEach(function (i) { row[i.getAttribute("data-feature")] = number(i.value); });
            rows.push(row);
          } else {
            rows.push(inputs.map(function (i) { return number(i.value); }));
          }
        });
        return { inputs: rows };
      }

      if (editor && textarea) {
        editor.addEventListener("toggle", function () {
          if (editor.open && !edited) textarea.value = JSON.stringify(request(), null, 2);
        });
      }

      if (form.getAttribute("data-kind") !== "tabular") return;
      var max = parseInt(form.getAttribute("data-max-rows"), 10) || 1;
      var row = form.querySelector(".button-row");
      var add = document.createElement("button");
      add.type = "button";
      add.className = "btn btn-outline btn-sm";
      add.textContent = "Add row";
      row.insertBefore(add, row.firstChild);

      function count() { return form.querySelectorAll("fieldset.playground-row").length; }
      function refresh() { add.hidden = count() >= max; }

      add.addEventListener("click", function () {
        var sets = form.querySelectorAll("fieldset.playground-row");
        var last = sets[sets.length - 1];
        var n = sets.length;
        var copy = last.cloneNode(true);
        copy.setAttribute("data-row", String(n));
        copy.querySelector("legend").textContent = "Row " + (n + 1);
        copy.querySelectorAll("input").forEach(function (input, c) {
          var name = "x" + n + "_" + c;
          input.name = name;
          input.id = "pg-" + name;
          input.value = "";
          input.required = false;
          input.removeAttribute("aria-invalid");
          input.removeAttribute("autofocus");
        });
        copy.querySelectorAll("label").forEach(function (label, c) {
          label.setAttribute("for", "pg-x" + n + "_" + c);
        });
        last.parentNode.insertBefore(copy, last.nextSibling);
        var first = copy.querySelector("input");
        if (first) first.focus();
        refresh();
      });
      refresh();
    });

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
