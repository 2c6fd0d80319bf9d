//! `rustbridge gc` on the fakes: what it takes for rustbridge's.

use super::*;
use crate::dataplane::fake::FakeLink;
use crate::names::{bridge_name, vxlan_name};
use crate::testing::FakePlugin;

fn link(kind: LinkKind, owner: Option<&str>, controller: Option<&str>) -> FakeLink {
    FakeLink {
        kind,
        up: true,
        owner: owner.map(str::to_string),
        controller: controller.map(str::to_string),
        ..FakeLink::bridge()
    }
}

/// A swarm network's devices (base-36 names) left by a state that is gone:
/// listed and removed, VXLAN device before its bridge. Names a user could
/// have chosen (swarm-shaped, no owner mark) are left alone; a hex-derived
/// bridge is recognised by its name, as before.
#[tokio::test]
async fn swarm_networks_leftovers_are_collected_and_unmarked_look_alikes_kept() {
    let p = FakePlugin::new("gc-swarm");
    let lost = "lt58xre1i7zb1r4vvuwia72mv"; // its state was lost: another instance's mark
    let (bridge, vxlan) = (bridge_name(lost), vxlan_name(lost));
    let hex_bridge = bridge_name("abcdefabcdef0000000000000000000000000000000000000000000000000000");
    let look_alikes = ["rb-mybridge0001", "rbx-myvxlan0001"];
    {
        let mut links = p.fake.links.lock().unwrap();
        links.insert(bridge.clone(), link(LinkKind::Bridge, Some("0123456789abcdef"), None));
        links.insert(vxlan.clone(), link(LinkKind::Vxlan, Some("0123456789abcdef"), Some(&bridge)));
        links.insert(hex_bridge.clone(), link(LinkKind::Bridge, None, None));
        links.insert(look_alikes[0].into(), link(LinkKind::Bridge, None, None));
        links.insert(look_alikes[1].into(), link(LinkKind::Vxlan, None, Some(look_alikes[0])));
    }
    let listed = run(p.plugin(), GcRequest { remove: false }).await;
    let names: Vec<(&str, &str, bool)> =
        listed.leftovers.iter().map(|l| (l.kind.as_str(), l.name.as_str(), l.in_use.is_some())).collect();
    assert_eq!(
        names,
        vec![
            ("bridge", hex_bridge.as_str(), false),
            ("bridge", bridge.as_str(), false),
            ("vxlan", vxlan.as_str(), false)
        ],
        "the bridge's only port is a leftover VXLAN device: not in use"
    );
    assert!(render_text(&listed).contains(&format!("leftover vxlan {vxlan}")));

    let calls_before = p.fake.calls().len();
    let removed = run(p.plugin(), GcRequest { remove: true }).await;
    assert!(removed.errors.is_empty(), "{:?}", removed.errors);
    let calls = p.fake.calls()[calls_before..].to_vec();
    let at = |name: &str| calls.iter().position(|c| c == &format!("delete_link {name}")).expect(name);
    assert!(at(&vxlan) < at(&bridge), "the device goes before its bridge: {calls:?}");
    for name in [&bridge, &vxlan, &hex_bridge] {
        assert!(p.fake.link(name).is_none(), "{name} left: {:?}", p.fake.names());
    }
    for name in look_alikes {
        assert!(p.fake.link(name).is_some(), "{name} removed");
    }
    assert!(run(p.plugin(), GcRequest { remove: false }).await.leftovers.is_empty());
}
