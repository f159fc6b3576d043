//! The configuration file and the layering of sources: defaults < file < `ROOMD_*` environment
//! < command-line flags.
//!
//! Owns the file's key names (`[section] key`, named after the peers' conventions) and their
//! mapping to the flags of [`Config`], the rejection of unknown keys, and `--print-config`
//! (the effective configuration as TOML, secrets redacted). The flags themselves, their
//! defaults and their environment variables live in `config.rs`; this module only fills in, from
//! the file, the settings that neither a flag nor the environment gave.

use std::ffi::OsString;
use std::fmt::Write as _;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use crate::Config;

/// The environment variable that may hold the whole file.
pub const CONFIG_TOML_ENV: &str = "ROOMD_CONFIG_TOML";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Text,
    Number,
    Flag,
    List,
    Secret,
}

/// `(section, key, why)`: keys of earlier versions, refused with the reason (a file that still
/// names them was written for a per-connection port range that no longer exists, and its
/// firewall rules need a look).
const REMOVED_KEYS: &[(&str, &str, &str)] = &[
    (
        "rtc",
        "port_min",
        "media uses one UDP port per shard from `rtc.udp_port` (see `rtc.shards`)",
    ),
    (
        "rtc",
        "port_max",
        "media uses one UDP port per shard from `rtc.udp_port` (see `rtc.shards`)",
    ),
    (
        "rtc",
        "engine",
        "the sharded engine is the only one; delete the key",
    ),
];

/// `(section, key, Config field, kind)`: every key the file may hold.
const KEYS: &[(&str, &str, &str, Kind)] = &[
    ("server", "bind", "bind", Kind::Text),
    ("server", "port", "port", Kind::Number),
    (
        "server",
        "max_message_bytes",
        "max_message_bytes",
        Kind::Number,
    ),
    (
        "server",
        "write_timeout_ms",
        "write_timeout_ms",
        Kind::Number,
    ),
    ("server", "allowed_origins", "allowed_origins", Kind::List),
    ("server", "no_demo", "no_demo", Kind::Flag),
    ("server", "metrics_bind", "metrics_bind", Kind::Text),
    ("server", "tls_cert", "tls_cert", Kind::Text),
    ("server", "tls_key", "tls_key", Kind::Text),
    ("rtc", "media_ip", "media_ip", Kind::Text),
    ("rtc", "public_ips", "public_ips", Kind::List),
    ("rtc", "shards", "media_shards", Kind::Number),
    ("rtc", "udp_port", "rtc_udp_port", Kind::Number),
    ("rtc", "no_udp_gso", "no_udp_gso", Kind::Flag),
    (
        "rtc",
        "keyframe_interval_ms",
        "keyframe_interval_ms",
        Kind::Number,
    ),
    ("rtc", "ice_servers", "ice_servers", Kind::List),
    ("rtc", "turn_username", "turn_username", Kind::Text),
    ("rtc", "turn_credential", "turn_credential", Kind::Secret),
    ("rtc", "turn_secret", "turn_secret", Kind::Secret),
    ("rtc", "turn_ttl_secs", "turn_ttl_secs", Kind::Number),
    (
        "room",
        "reconnection_grace_ms",
        "reconnection_grace_ms",
        Kind::Number,
    ),
    ("room", "max_rooms", "max_rooms", Kind::Number),
    (
        "room",
        "max_participants",
        "max_participants_per_room",
        Kind::Number,
    ),
    (
        "room",
        "max_publishers",
        "max_publishers_per_room",
        Kind::Number,
    ),
    ("room", "max_sdp_bytes", "max_sdp_bytes", Kind::Number),
    (
        "room",
        "max_candidates_per_endpoint",
        "max_candidates_per_endpoint",
        Kind::Number,
    ),
    ("limits", "max_connections", "max_connections", Kind::Number),
    (
        "limits",
        "max_connections_per_ip",
        "max_connections_per_ip",
        Kind::Number,
    ),
    (
        "limits",
        "requests_per_second",
        "requests_per_second",
        Kind::Number,
    ),
    ("limits", "request_burst", "request_burst", Kind::Number),
    ("admin", "token", "admin_token", Kind::Secret),
    ("log", "format", "log_format", Kind::Text),
    ("drain", "timeout_secs", "drain_timeout_secs", Kind::Number),
    (
        "kurento",
        "update_speaker_interval",
        "update_speaker_interval",
        Kind::Number,
    ),
    (
        "kurento",
        "threshold_speaker",
        "threshold_speaker",
        Kind::Number,
    ),
    ("kurento", "loopback_remote", "loopback_remote", Kind::Flag),
    (
        "kurento",
        "loopback_and_local",
        "loopback_and_local",
        Kind::Flag,
    ),
    (
        "kurento",
        "filter_request_param",
        "filter_request_param",
        Kind::Text,
    ),
    ("cluster", "redis_url", "redis_url", Kind::Secret),
    ("cluster", "node_id", "cluster_node_id", Kind::Text),
    ("cluster", "secret", "cluster_secret", Kind::Secret),
    (
        "cluster",
        "internal_url",
        "cluster_internal_url",
        Kind::Text,
    ),
    (
        "cluster",
        "claim_ttl_ms",
        "cluster_claim_ttl_ms",
        Kind::Number,
    ),
    ("cluster", "key_prefix", "cluster_key_prefix", Kind::Text),
    ("cluster", "relay_only", "cluster_relay_only", Kind::Flag),
];

/// Keys read for compatibility but not printed by `--print-config`: `rtc.public_ip` (one
/// address) became the list `rtc.public_ips`.
const ALIASES: &[(&str, &str, &str, Kind)] = &[("rtc", "public_ip", "public_ips", Kind::Text)];

/// A configuration that cannot be used; the message names the file key or flag at fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Config {
    /// The effective configuration from `args` (the program name first), the environment and
    /// the file named by `--config` / `ROOMD_CONFIG` or held whole in `ROOMD_CONFIG_TOML`.
    pub fn load<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let first = Config::command()
            .try_get_matches_from(&args)
            .map_err(|e| ConfigError(e.to_string()))?;
        let text = match first.get_one::<std::path::PathBuf>("config") {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!("cannot read config file {}: {e}", path.display()))
            })?),
            None => std::env::var(CONFIG_TOML_ENV).ok(),
        };
        let Some(text) = text else {
            return Config::from_arg_matches(&first).map_err(|e| ConfigError(e.to_string()));
        };
        let mut argv = args;
        for (field, value) in file_values(&text)? {
            // Only where neither a flag nor the environment spoke: the file is below both.
            if first.value_source(field) != Some(ValueSource::DefaultValue)
                && first.value_source(field).is_some()
            {
                continue;
            }
            argv.extend(value.into_iter().map(OsString::from));
        }
        Config::command()
            .try_get_matches_from(&argv)
            .and_then(|m| Config::from_arg_matches(&m))
            .map_err(|e| ConfigError(format!("in the config file: {e}")))
    }

    /// The effective configuration as a TOML file (secrets redacted), for `--print-config`.
    pub fn to_toml(&self) -> String {
        let matches = Config::command()
            .try_get_matches_from(self.to_args())
            .expect("a Config's own flags parse again");
        let mut out = String::new();
        let mut section = "";
        for (sec, key, field, kind) in KEYS {
            if *sec != section {
                let _ = writeln!(out, "{}[{sec}]", if section.is_empty() { "" } else { "\n" });
                section = sec;
            }
            let raw: Vec<String> = matches
                .get_raw(field)
                .map(|vals| vals.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let value = match (kind, raw.first()) {
                (Kind::Flag, _) => matches.get_flag(field).to_string(),
                (Kind::Secret, Some(_)) => "\"<redacted>\"".to_owned(),
                (Kind::List, _) => format!(
                    "[{}]",
                    raw.iter()
                        .map(|v| toml_string(v))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                (_, None) => {
                    let _ = writeln!(out, "# {key} = (not set)");
                    continue;
                }
                (Kind::Number, Some(v)) => v.clone(),
                (Kind::Text, Some(v)) => toml_string(v),
            };
            let _ = writeln!(out, "{key} = {value}");
        }
        out
    }

    /// Flags that reproduce this configuration (used to render it).
    fn to_args(&self) -> Vec<String> {
        let mut a = vec!["roomd".to_owned()];
        // `--flag=value`: a value such as -50 must not read as a flag.
        let mut push = |flag: &str, v: String| a.push(format!("--{flag}={v}"));
        push("bind", self.bind.to_string());
        push("port", self.port.to_string());
        push("max-message-bytes", self.max_message_bytes.to_string());
        push("write-timeout-ms", self.write_timeout_ms.to_string());
        if !self.allowed_origins.is_empty() {
            push("allowed-origins", self.allowed_origins.join(","));
        }
        if let Some(m) = self.metrics_bind {
            push("metrics-bind", m.to_string());
        }
        if let (Some(c), Some(k)) = (&self.tls_cert, &self.tls_key) {
            push("tls-cert", c.display().to_string());
            push("tls-key", k.display().to_string());
        }
        push("media-ip", self.media_ip.to_string());
        for ip in &self.public_ips {
            push("public-ip", ip.to_string());
        }
        if let Some(n) = self.media_shards {
            push("media-shards", n.to_string());
        }
        push("rtc-udp-port", self.rtc_udp_port.to_string());
        push(
            "keyframe-interval-ms",
            self.keyframe_interval_ms.to_string(),
        );
        if !self.ice_servers.is_empty() {
            push("ice-servers", self.ice_servers.join(","));
        }
        for (flag, value) in [
            ("turn-username", &self.turn_username),
            ("turn-credential", &self.turn_credential),
            ("turn-secret", &self.turn_secret),
        ] {
            if let Some(v) = value {
                push(flag, v.clone());
            }
        }
        push("turn-ttl-secs", self.turn_ttl_secs.to_string());
        push(
            "reconnection-grace-ms",
            self.reconnection_grace_ms.to_string(),
        );
        push("max-rooms", self.max_rooms.to_string());
        push(
            "max-participants-per-room",
            self.max_participants_per_room.to_string(),
        );
        push(
            "max-publishers-per-room",
            self.max_publishers_per_room.to_string(),
        );
        push("max-sdp-bytes", self.max_sdp_bytes.to_string());
        push(
            "max-candidates-per-endpoint",
            self.max_candidates_per_endpoint.to_string(),
        );
        push("max-connections", self.max_connections.to_string());
        push(
            "max-connections-per-ip",
            self.max_connections_per_ip.to_string(),
        );
        push("requests-per-second", self.requests_per_second.to_string());
        push("request-burst", self.request_burst.to_string());
        if let Some(t) = &self.admin_token {
            push("admin-token", t.clone());
        }
        let format = match self.log_format {
            crate::config::LogFormat::Text => "text",
            crate::config::LogFormat::Json => "json",
        };
        push("log-format", format.to_owned());
        push("drain-timeout-secs", self.drain_timeout_secs.to_string());
        push(
            "update-speaker-interval",
            self.update_speaker_interval.to_string(),
        );
        push("threshold-speaker", self.threshold_speaker.to_string());
        push("filter-request-param", self.filter_request_param.clone());
        for (flag, value) in [
            ("redis-url", &self.redis_url),
            ("cluster-node-id", &self.cluster_node_id),
            ("cluster-secret", &self.cluster_secret),
            ("cluster-internal-url", &self.cluster_internal_url),
        ] {
            if let Some(v) = value {
                push(flag, v.clone());
            }
        }
        push(
            "cluster-claim-ttl-ms",
            self.cluster_claim_ttl_ms.to_string(),
        );
        push("cluster-key-prefix", self.cluster_key_prefix.clone());
        if self.cluster_relay_only {
            a.push("--cluster-relay-only".into());
        }
        if self.no_demo {
            a.push("--no-demo".into());
        }
        if self.no_udp_gso {
            a.push("--no-udp-gso".into());
        }
        if self.loopback_remote {
            a.push("--loopback-remote".into());
        }
        if self.loopback_and_local {
            a.push("--loopback-and-local".into());
        }
        a
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The file's settings as `(Config field, flag arguments)`. Unknown sections or keys and values
/// of the wrong type are errors naming the key.
fn file_values(text: &str) -> Result<Vec<(&'static str, Vec<String>)>, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e| ConfigError(format!("config file is not valid TOML: {e}")))?;
    let command = Config::command();
    let mut out = Vec::new();
    for (section, body) in &table {
        let toml::Value::Table(body) = body else {
            return Err(ConfigError(format!(
                "config file: `{section}` must be a [section]"
            )));
        };
        for (key, value) in body {
            let Some((_, _, field, kind)) = KEYS
                .iter()
                .chain(ALIASES)
                .find(|(s, k, _, _)| s == section && k == key)
            else {
                if let Some((_, _, why)) = REMOVED_KEYS
                    .iter()
                    .find(|(s, k, _)| s == section && k == key)
                {
                    return Err(ConfigError(format!(
                        "config file: `{section}.{key}` was removed: {why}"
                    )));
                }
                return Err(ConfigError(format!(
                    "config file: unknown key `{section}.{key}`"
                )));
            };
            // The flag's own name (a field may be named apart from its flag: `public_ips` is
            // `--public-ip`, repeatable).
            let long = command
                .get_arguments()
                .find(|a| a.get_id() == *field)
                .and_then(|a| a.get_long())
                .map_or_else(|| field.replace('_', "-"), str::to_owned);
            let flag = format!("--{long}");
            let wrong = |want: &str| {
                ConfigError(format!(
                    "config file: `{section}.{key}` must be {want}, not {value}"
                ))
            };
            let args = match (kind, value) {
                (Kind::Flag, toml::Value::Boolean(true)) => vec![flag],
                (Kind::Flag, toml::Value::Boolean(false)) => Vec::new(),
                (Kind::Flag, _) => return Err(wrong("true or false")),
                (Kind::Number, toml::Value::Integer(n)) => vec![format!("{flag}={n}")],
                (Kind::Number, _) => return Err(wrong("a number")),
                (Kind::Text | Kind::Secret, toml::Value::String(s)) => vec![format!("{flag}={s}")],
                (Kind::Text | Kind::Secret, _) => return Err(wrong("a string")),
                (Kind::List, toml::Value::Array(items)) => {
                    let items: Option<Vec<&str>> = items.iter().map(|i| i.as_str()).collect();
                    let items = items.ok_or_else(|| wrong("a list of strings"))?;
                    if items.is_empty() {
                        Vec::new()
                    } else {
                        vec![format!("{flag}={}", items.join(","))]
                    }
                }
                (Kind::List, _) => return Err(wrong("a list of strings")),
            };
            out.push((*field, args));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (std::path::PathBuf, impl Drop) {
        struct Remove(std::path::PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let path = std::env::temp_dir().join(format!(
            "roomd-config-{}-{}.toml",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::write(&path, text).expect("write temp config");
        (path.clone(), Remove(path))
    }

    /// The file fills what flags do not give; flags win over the file.
    #[test]
    fn the_file_sits_between_defaults_and_flags() {
        let (path, _rm) = write(
            "[server]\nport = 9100\nallowed_origins = [\"https://a.example\"]\n\
             [room]\nmax_participants = 7\n[kurento]\nloopback_remote = true\n\
             [admin]\ntoken = \"s3cret\"\n",
        );
        let p = path.to_str().expect("utf-8 temp path");
        let c = Config::load(["roomd", "--config", p]).expect("valid file");
        assert_eq!(c.port, 9100);
        assert_eq!(c.max_participants_per_room, 7);
        assert!(c.loopback_remote);
        assert_eq!(c.allowed_origins, vec!["https://a.example".to_owned()]);
        assert_eq!(c.admin_token.as_deref(), Some("s3cret"));
        assert_eq!(c.max_rooms, 10_000, "untouched keys keep their default");
        let c = Config::load(["roomd", "--config", p, "--port", "9200"]).expect("valid");
        assert_eq!(c.port, 9200, "a flag wins over the file");
    }

    /// `rtc.public_ips` takes several addresses; the former `rtc.public_ip` (one) still reads,
    /// and `--print-config` writes the list.
    #[test]
    fn public_ips_is_a_list_and_public_ip_still_reads() {
        let (path, _rm) = write("[rtc]\npublic_ips = [\"203.0.113.9\", \"2001:db8::9\"]\n");
        let c = Config::load(["roomd", "--config", path.to_str().expect("utf-8")]).expect("valid");
        let want: Vec<std::net::IpAddr> = vec![
            "203.0.113.9".parse().expect("ip"),
            "2001:db8::9".parse().expect("ip"),
        ];
        assert_eq!(c.public_ips, want);
        let printed = c.to_toml();
        assert!(
            printed.contains("public_ips = [\"203.0.113.9\", \"2001:db8::9\"]"),
            "{printed}"
        );
        let (old, _rm2) = write("[rtc]\npublic_ip = \"203.0.113.9\"\n");
        let c = Config::load(["roomd", "--config", old.to_str().expect("utf-8")]).expect("valid");
        assert_eq!(c.public_ips, want[..1]);
    }

    /// Unknown keys and wrong types are refused with the key's name.
    #[test]
    fn unknown_keys_and_wrong_types_are_refused() {
        let (path, _rm) = write("[server]\nprot = 1\n");
        let err = Config::load(["roomd", "--config", path.to_str().expect("utf-8")])
            .expect_err("typo refused");
        assert!(err.to_string().contains("server.prot"), "{err}");
        let (path, _rm2) = write("[server]\nport = \"x\"\n");
        let err = Config::load(["roomd", "--config", path.to_str().expect("utf-8")])
            .expect_err("type refused");
        assert!(err.to_string().contains("server.port"), "{err}");
        let (path, _rm3) = write("[rtc]\nport_min = 40000\n");
        let err = Config::load(["roomd", "--config", path.to_str().expect("utf-8")])
            .expect_err("removed key refused");
        assert!(
            err.to_string().contains("rtc.port_min` was removed")
                && err.to_string().contains("rtc.udp_port"),
            "{err}"
        );
        let err = Config::load(["roomd", "--config", "/nonexistent/roomd.toml"])
            .expect_err("missing file refused");
        assert!(err.to_string().contains("cannot read"), "{err}");
    }

    /// `--print-config` output is itself a valid file giving the same configuration, with the
    /// admin token redacted.
    #[test]
    fn printed_config_round_trips_and_hides_secrets() {
        let c = Config::load([
            "roomd",
            "--port",
            "9300",
            "--admin-token",
            "s3cret",
            "--allowed-origins",
            "https://a.example,https://b.example",
            "--ice-servers",
            "stun:stun.example.org,turn:turn.example.org:3478?transport=udp",
            "--turn-secret",
            "turn-s3cret",
        ])
        .expect("valid flags");
        let text = c.to_toml();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("turn_secret = \"<redacted>\""), "{text}");
        let (path, _rm) = write(&text.replace("\"<redacted>\"", "\"other\""));
        let back = Config::load(["roomd", "--config", path.to_str().expect("utf-8")])
            .expect("printed config parses");
        assert_eq!(back.port, 9300);
        assert_eq!(back.allowed_origins.len(), 2);
        assert_eq!(back.ice_servers, c.ice_servers);
        assert_eq!(back.turn_secret.as_deref(), Some("other"));
        assert_eq!(back.turn_ttl_secs, 86_400);
        assert_eq!(back.max_sdp_bytes, c.max_sdp_bytes);
    }

    /// The `[cluster]` section: the Redis URL and the secret are redacted when printed, the
    /// Redis URL cannot come without the secret, and no Redis is configured by default.
    #[test]
    fn cluster_section_layers_and_redacts() {
        assert!(
            Config::default().redis_url.is_none(),
            "single node by default"
        );
        let (path, _rm) = write(
            "[cluster]\nredis_url = \"redis://:pw@127.0.0.1:6379/0\"\nsecret = \"c-s3cret\"\n\
             node_id = \"n1\"\ninternal_url = \"http://10.0.0.2:8080\"\nclaim_ttl_ms = 4000\n",
        );
        let p = path.to_str().expect("utf-8 temp path");
        let c = Config::load(["roomd", "--config", p, "--cluster-node-id", "n2"]).expect("valid");
        assert_eq!(c.redis_url.as_deref(), Some("redis://:pw@127.0.0.1:6379/0"));
        assert_eq!(
            c.cluster_node_id.as_deref(),
            Some("n2"),
            "a flag wins over the file"
        );
        assert_eq!(c.cluster_claim_ttl_ms, 4000);
        assert_eq!(c.cluster_key_prefix, "roomd:");
        let text = c.to_toml();
        assert!(
            !text.contains("pw@") && !text.contains("c-s3cret"),
            "{text}"
        );
        assert!(
            text.contains("internal_url = \"http://10.0.0.2:8080\""),
            "{text}"
        );
        let (path, _rm2) = write("[cluster]\nredis_url = \"redis://127.0.0.1\"\n");
        let err = Config::load(["roomd", "--config", path.to_str().expect("utf-8")])
            .expect_err("a Redis URL without a cluster secret is refused");
        assert!(err.to_string().contains("cluster-secret"), "{err}");
    }
}
