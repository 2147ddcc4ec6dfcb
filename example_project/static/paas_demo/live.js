// The long-poll page: wait on /live/ and show each answer; the form publishes without leaving the page.
(function () {
  "use strict";
  window.paasChannels.longPoll("/live/", function (body) {
    document.getElementById("notice").textContent = JSON.parse(body).text;
  });
  var form = document.getElementById("publish");
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    fetch(form.action, { method: "POST", body: new FormData(form), credentials: "same-origin" })
      .then(function (response) { return response.json(); })
      .then(function (body) {
        document.getElementById("published").textContent = "answered " + body.answered + " waiting request(s)";
      })
      .catch(function (error) { document.getElementById("published").textContent = "failed: " + error; });
  });
})();
