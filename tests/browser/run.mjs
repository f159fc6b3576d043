#!/usr/bin/env node
// Browser end-to-end tests of roomd in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core): the built-in demo page at `/`, and a page built on the real Kurento client
// libraries (kurento-jsonrpc + kurento-utils, bundled here with esbuild).
//
//   node run.mjs --url http://127.0.0.1:8080          against a running roomd
//   node run.mjs --bin ../../target/release/roomd     starts that binary on a free port
//   options: --only name,name   --screenshot PATH   --list
//            --netns   this process runs in a network namespace of its own (see media-outage)
//            --cluster JSON --admin-token T   nodes of a roomd cluster (see cluster-two-nodes)
//
// Media assertions read RTCPeerConnection.getStats() in the pages: every expected inbound video
// must have framesDecoded growing and every inbound audio packetsReceived growing. Every wait
// polls with a bounded deadline; nothing sleeps for a fixed time to wait for an event.
// Ends with "N passed, N failed"; exit code 0 only when everything passed.

import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, existsSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';
import * as esbuild from 'esbuild';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SUITE_LIMIT_MS = Number(process.env.BROWSER_SUITE_LIMIT_MS || 290_000);
const MEDIA_WAIT_MS = 20_000;
const SCENARIO_LIMIT_MS = 60_000;
// UDP ports of a roomd started by --bin.
const RTC_PORTS = [47_000, 47_999];
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  // Several participants share one browser: keep every page's timers and rendering running.
  '--disable-background-timer-throttling',
  '--disable-renderer-backgrounding',
  '--disable-backgrounding-occluded-windows',
];
// Small video keeps a 4-person call (4 encoders, 12 decoders) light on a 2-core machine.
const DEMO_QUERY = '?video=320x180&fps=15';

// ------------------------------------------------------------------------------------------
// Command line.
// ------------------------------------------------------------------------------------------
const argv = process.argv.slice(2);
function opt(name) {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : undefined;
}
let baseUrl = (opt('url') || process.env.ROOMD_URL || '').replace(/\/$/, '');
// A second roomd serving the same page over HTTPS (self-signed certificate), for the TLS scenario.
const tlsUrl = (opt('tls-url') || process.env.ROOMD_TLS_URL || '').replace(/\/$/, '');
const only = (opt('only') || process.env.BROWSER_ONLY || '').split(',').filter(Boolean);
const screenshotPath = opt('screenshot') || process.env.ROOMD_SCREENSHOT || path.join(HERE, '..', '..', 'docs', 'demo-3-person-call.png');
const serverBin = opt('bin');
// Running inside a network namespace created for this run (tests/browser_outage.rs): its only
// interface is loopback, so Chromium must be allowed loopback ICE candidates, and the
// media-outage scenario may drop UDP there without touching anything else on the machine.
const netns = argv.includes('--netns');
if (netns) CHROMIUM_ARGS.push('--allow-loopback-in-peer-connection');

const t0 = Date.now();
const elapsed = () => ((Date.now() - t0) / 1000).toFixed(1);
function say(...args) {
  console.log(`[${elapsed().padStart(6)}s]`, ...args);
}

const tally = { passed: 0, failed: 0 };
const watchdog = setTimeout(() => {
  console.log(`browser suite exceeded ${SUITE_LIMIT_MS / 1000} s: aborting`);
  console.log(`${tally.passed} passed, ${tally.failed + 1} failed`);
  if (child) child.kill('SIGTERM');
  process.exit(2);
}, SUITE_LIMIT_MS);
watchdog.unref();

// ------------------------------------------------------------------------------------------
// Polling.
// ------------------------------------------------------------------------------------------
const tick = (ms) => new Promise((r) => setTimeout(r, ms));

/** Calls `probe` until it returns a truthy value, or throws `what` after `ms`. */
async function until(what, ms, probe, every = 100) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${typeof what === 'function' ? await what() : what}`);
    await tick(every);
  }
}

async function getJson(p) {
  const r = await fetch(baseUrl + p);
  if (!r.ok) throw new Error(`GET ${p}: HTTP ${r.status}`);
  return r.json();
}

// ------------------------------------------------------------------------------------------
// In-page statistics, the same for the demo page (window.roomd) and the compat page (window.compat).
// ------------------------------------------------------------------------------------------
async function collectStatsInPage() {
  const src = window.roomd || window.compat;
  async function summarize(pc) {
    const s = { conn: pc.connectionState, ice: pc.iceConnectionState, framesDecoded: 0, videoPackets: 0, audioPackets: 0, framesEncoded: 0, width: 0, height: 0 };
    if (pc.connectionState === 'closed') return s;
    (await pc.getStats()).forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'video') {
        s.framesDecoded += r.framesDecoded || 0;
        s.videoPackets += r.packetsReceived || 0;
        s.width = r.frameWidth || s.width;
        s.height = r.frameHeight || s.height;
      } else if (r.type === 'inbound-rtp' && r.kind === 'audio') {
        s.audioPackets += r.packetsReceived || 0;
      } else if (r.type === 'outbound-rtp' && r.kind === 'video') {
        s.framesEncoded += r.framesEncoded || 0;
        // Why a publisher sends little: what limits its quality, since when, and its estimate.
        const d = r.qualityLimitationDurations || {};
        s.sender = `sent=${r.packetsSent} kf=${r.keyFramesEncoded} pli=${r.pliCount} nack=${r.nackCount} target=${Math.round((r.targetBitrate || 0) / 1000)}kb/s `
          + `limited=${r.qualityLimitationReason} (bw ${Math.round((d.bandwidth || 0) * 1000)} ms, cpu ${Math.round((d.cpu || 0) * 1000)} ms)`;
      } else if (r.type === 'candidate-pair' && r.nominated && r.availableOutgoingBitrate !== undefined) {
        s.bwe = Math.round(r.availableOutgoingBitrate / 1000);
      }
    });
    return s;
  }
  const out = { peers: {}, publisher: null };
  for (const [name, pc] of src.peers) out.peers[name] = await summarize(pc);
  if (src.publisher) out.publisher = await summarize(src.publisher);
  return out;
}

function fmtStats(s) {
  const one = (x) => (x ? `${x.conn}/${x.ice} frames=${x.framesDecoded} vpk=${x.videoPackets} apk=${x.audioPackets}${x.framesEncoded ? ` enc=${x.framesEncoded}` : ''}`
    + `${x.sender ? ` ${x.sender}` : ''}${x.bwe !== undefined ? ` bwe=${x.bwe}kb/s` : ''}` : 'none');
  const peers = Object.entries(s.peers).map(([n, x]) => `${n}: ${one(x)}`).join('; ');
  return `publisher: ${one(s.publisher)}; peers: {${peers}}`;
}

// ------------------------------------------------------------------------------------------
// Participants.
// ------------------------------------------------------------------------------------------
let browser;
const openContexts = new Set();

class Participant {
  constructor(name, ctx, page, kind) {
    this.name = name;
    this.ctx = ctx;
    this.page = page;
    this.kind = kind; // 'demo' | 'compat'
    this.logs = [];
    this.sent = []; // text frames the page wrote on its WebSockets
    this.wsUrls = []; // URLs of the WebSockets the page opened
  }

  static async open(name, kind = 'demo', viewport = { width: 1280, height: 720 }, base = baseUrl, query = DEMO_QUERY) {
    // The TLS server's certificate is self-signed: accept it, as a user who trusts it would.
    const ctx = await browser.newContext({ viewport, permissions: ['camera', 'microphone'], ignoreHTTPSErrors: base.startsWith('https:') });
    openContexts.add(ctx);
    const page = await ctx.newPage();
    const p = new Participant(name, ctx, page, kind);
    page.on('console', (m) => p.logs.push(`[${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => p.logs.push(`[pageerror] ${e.message}`));
    page.on('websocket', (ws) => {
      p.wsUrls.push(ws.url());
      ws.on('framesent', (f) => p.sent.push(String(f.payload)));
    });
    if (kind === 'demo') {
      await page.goto(`${base}/${query}`);
      await page.waitForFunction(() => window.roomd && window.roomd.state === 'lobby', null, { timeout: 10_000 });
    } else {
      await page.goto(`${compatUrl}/index.html`);
      await page.waitForFunction(() => window.compat && typeof window.compat.start === 'function', null, { timeout: 10_000 });
    }
    return p;
  }

  /** Joins through the UI: fills the form and clicks Join. */
  async join(room, { waitPublishing = true } = {}) {
    const { page } = this;
    await page.fill('#room', room);
    await page.fill('#user', this.name);
    await page.click('#join');
    await until(`${this.name} to join ${room}`, 15_000, () => page.evaluate(() => {
      const err = document.querySelector('#lobby-error');
      if (err && !err.hidden) throw new Error(`join failed: ${err.textContent}`);
      return window.roomd.joined;
    }));
    if (waitPublishing) await until(`${this.name} to publish`, 15_000, () => page.evaluate(() => window.roomd.publishing || (window.roomd.errors.length && window.roomd.errors.join(' | '))))
      .then((v) => { if (v !== true) throw new Error(`${this.name} publish failed: ${v}`); });
  }

  async leave() {
    await this.page.click('#btn-leave');
    await until(`${this.name} back in the lobby`, 10_000, () => this.page.evaluate(() => window.roomd.state === 'lobby'));
  }

  async compatStart(room, loopback) {
    const wsUri = baseUrl.replace(/^http/, 'ws') + '/room';
    await this.page.evaluate(({ wsUri, room, user, loopback }) => window.compat.start({ wsUri, room, user, loopback }).then(() => true),
      { wsUri, room, user: this.name, loopback });
  }

  stats() {
    return this.page.evaluate(collectStatsInPage);
  }

  tiles() {
    return this.page.evaluate(() => window.roomd.tiles());
  }

  async close() {
    openContexts.delete(this.ctx);
    await this.ctx.close().catch(() => {});
  }

  dumpLogs(n = 40) {
    return this.logs.slice(-n).map((l) => `    ${this.name} ${l}`).join('\n');
  }
}

/**
 * Waits until every participant named in `names` is decoding video (framesDecoded grows) and
 * receiving audio (packetsReceived grows) on `p`'s page, and that `p` subscribes to exactly
 * those names. With `loopback`, the same for `p`'s own stream coming back on its publisher PC.
 */
/**
 * Waits until every participant's publisher has encoded at least `fps` frames in one second: a
 * call past its start-up. Headless Chromium's fake camera sometimes delivers no frame for 2–3 s
 * right after a second page opened it, to every page at once (seen: framesEncoded flat in both
 * publishers while roomd's PLIs and RTCP kept arriving); a late joiner is not measured then.
 */
async function steadyPublishing(ps, fps = 10) {
  let prev = await Promise.all(ps.map((p) => p.stats()));
  const encoded = (s) => (s.publisher ? s.publisher.framesEncoded : 0);
  await until(`every publisher of ${ps.map((p) => p.name).join(', ')} encoding ${fps} frames a second`, 15_000, async () => {
    await tick(1_000);
    const now = await Promise.all(ps.map((p) => p.stats()));
    const steady = now.every((s, i) => encoded(s) - encoded(prev[i]) >= fps);
    prev = now;
    return steady;
  }, 0);
}

async function expectMedia(p, names, { loopback = false, ms = MEDIA_WAIT_MS } = {}) {
  const base = await p.stats();
  const b = (n) => base.peers[n] || { framesDecoded: 0, audioPackets: 0 };
  const bl = base.publisher || { framesDecoded: 0, audioPackets: 0 };
  let last = base;
  const ok = (s) => {
    for (const n of names) {
      const x = s.peers[n];
      if (!x || x.framesDecoded < b(n).framesDecoded + 3 || x.audioPackets < b(n).audioPackets + 5) return false;
    }
    if (loopback) {
      const x = s.publisher;
      if (!x || x.framesDecoded < bl.framesDecoded + 3 || x.audioPackets < bl.audioPackets + 5) return false;
    }
    return true;
  };
  try {
    await until(() => `media on ${p.name} from [${names.join(', ')}]${loopback ? ' + loopback' : ''}`, ms, async () => {
      last = await p.stats();
      return ok(last);
    }, 200);
  } catch (e) {
    throw new Error(`${e.message}\n    last stats of ${p.name}: ${fmtStats(last)}`);
  }
  const extra = Object.keys(last.peers).filter((n) => !names.includes(n));
  if (extra.length) throw new Error(`${p.name} has unexpected subscriptions: ${extra.join(', ')}`);
  return last;
}

async function expectTiles(p, names, ms = 3_000) {
  const want = [...names].sort().join(',');
  const t = Date.now();
  await until(async () => `${p.name}'s tiles to be [${want}] (have [${(await p.tiles()).sort().join(',')}])`, ms, async () => (await p.tiles()).sort().join(',') === want, 50);
  return Date.now() - t;
}

async function open(names, kind = 'demo') {
  return Promise.all(names.map((n) => Participant.open(n, kind)));
}

// ------------------------------------------------------------------------------------------
// Scenarios.
// ------------------------------------------------------------------------------------------
const scenarios = [];
// `optIn` scenarios run only when named in --only.
const scenario = (name, fn, { optIn = false, limitMs = SCENARIO_LIMIT_MS } = {}) => scenarios.push({ name, fn, optIn, limitMs });
let roomSeq = 0;
const uniqueRoom = (base) => `${base}-${Date.now().toString(36)}-${roomSeq++}`;

scenario('lobby-room-list', async (ctx) => {
  const room = uniqueRoom('lobby');
  const [a, b] = ctx.track(await open(['lobby-a', 'lobby-b']));
  await a.join(room, { waitPublishing: false });
  // b's lobby lists the room (GET /getAllRooms, refreshed every 5 s).
  await until(`${room} in b's room list`, 8_000, () => b.page.evaluate((r) => !!document.querySelector(`#rooms button[data-room="${r}"]`), room));
  // Clicking the chip fills the room; joining through it works.
  await b.page.fill('#user', b.name);
  await b.page.click(`#rooms button[data-room="${room}"]`);
  await until('b joined from the chip', 10_000, () => b.page.evaluate(() => window.roomd.joined));
  // Same name twice: the Kurento 104 error is explained in the lobby.
  const c = ctx.track(await Participant.open('lobby-a'));
  await c.page.fill('#room', room);
  await c.page.fill('#user', 'lobby-a');
  await c.page.click('#join');
  const msg = await until('the 104 error message', 10_000, () => c.page.evaluate(() => {
    const e = document.querySelector('#lobby-error');
    return !e.hidden && e.textContent;
  }));
  if (!/already taken/.test(msg) || !/code 104/.test(msg)) throw new Error(`unexpected error text: ${msg}`);
  ctx.note(`104 shown as: ${msg.replace(/\n/g, ' / ')}`);
});

scenario('chat', async (ctx) => {
  const room = uniqueRoom('chat');
  const ps = ctx.track(await open(['chat-a', 'chat-b', 'chat-c']));
  for (const p of ps) await p.join(room, { waitPublishing: false });
  const [a, b] = ps;
  await a.page.fill('#chat-input', 'hello from a');
  await a.page.press('#chat-input', 'Enter');
  await b.page.fill('#chat-input', 'hi a, b here');
  await b.page.click('#chat-send');
  for (const p of ps) {
    await until(`chat on ${p.name}`, 5_000, () => p.page.evaluate(() => {
      const c = window.roomd.chat.map((m) => `${m.user}:${m.message}`);
      return c.includes('chat-a:hello from a') && c.includes('chat-b:hi a, b here');
    }), 50);
    const shown = await p.page.evaluate(() => document.querySelector('#messages').textContent);
    if (!shown.includes('hello from a') || !shown.includes('hi a, b here')) throw new Error(`chat not rendered on ${p.name}`);
  }
  // On the wire, as KurentoRoom.js: ping {"interval":3000} with id 0 first, then one id counter
  // shared by pings and requests, JS field order.
  const first = a.sent[0];
  if (first !== '{"jsonrpc":"2.0","method":"ping","params":{"interval":3000},"id":0}') throw new Error(`first frame: ${first}`);
  const frames = a.sent.map((f) => JSON.parse(f));
  frames.forEach((f, i) => { if (f.id !== i) throw new Error(`frame ${i} has id ${f.id}: ${a.sent[i]}`); });
  const join = a.sent.find((f) => f.includes('"joinRoom"'));
  if (!/^\{"jsonrpc":"2\.0","method":"joinRoom","params":\{"user":"chat-a","room":"[^"]+"\},"id":\d+\}$/.test(join)) throw new Error(`joinRoom frame: ${join}`);
  const msg = frames.find((f) => f.method === 'sendMessage');
  if (JSON.stringify(msg.params) !== JSON.stringify({ message: 'hello from a', userMessage: 'chat-a', roomMessage: room })) throw new Error(`sendMessage params: ${JSON.stringify(msg.params)}`);
});

scenario('two-all-to-all', async (ctx) => {
  const room = uniqueRoom('duo');
  const [a, b] = ctx.track(await open(['duo-a', 'duo-b']));
  await a.join(room);
  await b.join(room);
  await Promise.all([expectMedia(a, ['duo-b']), expectMedia(b, ['duo-a'])]);
  // The negotiation on the wire, as KurentoRoom.js does it.
  const frames = a.sent.map((f) => JSON.parse(f));
  const pub = frames.find((f) => f.method === 'publishVideo');
  if (Object.keys(pub.params).join() !== 'sdpOffer,doLoopback' || pub.params.doLoopback !== false || !/a=sendonly/.test(pub.params.sdpOffer) || /a=sendrecv/.test(pub.params.sdpOffer)) {
    throw new Error(`publishVideo params: ${JSON.stringify({ ...pub.params, sdpOffer: pub.params.sdpOffer.slice(0, 80) })}`);
  }
  const sub = frames.find((f) => f.method === 'receiveVideoFrom');
  if (sub.params.sender !== 'duo-b_webcam' || !/a=recvonly/.test(sub.params.sdpOffer) || /a=send/.test(sub.params.sdpOffer)) throw new Error(`receiveVideoFrom params: sender ${sub.params.sender}`);
  const names = new Set(frames.filter((f) => f.method === 'onIceCandidate').map((f) => f.params.endpointName));
  if (!names.has('duo-a') || !names.has('duo-b') || names.size !== 2) throw new Error(`onIceCandidate endpointNames: ${[...names]}`);
  // Mute and unmute: the published tracks are disabled/enabled and the tile shows it.
  const senders = () => a.page.evaluate(() => ({
    enabled: window.roomd.publisher.getSenders().map((x) => x.track && x.track.enabled),
    badges: document.querySelectorAll('#grid .tile.local .badges .i').length,
  }));
  await a.page.click('#btn-mic');
  await a.page.click('#btn-cam');
  let m = await senders();
  if (m.enabled.some(Boolean) || m.badges !== 2) throw new Error(`mute did not apply: ${JSON.stringify(m)}`);
  await a.page.click('#btn-mic');
  await a.page.click('#btn-cam');
  m = await senders();
  if (!m.enabled.every(Boolean) || m.badges !== 0) throw new Error(`unmute did not apply: ${JSON.stringify(m)}`);
  await expectMedia(b, ['duo-a']);
});

scenario('https-two-all-to-all', async (ctx) => {
  if (!tlsUrl) throw new Error('no --tls-url: this scenario needs a roomd started with --tls-cert/--tls-key');
  const room = uniqueRoom('tls');
  const [a, b] = ctx.track(await Promise.all(['tls-a', 'tls-b'].map((n) => Participant.open(n, 'demo', undefined, tlsUrl))));
  for (const p of [a, b]) {
    const where = await p.page.evaluate(() => ({ protocol: location.protocol, secure: window.isSecureContext }));
    if (where.protocol !== 'https:' || !where.secure) throw new Error(`${p.name} page: ${JSON.stringify(where)}`);
  }
  await a.join(room);
  await b.join(room);
  await Promise.all([expectMedia(a, ['tls-b']), expectMedia(b, ['tls-a'])]);
  for (const p of [a, b]) {
    if (!p.wsUrls.length || !p.wsUrls.every((u) => u.startsWith('wss://'))) throw new Error(`${p.name} WebSockets: ${p.wsUrls.join(', ')}`);
  }
  ctx.note(`over ${tlsUrl}: page https, secure context, signalling on ${a.wsUrls[0]}`);
});

scenario('four-all-to-all', async (ctx) => {
  const room = uniqueRoom('quad');
  const names = ['quad-a', 'quad-b', 'quad-c', 'quad-d'];
  const ps = ctx.track(await open(names));
  for (const p of ps) await p.join(room);
  const results = await Promise.all(ps.map((p) => expectMedia(p, names.filter((n) => n !== p.name))));
  const subs = results.reduce((n, s) => n + Object.keys(s.peers).length, 0);
  if (subs !== 12) throw new Error(`expected 12 subscriptions, saw ${subs}`);
  ctx.note('12 subscriptions decoding video and receiving audio');
});

// A call that lasts (LONG_CALL_SECONDS, default 60): every 5-second window, both sides decode
// video and receive audio from the other.
const LONG_CALL_SECONDS = Number(process.env.LONG_CALL_SECONDS || 60);
scenario('long-call', async (ctx) => {
  const room = uniqueRoom('long');
  const [a, b] = ctx.track(await open(['long-a', 'long-b']));
  await a.join(room);
  await b.join(room);
  await Promise.all([expectMedia(a, ['long-b']), expectMedia(b, ['long-a'])]);
  const pairs = [[a, 'long-b'], [b, 'long-a']];
  const sample = () => Promise.all(pairs.map(async ([p, peer]) => (await p.stats()).peers[peer] || { framesDecoded: 0, audioPackets: 0 }));
  let prev = await sample();
  const started = Date.now();
  let windows = 0;
  let minFps = Infinity;
  let minAudio = Infinity;
  while (Date.now() - started < LONG_CALL_SECONDS * 1000) {
    await new Promise((r) => setTimeout(r, 5_000));
    const now = await sample();
    windows++;
    for (const i of [0, 1]) {
      const frames = now[i].framesDecoded - prev[i].framesDecoded;
      const audio = now[i].audioPackets - prev[i].audioPackets;
      minFps = Math.min(minFps, frames / 5);
      minAudio = Math.min(minAudio, audio / 5);
      // Chromium's fake devices send ~30 fps and 50 audio packets/s; a stall shows as far less.
      if (frames < 25 || audio < 100) throw new Error(`window ${windows}: ${pairs[i][0].name} got ${frames} frames and ${audio} audio packets from ${pairs[i][1]} in 5 s`);
    }
    prev = now;
  }
  ctx.note(`${windows} windows of 5 s (${LONG_CALL_SECONDS} s): video and audio both ways in every one; slowest window ${minFps.toFixed(1)} fps, ${minAudio.toFixed(0)} audio packets/s`);
}, { limitMs: (LONG_CALL_SECONDS + 40) * 1000 });

scenario('loopback', async (ctx) => {
  const room = uniqueRoom('loop');
  const [a] = ctx.track(await open(['loop-a']));
  await a.join(room);
  await a.page.click('#btn-loopback');
  await until('republished with doLoopback', 15_000, () => a.page.evaluate(() => window.roomd.loopback && window.roomd.publishing));
  await expectMedia(a, [], { loopback: true });
});

scenario('leave', async (ctx) => {
  const room = uniqueRoom('leave');
  const [a, b, c] = ctx.track(await open(['leave-a', 'leave-b', 'leave-c']));
  for (const p of [a, b, c]) await p.join(room);
  await expectTiles(a, ['leave-b', 'leave-c'], 10_000);
  await expectTiles(b, ['leave-a', 'leave-c'], 10_000);
  await c.leave();
  const [ta, tb] = await Promise.all([expectTiles(a, ['leave-b']), expectTiles(b, ['leave-a'])]);
  ctx.note(`tile removed after ${ta} ms / ${tb} ms`);
  if (!(await getJson('/getAllRooms')).includes(room)) throw new Error('room vanished while 2 participants remain');
  await a.leave();
  await b.leave();
  await until(`${room} dropped from /getAllRooms`, 5_000, async () => !(await getJson('/getAllRooms')).includes(room));
});

scenario('unpublish-republish', async (ctx) => {
  const room = uniqueRoom('unpub');
  const [a, b] = ctx.track(await open(['unpub-a', 'unpub-b']));
  await a.join(room);
  await b.join(room);
  await expectMedia(b, ['unpub-a']);
  await a.page.click('#btn-publish'); // Stop sharing
  const gone = await expectTiles(b, []);
  await until('a not publishing', 5_000, () => a.page.evaluate(() => !window.roomd.publishing));
  await a.page.click('#btn-publish'); // Share camera
  const back = await expectTiles(b, ['unpub-a'], 10_000);
  await expectMedia(b, ['unpub-a']);
  await expectMedia(a, ['unpub-b']);
  ctx.note(`tile gone after ${gone} ms, back after ${back} ms, media flowing again`);
});

scenario('re-entry-5x', async (ctx) => {
  const room = uniqueRoom('reentry');
  const [a, b] = ctx.track(await open(['re-a', 're-b']));
  await a.join(room);
  const times = [];
  for (let i = 1; i <= 5; i++) {
    const t = Date.now();
    await b.join(room);
    await Promise.all([expectMedia(b, ['re-a']), expectMedia(a, ['re-b'])]);
    times.push(Date.now() - t);
    await b.leave();
    await expectTiles(a, []);
  }
  ctx.note(`join→media both ways per round: ${times.join(', ')} ms`);
});

scenario('late-joiner-and-screenshot', async (ctx) => {
  const room = 'weekly-sync';
  const [alice, bob] = ctx.track(await open(['Alice', 'Bob']));
  const carol = ctx.track(await Participant.open('Carol', 'demo', { width: 1280, height: 720 }));
  await alice.join(room);
  await bob.join(room);
  await Promise.all([expectMedia(alice, ['Bob']), expectMedia(bob, ['Alice'])]);
  await steadyPublishing([alice, bob]);
  // Carol joins late; the page records when joinRoom was sent, and we poll getStats in the page.
  await carol.page.fill('#room', room);
  await carol.page.fill('#user', 'Carol');
  await carol.page.click('#join');
  const first = await carol.page.evaluate(async ({ names, limit }) => {
    const t = performance.now();
    while (!window.roomd.joined && performance.now() - t < limit) await new Promise((r) => setTimeout(r, 5));
    const start = window.roomd.timings.joinSentAt;
    const res = {};
    while (performance.now() - t < limit && Object.keys(res).length < names.length) {
      for (const n of names) {
        const pc = window.roomd.peers.get(n);
        if (n in res || !pc) continue;
        let fd = 0;
        (await pc.getStats()).forEach((r) => { if (r.type === 'inbound-rtp' && r.kind === 'video') fd += r.framesDecoded || 0; });
        if (fd > 0) res[n] = Math.round(performance.now() - start);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    const tm = window.roomd.timings;
    const since = (t) => (t == null ? 'never' : Math.round(t - start));
    const steps = `join answer ${since(tm.joinedAt)} ms, call view ${since(tm.callShownAt)} ms, `
      + names.map((n) => `${n}: offer ${since(tm.offers[n])} ms, answer applied ${since(tm.answers[n])} ms`).join(', ');
    return { res, steps };
  }, { names: ['Alice', 'Bob'], limit: 10_000 }).then(({ res, steps }) => { ctx.note(`late joiner's page: ${steps}`); return res; });
  ctx.note(`late joiner join→first decoded frame: Alice ${first.Alice ?? 'never'} ms, Bob ${first.Bob ?? 'never'} ms`);
  for (const n of ['Alice', 'Bob']) {
    if (first[n] === undefined || first[n] > 2000) throw new Error(`late joiner decoded ${n} after ${first[n] ?? '>10000'} ms (limit 2000 ms)`);
  }
  await Promise.all([expectMedia(carol, ['Alice', 'Bob']), expectMedia(alice, ['Bob', 'Carol']), expectMedia(bob, ['Alice', 'Carol'])]);

  // Screenshot of the 3-person call from Carol's page, with a little chat.
  await alice.page.fill('#chat-input', 'Morning! Can everyone see my screen share later?');
  await alice.page.press('#chat-input', 'Enter');
  await bob.page.fill('#chat-input', 'Video looks great here, hi Carol!');
  await bob.page.press('#chat-input', 'Enter');
  await until('chat shown on Carol', 5_000, () => carol.page.evaluate(() => window.roomd.chat.length >= 2), 50);
  await until('every tile playing with stats', 10_000, () => carol.page.evaluate(() => {
    const tiles = [...document.querySelectorAll('#grid .tile')];
    return tiles.length === 3 && tiles.every((t) => t.classList.contains('has-video') && t.querySelector('.stats').textContent.includes('kb/s'));
  }), 100);
  mkdirSync(path.dirname(screenshotPath), { recursive: true });
  await carol.page.screenshot({ path: screenshotPath });
  ctx.note(`screenshot: ${path.relative(path.join(HERE, '..', '..'), screenshotPath)}`);
});

scenario('kurento-utils-compat', async (ctx) => {
  const room = uniqueRoom('compat');
  const k1 = ctx.track(await Participant.open('kurento-sendonly', 'compat'));
  const k2 = ctx.track(await Participant.open('kurento-sendrecv', 'compat'));
  const d = ctx.track(await Participant.open('demo-page'));
  await k1.compatStart(room, false);
  await d.join(room);
  await k2.compatStart(room, true);
  await Promise.all([
    expectMedia(k1, ['kurento-sendrecv', 'demo-page']),
    expectMedia(k2, ['kurento-sendonly', 'demo-page'], { loopback: true }),
    expectMedia(d, ['kurento-sendonly', 'kurento-sendrecv']),
  ]);
  for (const k of [k1, k2]) {
    const errors = await k.page.evaluate(() => window.compat.errors);
    if (errors.length) throw new Error(`${k.name} errors: ${errors.join(' | ')}`);
  }
  await k2.page.evaluate(() => window.compat.leave());
  await expectTiles(d, ['kurento-sendonly']);
  ctx.note('WebRtcPeerSendonly, WebRtcPeerSendrecv (doLoopback) and WebRtcPeerRecvonly all decode');
});

// A total outage of the media path in a running 2-person call: every UDP datagram to or from
// roomd's media ports is dropped for OUTAGE_MS by an nftables rule (signalling stays up: it is
// TCP), then the rule goes. The picture must come back (framesDecoded advancing in getStats and
// in the video element) within RECOVERY_LIMIT_MS of the end of the outage. Opt-in, and only
// inside a network namespace of its own (--netns, set up by tests/browser_outage.rs) with
// roomd started here (--bin), so the rule can only ever touch this run's traffic.
const OUTAGE_MS = 3_000;
const RECOVERY_LIMIT_MS = 2_000;
// How long the recovery is watched, and the longest pause in playback still counted as playing.
const OBSERVE_MS = 4_000;
const FREEZE_MS = 500;
const NFT_TABLE = 'roomd_outage';

function nft(script) {
  execFileSync('nft', ['-f', '-'], { input: script, stdio: ['pipe', 'ignore', 'pipe'] });
}

function cutMedia() {
  const [lo, hi] = RTC_PORTS;
  nft(`table inet ${NFT_TABLE} {
  chain out {
    type filter hook output priority 0; policy accept;
    udp sport ${lo}-${hi} drop
    udp dport ${lo}-${hi} drop
  }
}
`);
}

function restoreMedia() {
  try {
    nft(`delete table inet ${NFT_TABLE}\n`);
  } catch {
    // Not there (the cut failed): nothing to restore.
  }
}

/** In the page: samples the inbound video from `peer` every ~40 ms into window.outageSamples. */
function startSampler(peer) {
  const pc = window.roomd.peers.get(peer);
  const video = document.querySelector(`#grid .tile.remote[data-name="${peer}"] video`);
  if (!pc || !video) throw new Error(`no subscription/tile for ${peer}`);
  const samples = [];
  window.outageSamples = samples;
  window.outageSampling = true;
  const sample = async () => {
    const stats = await pc.getStats();
    // Stamped once the stats are in, so a sample never reflects a moment later than its time.
    const s = { t: Date.now(), fd: 0, pk: 0, pli: 0, jbt: 0, jbe: 0, nack: 0, lost: 0, kfd: 0, fr: 0, fdrop: 0, fz: 0, ice: pc.iceConnectionState, vf: video.getVideoPlaybackQuality().totalVideoFrames };
    stats.forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'video') {
        s.fd += r.framesDecoded || 0;
        s.pk += r.packetsReceived || 0;
        s.pli += r.pliCount || 0;
        s.jbt += r.jitterBufferTargetDelay || 0;
        s.jbe += r.jitterBufferEmittedCount || 0;
        s.nack += r.nackCount || 0;
        s.lost += r.packetsLost || 0;
        s.kfd += r.keyFramesDecoded || 0;
        s.fr += r.framesReceived || 0;
        s.fdrop += r.framesDropped || 0;
        s.fz += r.freezeCount || 0;
      }
    });
    samples.push(s);
    if (window.outageSampling) setTimeout(sample, 40);
  };
  return sample();
}

/** In the page: what roomd asked of the publisher (NACKs, PLIs) and what it did (resent, keyframes). */
async function publisherCounters() {
  const out = { nackCount: 0, retransmitted: 0, pliCount: 0, keyFrames: 0 };
  (await window.roomd.publisher.getStats()).forEach((r) => {
    if (r.type === 'outbound-rtp' && r.kind === 'video') {
      out.nackCount += r.nackCount || 0;
      out.retransmitted += r.retransmittedPacketsSent || 0;
      out.pliCount += r.pliCount || 0;
      out.keyFrames += r.keyFramesEncoded || 0;
    }
  });
  return out;
}

/** roomd's media counters that tell what it did about the outage, from /metrics. */
async function roomdCounters() {
  const text = await (await fetch(`${baseUrl}/metrics`)).text();
  const out = {};
  for (const line of text.split('\n')) {
    const m = /^(roomd_(?:rtp_dropped_total|keyframe_requests_\w+_total|rtp_sent_total|publisher_outages_total)(?:\{[^}]*\})?) (\d+)/.exec(line);
    if (m) out[m[1]] = Number(m[2]);
  }
  return out;
}

/**
 * From one subscriber's samples: whether media really stopped during the outage (nothing
 * decoded or received from 1 s after the cut, when in-flight packets and the jitter buffer have
 * drained, to its end), and when the picture came back for good after `endAt`: the first frame
 * decoded after which playback never froze for FREEZE_MS again until the last sample. Stale
 * frames decoded right after the outage followed by a freeze do not count as recovery.
 */
function outageFigures(samples, cutAt, endAt) {
  const before = (t) => [...samples].reverse().find((x) => x.t <= t) || samples[0];
  const atEnd = before(endAt);
  const drained = before(cutAt + 1_000);
  const after = samples.filter((x) => x.t > endAt);
  const back = (key) => {
    // Times at which `key` advanced after the outage.
    const steps = [];
    let last = atEnd[key];
    for (const x of after) {
      if (x[key] > last) steps.push(x.t);
      last = Math.max(last, x[key]);
    }
    // A freeze: FREEZE_MS without progress while the sampler kept looking (a page too busy to
    // sample for a while shows a gap in the samples, not a frozen picture).
    const sampledIn = (from, to) => after.filter((x) => x.t > from && x.t < to).length;
    const frozen = (from, to) => to - from >= FREEZE_MS && sampledIn(from, to) >= FREEZE_MS / 200;
    const end = after.length ? after[after.length - 1].t : endAt;
    if (!steps.length || frozen(steps[steps.length - 1], end)) return null;
    let i = steps.length - 1;
    while (i > 0 && !frozen(steps[i - 1], steps[i])) i--;
    return steps[i] - endAt;
  };
  const firstAfter = (key) => after.find((x) => x[key] > atEnd[key]);
  const pk = firstAfter('pk');
  const pli = firstAfter('pli');
  const last = after[after.length - 1] || atEnd;
  return {
    decodedInOutage: atEnd.fd - drained.fd,
    packetsInOutage: atEnd.pk - drained.pk,
    ice: [...new Set(samples.filter((x) => x.t > cutAt && x.t < endAt + 2_000).map((x) => x.ice))].join('→'),
    recoveryMs: back('fd'),
    elementRecoveryMs: back('vf'),
    firstPacketMs: pk ? pk.t - endAt : null,
    firstPliMs: pli ? pli.t - endAt : null,
    plis: last.pli - atEnd.pli,
    framesAfter: last.fd - atEnd.fd,
    // Chrome's jitter-buffer target delay per emitted frame over the observation, in ms.
    targetDelayMs: last.jbe > atEnd.jbe ? Math.round(((last.jbt - atEnd.jbt) / (last.jbe - atEnd.jbe)) * 1000) : null,
    observedMs: last.t - endAt,
  };
}

/**
 * From one subscriber's samples, what changed after `endAt`, sample by sample (ms after the
 * outage: counter deltas), for the report of a failed recovery.
 */
function outageTimeline(samples, endAt) {
  const keys = ['pk', 'fr', 'fd', 'kfd', 'fdrop', 'fz', 'nack', 'lost', 'pli'];
  const out = [];
  let prev = null;
  for (const x of samples) {
    if (prev && x.t > endAt) {
      const d = keys.filter((k) => x[k] !== prev[k]).map((k) => `${k}${x[k] - prev[k] >= 0 ? '+' : ''}${x[k] - prev[k]}`);
      if (d.length) out.push(`${x.t - endAt}: ${d.join(' ')}`);
    }
    prev = x;
  }
  return out.join('; ');
}

scenario('media-outage', async (ctx) => {
  if (!netns || !serverBin) throw new Error('media-outage needs --netns (a network namespace of its own) and --bin (roomd started by the harness)');
  const room = uniqueRoom('outage');
  const [a, b] = ctx.track(await open(['outage-a', 'outage-b']));
  await a.join(room);
  await b.join(room);
  await Promise.all([expectMedia(a, ['outage-b']), expectMedia(b, ['outage-a'])]);
  const pairs = [[a, 'outage-b'], [b, 'outage-a']];
  for (const [p, peer] of pairs) await p.page.evaluate(startSampler, peer);
  const latest = (p) => p.page.evaluate(() => window.outageSamples[window.outageSamples.length - 1]);
  const first = await Promise.all(pairs.map(([p]) => latest(p)));
  await until('decoding before the outage', 5_000, async () => {
    const now = await Promise.all(pairs.map(([p]) => latest(p)));
    return now.every((x, i) => x.fd >= first[i].fd + 15 && x.vf > first[i].vf);
  }, 50);
  const pubBefore = await Promise.all(pairs.map(([p]) => p.page.evaluate(publisherCounters)));
  const roomdBefore = await roomdCounters();

  let cutAt;
  let endAt;
  try {
    cutMedia();
    cutAt = Date.now();
    await tick(OUTAGE_MS); // the outage itself
  } finally {
    endAt = Date.now(); // the rule goes right after: no sample before this saw media again
    restoreMedia();
  }
  ctx.note(`cut at ${new Date(cutAt).toISOString()}, restored at ${new Date(endAt).toISOString()}`);
  await tick(OBSERVE_MS); // the recovery, measured from the samples afterwards
  const pubAfter = await Promise.all(pairs.map(([p]) => p.page.evaluate(publisherCounters)));
  const roomdAfter = await roomdCounters();
  const figures = [];
  for (const [p, peer] of pairs) {
    const samples = await p.page.evaluate(() => {
      window.outageSampling = false;
      return window.outageSamples;
    });
    figures.push({ who: `${p.name}←${peer}`, ...outageFigures(samples, cutAt, endAt), timeline: outageTimeline(samples, endAt) });
  }
  for (const f of figures) {
    ctx.note(`${f.who}: outage ${endAt - cutAt} ms, in its last 2 s ${f.decodedInOutage} frames decoded, ${f.packetsInOutage} packets; ICE ${f.ice}; ` +
      `after it: first packet at ${f.firstPacketMs} ms, ${f.plis} PLIs sent${f.plis ? ` (first at ${f.firstPliMs} ms)` : ''}, ` +
      `picture back at ${f.recoveryMs} ms (video element ${f.elementRecoveryMs} ms), ${f.framesAfter} frames in ${f.observedMs} ms, jitter-buffer target ${f.targetDelayMs} ms; ` +
      `first changes (ms after the outage: counters) ${f.timeline.split('; ').slice(0, 10).join('; ')}`);
  }
  pubAfter.forEach((n, i) => {
    const d = (k) => n[k] - pubBefore[i][k];
    ctx.note(`${pairs[i][0].name} publisher after the outage: ${d('pliCount')} PLIs and ${d('nackCount')} NACKs from roomd, ${d('keyFrames')} keyframes, ${d('retransmitted')} packets resent`);
  });
  const roomdDelta = Object.entries(roomdAfter).map(([k, v]) => [k, v - (roomdBefore[k] || 0)]).filter(([, v]) => v);
  ctx.note(`roomd from the cut on: ${roomdDelta.map(([k, v]) => `${k.replace(/^roomd_/, '')} +${v}`).join(', ')}`);
  for (const f of figures) {
    if (f.decodedInOutage !== 0 || f.packetsInOutage !== 0) throw new Error(`${f.who}: media still flowed during the outage: ${JSON.stringify(f)}`);
    if (f.recoveryMs === null || f.recoveryMs > RECOVERY_LIMIT_MS) throw new Error(`${f.who}: picture back for good after ${f.recoveryMs ?? 'never'} ms (limit ${RECOVERY_LIMIT_MS} ms): ${JSON.stringify(f)}`);
    if (f.elementRecoveryMs === null || f.elementRecoveryMs > RECOVERY_LIMIT_MS) throw new Error(`${f.who}: video element playing again after ${f.elementRecoveryMs ?? 'never'} ms (limit ${RECOVERY_LIMIT_MS} ms): ${JSON.stringify(f)}`);
  }
}, { optIn: true });

/**
 * In the page: for every peer connection, its configuration and the candidate pair its
 * transport selected (types, addresses, and the TURN URL a relay candidate came from).
 */
async function selectedPairsInPage() {
  const pcs = [['publisher', window.roomd.publisher], ...window.roomd.peers];
  const out = [];
  for (const [name, pc] of pcs) {
    if (!pc) continue;
    const byId = new Map();
    (await pc.getStats()).forEach((r) => byId.set(r.id, r));
    const transport = [...byId.values()].find((r) => r.type === 'transport' && r.selectedCandidatePairId);
    const pair = transport && byId.get(transport.selectedCandidatePairId);
    const cand = (id) => {
      const c = byId.get(id) || {};
      return { type: c.candidateType, address: `${c.address}:${c.port}`, protocol: c.protocol, url: c.url };
    };
    const { iceTransportPolicy, iceServers } = pc.getConfiguration();
    out.push({
      name,
      iceTransportPolicy,
      iceServers: iceServers.length,
      state: pair ? pair.state : 'none',
      local: pair ? cand(pair.localCandidateId) : null,
      remote: pair ? cand(pair.remoteCandidateId) : null,
    });
  }
  return out;
}

// A 2-person call forced through a TURN server: the pages are opened with `?relay=1`
// (iceTransportPolicy "relay") and take the TURN server and its REST credentials from
// `GET /iceServers`, so the only path is browser → TURN relay → roomd. Every peer connection
// must decode media and have selected a pair whose local candidate is a relay candidate of that
// TURN server. Opt-in: the roomd under test must be configured with a TURN server and its
// secret (tests/browser_turn.rs starts coturn and such a roomd).
scenario('turn-relay', async (ctx) => {
  const { iceServers } = await getJson('/iceServers');
  const turn = (iceServers || []).find((s) => s.urls.some((u) => /^turns?:/.test(u)));
  if (!turn || !/^\d+:/.test(turn.username) || !turn.credential) throw new Error(`GET /iceServers offers no TURN REST credentials: ${JSON.stringify(iceServers)}`);
  const room = uniqueRoom('turn');
  const [a, b] = ctx.track(await Promise.all(['turn-a', 'turn-b'].map((n) => Participant.open(n, 'demo', undefined, baseUrl, `${DEMO_QUERY}&relay=1`))));
  await a.join(room);
  await b.join(room);
  await Promise.all([expectMedia(a, ['turn-b']), expectMedia(b, ['turn-a'])]);
  for (const p of [a, b]) {
    const pairs = await p.page.evaluate(selectedPairsInPage);
    const what = JSON.stringify(pairs);
    if (pairs.length !== 2) throw new Error(`${p.name}: expected a publisher and a subscription, got ${what}`);
    for (const x of pairs) {
      if (x.iceTransportPolicy !== 'relay' || x.iceServers < 1) throw new Error(`${p.name} ${x.name}: not configured for relay: ${what}`);
      if (x.state !== 'succeeded' || !x.local || x.local.type !== 'relay' || !turn.urls.includes(x.local.url)) {
        throw new Error(`${p.name} ${x.name}: selected pair is not through ${turn.urls.join(' ')}: ${what}`);
      }
    }
    ctx.note(`${p.name}: ${pairs.map((x) => `${x.name} ${x.local.type} ${x.local.address} → ${x.remote.type} ${x.remote.address}`).join('; ')}`);
  }
}, { optIn: true });

// A 2-person call whose UDP to and from roomd's media ports is dropped from the start (an
// nftables rule in this run's own network namespace), so the only way in is ICE-TCP: the
// browsers connect to the passive TCP candidate roomd announces on each shard's port number.
// Every peer connection must decode media and have selected a TCP pair whose remote end is a
// roomd media port. Opt-in, and only with --netns and --bin (tests/browser_ice_tcp.rs).
const ICE_TCP_TABLE = 'roomd_ice_tcp';

scenario('ice-tcp', async (ctx) => {
  if (!netns || !serverBin) throw new Error('ice-tcp needs --netns (a network namespace of its own) and --bin (roomd started by the harness)');
  const [lo, hi] = RTC_PORTS;
  nft(`table inet ${ICE_TCP_TABLE} {
  chain out {
    type filter hook output priority 0; policy accept;
    udp sport ${lo}-${hi} counter drop
    udp dport ${lo}-${hi} counter drop
  }
}
`);
  try {
    const room = uniqueRoom('icetcp');
    const [a, b] = ctx.track(await open(['tcp-a', 'tcp-b']));
    await a.join(room);
    await b.join(room);
    await Promise.all([expectMedia(a, ['tcp-b']), expectMedia(b, ['tcp-a'])]);
    for (const p of [a, b]) {
      const pairs = await p.page.evaluate(selectedPairsInPage);
      const what = JSON.stringify(pairs);
      if (pairs.length !== 2) throw new Error(`${p.name}: expected a publisher and a subscription, got ${what}`);
      for (const x of pairs) {
        const port = x.remote && Number(x.remote.address.split(':').pop());
        if (x.state !== 'succeeded' || x.local.protocol !== 'tcp' || x.remote.protocol !== 'tcp' || !(port >= lo && port <= hi)) {
          throw new Error(`${p.name} ${x.name}: selected pair is not TCP to a roomd media port: ${what}`);
        }
      }
      ctx.note(`${p.name}: ${pairs.map((x) => `${x.name} ${x.local.protocol} ${x.local.address} → ${x.remote.protocol} ${x.remote.type} ${x.remote.address}`).join('; ')}`);
    }
    // The browsers did try UDP (their checks to roomd's UDP candidates were dropped).
    const table = execFileSync('nft', ['list', 'table', 'inet', ICE_TCP_TABLE]).toString();
    const dropped = [...table.matchAll(/udp dport \S+ counter packets (\d+)/g)].reduce((n, m) => n + Number(m[1]), 0);
    ctx.note(`UDP datagrams to roomd's media ports dropped during the call: ${dropped}`);
    if (!(dropped > 0)) throw new Error(`no UDP to the media ports was dropped, the rule did not apply: ${table}`);
    // roomd's side: the four peer connections came in over its ICE-TCP listener.
    const metrics = await (await fetch(`${baseUrl}/metrics`)).text();
    const gauge = (name) => Number((metrics.match(new RegExp(`^${name} (\\d+)$`, 'm')) || [])[1]);
    ctx.note(`roomd: ${gauge('roomd_ice_tcp_connections')} ICE-TCP connections open, ${gauge('roomd_ice_tcp_accepted_total')} accepted, ${gauge('roomd_ice_tcp_dropped_total')} packets dropped`);
    if (!(gauge('roomd_ice_tcp_connections') >= 4)) throw new Error(`roomd reports fewer than 4 ICE-TCP connections:\n${metrics}`);
  } finally {
    try {
      nft(`delete table inet ${ICE_TCP_TABLE}\n`);
    } catch {
      // Not there: nothing to remove (the namespace goes with the run anyway).
    }
  }
}, { optIn: true });

// A call across a cluster (tests/browser_cluster.rs starts it): `--cluster` lists roomd nodes
// sharing one Redis as JSON [{id, url, media}] (`media`: the address the node announces) and
// `--admin-token` is their admin token. Two pages open the demo page of two different nodes, so
// that their /room WebSockets go to different nodes, and join one room. The room lives on one
// node, its owner, found through every node's `GET /admin/rooms` (the rooms that node serves
// itself); the other page's node relays that page's signalling there. Both pages must decode
// each other's media, and every peer connection of both must have selected a pair whose remote
// candidate is the owner's announced address: media goes to the owner, never through the
// relaying node. Opt-in.
const clusterNodes = JSON.parse(opt('cluster') || '[]');
const adminToken = opt('admin-token') || '';

scenario('cluster-two-nodes', async (ctx) => {
  if (clusterNodes.length < 2 || !adminToken) throw new Error('cluster-two-nodes needs --cluster (two or more nodes of one cluster) and --admin-token');
  // The last two nodes; with three, the first one takes no part in the call.
  const [na, nb] = clusterNodes.slice(-2);
  const room = uniqueRoom('cluster');
  const a = ctx.track(await Participant.open('cluster-a', 'demo', undefined, na.url));
  const b = ctx.track(await Participant.open('cluster-b', 'demo', undefined, nb.url));
  await a.join(room);
  await b.join(room);
  await Promise.all([expectMedia(a, ['cluster-b']), expectMedia(b, ['cluster-a'])]);
  for (const [p, n] of [[a, na], [b, nb]]) {
    const ws = `${n.url.replace(/^http/, 'ws')}/room`;
    if (!p.wsUrls.length || !p.wsUrls.every((u) => u === ws)) throw new Error(`${p.name} should talk to ${n.id} (${ws}) only, opened ${p.wsUrls.join(', ')}`);
  }
  // The owner: the one node serving the room, with both participants in it.
  const serving = [];
  for (const n of clusterNodes) {
    const r = await fetch(`${n.url}/admin/rooms`, { headers: { authorization: `Bearer ${adminToken}` } });
    if (!r.ok) throw new Error(`GET ${n.url}/admin/rooms: HTTP ${r.status}`);
    const found = (await r.json()).rooms.find((x) => x.room === room);
    if (found) serving.push({ node: n, participants: found.participants.map((x) => x.name).sort() });
  }
  if (serving.length !== 1) throw new Error(`expected one node serving ${room}, found ${JSON.stringify(serving)}`);
  const [{ node: owner, participants }] = serving;
  if (participants.join() !== 'cluster-a,cluster-b') throw new Error(`${owner.id} serves ${room} with ${participants.join(', ')}`);
  const relay = [na, nb].find((n) => n.id !== owner.id);
  if (!relay || relay.media === owner.media) throw new Error(`no page on a node other than the owner ${owner.id} with an address of its own`);
  ctx.note(`${room} owned by ${owner.id} (${owner.media}); ${a.name} on ${na.id}, ${b.name} on ${nb.id}: ${relay.id} relays`);
  // The relaying node holds no media endpoint; the owner holds all four.
  const endpoints = async (n) => (await (await fetch(`${n.url}/health`)).json()).mediaEndpoints;
  const [atOwner, atRelay] = [await endpoints(owner), await endpoints(relay)];
  if (atRelay !== 0 || !(atOwner >= 4)) throw new Error(`media endpoints: ${atOwner} on the owner ${owner.id}, ${atRelay} on the relaying ${relay.id}`);
  ctx.note(`media endpoints: ${atOwner} on ${owner.id}, ${atRelay} on ${relay.id}`);
  for (const p of [a, b]) {
    const pairs = await p.page.evaluate(selectedPairsInPage);
    const what = JSON.stringify(pairs);
    if (pairs.length !== 2) throw new Error(`${p.name}: expected a publisher and a subscription, got ${what}`);
    for (const x of pairs) {
      const host = x.remote && x.remote.address.replace(/:\d+$/, '');
      if (x.state !== 'succeeded' || host !== owner.media) {
        throw new Error(`${p.name} ${x.name}: selected pair does not go to the owner ${owner.id} at ${owner.media}: ${what}`);
      }
    }
    ctx.note(`${p.name}: ${pairs.map((x) => `${x.name} ${x.local.protocol} ${x.local.address} → ${x.remote.type} ${x.remote.address}`).join('; ')}`);
  }
}, { optIn: true });

// ------------------------------------------------------------------------------------------
// Main.
// ------------------------------------------------------------------------------------------
let compatBundle = '';
let compatUrl = '';
let compatServer;
let child;

/**
 * Serves the compat page from a real loopback origin (a page from a fulfilled route counts as
 * "public" for Chromium's local-network-access checks, which then block its ws://127.0.0.1).
 */
async function serveCompatPage() {
  const html = '<!doctype html><meta charset="utf-8"><title>kurento-utils compat</title><body><script src="/compat.js"></script></body>';
  compatServer = createHttpServer((req, res) => {
    if (req.url === '/compat.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' });
      res.end(compatBundle);
    } else {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end(html);
    }
  });
  await new Promise((resolve) => compatServer.listen(0, '127.0.0.1', resolve));
  compatUrl = `http://127.0.0.1:${compatServer.address().port}`;
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

async function startServer(bin) {
  const port = await freePort();
  // The media shards' ports (one per core from RTC_PORTS[0]) inside RTC_PORTS (the outage
  // scenario cuts that range).
  child = spawn(bin, ['--bind', '127.0.0.1', '--port', String(port), '--rtc-udp-port', String(RTC_PORTS[0])], {
    stdio: ['ignore', 'inherit', 'inherit'],
    env: { RUST_LOG: 'error', ...process.env },
  });
  baseUrl = `http://127.0.0.1:${port}`;
  await until('roomd /health', 15_000, async () => {
    try {
      return (await fetch(`${baseUrl}/health`)).ok;
    } catch {
      return false;
    }
  });
}

async function main() {
  if (argv.includes('--list')) {
    for (const s of scenarios) console.log(s.name);
    return 0;
  }
  if (serverBin) await startServer(serverBin);
  if (!baseUrl) {
    console.error('usage: node run.mjs --url http://127.0.0.1:PORT | --bin path/to/roomd');
    return 2;
  }
  if (!existsSync(CHROMIUM)) {
    console.error(`${CHROMIUM} not found: run tests/browser/setup.sh`);
    return 2;
  }
  const built = await esbuild.build({
    entryPoints: [path.join(HERE, 'compat', 'client.js')],
    bundle: true,
    format: 'iife',
    platform: 'browser',
    define: { global: 'window' },
    write: false,
    logLevel: 'warning',
  });
  compatBundle = built.outputFiles[0].text;
  await serveCompatPage();
  const index = await (await fetch(`${baseUrl}/`)).text();
  if (!index.includes('/demo/app.js')) throw new Error('GET / did not serve the demo page');

  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  say(`chromium ${browser.version()} against ${baseUrl}`);

  const selected = scenarios.filter((s) => (only.length ? only.includes(s.name) : !s.optIn));
  for (const s of selected) {
    const tracked = [];
    const notes = [];
    const ctx = {
      track(x) {
        for (const p of Array.isArray(x) ? x : [x]) tracked.push(p);
        return x;
      },
      note(n) { notes.push(n); },
    };
    const start = Date.now();
    let timer;
    try {
      await Promise.race([
        s.fn(ctx),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`scenario exceeded ${s.limitMs / 1000} s`)), s.limitMs);
        }),
      ]);
      tally.passed++;
      say(`ok   ${s.name} (${((Date.now() - start) / 1000).toFixed(1)} s)`);
      for (const n of notes) say(`     ${n}`);
    } catch (e) {
      tally.failed++;
      say(`FAIL ${s.name} (${((Date.now() - start) / 1000).toFixed(1)} s): ${e.message}`);
      for (const n of notes) say(`     ${n}`);
      for (const p of tracked) {
        const st = p.page.isClosed() ? null : await p.stats().catch(() => null);
        if (st) console.log(`    ${p.name} stats: ${fmtStats(st)}`);
        const errs = p.page.isClosed() ? [] : await p.page.evaluate(() => (window.roomd || window.compat).errors).catch(() => []);
        if (errs.length) console.log(`    ${p.name} errors: ${errs.join(' | ')}`);
        console.log(p.dumpLogs());
      }
    }
    clearTimeout(timer);
    await Promise.all(tracked.map((p) => p.close()));
  }
  await browser.close();
  compatServer.close();
  say(`browser suite took ${elapsed()} s`);
  console.log(`${tally.passed} passed, ${tally.failed} failed`);
  return tally.failed ? 1 : 0;
}

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    if (child) child.kill('SIGTERM');
    process.exit(130);
  });
}

// Stops the roomd started by --bin and waits until it is gone, so that the next run can bind
// the same media ports. The first signal drains, and the closed pages' participants stay for
// the reconnection grace (10 s); the second signal exits at once.
async function stopServer() {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const drained = await Promise.race([gone.then(() => true), new Promise((r) => setTimeout(() => r(false), 1_000))]);
  if (!drained) {
    child.kill('SIGTERM');
    await Promise.race([gone, new Promise((r) => setTimeout(r, 5_000))]);
  }
}

main()
  .then(async (code) => {
    await stopServer();
    process.exit(code);
  })
  .catch(async (e) => {
    console.error(e && e.stack ? e.stack : e);
    if (browser) await browser.close().catch(() => {});
    await stopServer();
    console.log('0 passed, 1 failed');
    process.exit(1);
  });
