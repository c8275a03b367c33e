//! Picking a backend for a frontend: the scope lookup, session affinity, the random slot,
//! and the per-group counters. Shared by every program that load-balances.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use skiff_ebpf_common::{
    AffinityKey, AffinityValue, Backend, BackendKey, FrontendKey, FrontendValue,
    service::{FLAG_TWO_SCOPES, SCOPE_EXTERNAL, SCOPE_INTERNAL},
};

use crate::maps::{AFFINITY, BACKENDS, COUNTERS, FRONTENDS};

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// Why no backend was chosen.
pub enum Miss {
    /// Not a frontend: leave the traffic alone.
    NotAService,
    /// A frontend without a usable backend: refuse at once.
    NoBackend,
}

/// The frontend for `address:port` (network byte order) and `protocol`; `internal` traffic
/// (it started on this node) sees the internal view where the Service has two.
#[inline(always)]
pub fn frontend(address: u32, port: u16, protocol: u8, internal: bool) -> Option<FrontendValue> {
    let mut key = FrontendKey {
        address,
        port,
        protocol,
        scope: SCOPE_EXTERNAL,
    };
    // SAFETY: copied out at once; the map is not preallocated, so the element is not
    // reused under the reader (see skiff_ebpf_common::service).
    let external = *unsafe { FRONTENDS.get(&key) }?;
    if !internal || external.flags & FLAG_TWO_SCOPES == 0 {
        return Some(external);
    }
    key.scope = SCOPE_INTERNAL;
    // SAFETY: as above.
    match unsafe { FRONTENDS.get(&key) } {
        Some(value) => Some(*value),
        // User space writes the internal twin before flagging the external entry; a miss
        // means it is being removed: the external view is the best answer left.
        None => Some(external),
    }
}

/// A backend of `frontend` for `client` (`(id, CLIENT_*)`, used for session affinity).
#[inline(always)]
pub fn pick(frontend: &FrontendValue, client: u64, origin: u8) -> Result<Backend, Miss> {
    pick_slot(frontend, client, origin).map(|(_, backend)| backend)
}

/// [`pick`], with the slot the backend is in (connection tracking keeps it to see later
/// whether the slot still holds the backend).
#[inline(always)]
pub fn pick_slot(
    frontend: &FrontendValue,
    client: u64,
    origin: u8,
) -> Result<(u32, Backend), Miss> {
    let group = frontend.group;
    if frontend.count == 0 {
        count(group, false);
        return Err(Miss::NoBackend);
    }
    let affinity_key = AffinityKey {
        client,
        group,
        origin,
        pad: [0; 3],
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if frontend.affinity_timeout != 0
        && let Some(found) = affine(frontend, &affinity_key, now)
    {
        count(group, true);
        return Ok(found);
    }
    // SAFETY: bpf_get_prandom_u32 has no preconditions.
    let slot = unsafe { bpf_get_prandom_u32() } % frontend.count;
    // SAFETY: copied out at once (no preallocation, see `frontend`).
    let backend = *unsafe { BACKENDS.get(&BackendKey { group, slot }) }.ok_or(Miss::NoBackend)?;
    if frontend.affinity_timeout != 0 {
        let value = AffinityValue {
            last_used_ns: now,
            slot,
            address: backend.address,
            port: backend.port,
            pad: [0; 6],
        };
        // A full LRU evicts an old entry; a failure only costs this client its affinity.
        let _ = AFFINITY.insert(&affinity_key, &value, 0);
    }
    count(group, true);
    Ok((slot, backend))
}

/// The backend `key`'s client used last, while the timeout has not passed and its slot
/// still holds it, with that slot; refreshes the entry's time.
#[inline(always)]
fn affine(frontend: &FrontendValue, key: &AffinityKey, now: u64) -> Option<(u32, Backend)> {
    let entry = AFFINITY.get_ptr_mut(key)?;
    // SAFETY: the pointer is the map's element for this key, valid during the program; a
    // concurrent update of the same client's entry at worst loses one refresh.
    let seen = unsafe { *entry };
    let timeout = u64::from(frontend.affinity_timeout) * NANOS_PER_SECOND;
    if now.wrapping_sub(seen.last_used_ns) > timeout || seen.slot >= frontend.count {
        return None;
    }
    let slot_key = BackendKey {
        group: key.group,
        slot: seen.slot,
    };
    // SAFETY: copied out at once (no preallocation).
    let backend = *unsafe { BACKENDS.get(&slot_key) }?;
    if backend.address != seen.address || backend.port != seen.port {
        return None;
    }
    // SAFETY: as above; a plain store of the refreshed time.
    unsafe { (*entry).last_used_ns = now };
    Some((seen.slot, backend))
}

/// Adds one translation or refusal to `group`'s counters on this CPU.
#[inline(always)]
fn count(group: u32, translated: bool) {
    if let Some(counters) = COUNTERS.get_ptr_mut(&group) {
        // SAFETY: the per-CPU element of this CPU; programs run with migration disabled,
        // so no other program writes it meanwhile.
        unsafe {
            if translated {
                (*counters).translations += 1;
            } else {
                (*counters).refusals += 1;
            }
        }
    }
}
