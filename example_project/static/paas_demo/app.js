// paas-channels example: a WebSocket that reconnects when the server restarts (close code 1012),
// and a long-poll loop.
(function () {
  "use strict";
  // Returns a handle whose current() is the open socket, also after a reconnect.
  function connect(path, onMessage, log) {
    var handle = { socket: null, current: function () { return handle.socket; } };
    function open() {
      var scheme = location.protocol === "https:" ? "wss://" : "ws://";
      var socket = new WebSocket(scheme + location.host + path);
      handle.socket = socket;
      socket.onmessage = function (event) { onMessage(event.data); };
      socket.onclose = function (event) {
        // 1012 = service restart: the server asks us to come straight back.
        var delay = event.code === 1012 ? 100 : 2000;
        if (log) { log("closed (" + event.code + "), reconnecting in " + delay + " ms"); }
        setTimeout(open, delay);
      };
    }
    open();
    return handle;
  }
  // GET path, hand each 200 answer's body to onAnswer, and ask again; back off after errors
  // (a 503 when nobody answered within the server's --http-timeout is one).
  function longPoll(path, onAnswer) {
    function again(delay) { setTimeout(poll, delay); }
    function poll() {
      fetch(path, { credentials: "same-origin", cache: "no-store" })
        .then(function (response) {
          if (response.status !== 200) { again(1000); return null; }
          return response.text().then(function (body) { onAnswer(body); again(0); });
        })
        .catch(function () { again(2000); });
    }
    poll();
  }
  window.paasChannels = { connect: connect, longPoll: longPoll };
})();
