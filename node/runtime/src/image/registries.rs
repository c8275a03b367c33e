//! Where images are pulled from: k3s's `registries.yaml` (`mirrors` tried in order before the
//! registry itself, `configs` with credentials and TLS per host) plus `--insecure-registry`.

use std::{collections::BTreeMap, path::PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use super::auth::host_of;

/// Why a registries file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RegistriesError {
    /// The file is not YAML of the `registries.yaml` shape.
    #[error("registries config: {0}")]
    Syntax(String),
    /// A mirror endpoint is not `[http[s]://]host[:port][/v2]`.
    #[error("registries config: mirror endpoint {0:?} is not [http[s]://]host[:port]")]
    Endpoint(String),
    /// A host's `auth` is not base64 of `user:password`.
    #[error("registries config: auth of {0} is not base64 of user:password")]
    Auth(String),
    /// Something the file asks for that skiff does not do.
    #[error("registries config: {0} is not supported")]
    Unsupported(String),
    /// A file the config names cannot be read.
    #[error("registries config: read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    mirrors: BTreeMap<String, MirrorFile>,
    #[serde(default)]
    configs: BTreeMap<String, ConfigFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorFile {
    #[serde(default)]
    endpoint: Vec<String>,
    rewrite: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    auth: Option<AuthFile>,
    tls: Option<TlsFile>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    username: Option<String>,
    password: Option<String>,
    auth: Option<String>,
    identitytoken: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

/// One place to pull a registry's images from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]`, as references name registries.
    pub host: String,
    /// Reached over plain HTTP.
    pub plain_http: bool,
}

/// How one host is reached: credentials and TLS.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// `(user, password)` for basic or token auth.
    pub credentials: Option<(String, String)>,
    /// PEM certificates trusted for this host beside the system's.
    pub ca_pem: Vec<Vec<u8>>,
    /// Accept any certificate (`insecure_skip_verify`).
    pub insecure_skip_verify: bool,
}

impl std::fmt::Debug for HostConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config ends up in logs through Debug; the password must not.
        f.debug_struct("HostConfig")
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .field("ca_certificates", &self.ca_pem.len())
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .finish()
    }
}

/// The node's registry configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registries {
    /// By registry name (`docker.io`, `registry.example:5000`, or `*` for every registry
    /// without an entry of its own): endpoints tried in order before the registry itself.
    mirrors: BTreeMap<String, Vec<Endpoint>>,
    /// By host.
    configs: BTreeMap<String, HostConfig>,
    /// Hosts reached over plain HTTP (`--insecure-registry`).
    insecure: Vec<String>,
    /// A registry with mirrors is pulled from its mirrors only (k3s's
    /// `--disable-default-registry-endpoint`, for air-gapped hosts).
    mirrors_only: bool,
}

impl From<Vec<String>> for Registries {
    /// Only `--insecure-registry` hosts: no mirrors, no per-host configuration.
    fn from(insecure: Vec<String>) -> Self {
        Self {
            insecure: insecure.iter().map(|h| host_of(h)).collect(),
            ..Self::default()
        }
    }
}

impl Registries {
    /// Parses a `registries.yaml` (k3s's form), reading the CA files it names; `insecure`
    /// are `--insecure-registry` hosts.
    ///
    /// # Errors
    /// If the file does not parse, names files that cannot be read, or asks for what skiff
    /// does not do (rewrites, client certificates, identity tokens).
    pub fn from_yaml(text: &str, insecure: Vec<String>) -> Result<Self, RegistriesError> {
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| RegistriesError::Syntax(e.to_string()))?
        };
        let mut registries = Self::from(insecure);
        for (name, mirror) in file.mirrors {
            if mirror.rewrite.as_ref().is_some_and(|r| !r.is_empty()) {
                return Err(RegistriesError::Unsupported(format!(
                    "the rewrite of mirror {name}"
                )));
            }
            let endpoints = mirror
                .endpoint
                .iter()
                .map(|e| parse_endpoint(e))
                .collect::<Result<Vec<_>, _>>()?;
            let key = if name == "*" { name } else { host_of(&name) };
            registries.mirrors.insert(key, endpoints);
        }
        for (host, config) in file.configs {
            let host = if host == "*" { host } else { host_of(&host) };
            registries
                .configs
                .insert(host.clone(), host_config(&host, config)?);
        }
        Ok(registries)
    }

    /// Pulls a registry that has mirrors from its mirrors only, never from the registry
    /// itself.
    #[must_use]
    pub fn mirrors_only(mut self) -> Self {
        self.mirrors_only = true;
        self
    }

    /// Where to pull `registry`'s images from, in order: its mirrors (or the `*` mirrors
    /// when it has no entry), then the registry itself (unless [`Self::mirrors_only`] and
    /// there are mirrors).
    #[must_use]
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let registry = host_of(registry);
        let mirrors = self
            .mirrors
            .get(&registry)
            .or_else(|| self.mirrors.get("*"))
            .cloned()
            .unwrap_or_default();
        let itself = Endpoint {
            plain_http: self.insecure.contains(&registry),
            host: registry,
        };
        let mut all = mirrors;
        let fallback = !self.mirrors_only || all.is_empty();
        if fallback && !all.contains(&itself) {
            all.push(itself);
        }
        all
    }

    /// How `host` is reached (its `configs` entry, else the `*` entry, else defaults).
    #[must_use]
    pub fn config(&self, host: &str) -> HostConfig {
        self.configs
            .get(&host_of(host))
            .or_else(|| self.configs.get("*"))
            .cloned()
            .unwrap_or_default()
    }

    /// Hosts reached over plain HTTP: `--insecure-registry` and `http://` mirror endpoints.
    #[must_use]
    pub fn plain_http_hosts(&self) -> Vec<String> {
        let mut hosts = self.insecure.clone();
        for endpoint in self.mirrors.values().flatten() {
            if endpoint.plain_http && !hosts.contains(&endpoint.host) {
                hosts.push(endpoint.host.clone());
            }
        }
        hosts
    }
}

fn parse_endpoint(text: &str) -> Result<Endpoint, RegistriesError> {
    let bad = || RegistriesError::Endpoint(text.to_owned());
    let (plain_http, rest) = if let Some(rest) = text.strip_prefix("http://") {
        (true, rest)
    } else {
        (false, text.strip_prefix("https://").unwrap_or(text))
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    // A path prefix on the mirror would need every request rewritten; `/v2` is the API
    // root that clients add anyway.
    if host.is_empty() || !matches!(path.trim_end_matches('/'), "" | "v2") {
        return Err(bad());
    }
    if host.contains(['@', '?', '#', ' ']) {
        return Err(bad());
    }
    Ok(Endpoint {
        host: host.to_ascii_lowercase(),
        plain_http,
    })
}

fn host_config(host: &str, config: ConfigFile) -> Result<HostConfig, RegistriesError> {
    let mut out = HostConfig::default();
    if let Some(auth) = config.auth {
        if auth.identitytoken.is_some() {
            return Err(RegistriesError::Unsupported(format!(
                "identitytoken of {host}"
            )));
        }
        out.credentials = match (auth.username, auth.password, auth.auth) {
            (Some(user), password, _) if !user.is_empty() => {
                Some((user, password.unwrap_or_default()))
            }
            (_, _, Some(encoded)) if !encoded.is_empty() => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .ok()
                    .and_then(|d| String::from_utf8(d).ok())
                    .ok_or_else(|| RegistriesError::Auth(host.to_owned()))?;
                let (user, password) = decoded
                    .split_once(':')
                    .ok_or_else(|| RegistriesError::Auth(host.to_owned()))?;
                Some((user.to_owned(), password.to_owned()))
            }
            _ => None,
        };
    }
    if let Some(tls) = config.tls {
        if tls.cert_file.is_some() || tls.key_file.is_some() {
            return Err(RegistriesError::Unsupported(format!(
                "a client certificate (cert_file, key_file) for {host}"
            )));
        }
        if let Some(path) = tls.ca_file {
            let pem = std::fs::read(&path).map_err(|source| RegistriesError::Read {
                path: path.display().to_string(),
                source,
            })?;
            out.ca_pem.push(pem);
        }
        out.insecure_skip_verify = tls.insecure_skip_verify;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K3S: &str = r#"
mirrors:
  docker.io:
    endpoint:
      - "http://127.0.0.1:5000"
      - "https://mirror.example:8443/v2"
  "*":
    endpoint: ["https://catch-all.example"]
configs:
  "mirror.example:8443":
    auth:
      username: alice
      password: pw
    tls:
      insecure_skip_verify: true
  "127.0.0.1:5000":
    auth:
      auth: Ym9iOnMzY3I6ZXQ=
"#;

    #[test]
    fn mirrors_are_tried_in_order_before_the_registry_itself() {
        let r = Registries::from_yaml(K3S, vec!["registry.local:5000".into()]).unwrap();
        let hosts = |name: &str| {
            r.endpoints(name)
                .into_iter()
                .map(|e| format!("{}{}", if e.plain_http { "http://" } else { "" }, e.host))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            hosts("docker.io"),
            ["http://127.0.0.1:5000", "mirror.example:8443", "docker.io"]
        );
        // Docker Hub's other names are the same registry.
        assert_eq!(hosts("index.docker.io"), hosts("docker.io"));
        // A registry without an entry of its own takes the `*` mirrors.
        assert_eq!(hosts("quay.io"), ["catch-all.example", "quay.io"]);
        assert_eq!(
            hosts("registry.local:5000"),
            ["catch-all.example", "http://registry.local:5000"]
        );
        assert_eq!(
            r.plain_http_hosts(),
            ["registry.local:5000", "127.0.0.1:5000"]
        );
        let only = r.mirrors_only();
        assert_eq!(only.endpoints("docker.io").len(), 2);
        let bare = Registries::from(vec!["registry.local:5000".to_owned()]).mirrors_only();
        assert_eq!(bare.endpoints("registry.local:5000").len(), 1);
    }

    #[test]
    fn configs_give_credentials_and_tls_per_host() {
        let r = Registries::from_yaml(K3S, Vec::new()).unwrap();
        let mirror = r.config("mirror.example:8443");
        assert_eq!(mirror.credentials, Some(("alice".into(), "pw".into())));
        assert!(mirror.insecure_skip_verify);
        assert_eq!(
            r.config("127.0.0.1:5000").credentials,
            Some(("bob".into(), "s3cr:et".into()))
        );
        assert_eq!(r.config("docker.io"), HostConfig::default());
        assert!(!format!("{mirror:?}").contains("pw"));
    }

    #[test]
    fn what_skiff_cannot_honour_is_refused_with_a_reason() {
        for (yaml, needle) in [
            (
                "mirrors: {docker.io: {endpoint: ['https://m/prefix']}}",
                "https://m/prefix",
            ),
            (
                "mirrors: {docker.io: {endpoint: [m], rewrite: {'^a': b}}}",
                "rewrite",
            ),
            (
                "configs: {m: {tls: {cert_file: /c, key_file: /k}}}",
                "client certificate",
            ),
            ("configs: {m: {auth: {auth: '!!'}}}", "base64"),
            (
                "configs: {m: {tls: {ca_file: /nonexistent/ca.pem}}}",
                "/nonexistent/ca.pem",
            ),
            ("mirror: {}", "unknown field"),
        ] {
            let err = Registries::from_yaml(yaml, Vec::new())
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{yaml}: {err}");
        }
        assert_eq!(
            Registries::from_yaml("", Vec::new()).unwrap(),
            Registries::default()
        );
    }
}
