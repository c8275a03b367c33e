//! The node runtime's container IDs: `<pod uid>-<container name>-<run>`, shown in pod
//! status as `skiff://<id>`. The pod UID leads so a restarted node can tell which pod owns
//! a container it finds on disk.

use std::{fmt, str::FromStr};

/// The scheme in `containerStatuses[].containerID`.
pub const SCHEME: &str = "skiff://";

/// Why a text is not a container ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerIdError {
    /// Not `<uid>-<name>-<run>`.
    #[error("invalid container id {0:?}: want <pod uid>-<container name>-<run>")]
    Malformed(String),
}

/// One run of one container of one pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId {
    /// The pod's UID.
    pub pod_uid: String,
    /// The container's name in the pod spec.
    pub container: String,
    /// Which run (0 for the first, one more per restart).
    pub run: u32,
}

impl ContainerId {
    /// The ID of run `run` of `container` in the pod with `pod_uid`.
    #[must_use]
    pub fn new(pod_uid: &str, container: &str, run: u32) -> Self {
        Self {
            pod_uid: pod_uid.to_owned(),
            container: container.to_owned(),
            run,
        }
    }

    /// What pod status shows: `skiff://<id>`.
    #[must_use]
    pub fn status_form(&self) -> String {
        format!("{SCHEME}{self}")
    }

    /// The pod UID at the start of an ID found on disk, without parsing the rest (UIDs
    /// are 36 characters; shorter IDs are their own owner, so they match no pod).
    #[must_use]
    pub fn owner_of(id: &str) -> &str {
        id.get(..UID_LEN).unwrap_or(id)
    }
}

/// Length of a Kubernetes UID (a UUID in text form).
const UID_LEN: usize = 36;

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.pod_uid, self.container, self.run)
    }
}

impl FromStr for ContainerId {
    type Err = ContainerIdError;

    /// Parses `<uid>-<name>-<run>` or its `skiff://` form. Container names are DNS labels
    /// and may hold dashes, so the UID is the first 36 characters and the run the last
    /// dash-separated number.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = || ContainerIdError::Malformed(text.to_owned());
        let id = text.strip_prefix(SCHEME).unwrap_or(text);
        let (rest, run) = id.rsplit_once('-').ok_or_else(malformed)?;
        let run: u32 = (!run.is_empty() && run.bytes().all(|b| b.is_ascii_digit()))
            .then(|| run.parse().ok())
            .flatten()
            .ok_or_else(malformed)?;
        let uid = rest.get(..UID_LEN).ok_or_else(malformed)?;
        let container = rest
            .get(UID_LEN..)
            .and_then(|c| c.strip_prefix('-'))
            .filter(|c| !c.is_empty())
            .ok_or_else(malformed)?;
        Ok(Self::new(uid, container, run))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b5c2f5e-7a43-4d7f-9a65-0c3c3d9b1e21";

    #[test]
    fn round_trips_with_dashes_in_the_name() {
        let id = ContainerId::new(UID, "log-shipper", 3);
        let text = id.to_string();
        assert_eq!(text, format!("{UID}-log-shipper-3"));
        assert_eq!(text.parse::<ContainerId>(), Ok(id.clone()));
        assert_eq!(id.status_form().parse::<ContainerId>(), Ok(id));
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "abc",
            &format!("{UID}-app"),
            &format!("{UID}--1"),
            &format!("{UID}-app-x"),
        ] {
            assert!(bad.parse::<ContainerId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn owner_is_the_leading_uid() {
        assert_eq!(ContainerId::owner_of(&format!("{UID}-app-0")), UID);
        assert_eq!(ContainerId::owner_of("short"), "short");
    }
}
