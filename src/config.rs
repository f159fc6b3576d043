//! Typed configuration with documented defaults, from flags or `ROOMD_*` environment variables.
//!
//! Owns every tunable of the process and how it becomes the media engine's
//! [`media::MediaConfig`] and the room state machine's [`signaling::room::RoomConfig`].

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Default HTTP/WebSocket port, as the Kurento Room Server (Spring Boot's default).
pub const DEFAULT_PORT: u16 = 8080;
/// Default reconnection grace period (kurento-jsonrpc `ws.sessionReconnectionTime`).
pub const DEFAULT_RECONNECTION_GRACE_MS: u64 = 10_000;
/// Default largest accepted WebSocket message. Kurento accepted 1,000,000 characters; SDP
/// offers with many codecs and candidates stay well below this.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// roomd: a drop-in replacement for the Kurento Room Server with an in-process WebRTC SFU.
#[derive(Clone, Debug, Parser)]
#[command(version, about)]
pub struct Config {
    /// TOML configuration file (see README "Configuration"); its settings sit below the
    /// environment and the flags. `ROOMD_CONFIG_TOML` may hold the whole file instead.
    #[arg(long, env = "ROOMD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (secrets redacted) as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Do not serve the demo page (`/`, `/demo/*`): the Kurento API and REST calls only.
    #[arg(long, env = "ROOMD_NO_DEMO")]
    pub no_demo: bool,
    /// Serve `/metrics` on this address only (e.g. `127.0.0.1:9100`) instead of on the main
    /// HTTP port, so that it need not be exposed with the WebSocket.
    #[arg(long, env = "ROOMD_METRICS_BIND")]
    pub metrics_bind: Option<std::net::SocketAddr>,
    /// Address the HTTP/WebSocket server listens on.
    #[arg(long, env = "ROOMD_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// Port the HTTP/WebSocket server listens on (`/room`, REST, demo page).
    #[arg(long, env = "ROOMD_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// How long a participant whose WebSocket dropped stays in its room (milliseconds).
    #[arg(long, env = "ROOMD_RECONNECTION_GRACE_MS", default_value_t = DEFAULT_RECONNECTION_GRACE_MS)]
    pub reconnection_grace_ms: u64,
    /// Largest accepted WebSocket message in bytes; larger ones close that connection.
    #[arg(long, env = "ROOMD_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// Local IP address the media peer connections bind to and announce.
    #[arg(long, env = "ROOMD_MEDIA_IP", default_value = "127.0.0.1")]
    pub media_ip: IpAddr,
    /// Public IP to announce instead of `--media-ip` (1:1 NAT); repeat the flag (or separate
    /// with commas) to announce several, e.g. an IPv4 and an IPv6 address. Announcing an IPv6
    /// and an IPv4 address on the sharded engine needs `--media-ip ::` (one dual-stack socket
    /// per shard).
    #[arg(long = "public-ip", env = "ROOMD_PUBLIC_IP", value_delimiter = ',')]
    pub public_ips: Vec<IpAddr>,
    /// STUN/TURN server URLs handed to browsers by `GET /iceServers` (comma-separated or
    /// repeated), e.g. `turn:turn.example.org:3478?transport=udp`, for clients that cannot reach
    /// the media ports directly. roomd itself needs none.
    #[arg(long, env = "ROOMD_ICE_SERVERS", value_delimiter = ',')]
    pub ice_servers: Vec<String>,
    /// Username for the `turn:` URLs; with `--turn-secret`, the `<user>` of the time-limited
    /// `<expiry>:<user>` username (default `roomd`).
    #[arg(long, env = "ROOMD_TURN_USERNAME")]
    pub turn_username: Option<String>,
    /// Static password for the `turn:` URLs (needs `--turn-username`).
    #[arg(
        long,
        env = "ROOMD_TURN_CREDENTIAL",
        hide_env_values = true,
        requires = "turn_username",
        conflicts_with = "turn_secret"
    )]
    pub turn_credential: Option<String>,
    /// Shared secret of the TURN REST scheme (coturn's `use-auth-secret` +
    /// `static-auth-secret`): every `GET /iceServers` gets a fresh username
    /// `<expiry-unix-time>:<user>` with password base64(HMAC-SHA1(secret, username)).
    #[arg(long, env = "ROOMD_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,
    /// Lifetime of the TURN REST credentials, in seconds.
    #[arg(long, env = "ROOMD_TURN_TTL_SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub turn_ttl_secs: u64,
    /// Number of media shards (threads with one UDP port each for all their peer connections;
    /// every peer connection of a room on one shard); default: the number of cores.
    #[arg(long, env = "ROOMD_MEDIA_SHARDS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub media_shards: Option<u16>,
    /// UDP port of the first media shard; shard `i` listens on this + `i` (0: ports chosen by
    /// the system).
    #[arg(long, env = "ROOMD_RTC_UDP_PORT", default_value_t = 40000)]
    pub rtc_udp_port: u16,
    /// Send every datagram as its own message instead of a client's burst as one message with
    /// UDP segmentation offload (GSO is used only where the kernel has it, and switched off by
    /// itself if a device refuses it; this is for measuring, or for a kernel that misbehaves).
    #[arg(long, env = "ROOMD_NO_UDP_GSO")]
    pub no_udp_gso: bool,
    /// Minimum time between two keyframe requests to one publisher track (milliseconds).
    #[arg(long, env = "ROOMD_KEYFRAME_INTERVAL_MS", default_value_t = 500)]
    pub keyframe_interval_ms: u64,
    /// Value answered by `GET /getUpdateSpeakerInterval`.
    #[arg(long, env = "ROOMD_UPDATE_SPEAKER_INTERVAL", default_value_t = 1800)]
    pub update_speaker_interval: i64,
    /// Value answered by `GET /getThresholdSpeaker`.
    #[arg(long, env = "ROOMD_THRESHOLD_SPEAKER", default_value_t = -50)]
    pub threshold_speaker: i64,
    /// `loopbackRemote` of `GET /getClientConfig`.
    #[arg(long, env = "ROOMD_LOOPBACK_REMOTE", default_value_t = false)]
    pub loopback_remote: bool,
    /// `loopbackAndLocal` of `GET /getClientConfig`.
    #[arg(long, env = "ROOMD_LOOPBACK_AND_LOCAL", default_value_t = false)]
    pub loopback_and_local: bool,
    /// `filterRequestParam` of `GET /getClientConfig`.
    #[arg(long, env = "ROOMD_FILTER_REQUEST_PARAM", default_value = "hat")]
    pub filter_request_param: String,
    /// PEM certificate chain: serve HTTPS and `wss://` instead of plain HTTP (needs `--tls-key`).
    #[arg(long, env = "ROOMD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`.
    #[arg(long, env = "ROOMD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Secret for the admin actions (`POST /close?room=`), sent as `Authorization: Bearer
    /// <token>`. Without it the admin actions are off (403).
    #[arg(long, env = "ROOMD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Origins allowed to open `/room` (comma-separated, e.g. `https://meet.example.com`).
    /// Empty: any origin, as the original server.
    #[arg(long, env = "ROOMD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Most rooms at once; a join that would create one more gets 204.
    #[arg(long, env = "ROOMD_MAX_ROOMS", default_value_t = 10_000)]
    pub max_rooms: usize,
    /// Most participants in one room; one more gets 201.
    #[arg(long, env = "ROOMD_MAX_PARTICIPANTS_PER_ROOM", default_value_t = 1000)]
    pub max_participants_per_room: usize,
    /// Most publishers in one room; one more `publishVideo` gets 303.
    #[arg(long, env = "ROOMD_MAX_PUBLISHERS_PER_ROOM", default_value_t = 100)]
    pub max_publishers_per_room: usize,
    /// Most WebSocket connections at once; more are refused with HTTP 503.
    #[arg(long, env = "ROOMD_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Most WebSocket connections at once from one client IP; more are refused with HTTP 429.
    #[arg(long, env = "ROOMD_MAX_CONNECTIONS_PER_IP", default_value_t = 1000)]
    pub max_connections_per_ip: usize,
    /// Requests per second one connection may sustain (token bucket refill rate).
    #[arg(long, env = "ROOMD_REQUESTS_PER_SECOND", default_value_t = 50)]
    pub requests_per_second: u32,
    /// Requests one connection may send in a burst; past it requests get error -32000, and a
    /// connection refused this many times in a row is closed (1008).
    #[arg(long, env = "ROOMD_REQUEST_BURST", default_value_t = 200)]
    pub request_burst: u32,
    /// Largest SDP offer accepted, in bytes; larger ones get error -1.
    #[arg(long, env = "ROOMD_MAX_SDP_BYTES", default_value_t = 64 * 1024)]
    pub max_sdp_bytes: usize,
    /// Longest one WebSocket frame may take to be written (milliseconds). A client that stops
    /// reading makes writes wait on TCP backpressure; past this it is disconnected (and evicted
    /// after the grace period). Its queue of 1024 frames overflowing disconnects it sooner.
    #[arg(long, env = "ROOMD_WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    pub write_timeout_ms: u64,
    /// On SIGTERM, how long existing calls may go on before their rooms are closed (seconds).
    #[arg(long, env = "ROOMD_DRAIN_TIMEOUT_SECS", default_value_t = 300)]
    pub drain_timeout_secs: u64,
    /// Log output: `text` (human-readable; colours only on a terminal) or `json` (one object per
    /// line, for log collectors). The level comes from `RUST_LOG` (default: `info`, with
    /// webrtc-rs's internals at `warn`).
    #[arg(long, env = "ROOMD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Most client ICE candidates per media endpoint; more get 999.
    #[arg(long, env = "ROOMD_MAX_CANDIDATES_PER_ENDPOINT", default_value_t = 100)]
    pub max_candidates_per_endpoint: usize,
    /// Cluster mode: the Redis holding the node registry and the room directory, e.g.
    /// `redis://10.0.0.5:6379/0` (README "Several nodes"). Without it roomd is one node and
    /// connects to no Redis. Needs `--cluster-secret`.
    #[arg(
        long,
        env = "ROOMD_REDIS_URL",
        hide_env_values = true,
        requires = "cluster_secret"
    )]
    pub redis_url: Option<String>,
    /// Cluster mode: this node's id in the registry (default: random at each start).
    #[arg(long, env = "ROOMD_CLUSTER_NODE_ID")]
    pub cluster_node_id: Option<String>,
    /// Cluster mode: secret every node presents on the node-to-node relay link; the same on
    /// every node.
    #[arg(long, env = "ROOMD_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Cluster mode: base URL other nodes reach this node's HTTP port at, e.g.
    /// `http://10.0.0.2:8080` (default: `http://<--media-ip>:<bound port>`).
    #[arg(long, env = "ROOMD_CLUSTER_INTERNAL_URL")]
    pub cluster_internal_url: Option<String>,
    /// Cluster mode: lifetime of a room claim and of a node's registration (milliseconds).
    /// Owners renew every third of it; an owner that could not renew for this long (less a
    /// tenth) closes its rooms, and a dead node's rooms are free again after it.
    #[arg(long, env = "ROOMD_CLUSTER_CLAIM_TTL_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u64).range(300..))]
    pub cluster_claim_ttl_ms: u64,
    /// Cluster mode: prefix of every Redis key roomd writes (several clusters may share one
    /// Redis).
    #[arg(long, env = "ROOMD_CLUSTER_KEY_PREFIX", default_value = "roomd:")]
    pub cluster_key_prefix: String,
    /// Cluster mode: this node owns no rooms; it accepts clients and relays each to the
    /// room's node (a signaling edge, e.g. close to the load balancer).
    #[arg(long, env = "ROOMD_CLUSTER_RELAY_ONLY")]
    pub cluster_relay_only: bool,
}

impl Default for Config {
    fn default() -> Self {
        // The defaults of the flags above, without reading the command line or environment.
        Self::parse_from(["roomd"])
    }
}

impl Config {
    /// The reconnection grace period.
    pub fn reconnection_grace(&self) -> Duration {
        Duration::from_millis(self.reconnection_grace_ms)
    }

    /// The WebSocket write timeout.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    /// The drain timeout.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }

    /// The media engine's configuration.
    pub fn media(&self) -> media::MediaConfig {
        media::MediaConfig {
            bind_ip: self.media_ip,
            public_ips: self.public_ips.clone(),
            keyframe_request_interval: Duration::from_millis(self.keyframe_interval_ms),
            shards: self.media_shards.map_or_else(
                || std::thread::available_parallelism().map_or(1, |n| n.get()),
                usize::from,
            ),
            udp_port: self.rtc_udp_port,
            connect_timeout: media::DEFAULT_CONNECT_TIMEOUT,
            udp_gso: !self.no_udp_gso,
        }
    }

    /// The room state machine's configuration.
    pub fn room(&self) -> signaling::room::RoomConfig {
        signaling::room::RoomConfig {
            reconnection_grace: self.reconnection_grace(),
            max_participants: self.max_participants_per_room,
            max_publishers: self.max_publishers_per_room,
            max_sdp_bytes: self.max_sdp_bytes,
            max_candidates_per_endpoint: self.max_candidates_per_endpoint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults are the Kurento Room Server's: port 8080 on all interfaces, a 10 s
    /// reconnection grace, frames of at least 1,000,000 characters, 1800 / -50 for the
    /// speaker REST calls.
    #[test]
    fn defaults_match_the_kurento_room_server() {
        let c = Config::default();
        assert_eq!((c.bind, c.port), (IpAddr::from([0, 0, 0, 0]), 8080));
        assert_eq!(c.reconnection_grace(), Duration::from_secs(10));
        assert!(c.max_message_bytes >= 1_000_000);
        assert_eq!(
            (c.update_speaker_interval, c.threshold_speaker),
            (1800, -50)
        );
        assert_eq!(c.room().reconnection_grace, Duration::from_secs(10));
    }

    /// TLS takes a certificate and a key together; one without the other is a usage error.
    #[test]
    fn tls_needs_both_cert_and_key() {
        assert!(Config::default().tls_cert.is_none());
        let c = Config::parse_from(["roomd", "--tls-cert", "c.pem", "--tls-key", "k.pem"]);
        assert_eq!(c.tls_cert.as_deref(), Some(std::path::Path::new("c.pem")));
        assert!(Config::try_parse_from(["roomd", "--tls-cert", "c.pem"]).is_err());
        assert!(Config::try_parse_from(["roomd", "--tls-key", "k.pem"]).is_err());
    }

    /// The limits reach the room state machine; origins are a comma-separated list.
    #[test]
    fn limits_and_origins_are_parsed() {
        let c = Config::parse_from([
            "roomd",
            "--max-participants-per-room",
            "3",
            "--allowed-origins",
            "https://a.example,https://b.example",
        ]);
        assert_eq!(c.room().max_participants, 3);
        assert_eq!(c.allowed_origins.len(), 2);
        assert!(Config::default().allowed_origins.is_empty());
        assert!(Config::default().admin_token.is_none());
    }

    /// Flags override the defaults.
    #[test]
    fn flags_override_defaults() {
        let c = Config::parse_from(["roomd", "--port", "9000", "--public-ip", "203.0.113.9"]);
        assert_eq!(c.port, 9000);
        assert_eq!(c.media().public_ips, vec![IpAddr::from([203, 0, 113, 9])]);
        let both = Config::parse_from([
            "roomd",
            "--public-ip",
            "203.0.113.9",
            "--public-ip",
            "2001:db8::9",
        ]);
        let comma = Config::parse_from(["roomd", "--public-ip", "203.0.113.9,2001:db8::9"]);
        assert_eq!(both.public_ips.len(), 2);
        assert_eq!(both.public_ips, comma.public_ips);
    }
}
