use super::*;

struct Saved {
    chains: Vec<(&'static str, &'static str)>,
    builtin: Vec<(&'static str, &'static str, String)>,
}

impl Current for Saved {
    fn chain_exists(&self, table: &str, chain: &str) -> bool {
        self.chains.iter().any(|(t, c)| *t == table && *c == chain)
    }
    fn builtin_rules(&self, table: &str, builtin: &str) -> Vec<String> {
        self.builtin.iter().filter(|(t, b, _)| *t == table && *b == builtin).map(|(_, _, l)| l.clone()).collect()
    }
}

#[test]
fn the_accept_chain_accepts_the_mark_only() {
    assert_eq!(forward_rules(), ["-m mark --mark 0x1000000/0x1000000 -j ACCEPT"]);
}

#[test]
fn render_fills_chain_and_moves_jump_after_docker_user() {
    let filter = &plan(true, Family::V4)[0];
    let saved = Saved {
        chains: vec![("filter", FORWARD_CHAIN)],
        builtin: vec![
            ("filter", "FORWARD", "-A FORWARD -j RUSTBRIDGE-FORWARD".into()),
            ("filter", "FORWARD", "-A FORWARD -j DOCKER-USER".into()),
            ("filter", "FORWARD", "-A FORWARD -j DOCKER-ISOLATION-STAGE-1".into()),
        ],
    };
    let text = render(filter, &saved);
    assert!(
        text.starts_with(
            "*filter\n:RUSTBRIDGE-FORWARD - [0:0]\n-A RUSTBRIDGE-FORWARD -m mark --mark 0x1000000/0x1000000 -j ACCEPT\n"
        ),
        "{text}"
    );
    assert!(text.ends_with("-D FORWARD -j RUSTBRIDGE-FORWARD\n-I FORWARD 2 -j RUSTBRIDGE-FORWARD\nCOMMIT\n"), "{text}");
    assert!(!holds(filter, &saved, &|_, _| 1), "jump above DOCKER-USER is not in place");
    let in_place = Saved {
        chains: vec![("filter", FORWARD_CHAIN)],
        builtin: vec![
            ("filter", "FORWARD", "-A FORWARD -j DOCKER-USER".into()),
            ("filter", "FORWARD", "-A FORWARD -j RUSTBRIDGE-FORWARD".into()),
        ],
    };
    assert!(holds(filter, &in_place, &|_, _| 1));
    assert!(!holds(filter, &in_place, &|_, _| 0), "a flushed chain is not intact");
}

#[test]
fn inactive_removes_the_jump_and_the_chain() {
    let filter = &plan(false, Family::V4)[0];
    let saved = Saved {
        chains: vec![("filter", FORWARD_CHAIN)],
        builtin: vec![("filter", "FORWARD", "-A FORWARD -j RUSTBRIDGE-FORWARD".into())],
    };
    assert_eq!(
        render(filter, &saved),
        "*filter\n-D FORWARD -j RUSTBRIDGE-FORWARD\n-F RUSTBRIDGE-FORWARD\n-X RUSTBRIDGE-FORWARD\nCOMMIT\n"
    );
    assert!(!holds(filter, &saved, &|_, _| 1));
    let empty = Saved { chains: vec![], builtin: vec![] };
    assert_eq!(render(filter, &empty), "*filter\nCOMMIT\n");
    assert!(holds(filter, &empty, &|_, _| 0));
}

#[test]
fn chains_of_earlier_versions_are_removed_wherever_found() {
    for family in [Family::V4, Family::V6] {
        for active in [true, false] {
            let plans = plan(active, family);
            assert!(plans.iter().filter(|p| p.table != "filter").all(|p| !p.active));
            assert_eq!(plans.iter().any(|p| p.table == "raw"), family == Family::V4);
        }
    }
    let nat = &plan(true, Family::V4)[1];
    let saved = Saved {
        chains: vec![("nat", RETIRED_POSTROUTING_CHAIN), ("nat", RETIRED_DNAT_CHAIN)],
        builtin: vec![
            ("nat", "POSTROUTING", "-A POSTROUTING -j RUSTBRIDGE-POSTROUTING".into()),
            ("nat", "OUTPUT", "-A OUTPUT -m addrtype --dst-type LOCAL -j RUSTBRIDGE-DNAT".into()),
        ],
    };
    assert_eq!(
        render(nat, &saved),
        "*nat\n-D POSTROUTING -j RUSTBRIDGE-POSTROUTING\n-D OUTPUT -m addrtype --dst-type LOCAL -j RUSTBRIDGE-DNAT\n\
         -F RUSTBRIDGE-POSTROUTING\n-F RUSTBRIDGE-DNAT\n-X RUSTBRIDGE-POSTROUTING\n-X RUSTBRIDGE-DNAT\nCOMMIT\n"
    );
    assert!(!holds(nat, &saved, &|_, _| 0));
    let mangle = plan(true, Family::V6).into_iter().find(|p| p.table == "mangle").unwrap();
    let saved = Saved {
        chains: vec![("mangle", RETIRED_ISOLATION_CHAIN), ("mangle", RETIRED_ISOLATION_STAGE2_CHAIN)],
        builtin: vec![("mangle", "FORWARD", "-A FORWARD -j RUSTBRIDGE-ISOLATION".into())],
    };
    assert_eq!(
        render(&mangle, &saved),
        "*mangle\n-D FORWARD -j RUSTBRIDGE-ISOLATION\n-F RUSTBRIDGE-ISOLATION\n-F RUSTBRIDGE-ISOLATION-2\n\
         -X RUSTBRIDGE-ISOLATION\n-X RUSTBRIDGE-ISOLATION-2\nCOMMIT\n"
    );
}
