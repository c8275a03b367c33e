//! The Node's conditions: memory, disk and PID pressure (from real readings against the
//! eviction thresholds, or none on a simulated node), and Ready when the daemon can run
//! pods. Transition times move only
//! when a status flips, as the kubelet keeps them.

use k8s_openapi::{
    api::core::v1::NodeCondition, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp,
};

use super::{capacity::Reservations, host::Reading};

/// Share of `pid_max` in use above which the node reports PID pressure (percent).
const PID_PRESSURE_PERCENT: u64 = 90;

/// Resource pressure on the node: `Some(message)` for each kind under pressure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pressure {
    /// `memory.available` below the eviction threshold.
    pub memory: Option<String>,
    /// `nodefs.available` below the eviction threshold.
    pub disk: Option<String>,
    /// Nearly every PID in use.
    pub pid: Option<String>,
}

/// The pressure one reading shows against the eviction thresholds.
#[must_use]
pub fn pressure(reading: &Reading, reserved: &Reservations) -> Pressure {
    let memory = reading.memory_available < reserved.eviction_memory;
    let disk = reading.fs_total > 0
        && reading.fs_available.saturating_mul(100)
            < reading
                .fs_total
                .saturating_mul(reserved.eviction_nodefs_percent);
    let pids =
        reading.pids.saturating_mul(100) > reading.pid_max.saturating_mul(PID_PRESSURE_PERCENT);
    Pressure {
        memory: memory.then(|| {
            format!(
                "kubelet has insufficient memory available ({} bytes)",
                reading.memory_available
            )
        }),
        disk: disk.then(|| "kubelet has disk pressure".to_owned()),
        pid: pids.then(|| "kubelet has insufficient PID available".to_owned()),
    }
}

/// One condition's verdict before timestamps.
struct Verdict {
    type_: &'static str,
    status: &'static str,
    reason: &'static str,
    message: String,
}

fn verdicts(pressure: &Pressure, ready: Result<(), String>) -> Vec<Verdict> {
    let verdict = |type_, on: &Option<String>, yes, no, calm: &str| match on {
        Some(message) => Verdict {
            type_,
            status: "True",
            reason: yes,
            message: message.clone(),
        },
        None => Verdict {
            type_,
            status: "False",
            reason: no,
            message: calm.to_owned(),
        },
    };
    let (ready_status, ready_reason, ready_message) = match ready {
        Ok(()) => (
            "True",
            "KubeletReady",
            "kubelet is posting ready status".to_owned(),
        ),
        Err(why) => ("False", "KubeletNotReady", why),
    };
    vec![
        verdict(
            "MemoryPressure",
            &pressure.memory,
            "KubeletHasInsufficientMemory",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        verdict(
            "DiskPressure",
            &pressure.disk,
            "KubeletHasDiskPressure",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        verdict(
            "PIDPressure",
            &pressure.pid,
            "KubeletHasInsufficientPID",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        Verdict {
            type_: "Ready",
            status: ready_status,
            reason: ready_reason,
            message: ready_message,
        },
    ]
}

/// The conditions to report now; `previous` keeps transition times of unchanged statuses.
/// `ready` is `Err(why)` while the daemon cannot run pods (no pod CIDR yet, network down).
#[must_use]
pub fn conditions(
    pressure: &Pressure,
    ready: Result<(), String>,
    previous: &[NodeCondition],
    now: Timestamp,
) -> Vec<NodeCondition> {
    verdicts(pressure, ready)
        .into_iter()
        .map(|v| {
            let transition = previous
                .iter()
                .find(|c| c.type_ == v.type_ && c.status == v.status)
                .and_then(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            NodeCondition {
                type_: v.type_.to_owned(),
                status: v.status.to_owned(),
                reason: Some(v.reason.to_owned()),
                message: Some(v.message),
                last_heartbeat_time: Some(Time(now)),
                last_transition_time: Some(transition),
            }
        })
        .collect()
}

/// Whether two condition lists say the same thing (heartbeat times aside).
#[must_use]
pub fn same(a: &[NodeCondition], b: &[NodeCondition]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.type_ == y.type_
                && x.status == y.status
                && x.reason == y.reason
                && x.message == y.message
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn healthy() -> Reading {
        Reading {
            cpus: 2,
            memory_total: 4096 * MIB,
            memory_available: 2048 * MIB,
            fs_total: 1000 * MIB,
            fs_available: 500 * MIB,
            pids: 100,
            pid_max: 32768,
        }
    }

    fn status<'a>(conditions: &'a [NodeCondition], type_: &str) -> &'a str {
        &conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect(type_)
            .status
    }

    #[test]
    fn a_healthy_host_reports_no_pressure_and_ready() {
        let c = conditions(
            &pressure(&healthy(), &Reservations::default()),
            Ok(()),
            &[],
            Timestamp::now(),
        );
        assert_eq!(status(&c, "MemoryPressure"), "False");
        assert_eq!(status(&c, "DiskPressure"), "False");
        assert_eq!(status(&c, "PIDPressure"), "False");
        assert_eq!(status(&c, "Ready"), "True");
    }

    #[test]
    fn readings_below_the_eviction_thresholds_report_pressure() {
        let reading = Reading {
            memory_available: 50 * MIB,
            fs_available: 50 * MIB,
            pids: 32000,
            ..healthy()
        };
        let c = conditions(
            &pressure(&reading, &Reservations::default()),
            Err("no pod CIDR".into()),
            &[],
            Timestamp::now(),
        );
        assert_eq!(status(&c, "MemoryPressure"), "True");
        assert_eq!(status(&c, "DiskPressure"), "True");
        assert_eq!(status(&c, "PIDPressure"), "True");
        assert_eq!(status(&c, "Ready"), "False");
        let ready = c.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.message.as_deref(), Some("no pod CIDR"));
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let calm = pressure(&healthy(), &Reservations::default());
        let first = conditions(&calm, Ok(()), &[], t0);
        let again = conditions(&calm, Ok(()), &first, t1);
        let ready = again.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.last_transition_time, Some(Time(t0)));
        assert_eq!(ready.last_heartbeat_time, Some(Time(t1)));
        assert!(same(&first, &again));
        let flipped = conditions(&calm, Err("down".into()), &first, t1);
        let ready = flipped.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.last_transition_time, Some(Time(t1)));
        assert!(!same(&first, &flipped));
    }
}
