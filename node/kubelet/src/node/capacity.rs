//! The Node's `capacity` and `allocatable`: what the host has, minus what the operator
//! reserves for the system and what eviction keeps free, as the kubelet computes them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::host::Reading;

/// What the node keeps back from pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservations {
    /// CPU reserved for the system and the daemon (`--system-reserved-cpu`), millicores.
    pub cpu_millis: u64,
    /// Memory reserved for the system and the daemon, bytes.
    pub memory: u64,
    /// Ephemeral storage reserved, bytes.
    pub ephemeral_storage: u64,
    /// The hard eviction threshold for `memory.available`, bytes (kubelet default 100Mi).
    pub eviction_memory: u64,
    /// The hard eviction threshold for `nodefs.available`, percent (kubelet default 10).
    pub eviction_nodefs_percent: u64,
    /// Pods the node takes (`--max-pods`).
    pub max_pods: u64,
}

impl Default for Reservations {
    fn default() -> Self {
        Self {
            cpu_millis: 0,
            memory: 0,
            ephemeral_storage: 0,
            eviction_memory: 100 * 1024 * 1024,
            eviction_nodefs_percent: 10,
            max_pods: 110,
        }
    }
}

/// `capacity` and `allocatable` as quantities.
#[derive(Clone, Debug, PartialEq)]
pub struct Resources {
    /// `status.capacity`.
    pub capacity: BTreeMap<String, Quantity>,
    /// `status.allocatable`.
    pub allocatable: BTreeMap<String, Quantity>,
}

fn quantities(cpu_millis: u64, memory: u64, storage: u64, pods: u64) -> BTreeMap<String, Quantity> {
    let cpu = if cpu_millis.is_multiple_of(1000) {
        (cpu_millis / 1000).to_string()
    } else {
        format!("{cpu_millis}m")
    };
    BTreeMap::from([
        ("cpu".to_owned(), Quantity(cpu)),
        (
            "memory".to_owned(),
            Quantity(format!("{}Ki", memory / 1024)),
        ),
        (
            "ephemeral-storage".to_owned(),
            Quantity(format!("{}Ki", storage / 1024)),
        ),
        ("pods".to_owned(), Quantity(pods.to_string())),
    ])
}

/// The node's resources from one reading of the host.
#[must_use]
pub fn resources(reading: &Reading, reserved: &Reservations) -> Resources {
    let cpu = reading.cpus * 1000;
    let storage_eviction = reading.fs_total / 100 * reserved.eviction_nodefs_percent;
    Resources {
        capacity: quantities(
            cpu,
            reading.memory_total,
            reading.fs_total,
            reserved.max_pods,
        ),
        allocatable: quantities(
            cpu.saturating_sub(reserved.cpu_millis),
            reading
                .memory_total
                .saturating_sub(reserved.memory)
                .saturating_sub(reserved.eviction_memory),
            reading
                .fs_total
                .saturating_sub(reserved.ephemeral_storage)
                .saturating_sub(storage_eviction),
            reserved.max_pods,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1024 * 1024 * 1024;

    fn reading() -> Reading {
        Reading {
            cpus: 4,
            memory_total: 8 * GIB,
            memory_available: 6 * GIB,
            fs_total: 100 * GIB,
            fs_available: 50 * GIB,
            pids: 300,
            pid_max: 4_194_304,
        }
    }

    #[test]
    fn allocatable_is_capacity_minus_reservations_and_eviction_thresholds() {
        let reserved = Reservations {
            cpu_millis: 500,
            memory: GIB,
            ..Reservations::default()
        };
        let r = resources(&reading(), &reserved);
        assert_eq!(r.capacity["cpu"].0, "4");
        assert_eq!(r.capacity["memory"].0, format!("{}Ki", 8 * GIB / 1024));
        assert_eq!(r.capacity["pods"].0, "110");
        assert_eq!(r.allocatable["cpu"].0, "3500m");
        assert_eq!(
            r.allocatable["memory"].0,
            format!("{}Ki", (7 * GIB - 100 * 1024 * 1024) / 1024)
        );
        assert_eq!(
            r.allocatable["ephemeral-storage"].0,
            format!("{}Ki", 90 * GIB / 1024)
        );
    }

    #[test]
    fn reservations_larger_than_the_host_leave_zero_not_a_wrap() {
        let reserved = Reservations {
            cpu_millis: 10_000,
            memory: 64 * GIB,
            ..Reservations::default()
        };
        let r = resources(&reading(), &reserved);
        assert_eq!(r.allocatable["cpu"].0, "0");
        assert_eq!(r.allocatable["memory"].0, "0Ki");
    }
}
