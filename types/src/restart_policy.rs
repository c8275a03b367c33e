//! Pod and container restart policies, so "should this container run again" is answered in
//! one place for the real node, the simulated one and the Job controller.

use std::{fmt, str::FromStr};

/// A pod's `spec.restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RestartPolicy {
    /// Restart whatever the exit code (the API's default).
    #[default]
    Always,
    /// Restart only after a non-zero exit.
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// The policy a pod spec field says; absent means the API default, `Always`.
    ///
    /// # Errors
    /// When the text is not one of the three policies.
    pub fn from_field(field: Option<&str>) -> Result<Self, UnknownPolicy> {
        field.map_or(Ok(Self::Always), str::parse)
    }

    /// Whether a container that ended with `exit_code` is started again.
    #[must_use]
    pub fn restarts_after(self, exit_code: i32) -> bool {
        match self {
            Self::Always => true,
            Self::OnFailure => exit_code != 0,
            Self::Never => false,
        }
    }

    /// The API's spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::OnFailure => "OnFailure",
            Self::Never => "Never",
        }
    }
}

/// A restart policy the API does not define.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported restart policy {0:?}: want Always, OnFailure or Never")]
pub struct UnknownPolicy(pub String);

impl FromStr for RestartPolicy {
    type Err = UnknownPolicy;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "Always" => Ok(Self::Always),
            "OnFailure" => Ok(Self::OnFailure),
            "Never" => Ok(Self::Never),
            other => Err(UnknownPolicy(other.to_owned())),
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A container's own `restartPolicy` (Kubernetes 1.33): set only on init containers, where
/// `Always` makes the container a native sidecar that starts in order, keeps running beside
/// the app containers and is restarted whatever the pod's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerRestartPolicy {
    /// The container follows the pod's policy (the field is absent).
    Pod,
    /// A native sidecar: restarted always, not waited for.
    Always,
}

impl ContainerRestartPolicy {
    /// The policy a container's `restartPolicy` field says.
    ///
    /// # Errors
    /// When the field holds anything but `Always`.
    pub fn from_field(field: Option<&str>) -> Result<Self, UnknownPolicy> {
        match field {
            None => Ok(Self::Pod),
            Some("Always") => Ok(Self::Always),
            Some(other) => Err(UnknownPolicy(other.to_owned())),
        }
    }

    /// Whether an init container with this policy is a sidecar.
    #[must_use]
    pub fn is_sidecar(self) -> bool {
        self == Self::Always
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_policy_is_always() {
        assert_eq!(RestartPolicy::from_field(None), Ok(RestartPolicy::Always));
        assert_eq!(
            RestartPolicy::from_field(Some("OnFailure")),
            Ok(RestartPolicy::OnFailure)
        );
        assert!(RestartPolicy::from_field(Some("always")).is_err());
    }

    #[test]
    fn restarts_follow_the_exit_code() {
        assert!(RestartPolicy::Always.restarts_after(0));
        assert!(RestartPolicy::OnFailure.restarts_after(1));
        assert!(!RestartPolicy::OnFailure.restarts_after(0));
        assert!(!RestartPolicy::Never.restarts_after(137));
    }

    #[test]
    fn only_always_makes_a_sidecar() {
        assert!(
            !ContainerRestartPolicy::from_field(None)
                .unwrap()
                .is_sidecar()
        );
        assert!(
            ContainerRestartPolicy::from_field(Some("Always"))
                .unwrap()
                .is_sidecar()
        );
        assert!(ContainerRestartPolicy::from_field(Some("Never")).is_err());
    }

    #[test]
    fn spelling_round_trips() {
        for p in [
            RestartPolicy::Always,
            RestartPolicy::OnFailure,
            RestartPolicy::Never,
        ] {
            assert_eq!(p.to_string().parse::<RestartPolicy>(), Ok(p));
        }
    }
}
