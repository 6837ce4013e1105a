// The aftercall console's only script: no library, nothing to build. Pages work without
// it (reload to see what is new); with it, a conversation's page follows the log live and
// the sandbox's message form posts without leaving the page.
(function () {
  "use strict";

  // Live updates: the server sends the conversation's live part, rendered and escaped
  // from the read models, as a Server-Sent Event each time the log has something new.
  var live = document.querySelector("[data-live]");
  if (live && "EventSource" in window) {
    var url = live.getAttribute("data-live") + "?after=" +
      encodeURIComponent(live.getAttribute("data-position") || "");
    var source = new EventSource(url);
    source.addEventListener("timeline", function (event) {
      var atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 80;
      live.innerHTML = event.data;
      live.setAttribute("data-updated", String(Date.now()));
      live.classList.remove("offline");
      if (atBottom) {
        window.scrollTo(0, document.body.scrollHeight);
      }
    });
    // A new message, rendered from its event the moment it is recorded; the whole part
    // follows as "timeline" once the read models have it.
    source.addEventListener("new-message", function (event) {
      var list = live.querySelector(".timeline");
      var holder = document.createElement("ol");
      holder.innerHTML = event.data;
      var item = holder.firstElementChild;
      if (!list || !item || (item.id && document.getElementById(item.id))) {
        return;
      }
      var empty = list.querySelector("li.muted");
      if (empty) { empty.remove(); }
      list.appendChild(item);
      live.setAttribute("data-updated", String(Date.now()));
    });
    source.addEventListener("open", function () {
      live.classList.remove("offline");
      live.setAttribute("data-connected", "yes");
    });
    source.addEventListener("error", function () {
      live.classList.add("offline"); // the browser reconnects by itself
    });
    source.addEventListener("signed-out", function () {
      source.close();
      window.location.reload();
    });
  }

  // Forms marked data-async post in the background and stay on the page.
  var forms = document.querySelectorAll("form[data-async]");
  Array.prototype.forEach.call(forms, function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var button = form.querySelector("button");
      var text = form.querySelector("textarea");
      var body = new URLSearchParams(new FormData(form));
      if (button) { button.disabled = true; }
      fetch(form.action, {
        method: "POST",
        body: body,
        credentials: "same-origin",
        headers: { "X-Requested-With": "console" }
      }).then(function (response) {
        form.classList.toggle("failed", !response.ok);
        if (response.ok && text) { text.value = ""; }
      }).catch(function () {
        form.classList.add("failed");
      }).then(function () {
        if (button) { button.disabled = false; }
      });
    });
  });
})();
