//! The STUN/TURN servers handed to browsers: `GET /iceServers`.
//!
//! Owns the validation of `--ice-servers` and the TURN credentials (static, or the TURN REST
//! scheme of coturn's `use-auth-secret`: username `<expiry-unix-time>:<user>`, password
//! base64(HMAC-SHA1(secret, username)), fresh on every request), and their rendering in the
//! `RTCConfiguration` shape, `{"iceServers":[{"urls":[…],"username":…,"credential":…}]}`, which
//! a page passes straight to `new RTCPeerConnection(…)`. roomd's own peer connections use no
//! STUN/TURN: they announce their host (or `--public-ip`) candidates.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header::CACHE_CONTROL;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};

use crate::{AppState, Config};

/// The `<user>` of TURN REST usernames when `--turn-username` is not set.
const DEFAULT_REST_USER: &str = "roomd";

/// How the `turn:`/`turns:` URLs authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
enum TurnAuth {
    /// No TURN URL, or none configured (refused when there are TURN URLs).
    None,
    /// The same username and password for every client.
    Static {
        username: String,
        credential: String,
    },
    /// Time-limited credentials derived from a secret shared with the TURN server.
    Rest {
        secret: String,
        user: String,
        ttl_secs: u64,
    },
}

/// The validated ICE server list of a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IceServers {
    stun: Vec<String>,
    turn: Vec<String>,
    auth: TurnAuth,
}

impl IceServers {
    /// The ICE servers of `config`, or a message naming the flag at fault: every URL must be
    /// `stun:`, `stuns:`, `turn:` or `turns:`, and TURN URLs need credentials (browsers refuse a
    /// TURN server without them).
    pub(crate) fn from_config(config: &Config) -> Result<Self, String> {
        let (mut stun, mut turn) = (Vec::new(), Vec::new());
        for url in config.ice_servers.iter().map(|u| u.trim()) {
            let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
            match scheme.as_deref() {
                Some("stun" | "stuns") => stun.push(url.to_owned()),
                Some("turn" | "turns") => turn.push(url.to_owned()),
                _ => {
                    return Err(format!(
                        "--ice-servers: `{url}` is not a stun:, stuns:, turn: or turns: URL"
                    ))
                }
            }
        }
        let auth = match (&config.turn_secret, &config.turn_credential) {
            (Some(secret), _) => TurnAuth::Rest {
                secret: secret.clone(),
                user: config
                    .turn_username
                    .clone()
                    .unwrap_or_else(|| DEFAULT_REST_USER.to_owned()),
                ttl_secs: config.turn_ttl_secs,
            },
            (None, Some(credential)) => TurnAuth::Static {
                username: config.turn_username.clone().unwrap_or_default(),
                credential: credential.clone(),
            },
            (None, None) => TurnAuth::None,
        };
        if !turn.is_empty() && auth == TurnAuth::None {
            return Err(
                "--ice-servers has turn: URLs but no credentials: set --turn-secret \
                        (TURN REST) or --turn-username and --turn-credential"
                    .to_owned(),
            );
        }
        Ok(Self { stun, turn, auth })
    }

    /// The start-up line an operator needs: what clients will be offered.
    pub(crate) fn announce(&self) {
        let auth = match self.auth {
            TurnAuth::None => "none",
            TurnAuth::Static { .. } => "static",
            TurnAuth::Rest { .. } => "turn-rest",
        };
        if self.turn.is_empty() && auth != "none" {
            tracing::warn!("TURN credentials are set but --ice-servers has no turn: URL");
        }
        if !self.stun.is_empty() || !self.turn.is_empty() {
            tracing::info!(stun = ?self.stun, turn = ?self.turn, auth, "ICE servers for clients");
        }
    }

    /// The `RTCConfiguration` members for a client asking at `now`: `{"iceServers":[…]}`.
    pub(crate) fn rtc_configuration(&self, now: SystemTime) -> Value {
        let mut servers = Vec::new();
        if !self.stun.is_empty() {
            servers.push(json!({ "urls": self.stun }));
        }
        if !self.turn.is_empty() {
            let (username, credential) = match &self.auth {
                TurnAuth::None => (String::new(), String::new()),
                TurnAuth::Static {
                    username,
                    credential,
                } => (username.clone(), credential.clone()),
                TurnAuth::Rest {
                    secret,
                    user,
                    ttl_secs,
                } => {
                    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
                    rest_credential(secret, user, now.saturating_add(*ttl_secs))
                }
            };
            servers
                .push(json!({ "urls": self.turn, "username": username, "credential": credential }));
        }
        json!({ "iceServers": servers })
    }
}

/// A TURN REST credential (draft-uberti-behave-turn-rest, as coturn's `use-auth-secret` checks
/// it): username `<expires>:<user>`, password base64(HMAC-SHA1(secret, username)).
pub(crate) fn rest_credential(secret: &str, user: &str, expires_unix: u64) -> (String, String) {
    let username = format!("{expires_unix}:{user}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let tag = ring::hmac::sign(&key, username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    (username, credential)
}

/// `GET /iceServers`.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/iceServers", get(ice_servers))
}

async fn ice_servers(State(state): State<Arc<AppState>>) -> Response {
    // Validated at start-up (`serve`); an error here would be a configuration built around it.
    match IceServers::from_config(&state.config) {
        // no-store: REST credentials are made per request and must not be served from a cache.
        Ok(ice) => (
            [(CACHE_CONTROL, "no-store")],
            Json(ice.rtc_configuration(SystemTime::now())),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;

    fn config(args: &[&str]) -> Config {
        Config::parse_from(std::iter::once("roomd").chain(args.iter().copied()))
    }

    /// Known answer computed independently of this code, with
    /// `printf '%s' '1700086400:alice' | openssl dgst -sha1 -hmac 'north-star-secret' -binary | base64`.
    #[test]
    fn rest_credential_matches_openssl() {
        let (username, credential) = rest_credential("north-star-secret", "alice", 1_700_086_400);
        assert_eq!(username, "1700086400:alice");
        assert_eq!(credential, "+weC23JplL/V2EqOYoIuz1DBmag=");
    }

    /// With a secret, TURN URLs get `<now + ttl>:<user>` and its HMAC; STUN URLs get no
    /// credentials; the user part defaults to `roomd`.
    #[test]
    fn rest_scheme_expires_after_the_ttl() {
        let c = config(&[
            "--ice-servers",
            "stun:stun.example.org:3478, turn:turn.example.org:3478?transport=udp",
            "--ice-servers",
            "turns:turn.example.org:5349",
            "--turn-secret",
            "north-star-secret",
            "--turn-ttl-secs",
            "86400",
        ]);
        let ice = IceServers::from_config(&c).expect("valid");
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let v = ice.rtc_configuration(now);
        assert_eq!(
            v,
            json!({"iceServers": [
                {"urls": ["stun:stun.example.org:3478"]},
                {"urls": ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349"],
                 "username": "1700086400:roomd",
                 "credential": rest_credential("north-star-secret", "roomd", 1_700_086_400).1},
            ]})
        );
    }

    /// Static credentials are handed out as configured.
    #[test]
    fn static_credentials_are_passed_through() {
        let c = config(&[
            "--ice-servers",
            "turn:127.0.0.1:3478",
            "--turn-username",
            "u",
            "--turn-credential",
            "p",
        ]);
        let v = IceServers::from_config(&c)
            .expect("valid")
            .rtc_configuration(SystemTime::now());
        assert_eq!(
            v,
            json!({"iceServers": [{"urls": ["turn:127.0.0.1:3478"], "username": "u", "credential": "p"}]})
        );
        assert_eq!(
            IceServers::from_config(&Config::default())
                .expect("valid")
                .rtc_configuration(SystemTime::now()),
            json!({"iceServers": []})
        );
    }

    /// Misconfigurations are refused with the flag's name: a non-ICE URL, TURN without
    /// credentials, a static password without a username, both schemes at once, a zero TTL.
    #[test]
    fn misconfigurations_are_refused() {
        let err = IceServers::from_config(&config(&["--ice-servers", "https://turn.example"]))
            .expect_err("not an ICE URL");
        assert!(err.contains("--ice-servers"), "{err}");
        let err = IceServers::from_config(&config(&["--ice-servers", "turn:t.example"]))
            .expect_err("no credentials");
        assert!(err.contains("--turn-secret"), "{err}");
        assert!(Config::try_parse_from(["roomd", "--turn-credential", "p"]).is_err());
        assert!(Config::try_parse_from([
            "roomd",
            "--turn-username",
            "u",
            "--turn-credential",
            "p",
            "--turn-secret",
            "s"
        ])
        .is_err());
        assert!(Config::try_parse_from(["roomd", "--turn-ttl-secs", "0"]).is_err());
    }
}
