//! Registry credentials from `imagePullSecrets` (`kubernetes.io/dockerconfigjson` and the
//! older `kubernetes.io/dockercfg`), matched to the registry an image lives in.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

use super::ImageError;

/// One registry's credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    /// The registry as written in the secret: `host[:port]`, possibly with a scheme and path.
    pub registry: String,
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Pull secrets end up in logs through Debug; the password must not.
        f.debug_struct("RegistryAuth")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ConfigJson {
    auths: Option<BTreeMap<String, Entry>>,
}

#[derive(Deserialize)]
struct Entry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

impl RegistryAuth {
    /// Reads a `.dockerconfigjson` (`{"auths": {...}}`) or `.dockercfg` (the map alone).
    ///
    /// # Errors
    /// If the document is not JSON of that shape or an `auth` field is not base64 of
    /// `user:password`.
    pub fn from_docker_config_json(bytes: &[u8]) -> Result<Vec<Self>, ImageError> {
        let bad = |e: &dyn std::fmt::Display| ImageError::DockerConfig(e.to_string());
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| bad(&e))?;
        let entries: BTreeMap<String, Entry> = if value.get("auths").is_some() {
            let config: ConfigJson = serde_json::from_value(value).map_err(|e| bad(&e))?;
            config.auths.unwrap_or_default()
        } else {
            serde_json::from_value(value).map_err(|e| bad(&e))?
        };
        let mut auths = Vec::new();
        for (registry, entry) in entries {
            let (username, password) = match (entry.username, entry.password, entry.auth) {
                (Some(user), Some(password), _) if !user.is_empty() => (user, password),
                (_, _, Some(auth)) if !auth.is_empty() => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|e| bad(&format_args!("auth of {registry}: {e}")))?;
                    let text = String::from_utf8(decoded)
                        .map_err(|e| bad(&format_args!("auth of {registry}: {e}")))?;
                    let (user, password) = text.split_once(':').ok_or_else(|| {
                        bad(&format_args!("auth of {registry} is not user:password"))
                    })?;
                    (user.to_owned(), password.to_owned())
                }
                _ => continue,
            };
            auths.push(Self {
                registry,
                username,
                password,
            });
        }
        Ok(auths)
    }

    /// Whether these credentials are for `registry` (a reference's registry, e.g.
    /// `docker.io` or `127.0.0.1:5000`).
    #[must_use]
    pub fn matches(&self, registry: &str) -> bool {
        host_of(&self.registry) == host_of(registry)
    }
}

/// The registry's host as references name it: no scheme, no path, Docker Hub's aliases
/// folded to `docker.io`.
pub(super) fn host_of(registry: &str) -> String {
    let rest = registry
        .strip_prefix("https://")
        .or_else(|| registry.strip_prefix("http://"))
        .unwrap_or(registry);
    let host = rest.split('/').next().unwrap_or(rest).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerconfigjson_auth_field_is_decoded() {
        // "alice:s3cr:et" — the password may itself hold a colon.
        let json = br#"{"auths":{"127.0.0.1:5000":{"auth":"YWxpY2U6czNjcjpldA=="}}}"#;
        let auths = RegistryAuth::from_docker_config_json(json).unwrap();
        assert_eq!(auths.len(), 1);
        assert_eq!(auths[0].registry, "127.0.0.1:5000");
        assert_eq!(auths[0].username, "alice");
        assert_eq!(auths[0].password, "s3cr:et");
    }

    #[test]
    fn explicit_username_and_password_win_over_auth() {
        let json = br#"{"auths":{"https://index.docker.io/v1/":
            {"username":"bob","password":"pw","auth":"eDp5"}}}"#;
        let auths = RegistryAuth::from_docker_config_json(json).unwrap();
        assert_eq!(auths[0].username, "bob");
        assert_eq!(auths[0].password, "pw");
        assert!(auths[0].matches("docker.io"));
        assert!(!auths[0].matches("127.0.0.1:5000"));
    }

    #[test]
    fn legacy_dockercfg_without_auths_wrapper_is_read() {
        let json = br#"{"registry.example:443":{"auth":"eDp5","email":"a@b"}}"#;
        let auths = RegistryAuth::from_docker_config_json(json).unwrap();
        assert_eq!(auths[0].username, "x");
        assert_eq!(auths[0].password, "y");
        assert!(auths[0].matches("registry.example:443"));
    }

    #[test]
    fn malformed_docker_config_is_an_error() {
        assert!(RegistryAuth::from_docker_config_json(b"not json").is_err());
        assert!(
            RegistryAuth::from_docker_config_json(br#"{"auths":{"r":{"auth":"!!"}}}"#).is_err()
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let auth = RegistryAuth {
            registry: "r".into(),
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{auth:?}").contains("hunter2"));
    }
}
