// A room client built on the real Kurento client libraries (kurento-jsonrpc's JsonRpcClient and
// kurento-utils' WebRtcPeerSendonly/Sendrecv/Recvonly), wired the way the legacy
// KurentoRoom.js does it: same JsonRpcClient configuration (heartbeat 3000, no close message,
// 15 s request timeout, the same notification handlers), `publishVideo {sdpOffer, doLoopback}`
// from a Sendonly peer (Sendrecv when the own remote is displayed), `receiveVideoFrom
// {sender:"<id>_<stream>", sdpOffer}` from a Recvonly peer with OfferToReceive constraints,
// `onIceCandidate {endpointName, candidate, sdpMid, sdpMLineIndex}` with endpointName = the
// participant the peer belongs to, and server candidates routed by `endpointName`.
//
// Bundled at test time by esbuild (tests/browser/run.mjs); test-only, never served by roomd.

import RpcBuilder from 'kurento-jsonrpc';
import kurentoUtils from 'kurento-utils';

const { WebRtcPeerSendonly, WebRtcPeerSendrecv, WebRtcPeerRecvonly } = kurentoUtils.WebRtcPeer;

const state = {
  joined: false,
  user: null,
  room: null,
  /** name -> RTCPeerConnection of the subscription (kurento-utils' peerConnection). */
  peers: new Map(),
  publisher: null,
  errors: [],
  chat: [],
  events: [],
};
window.compat = state;

const webRtcPeers = new Map(); // participant name -> WebRtcPeer (own name for the publisher)
let rpc;
let localStream;

function fail(text) {
  state.errors.push(text);
  console.error('[compat]', text);
}

function sendRequest(method, params) {
  return new Promise((resolve, reject) => {
    rpc.send(method, params || {}, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

function sendIceCandidate(endpointName) {
  return (candidate) => {
    rpc.send('onIceCandidate', {
      endpointName,
      candidate: candidate.candidate,
      sdpMid: candidate.sdpMid,
      sdpMLineIndex: candidate.sdpMLineIndex,
    }, (error) => {
      if (error) fail(`onIceCandidate ${endpointName}: ${JSON.stringify(error)}`);
    });
  };
}

function onIceCandidateEvent(msg) {
  const wp = webRtcPeers.get(msg.endpointName);
  if (!wp) {
    console.warn('[compat] candidate for unknown endpoint', msg.endpointName);
    return;
  }
  wp.addIceCandidate({ candidate: msg.candidate, sdpMid: msg.sdpMid, sdpMLineIndex: msg.sdpMLineIndex }, (error) => {
    if (error) fail(`addIceCandidate ${msg.endpointName}: ${error}`);
  });
}

function generateOffer(wp) {
  return new Promise((resolve, reject) => {
    wp.generateOffer((error, sdpOffer) => (error ? reject(error) : resolve(sdpOffer)));
  });
}

function processAnswer(wp, sdpAnswer) {
  return new Promise((resolve, reject) => {
    wp.processAnswer(sdpAnswer, (error) => (error ? reject(error) : resolve()));
  });
}

function makePeer(Ctor, options) {
  return new Promise((resolve, reject) => {
    const wp = new Ctor(options, (error) => (error ? reject(error) : resolve(wp)));
  });
}

async function subscribe(name, streamId) {
  const video = document.createElement('video');
  video.autoplay = true;
  video.muted = true;
  video.id = `video-${name}`;
  document.body.append(video);
  const wp = await makePeer(WebRtcPeerRecvonly, {
    onicecandidate: sendIceCandidate(name),
    connectionConstraints: { mandatory: { OfferToReceiveVideo: true, OfferToReceiveAudio: true } },
    remoteVideo: video,
    configuration: { iceServers: [] },
  });
  webRtcPeers.set(name, wp);
  state.peers.set(name, wp.peerConnection);
  const sdpOffer = await generateOffer(wp);
  const response = await sendRequest('receiveVideoFrom', { sender: `${name}_${streamId}`, sdpOffer });
  await processAnswer(wp, response.sdpAnswer);
}

function removeParticipant(name) {
  const wp = webRtcPeers.get(name);
  if (!wp || name === state.user) return;
  webRtcPeers.delete(name);
  state.peers.delete(name);
  wp.dispose();
  const v = document.getElementById(`video-${name}`);
  if (v) v.remove();
}

async function publish(loopback) {
  const options = {
    videoStream: localStream,
    onicecandidate: sendIceCandidate(state.user),
    configuration: { iceServers: [] },
  };
  if (loopback) {
    const video = document.createElement('video');
    video.autoplay = true;
    video.muted = true;
    video.id = 'video-loopback';
    document.body.append(video);
    options.remoteVideo = video;
  }
  const wp = await makePeer(loopback ? WebRtcPeerSendrecv : WebRtcPeerSendonly, options);
  webRtcPeers.set(state.user, wp);
  state.publisher = wp.peerConnection;
  const sdpOffer = await generateOffer(wp);
  const response = await sendRequest('publishVideo', { sdpOffer, doLoopback: !!loopback });
  await processAnswer(wp, response.sdpAnswer);
}

/** Connects, joins `room` as `user`, publishes (with loopback if asked) and subscribes to all. */
state.start = async function start({ wsUri, room, user, loopback }) {
  state.user = user;
  state.room = room;
  localStream = await navigator.mediaDevices.getUserMedia({
    audio: true,
    video: { width: { ideal: 320 }, height: { ideal: 180 }, frameRate: { ideal: 15 } },
  });
  await new Promise((resolve, reject) => {
    const config = {
      heartbeat: 3000,
      sendCloseMessage: false,
      ws: {
        uri: wsUri,
        useSockJS: false,
        onconnected: (error) => (error ? reject(error) : resolve()),
        ondisconnect: () => fail('websocket disconnected'),
        onreconnecting: () => fail('websocket reconnecting'),
        onreconnected: () => console.log('[compat] reconnected'),
      },
      rpc: {
        requestTimeout: 15000,
        participantJoined: (p) => state.events.push(['participantJoined', p]),
        participantPublished: (p) => {
          state.events.push(['participantPublished', p]);
          for (const s of p.streams || []) subscribe(p.id, s.id).catch((e) => fail(`subscribe ${p.id}: ${JSON.stringify(e.message || e)}`));
        },
        participantUnpublished: (p) => { state.events.push(['participantUnpublished', p]); removeParticipant(p.name); },
        participantLeft: (p) => { state.events.push(['participantLeft', p]); removeParticipant(p.name); },
        participantEvicted: (p) => state.events.push(['participantEvicted', p]),
        sendMessage: (p) => state.chat.push(p),
        iceCandidate: onIceCandidateEvent,
        mediaError: (p) => fail(`mediaError ${p.error}`),
        custonNotification: (p) => state.events.push(['custonNotification', p]),
      },
    };
    rpc = new RpcBuilder.clients.JsonRpcClient(config);
  });
  const response = await sendRequest('joinRoom', { user, room });
  state.joined = true;
  const tasks = [publish(loopback)];
  for (const peer of response.value || []) {
    for (const s of peer.streams || []) tasks.push(subscribe(peer.id, s.id));
  }
  await Promise.all(tasks);
  return response.value;
};

state.leave = async function leave() {
  await sendRequest('leaveRoom', {}).catch((e) => fail(`leaveRoom: ${JSON.stringify(e)}`));
  rpc.close();
  state.joined = false;
};
