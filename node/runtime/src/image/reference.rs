//! Image references the way docker and the kubelet read them: `busybox` is
//! `docker.io/library/busybox:latest`, and the pull policy defaults by tag.

use oci_client::Reference;

use super::ImageError;

/// When the node pulls an image (`imagePullPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    /// Ask the registry every time; blobs already stored are not fetched again.
    Always,
    /// Pull only if the reference is not stored.
    IfNotPresent,
    /// Never pull; a missing image is an error.
    Never,
}

impl PullPolicy {
    /// The policy a container spec asks for, or the Kubernetes default: `Always` for
    /// `:latest` or no tag, otherwise `IfNotPresent`.
    #[must_use]
    pub fn from_spec(policy: Option<&str>, image: &str) -> Self {
        match policy {
            Some("Always") => Self::Always,
            Some("IfNotPresent") => Self::IfNotPresent,
            Some("Never") => Self::Never,
            _ => {
                if image.contains('@') {
                    return Self::IfNotPresent;
                }
                // A ':' after the last '/' is a tag; before it, it is a registry port.
                let last = image.rsplit('/').next().unwrap_or(image);
                match last.split_once(':') {
                    Some((_, tag)) if tag != "latest" => Self::IfNotPresent,
                    _ => Self::Always,
                }
            }
        }
    }
}

/// Parses a reference as docker does.
///
/// oci-spec takes `Name/app` as `docker.io/Name/app`, a repository docker refuses (docker
/// reads `Name` as a registry host), so its normal form would not parse again; an uppercase
/// repository is refused here with docker's message.
pub(super) fn parse(reference: &str) -> Result<Reference, ImageError> {
    let invalid = |reason: String| ImageError::InvalidReference {
        reference: reference.to_owned(),
        reason,
    };
    let parsed = reference
        .parse::<Reference>()
        .map_err(|e| invalid(e.to_string()))?;
    if parsed.repository().bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(invalid(format!(
            "repository name ({}) must be lowercase",
            parsed.repository()
        )));
    }
    Ok(parsed)
}

/// The normalized form of a reference: registry, repository and tag (or digest) spelled
/// out, e.g. `busybox` -> `docker.io/library/busybox:latest`.
///
/// # Errors
/// If the reference does not parse.
pub fn normalize(reference: &str) -> Result<String, ImageError> {
    let parsed = parse(reference)?;
    // A tag next to a digest is informational only; the digest names the image.
    Ok(match parsed.digest() {
        Some(digest) => format!("{}/{}@{digest}", parsed.registry(), parsed.repository()),
        None => parsed.whole(),
    })
}

/// `<registry>/<repository>`, the prefix of a repo digest.
pub(super) fn repository(reference: &Reference) -> String {
    format!("{}/{}", reference.registry(), reference.repository())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uppercase_repository_is_refused_so_every_normal_form_parses_again() {
        assert!(normalize("Team/app").is_err());
        assert!(normalize("docker.io/Team/app").is_err());
        for reference in [
            "busybox",
            "Registry.example:5000/team/app:V1",
            "localhost/a/b",
        ] {
            let once = normalize(reference).unwrap();
            assert_eq!(normalize(&once).unwrap(), once, "{reference}");
        }
    }

    #[test]
    fn short_names_normalize_to_docker_hub_library() {
        assert_eq!(
            normalize("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize("busybox:1.36").unwrap(),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(
            normalize("someone/app").unwrap(),
            "docker.io/someone/app:latest"
        );
    }

    #[test]
    fn registry_with_port_keeps_its_name_and_tag() {
        assert_eq!(
            normalize("127.0.0.1:5000/busybox:1").unwrap(),
            "127.0.0.1:5000/busybox:1"
        );
        assert_eq!(
            normalize("localhost:5000/a/b").unwrap(),
            "localhost:5000/a/b:latest"
        );
    }

    #[test]
    fn digest_references_drop_the_tag() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            normalize(&format!("busybox:1@{digest}")).unwrap(),
            format!("docker.io/library/busybox@{digest}")
        );
    }

    #[test]
    fn invalid_references_are_rejected() {
        assert!(normalize("Busybox").is_err());
        assert!(normalize("").is_err());
    }

    #[test]
    fn pull_policy_defaults_follow_the_tag() {
        assert_eq!(PullPolicy::from_spec(None, "busybox"), PullPolicy::Always);
        assert_eq!(
            PullPolicy::from_spec(None, "busybox:latest"),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::from_spec(None, "busybox:1.36"),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::from_spec(None, "127.0.0.1:5000/busybox"),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::from_spec(None, "127.0.0.1:5000/busybox:1"),
            PullPolicy::IfNotPresent
        );
        let digest = format!("busybox@sha256:{}", "a".repeat(64));
        assert_eq!(
            PullPolicy::from_spec(None, &digest),
            PullPolicy::IfNotPresent
        );
    }

    #[test]
    fn explicit_pull_policy_wins() {
        assert_eq!(
            PullPolicy::from_spec(Some("Never"), "busybox"),
            PullPolicy::Never
        );
        assert_eq!(
            PullPolicy::from_spec(Some("Always"), "busybox:1"),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::from_spec(Some("IfNotPresent"), "busybox"),
            PullPolicy::IfNotPresent
        );
    }
}
