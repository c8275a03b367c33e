//! The connection to the API server (kubeconfig like kubectl) and discovery of the kinds it
//! serves, so names like `deploy`, `pods` or `deployment.apps` resolve.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::Value;

/// A served kind, from discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployment.apps` / `service`, as kubectl names objects in its output.
    pub fn display(&self) -> String {
        let kind = self.kind.to_ascii_lowercase();
        if self.group.is_empty() {
            kind
        } else {
            format!("{kind}.{}", self.group)
        }
    }

    /// The collection path in `namespace` (ignored for cluster-scoped kinds; `None` = all).
    pub fn path(&self, namespace: Option<&str>, name: Option<&str>) -> String {
        let base = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        let mut path = match namespace {
            Some(ns) if self.namespaced => format!("{base}/namespaces/{ns}/{}", self.plural),
            _ => format!("{base}/{}", self.plural),
        };
        if let Some(name) = name {
            path.push('/');
            path.push_str(name);
        }
        path
    }
}

/// The node client presenting the kubeconfig's client certificate (none without one: the
/// node then answers 401).
fn node_client(config: &Config) -> Result<skiff_api::kubelet_client::KubeletClient> {
    use base64::{Engine, engine::general_purpose::STANDARD};
    let auth = &config.auth_info;
    let read = |data: Option<&str>, file: Option<&String>| -> Result<Option<String>> {
        if let Some(data) = data {
            let bytes = STANDARD
                .decode(data.trim())
                .context("kubeconfig certificate data")?;
            return Ok(Some(String::from_utf8_lossy(&bytes).into_owned()));
        }
        file.map(|f| std::fs::read_to_string(f).with_context(|| format!("reading {f}")))
            .transpose()
    };
    let key_data = auth.client_key_data.as_ref().map(|k| {
        use secrecy::ExposeSecret;
        k.expose_secret().to_owned()
    });
    let cert = read(
        auth.client_certificate_data.as_deref(),
        auth.client_certificate.as_ref(),
    )?;
    let key = read(key_data.as_deref(), auth.client_key.as_ref())?;
    Ok(match (cert, key) {
        (Some(cert), Some(key)) => {
            skiff_api::kubelet_client::KubeletClient::with_identity(&cert, &key)?
        }
        _ => skiff_api::kubelet_client::KubeletClient::default(),
    })
}

/// A client plus what discovery told it.
pub struct Connection {
    pub client: Client,
    /// How node endpoints are reached directly (`ctl image`): TLS with the kubeconfig's
    /// client certificate, which the node authorizes through the API server.
    pub nodes: skiff_api::kubelet_client::KubeletClient,
    pub namespace: String,
    kinds: Vec<Resource>,
}

impl Connection {
    pub async fn open(
        kubeconfig: Option<&Path>,
        context: Option<&str>,
        server: Option<&str>,
        namespace: Option<&str>,
    ) -> Result<Self> {
        let options = KubeConfigOptions {
            context: context.map(str::to_owned),
            ..KubeConfigOptions::default()
        };
        let mut config = match (kubeconfig, server) {
            (Some(path), _) => {
                let file = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                Config::from_custom_kubeconfig(file, &options).await?
            }
            (None, Some(url)) => Config::new(url.parse().context("--server is not a URL")?),
            (None, None) => Config::from_kubeconfig(&options)
                .await
                .context("no kubeconfig found: pass --kubeconfig or --server")?,
        };
        if let Some(url) = server {
            config.cluster_url = url.parse().context("--server is not a URL")?;
        }
        let namespace = namespace.map_or_else(|| config.default_namespace.clone(), str::to_owned);
        let nodes = node_client(&config)?;
        let client = Client::try_from(config)?;
        let kinds = discover(&client).await?;
        Ok(Self {
            client,
            nodes,
            namespace,
            kinds,
        })
    }

    /// Resolves `pods`, `po`, `pod`, `Pod`, `deployment.apps`, `deployments.v1.apps`.
    pub fn resolve(&self, name: &str) -> Result<&Resource> {
        let lower = name.to_ascii_lowercase();
        let (base, group) = match lower.split_once('.') {
            Some((b, g)) => (b.to_owned(), Some(g.to_owned())),
            None => (lower.clone(), None),
        };
        self.kinds
            .iter()
            .find(|k| {
                let names = k.plural == base
                    || k.singular == base
                    || k.kind.to_ascii_lowercase() == base
                    || k.short_names.contains(&base);
                let group_ok = group
                    .as_deref()
                    .is_none_or(|g| g == k.group || g == format!("{}.{}", k.version, k.group));
                names && group_ok
            })
            .ok_or_else(|| anyhow!("the server doesn't have a resource type \"{name}\""))
    }

    /// The kind of a manifest object.
    pub fn for_object(&self, obj: &Value) -> Result<&Resource> {
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        self.kinds
            .iter()
            .find(|k| k.api_version() == api_version && k.kind == kind)
            .ok_or_else(|| {
                anyhow!(
                    "resource mapping not found for kind \"{kind}\" in version \"{api_version}\""
                )
            })
    }
}

async fn get_json(client: &Client, path: &str) -> Result<Value> {
    let req = http::Request::get(path).body(Vec::new())?;
    Ok(client.request::<Value>(req).await?)
}

async fn discover(client: &Client) -> Result<Vec<Resource>> {
    let mut group_versions = vec![(String::new(), "v1".to_owned())];
    let apis = get_json(client, "/apis").await?;
    for g in apis["groups"].as_array().into_iter().flatten() {
        let name = g["name"].as_str().unwrap_or_default().to_owned();
        if let Some(v) = g["preferredVersion"]["version"].as_str() {
            group_versions.push((name, v.to_owned()));
        }
    }
    let mut kinds = Vec::new();
    for (group, version) in group_versions {
        let path = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let list = get_json(client, &path).await?;
        for r in list["resources"].as_array().into_iter().flatten() {
            let plural = r["name"].as_str().unwrap_or_default();
            if plural.contains('/') {
                continue;
            }
            kinds.push(Resource {
                group: group.clone(),
                version: version.clone(),
                kind: r["kind"].as_str().unwrap_or_default().to_owned(),
                plural: plural.to_owned(),
                singular: r["singularName"].as_str().unwrap_or_default().to_owned(),
                namespaced: r["namespaced"].as_bool().unwrap_or(false),
                short_names: r["shortNames"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect(),
            });
        }
    }
    if kinds.is_empty() {
        bail!("the server lists no resources");
    }
    Ok(kinds)
}

/// The server's message for a failed request, kubectl-style.
pub fn server_error(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => {
            format!("Error from server ({}): {}", status.reason, status.message)
        }
        other => other.to_string(),
    }
}

/// Whether the error is the server's 404.
pub fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(kinds: Vec<Resource>) -> Connection {
        let config = Config::new("http://127.0.0.1:1".parse().unwrap());
        Connection {
            client: Client::try_from(config).unwrap(),
            nodes: skiff_api::kubelet_client::KubeletClient::default(),
            namespace: "default".into(),
            kinds,
        }
    }

    fn deployments() -> Resource {
        Resource {
            group: "apps".into(),
            version: "v1".into(),
            kind: "Deployment".into(),
            plural: "deployments".into(),
            singular: "deployment".into(),
            namespaced: true,
            short_names: vec!["deploy".into()],
        }
    }

    #[tokio::test]
    async fn kinds_resolve_by_plural_singular_short_and_group() {
        let c = conn(vec![deployments()]);
        for name in [
            "deployments",
            "deployment",
            "deploy",
            "Deployment",
            "deployment.apps",
            "deployments.v1.apps",
        ] {
            assert_eq!(c.resolve(name).unwrap().kind, "Deployment", "{name}");
        }
        assert!(c.resolve("deployment.batch").is_err());
        assert!(c.resolve("widgets").is_err());
    }

    #[test]
    fn paths_and_display_names_follow_kubectl() {
        let d = deployments();
        assert_eq!(
            d.path(Some("demo"), Some("web")),
            "/apis/apps/v1/namespaces/demo/deployments/web"
        );
        assert_eq!(d.path(None, None), "/apis/apps/v1/deployments");
        assert_eq!(d.display(), "deployment.apps");
    }
}
