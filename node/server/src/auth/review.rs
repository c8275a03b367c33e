//! The API server as the node endpoint's authorizer: asks the API server with a `SubjectAccessReview`
//! whether the caller may use `nodes/<subresource>` of this node, as the kubelet's webhook
//! authorizer does.

use async_trait::async_trait;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::{Api, api::PostParams};

use super::{Attributes, Caller, ReviewError, Reviewer};

/// Reviews through the API server as the client's identity (the node's own).
pub struct ApiReviewer {
    client: kube::Client,
    node: String,
}

impl std::fmt::Debug for ApiReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiReviewer")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl ApiReviewer {
    /// Reviews about node `node` through `client`.
    #[must_use]
    pub fn new(client: kube::Client, node: String) -> Self {
        Self { client, node }
    }
}

/// The review of `caller` doing `attrs` on node `node`.
fn review(node: &str, caller: &Caller, attrs: &Attributes) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(caller.user.clone()),
            groups: Some(caller.groups.clone()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(attrs.verb.to_owned()),
                resource: Some("nodes".to_owned()),
                subresource: Some(attrs.subresource.to_owned()),
                name: Some(node.to_owned()),
                version: Some("v1".to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    }
}

#[async_trait]
impl Reviewer for ApiReviewer {
    async fn allowed(&self, caller: &Caller, attrs: &Attributes) -> Result<bool, ReviewError> {
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review(&self.node, caller, attrs))
            .await
            .map_err(|e| ReviewError::Unavailable(e.to_string()))?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_review_names_the_node_and_its_subresource() {
        let caller = Caller {
            user: "alice".into(),
            groups: vec!["devs".into()],
        };
        let attrs = Attributes::of(&http::Method::POST, "/exec/ns/p/c");
        let review = review("n1", &caller, &attrs);
        let ra = review.spec.resource_attributes.unwrap();
        assert_eq!(review.spec.user.as_deref(), Some("alice"));
        assert_eq!(
            (
                ra.verb.as_deref(),
                ra.resource.as_deref(),
                ra.subresource.as_deref(),
                ra.name.as_deref()
            ),
            (Some("create"), Some("nodes"), Some("proxy"), Some("n1"))
        );
    }
}
