//! What a pod asks for and what a node offers, in the units the fit check compares.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Container, Pod},
    apimachinery::pkg::api::resource::Quantity,
};
use skiff_machinery::quantity::parse_milli;

/// A bundle of resources, every amount in milli-units.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in millicores.
    pub cpu: i64,
    /// Memory in milli-bytes.
    pub memory: i64,
    /// Ephemeral storage in milli-bytes.
    pub ephemeral: i64,
    /// Pod slots (one per pod, in units not milli-units).
    pub pods: i64,
    /// Extended resources (`example.com/gpu`), milli-units.
    pub extended: BTreeMap<String, i64>,
}

impl Resources {
    /// Reads a resource list (`requests`, `allocatable`).
    #[must_use]
    pub fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Self {
        let mut r = Self::default();
        for (name, q) in list.into_iter().flatten() {
            let v = parse_milli(&q.0).unwrap_or(0);
            match name.as_str() {
                "cpu" => r.cpu = v,
                "memory" => r.memory = v,
                "ephemeral-storage" => r.ephemeral = v,
                "pods" => r.pods = v / 1000,
                "hugepages-2Mi" | "hugepages-1Gi" => {}
                other if other.contains('/') => {
                    r.extended.insert(other.to_owned(), v);
                }
                _ => {}
            }
        }
        r
    }

    /// Adds `other` in place.
    pub fn add(&mut self, other: &Self) {
        self.cpu += other.cpu;
        self.memory += other.memory;
        self.ephemeral += other.ephemeral;
        self.pods += other.pods;
        for (k, v) in &other.extended {
            *self.extended.entry(k.clone()).or_default() += v;
        }
    }

    /// Subtracts `other` in place.
    pub fn sub(&mut self, other: &Self) {
        self.cpu -= other.cpu;
        self.memory -= other.memory;
        self.ephemeral -= other.ephemeral;
        self.pods -= other.pods;
        for (k, v) in &other.extended {
            *self.extended.entry(k.clone()).or_default() -= v;
        }
    }

    fn max_with(&mut self, other: &Self) {
        self.cpu = self.cpu.max(other.cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral = self.ephemeral.max(other.ephemeral);
        for (k, v) in &other.extended {
            let e = self.extended.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }
}

fn container_requests(c: &Container) -> Resources {
    let resources = c.resources.as_ref();
    // A container that only sets limits requests its limits (API defaulting does this too,
    // but objects written by older clients may lack it).
    let requests = resources.and_then(|r| r.requests.as_ref());
    let limits = resources.and_then(|r| r.limits.as_ref());
    let mut merged: BTreeMap<String, Quantity> = limits.cloned().unwrap_or_default();
    merged.extend(requests.cloned().unwrap_or_default());
    Resources::from_list(Some(&merged))
}

/// A pod's effective request, as the scheduler counts it: the larger of the sum of its
/// app (and restartable sidecar) containers and the largest init container, plus overhead,
/// plus one pod slot.
#[must_use]
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources {
            pods: 1,
            ..Resources::default()
        };
    };
    let mut sum = Resources::default();
    for c in &spec.containers {
        sum.add(&container_requests(c));
    }
    let mut sidecars = Resources::default();
    let mut init_max = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c);
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&r);
            sum.add(&r);
        } else {
            let mut with_sidecars = r;
            with_sidecars.add(&sidecars);
            init_max.max_with(&with_sidecars);
        }
    }
    sum.max_with(&init_max);
    sum.add(&Resources::from_list(spec.overhead.as_ref()));
    sum.pods = 1;
    sum
}

/// kube-scheduler's stand-ins for a container that requests no cpu or memory (100m, 200Mi),
/// so spreading scores still see pods without requests.
const DEFAULT_CPU: i64 = 100;
const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024 * 1000;

/// A pod's cpu and memory request with the stand-ins for containers that name none, as the
/// scoring plugins count them.
#[must_use]
pub fn pod_non_zero(pod: &Pod) -> (i64, i64) {
    let Some(spec) = pod.spec.as_ref() else {
        return (DEFAULT_CPU, DEFAULT_MEMORY);
    };
    let non_zero = |c: &Container| {
        let r = container_requests(c);
        (
            if r.cpu == 0 { DEFAULT_CPU } else { r.cpu },
            if r.memory == 0 {
                DEFAULT_MEMORY
            } else {
                r.memory
            },
        )
    };
    let (mut cpu, mut memory) = (0, 0);
    for c in &spec.containers {
        let (c, m) = non_zero(c);
        cpu += c;
        memory += m;
    }
    for c in spec.init_containers.iter().flatten() {
        let (c, m) = non_zero(c);
        cpu = cpu.max(c);
        memory = memory.max(m);
    }
    (cpu, memory)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};

    use super::*;

    fn container(cpu: &str, memory: &str) -> Container {
        Container {
            resources: Some(ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".to_owned(), Quantity(cpu.to_owned())),
                    ("memory".to_owned(), Quantity(memory.to_owned())),
                ])),
                ..ResourceRequirements::default()
            }),
            ..Container::default()
        }
    }

    #[test]
    fn requests_take_the_larger_of_app_sum_and_init_max() {
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![container("100m", "1Mi"), container("200m", "1Mi")],
                init_containers: Some(vec![container("500m", "1Ki")]),
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        let r = pod_requests(&pod);
        assert_eq!(r.cpu, 500);
        assert_eq!(r.memory, 2 * 1024 * 1024 * 1000);
        assert_eq!(r.pods, 1);
    }

    #[test]
    fn containers_without_requests_count_as_defaults_for_scoring() {
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![Container::default(), container("1", "1Gi")],
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        assert_eq!(
            pod_non_zero(&pod),
            (1100, (200 + 1024) * 1024 * 1024 * 1000)
        );
        assert_eq!(pod_requests(&pod).cpu, 1000);
    }

    #[test]
    fn limits_stand_in_for_missing_requests() {
        let c = Container {
            resources: Some(ResourceRequirements {
                limits: Some(BTreeMap::from([(
                    "cpu".to_owned(),
                    Quantity("1".to_owned()),
                )])),
                ..ResourceRequirements::default()
            }),
            ..Container::default()
        };
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![c],
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        assert_eq!(pod_requests(&pod).cpu, 1000);
    }
}
