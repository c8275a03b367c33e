//! The pod's `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`, kept in the pod's directory
//! and bound into every container, as the kubelet (hosts) and the CRI runtime (the others) do.
//!
//! The files are rewritten in place, never replaced by rename: a running container's bind
//! mount holds the inode, so only an in-place write reaches it.

use std::{fmt::Write as _, fs, io, path::Path};

use k8s_openapi::api::core::v1::Pod;

use super::{VolumeError, io_err};

/// The pod's hosts file, next to its `volumes` directory.
pub const HOSTS: &str = "etc-hosts";
/// The pod's hostname file.
pub const HOSTNAME: &str = "etc-hostname";
/// The pod's resolver configuration.
pub const RESOLV_CONF: &str = "resolv.conf";

/// The longest hostname Kubernetes gives a pod.
const MAX_HOSTNAME: usize = 63;

/// The pod's hostname (`spec.hostname`, else its name, cut to 63 characters) and, with a
/// `subdomain`, its domain `<subdomain>.<namespace>.svc.<cluster domain>`.
#[must_use]
pub fn hostname_and_domain(pod: &Pod, cluster_domain: &str) -> (String, Option<String>) {
    let spec = pod.spec.as_ref();
    let mut host = spec
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    if host.len() > MAX_HOSTNAME {
        host.truncate(MAX_HOSTNAME);
        // A truncated name must still be a valid DNS label.
        while host.ends_with(['-', '.']) {
            host.pop();
        }
    }
    let domain = spec
        .and_then(|s| s.subdomain.as_deref())
        .filter(|s| !s.is_empty())
        .map(|sub| {
            let ns = pod
                .metadata
                .namespace
                .as_deref()
                .unwrap_or(skiff_types::namespace::DEFAULT);
            format!("{sub}.{ns}.svc.{cluster_domain}")
        });
    (host, domain)
}

/// The kubelet's managed hosts file.
#[must_use]
pub fn hosts_content(pod: &Pod, pod_ip: Option<&str>, cluster_domain: &str) -> String {
    let (host, domain) = hostname_and_domain(pod, cluster_domain);
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    if let Some(ip) = pod_ip.filter(|ip| !ip.is_empty()) {
        match domain {
            Some(domain) => _ = writeln!(out, "{ip}\t{host}.{domain}\t{host}"),
            None => _ = writeln!(out, "{ip}\t{host}"),
        }
    }
    let aliases = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_aliases.as_deref())
        .unwrap_or_default();
    if !aliases.is_empty() {
        out.push_str("\n# Entries added by HostAliases.\n");
        for alias in aliases {
            let names = alias.hostnames.as_deref().unwrap_or_default().join("\t");
            _ = writeln!(out, "{}\t{names}", alias.ip);
        }
    }
    out
}

/// The cluster DNS pods of `dnsPolicy: ClusterFirst` use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDns {
    /// The `kube-dns` Service's address (`--cluster-dns`).
    pub server: String,
    /// The cluster domain (`cluster.local`).
    pub domain: String,
}

/// The pod's resolver configuration, as the kubelet builds it: the cluster DNS with the
/// namespace's search path and `ndots:5` for `ClusterFirst` (and `ClusterFirstWithHostNet`
/// on the host's network), the host's for `Default` (and for `ClusterFirst` on the host's
/// network or without a cluster DNS), nothing for `None`; then `dnsConfig` merged in
/// (servers and searches appended without repeats, options replaced by name).
#[must_use]
pub fn resolv_content(pod: &Pod, host: &str, cluster: Option<&ClusterDns>) -> String {
    let spec = pod.spec.as_ref();
    let config = spec.and_then(|s| s.dns_config.as_ref());
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let cluster = match policy {
        "ClusterFirstWithHostNet" => cluster,
        "ClusterFirst" if !host_network => cluster,
        _ => None,
    };
    let (mut servers, mut searches, mut options) = if policy == "None" {
        (Vec::new(), Vec::new(), Vec::new())
    } else if let Some(dns) = cluster {
        let (_, host_searches, _) = parse_resolv(host);
        let ns = pod
            .metadata
            .namespace
            .as_deref()
            .unwrap_or(skiff_types::namespace::DEFAULT);
        let mut searches = vec![
            format!("{ns}.svc.{}", dns.domain),
            format!("svc.{}", dns.domain),
            dns.domain.clone(),
        ];
        for s in host_searches {
            if !searches.contains(&s) {
                searches.push(s);
            }
        }
        (
            vec![dns.server.clone()],
            searches,
            vec!["ndots:5".to_owned()],
        )
    } else if config.is_none() {
        // The host's file as it is.
        return host.to_owned();
    } else {
        parse_resolv(host)
    };
    for s in config.iter().flat_map(|c| c.nameservers.iter().flatten()) {
        if !servers.contains(s) {
            servers.push(s.clone());
        }
    }
    for s in config.iter().flat_map(|c| c.searches.iter().flatten()) {
        if !searches.contains(s) {
            searches.push(s.clone());
        }
    }
    for o in config.iter().flat_map(|c| c.options.iter().flatten()) {
        let Some(name) = o.name.as_deref().filter(|n| !n.is_empty()) else {
            continue;
        };
        let rendered = match &o.value {
            Some(v) => format!("{name}:{v}"),
            None => name.to_owned(),
        };
        // A pod's option replaces the host's option of the same name.
        options.retain(|existing: &String| existing.split(':').next() != Some(name));
        options.push(rendered);
    }
    // The layout containerd writes.
    let mut out = String::new();
    if !searches.is_empty() {
        _ = writeln!(out, "search {}", searches.join(" "));
    }
    for s in &servers {
        _ = writeln!(out, "nameserver {s}");
    }
    if !options.is_empty() {
        _ = writeln!(out, "options {}", options.join(" "));
    }
    out
}

/// Nameservers, search domains and options of a resolv.conf (the last `search` line wins,
/// as in glibc).
fn parse_resolv(text: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut servers, mut searches, mut options) = (Vec::new(), Vec::new(), Vec::new());
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => servers.extend(words.next().map(str::to_owned)),
            Some("search" | "domain") => searches = words.map(str::to_owned).collect(),
            Some("options") => options.extend(words.map(str::to_owned)),
            _ => {}
        }
    }
    (servers, searches, options)
}

/// Writes `content` to `path` unless it already holds exactly that; in place, see the module
/// comment.
fn write_if_changed(path: &Path, content: &str) -> Result<(), VolumeError> {
    match fs::read(path) {
        Ok(old) if old == content.as_bytes() => return Ok(()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("reading", path)(e)),
    }
    fs::write(path, content).map_err(io_err("writing", path))?;
    tracing::debug!(path = %path.display(), "pod file written");
    Ok(())
}

/// Writes the pod's three files into `pod_dir`. hostNetwork pods get no hosts file (they see
/// the host's) and the node's hostname.
///
/// # Errors
/// A file system failure; an unreadable host resolv.conf other than a missing one.
pub fn write(
    pod_dir: &Path,
    pod: &Pod,
    pod_ip: Option<&str>,
    cluster_domain: &str,
    host_resolv_conf: &Path,
    cluster_dns: Option<&ClusterDns>,
) -> Result<(), VolumeError> {
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let hostname = if host_network {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        write_if_changed(
            &pod_dir.join(HOSTS),
            &hosts_content(pod, pod_ip, cluster_domain),
        )?;
        hostname_and_domain(pod, cluster_domain).0
    };
    write_if_changed(&pod_dir.join(HOSTNAME), &format!("{hostname}\n"))?;
    let host = match fs::read_to_string(host_resolv_conf) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err("reading", host_resolv_conf)(e)),
    };
    write_if_changed(
        &pod_dir.join(RESOLV_CONF),
        &resolv_content(pod, &host, cluster_dns),
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{HostAlias, PodDNSConfig, PodDNSConfigOption, PodSpec},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;

    fn pod(spec: PodSpec) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-0".to_owned()),
                namespace: Some("prod".to_owned()),
                ..Default::default()
            },
            spec: Some(spec),
            ..Default::default()
        }
    }

    const HEADER: &str = "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n";

    #[test]
    fn hosts_file_has_kubelet_header_and_pod_line() {
        let text = hosts_content(&pod(PodSpec::default()), Some("10.1.0.5"), "cluster.local");
        assert_eq!(text, format!("{HEADER}10.1.0.5\tweb-0\n"));
    }

    #[test]
    fn hosts_file_names_fqdn_with_subdomain_and_lists_aliases() {
        let spec = PodSpec {
            hostname: Some("db".to_owned()),
            subdomain: Some("svc1".to_owned()),
            host_aliases: Some(vec![HostAlias {
                ip: "10.9.9.9".to_owned(),
                hostnames: Some(vec!["foo.local".to_owned(), "bar.local".to_owned()]),
            }]),
            ..Default::default()
        };
        let text = hosts_content(&pod(spec), Some("10.1.0.5"), "example.org");
        assert_eq!(
            text,
            format!(
                "{HEADER}10.1.0.5\tdb.svc1.prod.svc.example.org\tdb\n\n# Entries added by HostAliases.\n10.9.9.9\tfoo.local\tbar.local\n"
            )
        );
    }

    #[test]
    fn hosts_file_without_ip_has_no_pod_line() {
        let text = hosts_content(&pod(PodSpec::default()), None, "cluster.local");
        assert_eq!(text, HEADER);
    }

    #[test]
    fn long_names_are_cut_to_a_valid_label() {
        let mut p = pod(PodSpec::default());
        p.metadata.name = Some(format!("{}-{}", "a".repeat(62), "b".repeat(10)));
        let (host, _) = hostname_and_domain(&p, "cluster.local");
        assert_eq!(host, "a".repeat(62));
    }

    fn cluster() -> ClusterDns {
        ClusterDns {
            server: "10.96.0.10".to_owned(),
            domain: "cluster.local".to_owned(),
        }
    }

    #[test]
    fn cluster_first_points_at_the_cluster_dns_with_the_namespace_search_path() {
        let host = "nameserver 192.0.2.1\nsearch host.example\noptions rotate\n";
        let expected = "search prod.svc.cluster.local svc.cluster.local cluster.local host.example\nnameserver 10.96.0.10\noptions ndots:5\n";
        assert_eq!(
            resolv_content(&pod(PodSpec::default()), host, Some(&cluster())),
            expected
        );
        let with_host_net = PodSpec {
            dns_policy: Some("ClusterFirstWithHostNet".to_owned()),
            host_network: Some(true),
            ..Default::default()
        };
        assert_eq!(
            resolv_content(&pod(with_host_net), host, Some(&cluster())),
            expected
        );
        // ClusterFirst on the host's network and Default take the host's file.
        let host_net = PodSpec {
            host_network: Some(true),
            ..Default::default()
        };
        assert_eq!(resolv_content(&pod(host_net), host, Some(&cluster())), host);
        let default = PodSpec {
            dns_policy: Some("Default".to_owned()),
            ..Default::default()
        };
        assert_eq!(resolv_content(&pod(default), host, Some(&cluster())), host);
    }

    #[test]
    fn dns_config_merges_into_the_cluster_resolver() {
        let spec = PodSpec {
            dns_config: Some(PodDNSConfig {
                nameservers: Some(vec!["192.0.2.9".to_owned()]),
                searches: Some(vec!["svc.cluster.local".to_owned(), "x.example".to_owned()]),
                options: Some(vec![PodDNSConfigOption {
                    name: Some("ndots".to_owned()),
                    value: Some("2".to_owned()),
                }]),
            }),
            ..Default::default()
        };
        assert_eq!(
            resolv_content(&pod(spec), "", Some(&cluster())),
            "search prod.svc.cluster.local svc.cluster.local cluster.local x.example\nnameserver 10.96.0.10\nnameserver 192.0.2.9\noptions ndots:2\n"
        );
    }

    #[test]
    fn resolv_conf_is_the_hosts_without_dns_config() {
        let host = "nameserver 192.0.2.1\nsearch example.com\n";
        assert_eq!(resolv_content(&pod(PodSpec::default()), host, None), host);
    }

    #[test]
    fn dns_policy_none_writes_only_dns_config() {
        let spec = PodSpec {
            dns_policy: Some("None".to_owned()),
            dns_config: Some(PodDNSConfig {
                nameservers: Some(vec!["1.2.3.4".to_owned(), "5.6.7.8".to_owned()]),
                searches: Some(vec!["a.example".to_owned(), "b.example".to_owned()]),
                options: Some(vec![
                    PodDNSConfigOption {
                        name: Some("ndots".to_owned()),
                        value: Some("2".to_owned()),
                    },
                    PodDNSConfigOption {
                        name: Some("edns0".to_owned()),
                        value: None,
                    },
                ]),
            }),
            ..Default::default()
        };
        let text = resolv_content(&pod(spec), "nameserver 192.0.2.1\n", Some(&cluster()));
        assert_eq!(
            text,
            "search a.example b.example\nnameserver 1.2.3.4\nnameserver 5.6.7.8\noptions ndots:2 edns0\n"
        );
    }

    #[test]
    fn dns_config_merges_into_the_hosts_resolver() {
        let spec = PodSpec {
            dns_config: Some(PodDNSConfig {
                nameservers: Some(vec!["192.0.2.1".to_owned(), "192.0.2.2".to_owned()]),
                searches: Some(vec!["extra.example".to_owned()]),
                options: Some(vec![PodDNSConfigOption {
                    name: Some("ndots".to_owned()),
                    value: Some("1".to_owned()),
                }]),
            }),
            ..Default::default()
        };
        let host = "nameserver 192.0.2.1\nsearch host.example\noptions ndots:5 rotate\n";
        assert_eq!(
            resolv_content(&pod(spec), host, None),
            "search host.example extra.example\nnameserver 192.0.2.1\nnameserver 192.0.2.2\noptions rotate ndots:1\n"
        );
    }

    #[test]
    fn files_are_rewritten_in_place_only_when_changed() {
        use std::os::unix::fs::MetadataExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let resolv = tmp.path().join("host-resolv");
        fs::write(&resolv, "nameserver 192.0.2.1\n").unwrap();
        let p = pod(PodSpec::default());
        write(
            tmp.path(),
            &p,
            Some("10.0.0.1"),
            "cluster.local",
            &resolv,
            None,
        )
        .unwrap();
        let hosts = tmp.path().join(HOSTS);
        let inode = fs::metadata(&hosts).unwrap().ino();
        assert_eq!(
            fs::read_to_string(tmp.path().join(HOSTNAME)).unwrap(),
            "web-0\n"
        );
        assert_eq!(
            fs::read_to_string(tmp.path().join(RESOLV_CONF)).unwrap(),
            "nameserver 192.0.2.1\n"
        );
        write(
            tmp.path(),
            &p,
            Some("10.0.0.2"),
            "cluster.local",
            &resolv,
            None,
        )
        .unwrap();
        assert_eq!(fs::metadata(&hosts).unwrap().ino(), inode, "same inode");
        assert!(
            fs::read_to_string(&hosts)
                .unwrap()
                .contains("10.0.0.2\tweb-0\n")
        );
    }

    #[test]
    fn host_network_pods_get_no_hosts_file() {
        let tmp = tempfile::tempdir().unwrap();
        let p = pod(PodSpec {
            host_network: Some(true),
            ..Default::default()
        });
        write(
            tmp.path(),
            &p,
            None,
            "cluster.local",
            &tmp.path().join("none"),
            Some(&cluster()),
        )
        .unwrap();
        assert!(!tmp.path().join(HOSTS).exists());
        assert!(tmp.path().join(HOSTNAME).exists());
        assert_eq!(
            fs::read_to_string(tmp.path().join(RESOLV_CONF)).unwrap(),
            ""
        );
    }
}
