//! The maps every program of the object shares; their key and value types and the rules
//! for reading them are in `skiff_ebpf_common`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuHashMap},
};
use skiff_ebpf_common::{
    AffinityKey, AffinityValue, Backend, BackendKey, Config, Counters, CtKey, CtValue, FrontendKey,
    FrontendValue, SockRevNatKey, SockRevNatValue, Uplink,
    nat::{MAX_CT, MAX_UPLINKS},
    service::{MAX_AFFINITY, MAX_BACKENDS, MAX_FRONTENDS, MAX_GROUPS, NO_PREALLOC},
    socket::MAX_SOCK_REV_NAT,
};

#[map(name = "SKIFF_FRONTENDS")]
pub static FRONTENDS: HashMap<FrontendKey, FrontendValue> =
    HashMap::with_max_entries(MAX_FRONTENDS, NO_PREALLOC);

#[map(name = "SKIFF_BACKENDS")]
pub static BACKENDS: HashMap<BackendKey, Backend> =
    HashMap::with_max_entries(MAX_BACKENDS, NO_PREALLOC);

#[map(name = "SKIFF_AFFINITY")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(MAX_AFFINITY, 0);

#[map(name = "SKIFF_COUNTERS")]
pub static COUNTERS: PerCpuHashMap<u32, Counters> =
    PerCpuHashMap::with_max_entries(MAX_GROUPS, NO_PREALLOC);

#[map(name = "SKIFF_CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "SKIFF_SOCK_RNAT")]
pub static SOCK_REV_NAT: LruHashMap<SockRevNatKey, SockRevNatValue> =
    LruHashMap::with_max_entries(MAX_SOCK_REV_NAT, 0);

#[map(name = "SKIFF_UPLINKS")]
pub static UPLINKS: HashMap<u32, Uplink> = HashMap::with_max_entries(MAX_UPLINKS, 0);

#[map(name = "SKIFF_CT")]
pub static CT: LruHashMap<CtKey, CtValue> = LruHashMap::with_max_entries(MAX_CT, 0);
