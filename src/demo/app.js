// roomd demo client: plain JavaScript, no dependency, served by roomd itself.
//
// It speaks the Kurento Room protocol exactly as the legacy KurentoRoom.js client does:
// JSON-RPC 2.0 over the `/room` WebSocket, request ids from 0 shared with the pings
// (`ping {"interval":3000}` first, then a bare `ping` every 3 s), one publisher
// RTCPeerConnection (`publishVideo`, sendonly offer, or sendrecv with `doLoopback`) and one
// recvonly RTCPeerConnection per remote publisher (`receiveVideoFrom {sender:"<user>_webcam"}`),
// trickle ICE both ways keyed by endpoint name (own name for the publisher PC, the remote
// publisher's bare name for a subscription).
//
// Tests read `window.roomd` (state, peer connections, chat, errors, getStats summaries).
'use strict';

(function () {
  const PING_INTERVAL_MS = 3000;
  const REQUEST_TIMEOUT_MS = 15000;
  const STATS_INTERVAL_MS = 1000;
  const ROOMS_REFRESH_MS = 5000;
  const query = new URLSearchParams(location.search);
  // The server announces its own candidates; STUN/TURN servers come from `GET /iceServers`
  // (fresh TURN credentials at every join) for networks that cannot reach them directly.
  // `?relay=1` forces every connection through TURN (iceTransportPolicy "relay").
  const RTC_CONFIG = { iceServers: [], bundlePolicy: 'max-bundle', iceTransportPolicy: query.get('relay') === '1' ? 'relay' : 'all' };

  // ---------------------------------------------------------------------------------------
  // Errors: every Kurento room error code (docs/protocol.md §2), in words a user understands.
  // ---------------------------------------------------------------------------------------
  const ERRORS = {
    '-1': ['The server could not process the request', ''],
    101: ['This action is not allowed for you right now', ''],
    102: ['Participant not found', 'You (or the person you tried to reach) are no longer in this room.'],
    103: ['This session has been closed', 'Join the room again.'],
    104: ['That name is already taken in this room', 'Pick another name. If you just lost your connection, wait about 10 seconds for your previous session to expire.'],
    105: ['Not sending media', 'That participant is not sharing audio or video at the moment.'],
    201: ['Room error', ''],
    202: ['Room not found', 'The room does not exist (any more).'],
    203: ['This room is closing', 'Try again in a moment.'],
    204: ['The room could not be created', 'The server refused to open a new room.'],
    301: ['Media server error', ''],
    302: ['Media negotiation failed', 'The server could not answer the browser\'s SDP offer (no common codec?).'],
    303: ['The server could not create a media endpoint', 'It may be out of resources; try again.'],
    304: ['WebRTC endpoint error', ''],
    305: ['RTP endpoint error', ''],
    306: ['Not a WebRTC endpoint', ''],
    307: ['Mute or unmute failed', ''],
    801: ['The request could not be sent', ''],
    802: ['The server sent an invalid response', ''],
    803: ['Transport error', ''],
    999: ['The request was rejected', ''],
    40007: ['Reconnection refused', 'Your previous session has expired.'],
    '-32600': ['Invalid request', ''],
    '-32601': ['The server does not know this request', ''],
    '-32602': ['Invalid parameters', ''],
    '-32603': ['Internal server error', ''],
    '-32700': ['The server could not parse the request', ''],
    timeout: ['The server did not answer in time', 'Check your connection and try again.'],
    closed: ['The connection to the server is closed', ''],
  };

  class RpcError extends Error {
    constructor(code, message, data) {
      super(message || '');
      this.code = code;
      this.data = data;
    }
  }

  /** A readable explanation of an error from the server (or of a client-side failure). */
  function describeError(err, context) {
    const prefix = context ? context + ': ' : '';
    if (!(err instanceof RpcError)) return prefix + (err && err.message ? err.message : String(err));
    const [title, hint] = ERRORS[String(err.code)] || ['Unexpected error', ''];
    let extra = hint;
    if (err.code === 999 && /empty user name/i.test(err.message)) extra = 'Enter a name.';
    const said = err.message && typeof err.code === 'number'
      ? `\nServer said: “${err.message}” (code ${err.code})`
      : (err.message ? `\n${err.message}` : '');
    return `${prefix}${title}.${extra ? ' ' + extra : ''}${said}`;
  }

  // ---------------------------------------------------------------------------------------
  // JSON-RPC over WebSocket, as kurento-jsonrpc-js with KurentoRoom.js's settings.
  // ---------------------------------------------------------------------------------------
  class RoomSocket {
    constructor(url, onEvent, onClose) {
      this.url = url;
      this.onEvent = onEvent;
      this.onClose = onClose;
      this.nextId = 0;
      this.pending = new Map();
      this.expectClose = false;
      this.ws = null;
      this.pingTimer = null;
    }

    open() {
      return new Promise((resolve, reject) => {
        const ws = new WebSocket(this.url);
        this.ws = ws;
        let opened = false;
        ws.onopen = () => {
          opened = true;
          this.startPings();
          resolve();
        };
        ws.onmessage = (e) => this.receive(e.data);
        ws.onerror = () => {};
        ws.onclose = (e) => {
          this.stopPings();
          for (const p of this.pending.values()) {
            clearTimeout(p.timer);
            p.reject(new RpcError('closed', `The connection closed (code ${e.code}).`));
          }
          this.pending.clear();
          if (!opened) {
            reject(new Error(`Cannot reach the server at ${this.url} (WebSocket closed with code ${e.code}).`));
            return;
          }
          this.onClose(e, this.expectClose);
        };
      });
    }

    startPings() {
      // The first ping fixes the server's watchdog interval; the later ones carry no params.
      const ping = (params) => {
        this.send('ping', params).promise.catch((err) => {
          if (err.code === 'timeout' && this.ws && this.ws.readyState === WebSocket.OPEN) {
            log('ping unanswered: the server is gone');
            this.ws.close(4000, 'ping timeout');
          }
        });
      };
      ping({ interval: PING_INTERVAL_MS });
      this.pingTimer = setInterval(() => ping(undefined), PING_INTERVAL_MS);
    }

    stopPings() {
      clearInterval(this.pingTimer);
      this.pingTimer = null;
    }

    /** Writes a request now; `promise` settles with its result or an RpcError. */
    send(method, params) {
      const id = this.nextId++;
      const msg = { jsonrpc: '2.0', method };
      if (params !== undefined && params !== null) msg.params = params;
      msg.id = id;
      const promise = new Promise((resolve, reject) => {
        if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
          reject(new RpcError('closed', 'Not connected to the server.'));
          return;
        }
        const timer = setTimeout(() => {
          this.pending.delete(id);
          reject(new RpcError('timeout', `No answer to “${method}” within ${REQUEST_TIMEOUT_MS / 1000} s.`));
        }, REQUEST_TIMEOUT_MS);
        this.pending.set(id, { resolve, reject, timer, method });
        this.ws.send(JSON.stringify(msg));
      });
      return { id, promise };
    }

    request(method, params) {
      return this.send(method, params).promise;
    }

    receive(text) {
      let msg;
      try {
        msg = JSON.parse(text);
      } catch (e) {
        log('unparsable message from server', text);
        return;
      }
      if (msg.method !== undefined) {
        if (msg.id === undefined) this.onEvent(msg.method, msg.params || {});
        return;
      }
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.error) p.reject(new RpcError(msg.error.code, msg.error.message, msg.error.data));
      else p.resolve(msg.result);
    }

    close() {
      this.expectClose = true;
      this.stopPings();
      if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000);
    }
  }

  // ---------------------------------------------------------------------------------------
  // State and the test hook.
  // ---------------------------------------------------------------------------------------
  const app = {
    phase: 'lobby', // lobby | joining | joined | leaving
    joins: 0, // joins entered so far: a late call view of an earlier one is not shown
    room: null,
    user: null,
    socket: null,
    localStream: null,
    mediaRequest: null,
    mic: true,
    cam: true,
    wantPublish: true,
    loopback: false,
    publisher: null, // negotiation entry of the publishing PC
    publishBusy: false,
    participants: new Map(), // name -> { publishing }
    subs: new Map(), // name -> negotiation entry of the subscription PC
    statsTimer: null,
    roomsTimer: null,
    prevStats: new WeakMap(),
    rtcConfig: RTC_CONFIG, // + the iceServers of GET /iceServers, fetched at every join
  };

  const hook = {
    get state() { return app.phase; },
    get joined() { return app.phase === 'joined'; },
    get room() { return app.room; },
    get user() { return app.user; },
    get publisher() { return app.publisher ? app.publisher.pc : null; },
    get publishing() { return !!(app.publisher && app.publisher.answered); },
    get loopback() { return app.loopback; },
    get participants() { return [...app.participants.keys()]; },
    /** Subscription PCs by remote publisher name. */
    peers: new Map(),
    chat: [],
    errors: [],
    events: [],
    /** performance.now() of the join's steps; offers/answers by endpoint name. */
    timings: { joinSentAt: null, joinedAt: null, callShownAt: null, offers: {}, answers: {} },
    /** Names of the remote tiles on screen. */
    tiles() {
      return [...document.querySelectorAll('#grid .tile.remote')].map((t) => t.dataset.name);
    },
    /** getStats summaries of every PC: { publisher, peers: { name: summary } }. */
    async stats() {
      const out = { publisher: null, peers: {} };
      if (app.publisher) out.publisher = await summarize(app.publisher.pc);
      for (const [name, pc] of hook.peers) out.peers[name] = await summarize(pc);
      return out;
    },
    describeError: (code, message) => describeError(new RpcError(code, message)),
  };
  window.roomd = hook;

  function log(...args) {
    console.log('[roomd]', ...args);
  }

  async function summarize(pc) {
    const s = {
      connectionState: pc.connectionState,
      iceConnectionState: pc.iceConnectionState,
      video: { framesDecoded: 0, packetsReceived: 0, bytesReceived: 0, packetsLost: 0, frameWidth: 0, frameHeight: 0, fps: 0 },
      audio: { packetsReceived: 0, bytesReceived: 0, packetsLost: 0, audioLevel: 0 },
      out: { framesEncoded: 0, videoPacketsSent: 0, audioPacketsSent: 0, bytesSent: 0, frameWidth: 0, frameHeight: 0, fps: 0 },
      rttMs: null,
    };
    if (pc.connectionState === 'closed') return s;
    const report = await pc.getStats();
    report.forEach((r) => {
      if (r.type === 'inbound-rtp') {
        const t = r.kind === 'video' ? s.video : s.audio;
        t.packetsReceived += r.packetsReceived || 0;
        t.bytesReceived += r.bytesReceived || 0;
        t.packetsLost += r.packetsLost || 0;
        if (r.kind === 'video') {
          t.framesDecoded += r.framesDecoded || 0;
          t.frameWidth = r.frameWidth || t.frameWidth;
          t.frameHeight = r.frameHeight || t.frameHeight;
          t.fps = r.framesPerSecond || t.fps;
        } else if (typeof r.audioLevel === 'number') {
          t.audioLevel = Math.max(t.audioLevel, r.audioLevel);
        }
      } else if (r.type === 'outbound-rtp') {
        s.out.bytesSent += r.bytesSent || 0;
        if (r.kind === 'video') {
          s.out.framesEncoded += r.framesEncoded || 0;
          s.out.videoPacketsSent += r.packetsSent || 0;
          s.out.frameWidth = r.frameWidth || s.out.frameWidth;
          s.out.frameHeight = r.frameHeight || s.out.frameHeight;
          s.out.fps = r.framesPerSecond || s.out.fps;
        } else {
          s.out.audioPacketsSent += r.packetsSent || 0;
        }
      } else if (r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded' && typeof r.currentRoundTripTime === 'number') {
        s.rttMs = Math.round(r.currentRoundTripTime * 1000);
      }
    });
    return s;
  }

  // ---------------------------------------------------------------------------------------
  // DOM helpers.
  // ---------------------------------------------------------------------------------------
  const $ = (sel) => document.querySelector(sel);
  const el = {
    lobby: $('#lobby'), call: $('#call'), preview: $('#preview'), previewOff: $('#preview-off'),
    previewMic: $('#preview-mic'), previewCam: $('#preview-cam'), form: $('#join-form'),
    room: $('#room'), user: $('#user'), join: $('#join'), lobbyError: $('#lobby-error'),
    rooms: $('#rooms'), roomList: $('#room-list'), roomCount: $('#room-count'),
    roomName: $('#room-name'), peopleCount: $('#people-count'), conn: $('#conn-state'),
    copyLink: $('#copy-link'), grid: $('#grid'), people: $('#people'), messages: $('#messages'),
    chatForm: $('#chat-form'), chatInput: $('#chat-input'), btnMic: $('#btn-mic'), btnCam: $('#btn-cam'),
    btnPublish: $('#btn-publish'), btnLoopback: $('#btn-loopback'), btnStats: $('#btn-stats'),
    btnChat: $('#btn-chat'), btnLeave: $('#btn-leave'), toasts: $('#toasts'), tpl: $('#tile-template'),
  };

  function toast(text, kind = 'info', ms = 4000) {
    const t = document.createElement('div');
    t.className = `toast ${kind}`;
    t.textContent = text;
    el.toasts.append(t);
    setTimeout(() => t.remove(), kind === 'error' ? Math.max(ms, 8000) : ms);
  }

  function reportError(text) {
    hook.errors.push(text);
    log('error:', text);
    toast(text, 'error');
  }

  function showLobbyError(text) {
    if (text) hook.errors.push(text);
    el.lobbyError.textContent = text || '';
    el.lobbyError.hidden = !text;
  }

  function wsUrl() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${proto}//${location.host}/room`;
  }

  // ---------------------------------------------------------------------------------------
  // Local media.
  // ---------------------------------------------------------------------------------------
  function videoConstraints() {
    const [w, h] = (query.get('video') || '640x360').split('x').map(Number);
    const fps = Number(query.get('fps') || 15);
    return { width: { ideal: w || 640 }, height: { ideal: h || 360 }, frameRate: { ideal: fps || 15 } };
  }

  /** getUserMedia once; concurrent callers (page load, Join) share the same request. */
  function startLocalMedia() {
    if (!app.mediaRequest) {
      app.mediaRequest = requestLocalMedia().catch((e) => {
        app.mediaRequest = null;
        throw e;
      });
    }
    return app.mediaRequest;
  }

  async function requestLocalMedia() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error('This page needs a secure context (https:// or http://localhost) to use the camera.');
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: videoConstraints() });
    } catch (e) {
      // Maybe only one of the two devices exists.
      try {
        stream = await navigator.mediaDevices.getUserMedia({ audio: false, video: videoConstraints() });
      } catch (e2) {
        stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
      }
    }
    app.localStream = stream;
    applyMute();
    el.preview.srcObject = stream;
    el.preview.play().catch(() => {});
    return stream;
  }

  function applyMute() {
    const s = app.localStream;
    if (s) {
      s.getAudioTracks().forEach((t) => { t.enabled = app.mic; });
      s.getVideoTracks().forEach((t) => { t.enabled = app.cam; });
    }
    const hasVideo = !!(s && s.getVideoTracks().length);
    for (const b of [el.previewMic, el.btnMic]) {
      b.setAttribute('aria-pressed', String(app.mic));
      b.title = app.mic ? 'Mute microphone' : 'Unmute microphone';
    }
    for (const b of [el.previewCam, el.btnCam]) {
      b.setAttribute('aria-pressed', String(app.cam && hasVideo));
      b.title = app.cam ? 'Turn camera off' : 'Turn camera on';
    }
    el.previewOff.hidden = app.cam && hasVideo;
    const local = localTile();
    if (local) updateLocalTile();
  }

  // ---------------------------------------------------------------------------------------
  // Tiles and layout.
  // ---------------------------------------------------------------------------------------
  function makeTile(name, local) {
    const node = el.tpl.content.firstElementChild.cloneNode(true);
    node.dataset.name = name;
    node.classList.add(local ? 'local' : 'remote', 'entering');
    node.querySelector('.name').textContent = local ? `${name} (you)` : name;
    node.querySelector('.avatar').textContent = (name.trim()[0] || '?');
    const video = node.querySelector('video');
    if (local) video.muted = true;
    video.addEventListener('playing', () => node.classList.add('has-video'));
    if (local) el.grid.prepend(node);
    else el.grid.append(node);
    layout();
    return node;
  }

  function localTile() {
    return el.grid.querySelector('.tile.local');
  }

  function removeTile(node) {
    if (!node) return;
    const v = node.querySelector('video');
    v.srcObject = null;
    node.remove();
    layout();
  }

  function updateLocalTile() {
    let node = localTile();
    if (!node) node = makeTile(app.user, true);
    const video = node.querySelector('video');
    const showLoop = app.loopback && app.publisher && app.publisher.loopStream;
    const stream = showLoop ? app.publisher.loopStream : app.localStream;
    if (video.srcObject !== stream) {
      video.srcObject = stream || null;
      if (stream) video.play().catch(() => {});
    }
    node.classList.toggle('loopback', !!showLoop);
    const camOn = !!(app.localStream && app.localStream.getVideoTracks().length && app.cam);
    node.classList.toggle('has-video', camOn && !!stream);
    const badges = node.querySelector('.badges');
    badges.innerHTML = '';
    if (!app.mic) badges.append(badge('mic', 'Microphone muted'));
    if (!app.cam) badges.append(badge('cam', 'Camera off'));
    let label = `${app.user} (you)`;
    if (!app.publisher) label += ' · not sharing';
    else if (showLoop) label += ' · loopback';
    node.querySelector('.name').textContent = label;
  }

  function badge(kind, title) {
    const b = document.createElement('span');
    b.className = `i badge-${kind}`;
    b.title = title;
    return b;
  }

  let layoutQueued = false;
  /** Lays the grid out before the next frame: once per frame however many tiles changed, since
   * measuring the grid forces a style and layout pass. */
  function layout() {
    if (layoutQueued) return;
    layoutQueued = true;
    requestAnimationFrame(() => {
      layoutQueued = false;
      fitGrid();
    });
  }

  /** Picks the column count that makes 16:9 tiles as large as possible. */
  function fitGrid() {
    const tiles = el.grid.querySelectorAll('.tile');
    const n = tiles.length || 1;
    const pad = parseFloat(getComputedStyle(el.grid).paddingLeft) || 0;
    const W = el.grid.clientWidth - 2 * pad - 1;
    const H = el.grid.clientHeight - 2 * pad - 1;
    let best = 1;
    let bestW = 0;
    for (let cols = 1; cols <= n; cols++) {
      const rows = Math.ceil(n / cols);
      const w = Math.min((W - (cols - 1) * 12) / cols, ((H - (rows - 1) * 12) / rows) * 16 / 9);
      if (w > bestW) { bestW = w; best = cols; }
    }
    el.grid.style.setProperty('--cols', String(best));
    el.grid.style.setProperty('--tile-w', bestW > 0 ? `${Math.floor(bestW)}px` : '100%');
  }
  new ResizeObserver(layout).observe(el.grid);

  function renderPeople() {
    el.people.innerHTML = '';
    const me = document.createElement('li');
    me.className = app.publisher ? 'live' : '';
    me.innerHTML = '<span class="dot"></span><span class="n"></span><span class="you">you</span>';
    me.querySelector('.n').textContent = app.user;
    el.people.append(me);
    for (const [name, p] of [...app.participants].sort((a, b) => a[0].localeCompare(b[0]))) {
      const li = document.createElement('li');
      li.className = p.publishing ? 'live' : '';
      li.innerHTML = '<span class="dot"></span><span class="n"></span>';
      li.querySelector('.n').textContent = name;
      li.title = p.publishing ? 'Sharing audio and video' : 'Not sharing media';
      el.people.append(li);
    }
    el.peopleCount.textContent = String(app.participants.size + 1);
  }

  // ---------------------------------------------------------------------------------------
  // Negotiation: the client always offers; candidates trickle both ways.
  // ---------------------------------------------------------------------------------------
  function newEntry(endpointName) {
    let settle;
    return {
      endpointName,
      pc: new RTCPeerConnection(app.rtcConfig),
      /** Resolves once the server's answer is applied (or the negotiation ended without one). */
      settled: new Promise((r) => { settle = r; }),
      markSettled: () => settle(),
      offerSent: false,
      answered: false,
      closed: false,
      localQueue: [],
      remoteQueue: [],
    };
  }

  function sendCandidate(entry, c) {
    if (!app.socket || entry.closed) return;
    app.socket
      .request('onIceCandidate', {
        endpointName: entry.endpointName,
        candidate: c.candidate,
        sdpMid: c.sdpMid,
        sdpMLineIndex: c.sdpMLineIndex,
      })
      .catch((err) => log('onIceCandidate failed', describeError(err)));
  }

  async function negotiate(entry, method, buildParams) {
    const pc = entry.pc;
    pc.onicecandidate = (e) => {
      // Like kurento-utils: the end-of-candidates null is not forwarded.
      if (!e.candidate || !e.candidate.candidate) return;
      const c = { candidate: e.candidate.candidate, sdpMid: e.candidate.sdpMid, sdpMLineIndex: e.candidate.sdpMLineIndex };
      if (entry.offerSent) sendCandidate(entry, c);
      else entry.localQueue.push(c);
    };
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    if (entry.closed) return false;
    const { promise } = app.socket.send(method, buildParams(pc.localDescription.sdp));
    entry.offerSent = true;
    hook.timings.offers[entry.endpointName] = performance.now();
    entry.localQueue.splice(0).forEach((c) => sendCandidate(entry, c));
    const result = await promise;
    if (entry.closed) return false;
    await pc.setRemoteDescription({ type: 'answer', sdp: result.sdpAnswer });
    entry.answered = true;
    entry.markSettled();
    hook.timings.answers[entry.endpointName] = performance.now();
    for (const c of entry.remoteQueue.splice(0)) {
      await pc.addIceCandidate(c).catch((e) => log('addIceCandidate', e.message));
    }
    return true;
  }

  function onRemoteCandidate(p) {
    const entry = p.endpointName === app.user ? app.publisher : app.subs.get(p.endpointName);
    if (!entry || entry.closed) {
      log('candidate for unknown endpoint', p.endpointName);
      return;
    }
    const c = { candidate: p.candidate, sdpMid: p.sdpMid, sdpMLineIndex: Number(p.sdpMLineIndex) };
    if (!entry.answered) entry.remoteQueue.push(c);
    else entry.pc.addIceCandidate(c).catch((e) => log('addIceCandidate', e.message));
  }

  function closeEntry(entry) {
    if (!entry || entry.closed) return;
    entry.closed = true;
    try { entry.pc.close(); } catch (e) { /* already closed */ }
  }

  function watchConnection(entry, onFailed) {
    entry.pc.addEventListener('connectionstatechange', () => {
      if (!entry.closed && entry.pc.connectionState === 'failed') onFailed();
    });
  }

  // ----- publishing -----

  async function publish() {
    if (app.publisher || !app.localStream || !app.socket || app.phase !== 'joined') return;
    const entry = newEntry(app.user);
    app.publisher = entry;
    const pc = entry.pc;
    const direction = app.loopback ? 'sendrecv' : 'sendonly';
    for (const track of app.localStream.getTracks()) {
      pc.addTransceiver(track, { direction, streams: [app.localStream] });
    }
    if (app.loopback) {
      entry.loopStream = new MediaStream();
      pc.ontrack = (e) => {
        entry.loopStream.addTrack(e.track);
        updateLocalTile();
      };
    }
    watchConnection(entry, () => reportError('Your media connection to the server failed (ICE/DTLS). Others cannot see you.'));
    updateLocalTile();
    updateControls();
    try {
      await negotiate(entry, 'publishVideo', (sdp) => ({ sdpOffer: sdp, doLoopback: app.loopback }));
    } catch (err) {
      if (app.publisher === entry) app.publisher = null;
      closeEntry(entry);
      if (app.phase === 'joined') reportError(describeError(err, 'Could not share your camera'));
    }
    updateLocalTile();
    updateControls();
    renderPeople();
  }

  async function unpublish() {
    const entry = app.publisher;
    if (!entry) return;
    app.publisher = null;
    const req = app.socket.request('unpublishVideo', {});
    closeEntry(entry);
    updateLocalTile();
    renderPeople();
    try {
      await req;
    } catch (err) {
      if (err.code !== 105) reportError(describeError(err, 'Could not stop sharing'));
    }
  }

  async function withPublishLock(fn) {
    if (app.publishBusy) return;
    app.publishBusy = true;
    updateControls();
    try {
      await fn();
    } finally {
      app.publishBusy = false;
      updateControls();
    }
  }

  // ----- subscribing -----

  function subscribe(name, streamId) {
    unsubscribeLocal(name);
    const entry = newEntry(name);
    app.subs.set(name, entry);
    hook.peers.set(name, entry.pc);
    const pc = entry.pc;
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.addTransceiver('video', { direction: 'recvonly' });
    const tile = makeTile(name, false);
    entry.tile = tile;
    const video = tile.querySelector('video');
    const stream = new MediaStream();
    pc.ontrack = (e) => {
      stream.addTrack(e.track);
      if (video.srcObject !== stream) {
        video.srcObject = stream;
        playWithSound(video);
      }
    };
    const showTileError = (text) => {
      const box = tile.querySelector('.tile-error');
      box.textContent = text;
      box.hidden = false;
    };
    watchConnection(entry, () => {
      const text = `Media connection to ${name} failed (ICE/DTLS).`;
      hook.errors.push(text);
      showTileError(text);
    });
    negotiate(entry, 'receiveVideoFrom', (sdp) => ({ sender: `${name}_${streamId}`, sdpOffer: sdp })).catch((err) => {
      if (entry.closed) return;
      const text = describeError(err, `Could not receive ${name}`);
      hook.errors.push(text);
      log(text);
      showTileError(text);
    }).finally(entry.markSettled);
    return entry;
  }

  function unsubscribeLocal(name) {
    const entry = app.subs.get(name);
    if (!entry) return;
    app.subs.delete(name);
    if (hook.peers.get(name) === entry.pc) hook.peers.delete(name);
    closeEntry(entry);
    removeTile(entry.tile);
  }

  let soundBlocked = false;
  function playWithSound(video) {
    video.play().catch(() => {
      // Autoplay with sound refused: play muted and unmute on the next click.
      video.muted = true;
      video.play().catch(() => {});
      if (!soundBlocked) {
        soundBlocked = true;
        toast('Click anywhere to turn the sound on.', 'warn', 8000);
        document.addEventListener('click', () => {
          soundBlocked = false;
          document.querySelectorAll('#grid .tile.remote video').forEach((v) => { v.muted = false; });
        }, { once: true });
      }
    });
  }

  // ---------------------------------------------------------------------------------------
  // Server events.
  // ---------------------------------------------------------------------------------------
  function onEvent(method, p) {
    hook.events.push({ method, params: p, at: performance.now() });
    if (app.phase !== 'joined' && app.phase !== 'joining' && app.phase !== 'leaving') return;
    switch (method) {
      case 'participantJoined':
        app.participants.set(p.id, { publishing: false });
        renderPeople();
        if (app.phase === 'joined') toast(`${p.id} joined`);
        break;
      case 'participantPublished': {
        const streams = Array.isArray(p.streams) && p.streams.length ? p.streams : [{ id: 'webcam' }];
        app.participants.set(p.id, { publishing: true });
        renderPeople();
        if (app.phase === 'joined') subscribe(p.id, streams[0].id);
        break;
      }
      case 'participantUnpublished':
        if (app.participants.has(p.name)) app.participants.set(p.name, { publishing: false });
        unsubscribeLocal(p.name);
        renderPeople();
        break;
      case 'participantLeft':
        app.participants.delete(p.name);
        unsubscribeLocal(p.name);
        renderPeople();
        toast(`${p.name} left`);
        break;
      case 'participantEvicted':
        endCall('You were removed from the room by the server.');
        break;
      case 'roomClosed':
        endCall(`The room “${p.room || app.room}” was closed by an administrator.`);
        break;
      case 'sendMessage':
        if (p.user === undefined) return;
        addChat(p.user, p.message, p.room);
        break;
      case 'iceCandidate':
        onRemoteCandidate(p);
        break;
      case 'mediaError':
        reportError(`Media error reported by the server: ${p.error}`);
        break;
      default:
        log('event', method, p);
    }
  }

  function onSocketClose(e, expected) {
    if (expected || app.phase === 'leaving' || app.phase === 'lobby') return;
    el.conn.textContent = 'disconnected';
    el.conn.className = 'conn bad';
    endCall(`The connection to the server was lost (WebSocket code ${e.code}${e.reason ? ', ' + e.reason : ''}). Join again to continue.`);
  }

  // ---------------------------------------------------------------------------------------
  // Chat.
  // ---------------------------------------------------------------------------------------
  function addChat(user, message, room) {
    hook.chat.push({ user, message, room, at: Date.now() });
    const li = document.createElement('li');
    if (user === app.user) li.className = 'mine';
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = `${user} · ${new Date().toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}`;
    li.append(who, document.createTextNode(message));
    el.messages.append(li);
    el.messages.scrollTop = el.messages.scrollHeight;
  }

  function addSystemLine(text) {
    const li = document.createElement('li');
    li.className = 'system';
    li.textContent = text;
    el.messages.append(li);
  }

  async function sendChat(text) {
    try {
      await app.socket.request('sendMessage', { message: text, userMessage: app.user, roomMessage: app.room });
    } catch (err) {
      reportError(describeError(err, 'Message not sent'));
    }
  }

  // ---------------------------------------------------------------------------------------
  // Join, leave.
  // ---------------------------------------------------------------------------------------
  /** RTC_CONFIG with the server's STUN/TURN servers; without them if it cannot say. */
  async function loadRtcConfig() {
    try {
      const r = await fetch('/iceServers', { cache: 'no-store' });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const { iceServers } = await r.json();
      return { ...RTC_CONFIG, iceServers: Array.isArray(iceServers) ? iceServers : [] };
    } catch (e) {
      log('no ICE servers from /iceServers:', e.message);
      return RTC_CONFIG;
    }
  }

  async function join(room, user) {
    if (app.phase !== 'lobby') return;
    showLobbyError('');
    app.phase = 'joining';
    el.join.disabled = true;
    el.join.textContent = 'Joining…';
    try {
      try {
        await startLocalMedia();
      } catch (e) {
        toast(`No camera or microphone (${e.message || e.name}). You can still watch and chat.`, 'warn', 8000);
      }
      app.rtcConfig = await loadRtcConfig();
      const socket = new RoomSocket(wsUrl(), (m, p) => { if (app.socket === socket) onEvent(m, p); }, (e, exp) => { if (app.socket === socket) onSocketClose(e, exp); });
      app.socket = socket;
      await socket.open();
      app.room = room;
      app.user = user;
      hook.timings.joinSentAt = performance.now();
      const result = await socket.request('joinRoom', { user, room });
      hook.timings.joinedAt = performance.now();
      enterCall(result && Array.isArray(result.value) ? result.value : []);
    } catch (err) {
      const socket = app.socket;
      app.socket = null;
      if (socket) socket.close();
      app.phase = 'lobby';
      app.participants.clear();
      showLobbyError(describeError(err, 'Could not join'));
    } finally {
      el.join.disabled = false;
      el.join.textContent = 'Join room';
    }
  }

  function enterCall(peers) {
    app.phase = 'joined';
    // Subscriptions first: each peer connection is created and negotiated before the call
    // view is built; the view waits (150 ms at most) until the server's answers are applied.
    // Built first, the view, its tiles and the publisher connection held this page's main
    // thread for 100-250 ms before any offer could leave, and again before the answers could
    // be applied (the late joiner's first frames waited for both, BENCHMARKS §4.8); ICE, DTLS
    // and decoding do not need the main thread, so they proceed while the view is built.
    const subscribed = [];
    for (const peer of peers) {
      const streams = Array.isArray(peer.streams) ? peer.streams : [];
      const known = app.participants.get(peer.id);
      app.participants.set(peer.id, { publishing: streams.length > 0 || !!(known && known.publishing) });
      if (streams.length && !app.subs.has(peer.id)) subscribed.push(subscribe(peer.id, streams[0].id));
    }
    // participantPublished that raced the join answer.
    for (const [name, p] of app.participants) {
      if (p.publishing && !app.subs.has(name)) subscribed.push(subscribe(name, 'webcam'));
    }
    const settled = Promise.all(subscribed.map((e) => e.settled));
    const join = ++app.joins;
    Promise.race([settled, new Promise((r) => setTimeout(r, 150))]).then(() => showCall(join));
  }

  /** The call view of join number `join` (after [enterCall]'s subscriptions were answered),
   * unless the page has left or joined again since. */
  function showCall(join) {
    if (app.phase !== 'joined' || app.joins !== join) return;
    el.lobby.hidden = true;
    el.call.hidden = false;
    clearInterval(app.roomsTimer);
    el.roomName.textContent = app.room;
    el.conn.textContent = 'connected';
    el.conn.className = 'conn ok';
    el.messages.innerHTML = '';
    addSystemLine(`You joined “${app.room}” as ${app.user}.`);
    document.title = `${app.room} · roomd`;
    const url = new URL(location.href);
    url.searchParams.set('room', app.room);
    history.replaceState(null, '', url);
    updateLocalTile();
    renderPeople();
    layout();
    app.statsTimer = setInterval(refreshStats, STATS_INTERVAL_MS);
    if (app.wantPublish && app.localStream) withPublishLock(publish);
    updateControls();
    hook.timings.callShownAt = performance.now();
  }

  function teardown() {
    clearInterval(app.statsTimer);
    app.statsTimer = null;
    closeEntry(app.publisher);
    app.publisher = null;
    for (const name of [...app.subs.keys()]) unsubscribeLocal(name);
    hook.peers.clear();
    app.participants.clear();
    el.grid.innerHTML = '';
  }

  function showLobby() {
    app.phase = 'lobby';
    el.call.hidden = true;
    el.lobby.hidden = false;
    document.title = 'roomd · video rooms';
    el.preview.srcObject = app.localStream;
    if (app.localStream) el.preview.play().catch(() => {});
    refreshRooms();
    clearInterval(app.roomsTimer);
    app.roomsTimer = setInterval(refreshRooms, ROOMS_REFRESH_MS);
  }

  function endCall(message) {
    const socket = app.socket;
    app.socket = null;
    teardown();
    if (socket) socket.close();
    showLobby();
    if (message) showLobbyError(message);
  }

  async function leave() {
    if (app.phase !== 'joined') return;
    app.phase = 'leaving';
    const socket = app.socket;
    try {
      // The server answers, then closes the socket itself.
      await socket.request('leaveRoom', {});
    } catch (err) {
      if (err.code !== 'closed') log('leaveRoom', describeError(err));
    }
    app.socket = null;
    teardown();
    socket.close();
    showLobby();
  }

  // ---------------------------------------------------------------------------------------
  // Stats overlay.
  // ---------------------------------------------------------------------------------------
  function fmtRate(bits) {
    return bits >= 1e6 ? `${(bits / 1e6).toFixed(2)} Mb/s` : `${Math.round(bits / 1e3)} kb/s`;
  }

  function rates(key, s, now) {
    const prev = app.prevStats.get(key);
    app.prevStats.set(key, { s, now });
    if (!prev) return null;
    const dt = (now - prev.now) / 1000 || 1;
    const dRecv = s.video.packetsReceived + s.audio.packetsReceived - prev.s.video.packetsReceived - prev.s.audio.packetsReceived;
    const dLost = s.video.packetsLost + s.audio.packetsLost - prev.s.video.packetsLost - prev.s.audio.packetsLost;
    return {
      inBits: ((s.video.bytesReceived + s.audio.bytesReceived - prev.s.video.bytesReceived - prev.s.audio.bytesReceived) * 8) / dt,
      outBits: ((s.out.bytesSent - prev.s.out.bytesSent) * 8) / dt,
      loss: dRecv + dLost > 0 ? (Math.max(dLost, 0) * 100) / (dRecv + Math.max(dLost, 0)) : 0,
    };
  }

  async function refreshStats() {
    const now = performance.now();
    for (const [name, entry] of app.subs) {
      if (entry.closed || !entry.tile) continue;
      try {
        const s = await summarize(entry.pc);
        const r = rates(entry.pc, s, now);
        const lines = [];
        const v = s.video;
        lines.push(`▼ ${r ? fmtRate(r.inBits) : '…'}${v.frameWidth ? ` · ${v.frameWidth}×${v.frameHeight}` : ''}${v.fps ? ` @ ${Math.round(v.fps)} fps` : ''}`);
        lines.push(`decoded ${v.framesDecoded} · loss ${r ? r.loss.toFixed(1) : '0.0'}%`);
        lines.push(`audio ${s.audio.packetsReceived} pkts${s.rttMs !== null ? ` · rtt ${s.rttMs} ms` : ''}`);
        entry.tile.querySelector('.stats').textContent = lines.join('\n');
        entry.tile.classList.toggle('speaking', s.audio.audioLevel > 0.08);
      } catch (e) {
        log('stats', name, e.message);
      }
    }
    const local = localTile();
    if (local) {
      const entry = app.publisher;
      if (!entry || entry.closed) {
        local.querySelector('.stats').textContent = '';
      } else {
        try {
          const s = await summarize(entry.pc);
          const r = rates(entry.pc, s, now);
          const o = s.out;
          const lines = [`▲ ${r ? fmtRate(r.outBits) : '…'}${o.frameWidth ? ` · ${o.frameWidth}×${o.frameHeight}` : ''}${o.fps ? ` @ ${Math.round(o.fps)} fps` : ''}`];
          lines.push(`encoded ${o.framesEncoded}${s.rttMs !== null ? ` · rtt ${s.rttMs} ms` : ''}`);
          if (app.loopback) lines.push(`loopback decoded ${s.video.framesDecoded}`);
          local.querySelector('.stats').textContent = lines.join('\n');
        } catch (e) {
          log('stats', e.message);
        }
      }
    }
  }

  // ---------------------------------------------------------------------------------------
  // Lobby: live rooms.
  // ---------------------------------------------------------------------------------------
  async function refreshRooms() {
    let rooms;
    try {
      const r = await fetch('/getAllRooms', { cache: 'no-store' });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      rooms = await r.json();
    } catch (e) {
      log('getAllRooms', e.message);
      return;
    }
    rooms = (Array.isArray(rooms) ? rooms : []).filter((x) => typeof x === 'string').sort();
    el.roomCount.textContent = String(rooms.length);
    el.rooms.innerHTML = '';
    el.roomList.innerHTML = '';
    if (!rooms.length) {
      const li = document.createElement('li');
      li.className = 'muted';
      li.textContent = 'No room is open right now. Name one above to create it.';
      el.rooms.append(li);
    }
    for (const name of rooms) {
      const li = document.createElement('li');
      const b = document.createElement('button');
      b.type = 'button';
      b.textContent = name;
      b.dataset.room = name;
      b.title = `Join “${name}”`;
      b.addEventListener('click', () => {
        el.room.value = name;
        if (el.user.value.trim()) el.form.requestSubmit();
        else el.user.focus();
      });
      li.append(b);
      el.rooms.append(li);
      const opt = document.createElement('option');
      opt.value = name;
      el.roomList.append(opt);
    }
  }

  // ---------------------------------------------------------------------------------------
  // Controls.
  // ---------------------------------------------------------------------------------------
  function updateControls() {
    const publishing = !!app.publisher;
    el.btnPublish.textContent = publishing ? 'Stop sharing' : 'Share camera';
    el.btnPublish.classList.toggle('off', !publishing);
    el.btnPublish.title = publishing ? 'Stop sending your media to the room' : 'Send your camera and microphone to the room';
    el.btnPublish.disabled = app.publishBusy || !app.localStream;
    el.btnLoopback.setAttribute('aria-pressed', String(app.loopback));
    el.btnLoopback.disabled = app.publishBusy || !app.localStream;
  }

  el.form.addEventListener('submit', (e) => {
    e.preventDefault();
    const room = el.room.value.trim();
    const user = el.user.value.trim();
    if (!room || !user) {
      showLobbyError('Enter a room and your name.');
      return;
    }
    try { localStorage.setItem('roomd.user', user); } catch (e2) { /* private mode */ }
    join(room, user);
  });

  el.previewMic.addEventListener('click', () => { app.mic = !app.mic; applyMute(); });
  el.previewCam.addEventListener('click', () => { app.cam = !app.cam; applyMute(); });
  el.btnMic.addEventListener('click', () => { app.mic = !app.mic; applyMute(); });
  el.btnCam.addEventListener('click', () => { app.cam = !app.cam; applyMute(); });

  el.btnPublish.addEventListener('click', () => withPublishLock(async () => {
    if (app.publisher) {
      app.wantPublish = false;
      await unpublish();
    } else {
      app.wantPublish = true;
      await publish();
    }
  }));

  el.btnLoopback.addEventListener('click', () => withPublishLock(async () => {
    // doLoopback is fixed per publication: republish with the other setting.
    app.loopback = !app.loopback;
    updateControls();
    if (app.publisher) {
      await unpublish();
      await publish();
    }
    updateLocalTile();
  }));

  el.btnStats.addEventListener('click', () => {
    const on = el.call.classList.toggle('no-stats');
    el.btnStats.setAttribute('aria-pressed', String(!on));
  });

  el.btnChat.addEventListener('click', () => {
    const hidden = el.call.classList.toggle('no-side');
    el.btnChat.setAttribute('aria-pressed', String(!hidden));
    layout();
  });

  el.btnLeave.addEventListener('click', () => leave());

  el.chatForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = el.chatInput.value.trim();
    if (!text || app.phase !== 'joined') return;
    el.chatInput.value = '';
    sendChat(text);
  });

  el.copyLink.addEventListener('click', async () => {
    const url = `${location.origin}/?room=${encodeURIComponent(app.room)}`;
    try {
      await navigator.clipboard.writeText(url);
      toast('Invite link copied.');
    } catch (e) {
      toast(`Share this link: ${url}`, 'info', 10000);
    }
  });

  window.addEventListener('beforeunload', () => {
    if (app.phase === 'joined' && app.socket) app.socket.send('leaveRoom', {});
  });

  // ---------------------------------------------------------------------------------------
  // Start.
  // ---------------------------------------------------------------------------------------
  el.room.value = query.get('room') || '';
  let savedUser = '';
  try { savedUser = localStorage.getItem('roomd.user') || ''; } catch (e) { /* private mode */ }
  el.user.value = query.get('user') || savedUser;
  updateControls();
  showLobby();
  startLocalMedia()
    .catch((e) => {
      el.previewOff.hidden = false;
      el.previewOff.textContent = `No camera (${e.message || e.name}). You can still join to watch and chat.`;
    })
    .finally(updateControls);
})();
