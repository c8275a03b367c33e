//! What a simulated node reports about itself: the capacity it was given (allocatable
//! the same), no pressure, and a machine identity that says it is simulated.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use skiff_kubelet::node::{
    capacity::Resources,
    conditions::Pressure,
    host::{Host, HostError, MachineInfo, Observed},
};

/// The kubelet version every simulated node reports.
pub const KUBELET_VERSION: &str = "v1.33.0-skiff-sim";

/// A simulated node's facts.
#[derive(Debug, Clone)]
pub(crate) struct SimHost {
    name: String,
    resources: Resources,
}

impl SimHost {
    /// Node `name` with `capacity` (quantities such as `cpu: 32`).
    pub(crate) fn new(name: &str, capacity: &BTreeMap<String, String>) -> Self {
        let quantities: BTreeMap<String, Quantity> = capacity
            .iter()
            .map(|(k, v)| (k.clone(), Quantity(v.clone())))
            .collect();
        Self {
            name: name.to_owned(),
            resources: Resources {
                capacity: quantities.clone(),
                allocatable: quantities,
            },
        }
    }
}

impl Host for SimHost {
    fn observe(&self) -> Result<Observed, HostError> {
        Ok(Observed {
            resources: self.resources.clone(),
            pressure: Pressure::default(),
        })
    }

    fn machine(&self) -> MachineInfo {
        let name = &self.name;
        MachineInfo {
            kubelet_version: KUBELET_VERSION.to_owned(),
            runtime_version: "skiff-sim://0.1.0".to_owned(),
            architecture: "amd64".to_owned(),
            machine_id: format!("skiff-sim-machine-{name}"),
            system_uuid: format!("skiff-sim-{name}"),
            boot_id: format!("skiff-sim-boot-{name}"),
            kernel_version: "simulated".to_owned(),
            os_image: "skiff simulated node".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocatable_is_the_capacity_given_and_there_is_no_pressure() {
        let host = SimHost::new(
            "sim-0",
            &BTreeMap::from([("cpu".to_owned(), "8".to_owned())]),
        );
        let observed = host.observe().unwrap();
        assert_eq!(observed.resources.capacity["cpu"].0, "8");
        assert_eq!(observed.resources.allocatable, observed.resources.capacity);
        assert_eq!(observed.pressure, Pressure::default());
        assert_eq!(host.machine().kubelet_version, KUBELET_VERSION);
    }
}
