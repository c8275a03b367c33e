//! The pod network's routes and tunnel in a real kernel: inside a network namespace the
//! test made (a veth as the uplink, no link to the machine's network), a sync installs direct
//! routes and the VXLAN device with its entries, finds them again (so a second sync and a
//! restarted node write nothing), and removes a departed peer's route and entries.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result, ensure};
use skiff_node_net::{
    overlay::{self, Netlink, PeerLinks as _, TunnelEntry, TunnelSpec},
    peers::{Local, Mode, Peer, plan},
};
use skiff_tests::{netns::Netns, require_root};
use skiff_types::Ipv4Cidr;

fn cidr(text: &str) -> Ipv4Cidr {
    text.parse().expect("a CIDR")
}

fn peer(name: &str, address: [u8; 4], pod: &str) -> Peer {
    Peer {
        name: name.into(),
        address: Ipv4Addr::from(address),
        pod_cidr: cidr(pod),
    }
}

#[test]
fn routes_and_tunnel_entries_are_installed_found_again_and_removed() -> Result<()> {
    if !require_root("routes_and_tunnel_entries_are_installed_found_again_and_removed") {
        return Ok(());
    }
    let host = Netns::new("skt-ovl")?;
    host.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ])?;
    host.ip(&["link", "set", "eth1", "up"])?;
    host.ip(&["addr", "add", "192.168.50.20/24", "dev", "eth0"])?;
    host.ip(&["link", "set", "eth0", "up"])?;
    host.block_on(scenario)
}

async fn scenario() -> Result<()> {
    let links = Netlink::connect()?;
    let local = Local {
        name: "a".into(),
        address: Ipv4Addr::new(192, 168, 50, 20),
        link_subnets: vec![cidr("192.168.50.0/24")],
        pod_cidr: cidr("10.244.0.0/24"),
        mode: Mode::Auto,
    };
    let tunnel = TunnelSpec {
        local: local.address,
        uplink: "eth0".into(),
        pod_cidr: local.pod_cidr,
        mtu: 1450,
    };
    let b = peer("b", [192, 168, 50, 21], "10.244.1.0/24");
    let c = peer("c", [192, 168, 60, 22], "10.244.2.0/24");
    let first = overlay::sync(&links, &plan(&local, &[b.clone(), c.clone()]), &tunnel).await?;
    ensure!(
        first.routes_set == 2 && first.entries_set == 2,
        "first sync: {first:?}"
    );
    let routes = links.routes().await?;
    ensure!(routes.len() == 2, "routes found: {routes:?}");
    let index = links
        .index("skiff-vxlan")
        .await?
        .context("no tunnel device")?;
    let mut entries = links.entries(index).await?;
    entries.sort();
    ensure!(
        entries
            == [
                TunnelEntry::Neighbour {
                    vtep: Ipv4Addr::new(10, 244, 2, 0),
                    mac: [0x0e, 0x53, 192, 168, 60, 22]
                },
                TunnelEntry::Forward {
                    mac: [0x0e, 0x53, 192, 168, 60, 22],
                    remote: Ipv4Addr::new(192, 168, 60, 22)
                },
            ],
        "entries found: {entries:?}"
    );
    let second = overlay::sync(&links, &plan(&local, &[b.clone(), c]), &tunnel).await?;
    ensure!(!second.any(), "an unchanged plan wrote {second:?}");
    let third = overlay::sync(&links, &plan(&local, &[b]), &tunnel).await?;
    ensure!(third.routes_removed == 1, "c left: {third:?}");
    ensure!(
        links.index("skiff-vxlan").await?.is_none(),
        "the tunnel outlived its last peer"
    );
    overlay::remove_all(&links).await?;
    ensure!(
        links.routes().await?.is_empty(),
        "routes left after removal"
    );
    Ok(())
}
