/*
 * paas-channels browser client, version __PAAS_CHANNELS_VERSION__ (served by the
 * interface at /.paas-channels/client.js, so it always matches the server).
 * No build step, no dependency:
 *
 *   <script src="/.paas-channels/client.js"></script>
 *   var conn = PaasChannels.connect("/ws/chat/lobby/", {
 *     onmessage: function (data, meta) { ... },  // meta.group, meta.offset, meta.replayed
 *     onrecover: function (ok, group) { if (!ok) reloadState(); },
 *   });
 *   conn.send("hello");
 *
 * It reconnects by itself (soon, with jitter, after a server restart's 1012;
 * with jittered exponential backoff otherwise), remembers the last offset and
 * epoch it saw per history group, resumes from them, and hands the app each
 * message once, in order.  The wire protocol is described in
 * paas_channels/interface/resume.py.
 */
(function (root) {
  "use strict";

  var MARK = "\x1e";
  var RESTART = 1012;

  function Connection(path, options) {
    options = options || {};
    this.path = path;
    this.options = options;
    this.onmessage = options.onmessage || null;
    this.onopen = options.onopen || null;
    this.onclose = options.onclose || null;
    this.onrecover = options.onrecover || null;
    // group -> {epoch, offset}: the last message handed to the app.
    this.positions = {};
    this._pending = {}; // group -> {offset: [data, meta]} that came before their turn
    this._gapTimers = {};
    this._gapResumed = {};
    this._resumeNow = false;
    this._outbox = [];
    this._attempt = 0;
    this._closed = false;
    this._socket = null;
    this._timer = null;
    this._binaryMeta = null;
    this._open();
  }

  Connection.prototype.send = function (data) {
    if (this._socket && this._socket.readyState === 1) {
      this._socket.send(data);
    } else if (!this._closed) {
      this._outbox.push(data); // sent once connected again
      if (this._outbox.length > (this.options.outboxLimit || 1000)) this._outbox.shift();
    }
  };

  Connection.prototype.close = function () {
    this._closed = true;
    clearTimeout(this._timer);
    for (var group in this._gapTimers) clearTimeout(this._gapTimers[group]);
    if (this._socket) this._socket.close(1000);
  };

  Connection.prototype._url = function () {
    var path = this.path;
    var base;
    if (/^wss?:\/\//.test(path)) {
      base = path;
    } else if (/^https?:\/\//.test(path)) {
      base = path.replace(/^http/, "ws");
    } else {
      var loc = root.location;
      base = (loc.protocol === "https:" ? "wss://" : "ws://") + loc.host + path;
    }
    var resume = [];
    for (var group in this.positions) {
      var p = this.positions[group];
      resume.push(group + ":" + p.epoch + ":" + p.offset);
    }
    var query = "paas_channels=1" + (resume.length ? "&paas_resume=" + encodeURIComponent(resume.join(",")) : "");
    return base + (base.indexOf("?") < 0 ? "?" : "&") + query;
  };

  Connection.prototype._open = function () {
    var self = this;
    var socket = new WebSocket(this._url());
    socket.binaryType = this.options.binaryType || "arraybuffer";
    this._socket = socket;
    this._binaryMeta = null;
    socket.onopen = function () {
      self._attempt = 0;
      var outbox = self._outbox;
      self._outbox = [];
      for (var i = 0; i < outbox.length; i++) socket.send(outbox[i]);
      if (self.onopen) self.onopen();
    };
    socket.onmessage = function (event) { self._frame(event.data); };
    socket.onclose = function (event) {
      if (self._socket !== socket) return;
      self._socket = null;
      if (self.onclose) self.onclose(event);
      if (!self._closed) self._reconnect(event.code);
    };
  };

  Connection.prototype._reconnect = function (code) {
    var self = this;
    var delay;
    if (this._resumeNow) { // closed by us to fill a gap
      this._resumeNow = false;
      delay = 0;
    } else if (code === RESTART && this._attempt === 0) {
      delay = 50 + Math.random() * (this.options.restartJitter || 1000); // the server restarts: soon, spread
    } else {
      var base = this.options.backoff || 250;
      var cap = this.options.maxBackoff || 10000;
      delay = Math.random() * Math.min(cap, base * Math.pow(2, this._attempt)); // full jitter
    }
    this._attempt += 1;
    this._timer = setTimeout(function () { if (!self._closed) self._open(); }, delay);
  };

  Connection.prototype._frame = function (data) {
    if (this._binaryMeta) { // the binary frame its position announced
      var meta = this._binaryMeta;
      this._binaryMeta = null;
      this._history(meta, data);
      return;
    }
    if (typeof data !== "string" || data.charAt(0) !== MARK) {
      this._deliver(data, {group: null, epoch: null, offset: null, replayed: false});
      return;
    }
    var newline = data.indexOf("\n");
    var header = JSON.parse(newline < 0 ? data.slice(1) : data.slice(1, newline));
    var body = newline < 0 ? null : data.slice(newline + 1);
    if (!header.group) { // app text that starts with the mark, escaped
      this._deliver(body, {group: null, epoch: null, offset: null, replayed: false});
    } else if ("recovered" in header) {
      this._notice(header);
    } else if (header.binary) {
      this._binaryMeta = header;
    } else {
      this._history(header, body);
    }
  };

  Connection.prototype._notice = function (notice) {
    var group = notice.group;
    var position = this.positions[group];
    if (notice.recovered === false) {
      // The history no longer covers the gap: start from now; the app reloads.
      this.positions[group] = {epoch: notice.epoch, offset: notice.offset};
      if (this.onrecover) this.onrecover(false, group);
    } else {
      if (!position || position.epoch !== notice.epoch) {
        this.positions[group] = {epoch: notice.epoch, offset: notice.offset};
      }
      if (notice.recovered === true && this.onrecover) this.onrecover(true, group);
    }
    this._drain(group);
  };

  Connection.prototype._history = function (meta, data) {
    var group = meta.group;
    var position = this.positions[group];
    if (!position || position.epoch !== meta.epoch) {
      // A group joined without a notice, or a history that was lost and begun again.
      this._pending[group] = {};
      position = this.positions[group] = {epoch: meta.epoch, offset: meta.offset - 1};
    }
    if (meta.offset <= position.offset) return; // seen already
    var pending = this._pending[group] || (this._pending[group] = {});
    pending[meta.offset] = [data, meta];
    this._drain(group);
  };

  Connection.prototype._drain = function (group) {
    var position = this.positions[group];
    var pending = this._pending[group];
    if (!position || !pending) return;
    var key;
    for (key in pending) {
      if (+key <= position.offset) delete pending[key];
    }
    while (pending[position.offset + 1]) {
      var item = pending[position.offset + 1];
      delete pending[position.offset + 1];
      position.offset += 1;
      this._deliver(item[0], {group: group, epoch: item[1].epoch, offset: item[1].offset,
                              replayed: !!item[1].replayed});
    }
    var self = this;
    var waiting = false;
    for (key in pending) { waiting = true; break; }
    if (!waiting) {
      clearTimeout(this._gapTimers[group]);
      delete this._gapTimers[group];
      delete this._gapResumed[group];
    } else if (!this._gapTimers[group]) {
      // A later message came first (several senders, or shards): wait a moment
      // for the one before it.  Still missing (lost on the way: a full inbox),
      // reconnect at once so the resume replays it; missing after that, go on.
      this._gapTimers[group] = setTimeout(function () {
        delete self._gapTimers[group];
        if (!self._gapResumed[group] && self._socket) {
          self._gapResumed[group] = true;
          self._resumeNow = true;
          self._socket.close(1000);
          return;
        }
        delete self._gapResumed[group];
        var first = null;
        for (var k in pending) if (first === null || +k < first) first = +k;
        if (first !== null) { position.offset = first - 1; self._drain(group); }
      }, this.options.gapTimeout || 1500);
    }
  };

  Connection.prototype._deliver = function (data, meta) {
    if (this.onmessage) this.onmessage(data, meta);
  };

  root.PaasChannels = {
    version: "__PAAS_CHANNELS_VERSION__",
    connect: function (path, options) { return new Connection(path, options); },
    Connection: Connection
  };
})(typeof window !== "undefined" ? window : this);
