//! configMaps and secrets read from the API server, for environment variables, volumes and
//! image pull secrets; claims and their volumes, for claim volumes; ServiceAccount tokens
//! (`TokenRequest`), for projected volumes; Services, for containers' Service variables.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::{
    ByteString,
    api::{
        authentication::v1::TokenRequest,
        core::v1::{
            ConfigMap, PersistentVolume, PersistentVolumeClaim, Secret, Service, ServiceAccount,
        },
    },
};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
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

    async fn services(&self, namespace: &str) -> Result<Vec<Service>, ConfigError> {
        let api: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| api_error(&e))?;
        Ok(list.items)
    }

    async fn service_account_token(
        &self,
        namespace: &str,
        account: &str,
        request: &TokenRequest,
    ) -> Result<TokenRequest, ConfigError> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        api.create_token_request(account, &PostParams::default(), request)
            .await
            .map_err(|e| match e {
                // The API server's own words, as the kubelet's event quotes them.
                kube::Error::Api(status) if !status.message.is_empty() => {
                    ConfigError::Api(status.message)
                }
                e => api_error(&e),
            })
    }
}

impl std::fmt::Debug for ApiSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSources").finish_non_exhaustive()
    }
}
