// The chat page's client: JSON frames to /ws/chat/<room>/, every message of the room shown.
(function () {
  "use strict";
  var room = document.currentScript.getAttribute("data-room");
  var log = document.getElementById("log");
  function show(text, kind) {
    var line = document.createElement("div");
    line.className = kind;
    line.textContent = text;
    log.appendChild(line);
  }
  var socket = window.paasChannels.connect("/ws/chat/" + room + "/", function (data) {
    var message = JSON.parse(data);
    if (message.system) { show(message.system, "sys"); } else { show(message.user + ": " + message.text, "in"); }
  }, function (text) { show(text, "sys"); });
  document.getElementById("send").addEventListener("submit", function (event) {
    event.preventDefault();
    var input = document.getElementById("text");
    if (input.value && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ text: input.value }));
      input.value = "";
    }
  });
})();
