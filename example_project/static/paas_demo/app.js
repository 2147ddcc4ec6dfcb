// paas-channels example: a WebSocket that reconnects when the server restarts (close code 1012).
(function () {
  "use strict";
  function connect(path, onMessage, log) {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var socket = new WebSocket(scheme + location.host + path);
    socket.onmessage = function (event) { onMessage(event.data); };
    socket.onclose = function (event) {
      // 1012 = service restart: the server asks us to come straight back.
      var delay = event.code === 1012 ? 100 : 2000;
      if (log) { log("closed (" + event.code + "), reconnecting in " + delay + " ms"); }
      setTimeout(function () { connect(path, onMessage, log); }, delay);
    };
    return socket;
  }
  window.paasChannels = { connect: connect };
})();
