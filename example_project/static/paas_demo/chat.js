// The chat page's client: JSON frames to /ws/chat/<room>/ through PaasChannels (client.js), every
// message of the room shown once and in order, also across a deploy (the room keeps a history the
// client resumes from; when it could not, the page says so); pictures posted with fetch() and shown
// when the worker's thumbnail arrives on the socket; notifications from the /live/ long-poll.
(function () {
  "use strict";
  var room = document.currentScript.getAttribute("data-room");
  var log = document.getElementById("log");
  var form = document.getElementById("picture");
  var status = document.getElementById("picture-status");
  var pending = null;  // id of the picture whose thumbnail this page waits for
  var settled = {};  // picture id -> the worker's answer (it may come before the upload's own reply)
  function settle() {
    var answer = pending === null ? undefined : settled[pending];
    if (answer) {
      status.textContent = answer.thumbnail ? "thumbnail ready" : "no thumbnail: not an image";
      pending = null;
    }
  }
  function show(text, kind) {
    var line = document.createElement("div");
    line.className = kind;
    line.textContent = text;
    log.appendChild(line);
  }
  function showPicture(message) {
    var figure = document.createElement("figure");
    var image = document.createElement("img");
    image.src = message.thumbnail;
    image.alt = message.picture;
    var caption = document.createElement("figcaption");
    caption.textContent = message.user + ": " + message.picture;
    figure.appendChild(image);
    figure.appendChild(caption);
    document.getElementById("pictures").appendChild(figure);
    show(message.user + " shared " + message.picture, "sys");
  }
  var socket = PaasChannels.connect("/ws/chat/" + room + "/", {
    onmessage: function (data) {
      var message = JSON.parse(data);
      if (message.id !== undefined) { settled[message.id] = message; settle(); }
      if (message.system) { show(message.system, "sys"); }
      else if (message.thumbnail) { showPicture(message); }
      else { show(message.user + ": " + message.text, "in"); }
    },
    onclose: function (event) { show("closed (" + event.code + "), reconnecting", "sys"); },
    onrecover: function (ok) {
      // The server kept too little of the room's history for the time away: lines may be missing.
      if (!ok) { show("some messages could not be recovered after reconnecting: reload the page to see them", "sys lost"); }
    }
  });

  document.getElementById("send").addEventListener("submit", function (event) {
    event.preventDefault();
    var input = document.getElementById("text");
    if (input.value) {
      socket.send(JSON.stringify({ text: input.value }));  // queued while reconnecting
      input.value = "";
    }
  });

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    status.textContent = "uploading...";
    fetch(form.action, { method: "POST", body: new FormData(form), credentials: "same-origin" })
      .then(function (response) { return response.json().then(function (body) { return [response.status, body]; }); })
      .then(function (result) {
        // 202: stored; the thumbnail arrives over the WebSocket when a worker has made it.
        status.textContent = result[0] === 202 ? "thumbnail on its way" : "failed: " + result[1].error;
        if (result[0] === 202) { pending = result[1].picture; form.reset(); settle(); }
      })
      .catch(function (error) { status.textContent = "failed: " + error; });
  });

  window.paasChannels.longPoll("/live/", function (body) {
    document.getElementById("notice").textContent = JSON.parse(body).text;
  });
})();
