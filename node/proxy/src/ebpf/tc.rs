//! The TC programs on the node's uplinks: attached through TCX links, one per interface and
//! direction, and only to the interfaces the node is told to use; each interface's address
//! (the SNAT source) is written to the uplink map before its programs attach. With a pin
//! directory the links are pinned beside the socket hooks' (`links/tc_<direction>_<ifindex>`)
//! and replaced by rename like them, so a restarted node never leaves an uplink untranslated;
//! links and uplink entries of interfaces no longer named are removed.

use std::{collections::BTreeSet, net::Ipv4Addr, path::PathBuf};

use aya::{
    Ebpf,
    maps::{HashMap, MapData, MapError},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        links::{FdLink, LinkError, PinnedLink},
        tc::TcAttachOptions,
    },
};
use skiff_ebpf_common::{Uplink as UplinkEntry, nat::UPLINKS_MAP};

use super::pins::{PinDir, PinError};

/// The TC programs, the hook each attaches to, and the word naming it in pins.
pub const TC_PROGRAMS: [(&str, TcAttachType, &str); 2] = [
    ("uplink_ingress", TcAttachType::Ingress, "ingress"),
    ("uplink_egress", TcAttachType::Egress, "egress"),
];

/// Pins of TC links start with this.
const PIN_PREFIX: &str = "tc_";

/// An interface the node receives Service traffic on from outside, and its address there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    /// The interface name in the node's network namespace.
    pub interface: String,
    /// The node's IPv4 address on it: NodePort traffic SNAT-ed to a backend on another node
    /// leaves with it.
    pub address: Ipv4Addr,
}

/// Failures attaching the TC programs.
#[derive(Debug, thiserror::Error)]
pub enum TcError {
    /// The interface does not exist in this network namespace.
    #[error("uplink {interface}")]
    Interface {
        /// The name given.
        interface: String,
        /// What `if_nametoindex` said.
        #[source]
        source: nix::Error,
    },
    /// A program is missing from the object.
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    /// The verifier or the attach call refused a program.
    #[error(
        "program {name} on {interface} (TC programs attach through TCX links: Linux 6.6+ with \
         CONFIG_NET_XGRESS)"
    )]
    Program {
        /// Which program.
        name: &'static str,
        /// Which interface; empty while loading.
        interface: String,
        /// What went wrong.
        #[source]
        source: ProgramError,
    },
    /// A link could not be taken over from aya.
    #[error("link of program {name}")]
    Link {
        /// Which program.
        name: &'static str,
        /// What went wrong.
        #[source]
        source: LinkError,
    },
    /// The uplink map could not be opened or written.
    #[error("map {UPLINKS_MAP}")]
    Map(#[source] MapError),
    /// A link could not be pinned or unpinned.
    #[error(transparent)]
    Pins(#[from] PinError),
    /// A stale link pin could not be removed.
    #[error("removing the stale link pin {path}")]
    Unpin {
        /// The pin.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The pin name of the link of the program for `direction` on interface `ifindex`.
#[must_use]
pub fn link_pin_name(direction: &str, ifindex: u32) -> String {
    format!("{PIN_PREFIX}{direction}_{ifindex}")
}

/// Attaches the TC programs to `uplinks` (none: only removes earlier runs' TC links) and
/// returns the links nobody pinned (dropping them detaches the programs).
///
/// # Errors
/// When an interface is missing, the kernel refuses a program, or a pin cannot be written.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    pins: Option<&PinDir>,
    uplinks: &[Uplink],
) -> Result<Vec<FdLink>, TcError> {
    let mut wanted = Vec::with_capacity(uplinks.len());
    for uplink in uplinks {
        let ifindex =
            nix::net::if_::if_nametoindex(uplink.interface.as_str()).map_err(|source| {
                TcError::Interface {
                    interface: uplink.interface.clone(),
                    source,
                }
            })?;
        wanted.push((ifindex, uplink));
    }
    let indexes: BTreeSet<u32> = wanted.iter().map(|(i, _)| *i).collect();
    {
        let mut map: HashMap<&mut MapData, u32, UplinkEntry> = ebpf
            .map_mut(UPLINKS_MAP)
            .ok_or(TcError::Map(MapError::InvalidName {
                name: UPLINKS_MAP.to_owned(),
            }))?
            .try_into()
            .map_err(TcError::Map)?;
        // The address first: a program attached to an interface without an entry lets its
        // traffic pass untranslated.
        for (ifindex, uplink) in &wanted {
            let entry = UplinkEntry {
                address: u32::from_ne_bytes(uplink.address.octets()),
                flags: 0,
            };
            map.insert(ifindex, entry, 0).map_err(TcError::Map)?;
        }
        let stale: Vec<u32> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|i| !indexes.contains(i))
            .collect();
        for ifindex in stale {
            match map.remove(&ifindex) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(err) => return Err(TcError::Map(err)),
            }
        }
    }
    let mut links = Vec::new();
    let mut pinned = BTreeSet::new();
    if !wanted.is_empty() {
        for (name, attach_type, direction) in TC_PROGRAMS {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(TcError::MissingProgram(name))?
                .try_into()
                .map_err(|source| program_err(name, "", source))?;
            program
                .load()
                .map_err(|source| program_err(name, "", source))?;
            for (ifindex, uplink) in &wanted {
                let id = program
                    .attach_with_options(
                        &uplink.interface,
                        attach_type,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(|source| program_err(name, &uplink.interface, source))?;
                let link = program
                    .take_link(id)
                    .map_err(|source| program_err(name, &uplink.interface, source))?;
                let link =
                    FdLink::try_from(link).map_err(|source| TcError::Link { name, source })?;
                match pins {
                    Some(pins) => {
                        let pin = link_pin_name(direction, *ifindex);
                        pins.replace_link(&pin, link)?;
                        pinned.insert(pin);
                    }
                    None => links.push(link),
                }
            }
        }
    }
    if let Some(pins) = pins {
        remove_stale_links(pins, &pinned)?;
    }
    Ok(links)
}

fn program_err(name: &'static str, interface: &str, source: ProgramError) -> TcError {
    TcError::Program {
        name,
        interface: interface.to_owned(),
        source,
    }
}

/// Unpins (and so detaches) the TC links of interfaces no longer named.
fn remove_stale_links(pins: &PinDir, keep: &BTreeSet<String>) -> Result<(), TcError> {
    let dir = pins.root().join("links");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(PIN_PREFIX) || keep.contains(&name) {
            continue;
        }
        let path = entry.path();
        let unpin_err = |source: Box<dyn std::error::Error + Send + Sync>| TcError::Unpin {
            path: path.clone(),
            source,
        };
        match PinnedLink::from_pin(&path) {
            Ok(link) => {
                link.unpin().map_err(|e| unpin_err(Box::new(e)))?;
            }
            Err(_) => std::fs::remove_file(&path).map_err(|e| unpin_err(Box::new(e)))?,
        }
        tracing::info!(pin = %path.display(), "TC link of a former uplink removed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pins_are_named_by_direction_and_ifindex_without_dots() {
        let name = link_pin_name("ingress", 7);
        assert_eq!(name, "tc_ingress_7");
        assert!(!name.contains('.'), "bpffs refuses dots");
        assert!(name.starts_with(PIN_PREFIX));
    }
}
