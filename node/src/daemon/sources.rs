//! configMaps and secrets read from the API server, for environment variables, volumes and
//! image pull secrets; claims and their volumes, for claim volumes.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Secret},
};
use kube::{Api, Client};
use skiff_kubelet::pod::command::{ConfigError, Sources};

/// configMaps and secrets from the API server.
#[derive(Clone)]
pub struct ApiSources {
    client: Client,
}

impl ApiSources {
    /// Reads through `client`.
    #[must_use]
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

fn api_error(err: &kube::Error) -> ConfigError {
    ConfigError::Api(err.to_string())
}

#[async_trait]
impl Sources for ApiSources {
    async fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let Some(cm) = api.get_opt(name).await.map_err(|e| api_error(&e))? else {
            return Ok(None);
        };
        let mut data: BTreeMap<String, Vec<u8>> = cm
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        for (k, ByteString(v)) in cm.binary_data.unwrap_or_default() {
            data.insert(k, v);
        }
        Ok(Some(data))
    }

    async fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let Some(secret) = api.get_opt(name).await.map_err(|e| api_error(&e))? else {
            return Ok(None);
        };
        let mut data: BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, ByteString(v))| (k, v))
            .collect();
        for (k, v) in secret.string_data.unwrap_or_default() {
            data.insert(k, v.into_bytes());
        }
        Ok(Some(data))
    }

    async fn claim(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<(PersistentVolumeClaim, Option<PersistentVolume>)>, ConfigError> {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
        let Some(claim) = claims.get_opt(name).await.map_err(|e| api_error(&e))? else {
            return Ok(None);
        };
        let volume_name = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .unwrap_or_default();
        if volume_name.is_empty() {
            return Ok(Some((claim, None)));
        }
        let volumes: Api<PersistentVolume> = Api::all(self.client.clone());
        let volume = volumes
            .get_opt(&volume_name)
            .await
            .map_err(|e| api_error(&e))?;
        Ok(Some((claim, volume)))
    }
}

impl std::fmt::Debug for ApiSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSources").finish_non_exhaustive()
    }
}
