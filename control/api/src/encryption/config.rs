//! kube-apiserver's `EncryptionConfiguration` (apiserver.config.k8s.io/v1): which resources
//! are encrypted with which providers, and the transform of one stored value.

use std::{collections::BTreeMap, path::Path};

use base64::Engine as _;
use serde::Deserialize;

use super::provider::{Cipher, KeyError, NamedKey};

/// What every value written by a provider starts with.
const ENCRYPTED: &[u8] = b"k8s:enc:";

/// Why a configuration cannot be used or a value cannot be transformed.
#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid `EncryptionConfiguration`.
    #[error("parsing the encryption configuration: {0}")]
    Parse(#[from] serde_yaml::Error),
    /// Another kind than `EncryptionConfiguration`.
    #[error("expected kind EncryptionConfiguration of apiserver.config.k8s.io/v1, got {0}")]
    Kind(String),
    /// A provider entry names no known provider, or several.
    #[error("provider {0} is not supported (use aesgcm, secretbox or identity)")]
    Provider(String),
    /// A resource entry has no providers.
    #[error("resources {0:?} have no providers")]
    NoProviders(Vec<String>),
    /// A provider has no keys.
    #[error("provider {0} has no keys")]
    NoKeys(&'static str),
    /// A key is unusable.
    #[error("key {name:?}: {source}")]
    Key {
        /// The key's name.
        name: String,
        /// Why.
        #[source]
        source: KeyError,
    },
    /// A stored value could not be encrypted or decrypted.
    #[error("unable to transform key {key:?}: {reason}")]
    Transform {
        /// The store key.
        key: String,
        /// Why.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    resources: Vec<ResourcesFile>,
}

#[derive(Deserialize)]
struct ResourcesFile {
    resources: Vec<String>,
    #[serde(default)]
    providers: Vec<BTreeMap<String, serde_yaml::Value>>,
}

#[derive(Deserialize)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyFile>,
}

#[derive(Deserialize)]
struct KeyFile {
    name: String,
    secret: String,
}

/// A provider in configuration order.
enum Provider {
    /// Writes in the clear; reads what has no `k8s:enc:` prefix.
    Identity,
    /// Writes with the first key, reads with any.
    Keys(Vec<NamedKey>),
}

/// One `resources[]` entry: the resources it covers and their providers, first one writes.
struct Rule {
    resources: Vec<String>,
    providers: Vec<Provider>,
}

/// A loaded `EncryptionConfiguration`.
pub struct EncryptionConfig {
    rules: Vec<Rule>,
}

impl std::fmt::Debug for EncryptionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let resources: Vec<_> = self.rules.iter().map(|r| &r.resources).collect();
        f.debug_struct("EncryptionConfig")
            .field("resources", &resources)
            .finish_non_exhaustive()
    }
}

impl EncryptionConfig {
    /// Reads the configuration file at `path`.
    ///
    /// # Errors
    /// When the file cannot be read or is not a usable configuration.
    pub fn load(path: &Path) -> Result<Self, EncryptionError> {
        let text = std::fs::read_to_string(path).map_err(|source| EncryptionError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses a configuration (YAML or JSON).
    ///
    /// # Errors
    /// When it is not a usable configuration.
    pub fn parse(text: &str) -> Result<Self, EncryptionError> {
        let file: File = serde_yaml::from_str(text)?;
        if file.kind != "EncryptionConfiguration"
            || file.api_version != "apiserver.config.k8s.io/v1"
        {
            return Err(EncryptionError::Kind(format!(
                "{} {}",
                file.api_version, file.kind
            )));
        }
        let rules = file
            .resources
            .into_iter()
            .map(|entry| {
                if entry.providers.is_empty() {
                    return Err(EncryptionError::NoProviders(entry.resources));
                }
                let providers = entry
                    .providers
                    .into_iter()
                    .map(provider)
                    .collect::<Result<_, _>>()?;
                Ok(Rule {
                    resources: entry.resources,
                    providers,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    /// The rule covering the store key `key` (`/registry/<group>/<plural>/...`), the first
    /// that matches as in kube.
    fn rule(&self, key: &str) -> Option<&Rule> {
        let mut parts = key.strip_prefix("/registry/")?.split('/');
        let group = parts.next()?;
        let group = if group == "core" { "" } else { group };
        let plural = parts.next()?;
        self.rules.iter().find(|rule| {
            rule.resources
                .iter()
                .any(|pattern| resource_matches(pattern, group, plural))
        })
    }

    /// The bytes to store for `plain` under `key`: encrypted by the first provider of the
    /// rule covering `key`, or `plain` when none covers it or the first is identity.
    ///
    /// # Errors
    /// If encryption fails.
    pub fn seal(&self, key: &str, plain: Vec<u8>) -> Result<Vec<u8>, EncryptionError> {
        let Some(Provider::Keys(keys)) = self.rule(key).and_then(|r| r.providers.first()) else {
            return Ok(plain);
        };
        let Some(first) = keys.first() else {
            return Ok(plain);
        };
        let sealed = first
            .cipher
            .seal(key, &plain)
            .map_err(|_| transform(key, "encryption failed"))?;
        Ok([first.prefix().as_bytes(), &sealed].concat())
    }

    /// The plaintext of the stored bytes under `key`: decrypted with the key its prefix
    /// names (any provider of any rule, so values survive a rule change), or as stored
    /// when unprefixed (identity).
    ///
    /// # Errors
    /// When the prefix names a key this configuration lacks, or decryption fails.
    pub fn open(&self, key: &str, stored: Vec<u8>) -> Result<Vec<u8>, EncryptionError> {
        let Some(rest) = stored.strip_prefix(ENCRYPTED) else {
            return Ok(stored);
        };
        let text = String::from_utf8_lossy(&rest[..rest.len().min(300)]);
        let mut fields = text.splitn(4, ':');
        let (Some(provider), Some("v1"), Some(name)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(transform(key, "malformed encryption prefix"));
        };
        let header = format!("{provider}:v1:{name}:").len();
        let named = self
            .rules
            .iter()
            .flat_map(|r| &r.providers)
            .filter_map(|p| match p {
                Provider::Keys(keys) => Some(keys),
                Provider::Identity => None,
            })
            .flatten()
            .find(|k| k.cipher.provider() == provider && k.name == name)
            .ok_or_else(|| {
                transform(
                    key,
                    &format!("no {provider} key named {name:?} in the encryption configuration"),
                )
            })?;
        let sealed = rest
            .get(header..)
            .ok_or_else(|| transform(key, "malformed encryption prefix"))?;
        named.cipher.open(key, sealed).map_err(|_| {
            transform(
                key,
                &format!("{provider} key {name:?} does not decrypt the stored value"),
            )
        })
    }
}

fn transform(key: &str, reason: &str) -> EncryptionError {
    EncryptionError::Transform {
        key: key.to_owned(),
        reason: reason.to_owned(),
    }
}

/// kube's resource patterns: `secrets` (core), `deployments.apps`, `*.apps`, `*.` (every
/// core resource), `*.*` (everything).
fn resource_matches(pattern: &str, group: &str, plural: &str) -> bool {
    let (resource, pattern_group) = pattern.split_once('.').unwrap_or((pattern, ""));
    (resource == "*" || resource == plural) && (pattern_group == "*" || pattern_group == group)
}

/// How a provider makes a cipher from a decoded secret.
type MakeCipher = fn(&[u8]) -> Result<Cipher, KeyError>;

fn provider(entry: BTreeMap<String, serde_yaml::Value>) -> Result<Provider, EncryptionError> {
    let mut entries = entry.into_iter();
    let (Some((kind, value)), None) = (entries.next(), entries.next()) else {
        return Err(EncryptionError::Provider(
            "entry with not exactly one provider".into(),
        ));
    };
    let (name, make): (&'static str, MakeCipher) = match kind.as_str() {
        "identity" => return Ok(Provider::Identity),
        "aesgcm" => ("aesgcm", Cipher::aesgcm),
        "secretbox" => ("secretbox", Cipher::secretbox),
        other => return Err(EncryptionError::Provider(other.to_owned())),
    };
    let keys: KeysFile = serde_yaml::from_value(value)?;
    if keys.keys.is_empty() {
        return Err(EncryptionError::NoKeys(name));
    }
    keys.keys
        .into_iter()
        .map(|k| {
            let cipher = base64::engine::general_purpose::STANDARD
                .decode(k.secret.trim())
                .map_err(KeyError::from)
                .and_then(|secret| make(&secret))
                .map_err(|source| EncryptionError::Key {
                    name: k.name.clone(),
                    source,
                })?;
            Ok(NamedKey {
                name: k.name,
                cipher,
            })
        })
        .collect::<Result<_, _>>()
        .map(Provider::Keys)
}
