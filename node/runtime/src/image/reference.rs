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
                match split_tag(image).1 {
                    Some(tag) if tag != "latest" => Self::IfNotPresent,
                    _ => Self::Always,
                }
            }
        }
    }
}

/// Parses a reference as docker does (distribution's `reference` grammar and
/// `splitDockerDomain`): `[domain/]path[:tag][@digest]`, Docker Hub by default.
///
/// oci-spec's own parser matches one regex whose tag part repeats a Unicode `\w` class 128
/// times; compiled, it holds about 7 MiB for the rest of the process (most of an idle node's
/// heap), so the grammar is checked here by hand and the `Reference` built from its parts.
/// Tags are ASCII, as docker's are. oci-spec takes `Name/app` as `docker.io/Name/app`, a
/// repository docker refuses (docker reads `Name` as a registry host), so its normal form
/// would not parse again; an uppercase repository is refused here with docker's message.
pub(super) fn parse(reference: &str) -> Result<Reference, ImageError> {
    let invalid = |reason: &str| ImageError::InvalidReference {
        reference: reference.to_owned(),
        reason: reason.to_owned(),
    };
    if reference.is_empty() {
        return Err(invalid("repository name must have at least one component"));
    }
    let (named, digest) = match reference.split_once('@') {
        Some((named, digest)) => (named, Some(digest)),
        None => (reference, None),
    };
    let (name, tag) = split_tag(named);
    if !is_name(name) {
        return Err(invalid("invalid reference format"));
    }
    if tag.is_some_and(|t| !is_tag(t)) {
        return Err(invalid("invalid reference format"));
    }
    if let Some(digest) = digest {
        check_digest(digest).map_err(invalid)?;
    }
    let (registry, repository) = split_domain(name);
    if repository.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(invalid(
            "repository name must not be more than 255 characters",
        ));
    }
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(invalid(&format!(
            "repository name ({repository}) must be lowercase"
        )));
    }
    Ok(match (tag, digest) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(registry, repository, tag.to_owned(), digest.to_owned())
        }
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest.to_owned()),
        (tag, None) => {
            Reference::with_tag(registry, repository, tag.unwrap_or("latest").to_owned())
        }
    })
}

/// `named` (a reference without its digest) split into name and tag: a ':' after the last
/// '/' starts the tag; before it, it is the registry's port.
fn split_tag(named: &str) -> (&str, Option<&str>) {
    let slash = named.rfind('/').map_or(0, |i| i + 1);
    match named[slash..].find(':') {
        Some(colon) => (&named[..slash + colon], Some(&named[slash + colon + 1..])),
        None => (named, None),
    }
}

/// The longest repository docker takes.
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// `[domain '/'] path-component ('/' path-component)*`: the first component may be a
/// registry host (mixed case, a port) only when more follow.
fn is_name(name: &str) -> bool {
    let mut components = name.split('/');
    let Some(first) = components.next() else {
        return false;
    };
    let rest_valid = components.clone().all(is_path_component);
    rest_valid && (is_path_component(first) || (components.next().is_some() && is_domain(first)))
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        let sep = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        match &bytes[sep..i] {
            b"." | b"_" | b"__" => {}
            s if s.iter().all(|&b| b == b'-') => {}
            _ => return false,
        }
    }
}

/// `label ('.' label)* [':' port]`, each label alphanumeric with inner hyphens.
fn is_domain(domain: &str) -> bool {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    host.split('.').all(label_ok)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && word(bytes[0])
        && bytes[1..]
            .iter()
            .all(|&b| word(b) || b == b'.' || b == b'-')
}

/// `algorithm ':' hex`, where the algorithm is one docker knows and the hex its length.
fn check_digest(digest: &str) -> Result<(), &'static str> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err("invalid reference format");
    };
    let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|part| {
        part.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
            && part.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    if !algorithm_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("invalid reference format");
    }
    let expected = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("unsupported digest algorithm"),
    };
    if hex.len() == expected {
        Ok(())
    } else {
        Err("invalid checksum digest length")
    }
}

/// docker's `splitDockerDomain`: the first component is the registry if it looks like a
/// host (a '.', a port, or `localhost`); Docker Hub otherwise, whose single-component
/// repositories live under `library/`.
fn split_domain(name: &str) -> (String, String) {
    let (domain, remainder) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, rest)
        }
        _ => ("docker.io", name),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io"
    } else {
        domain
    };
    let remainder = if domain == "docker.io" && !remainder.contains('/') {
        format!("library/{remainder}")
    } else {
        remainder.to_owned()
    };
    (domain.to_owned(), remainder)
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
        for bad in [
            "a//b",
            "a/b/",
            "/a",
            "a..b",
            "a___b",
            "a_-b",
            "-a",
            "a:",
            "a:-tag",
            "a:t\u{e9}",
            "localhost:port/a",
            "-host.example/a",
            "a@sha256:abc",
            "a@md5:0123456789abcdef0123456789abcdef",
            "a@sha256:zz",
            "a@@sha256:0",
        ] {
            assert!(normalize(bad).is_err(), "{bad}");
        }
        assert!(normalize(&format!("a:{}", "t".repeat(129))).is_err());
        assert!(normalize(&format!("a:{}", "t".repeat(128))).is_ok());
        assert!(normalize(&"a".repeat(256)).is_err());
    }

    #[test]
    fn references_take_docker_separators_hosts_and_the_legacy_hub_name() {
        for (given, normal) in [
            (
                "a__b/c-----d.e_f:T_1.x-y",
                "docker.io/a__b/c-----d.e_f:T_1.x-y",
            ),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("localhost/busybox", "localhost/busybox:latest"),
            (
                "My-Registry.example/team/app",
                "My-Registry.example/team/app:latest",
            ),
            ("localhost:5000", "docker.io/library/localhost:5000"),
        ] {
            assert_eq!(normalize(given).unwrap(), normal, "{given}");
        }
        let digest = format!("sha512:{}", "F".repeat(128));
        assert_eq!(
            normalize(&format!("r.example:5000/a/b@{digest}")).unwrap(),
            format!("r.example:5000/a/b@{digest}")
        );
    }

    #[test]
    fn parts_come_out_as_oci_spec_gives_them() {
        let digest = format!("sha256:{}", "0".repeat(64));
        for given in [
            "busybox".to_owned(),
            "docker.io/library/busybox:1".to_owned(),
            "127.0.0.1:5000/team/app:v2".to_owned(),
            format!("quay.io/a/b:t@{digest}"),
            format!("a/b@{digest}"),
        ] {
            let ours = parse(&given).unwrap();
            let theirs: Reference = given.parse().unwrap();
            assert_eq!(ours, theirs, "{given}");
        }
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
