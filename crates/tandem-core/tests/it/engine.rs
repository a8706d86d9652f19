//! One node at a time, fed hand-made inputs; each test asserts exactly what
//! the node does.

use crate::common::*;
use tandem_core::*;

fn hb(
    from: &str,
    seq: u64,
    priority: u8,
    configured: ConfiguredRole,
    role: EffectiveRole,
) -> Input {
    Input::Received {
        link: LinkId(0),
        envelope: Envelope {
            version: 2,
            sender: from.to_owned(),
            epoch: 1,
            seq,
            message: Message::Heartbeat(Heartbeat {
                priority,
                configured_role: configured,
                role,
                groups: vec![(GroupId(0), role)],
                healthy: true,
                preempt: PreemptState::Disabled,
                version: String::new(),
                fencing: Vec::new(),
            }),
        },
    }
}

fn node(cfg: NodeConfig) -> Node {
    let mut n = Node::new(cfg, None, Millis(0)).expect("create the node");
    n.step(Millis(0), Input::Tick);
    n
}

fn role_changed(from: EffectiveRole, to: EffectiveRole, reason: Reason) -> Output {
    Output::Event(Event::RoleChanged {
        group: Some(GroupId(0)),
        from,
        to,
        reason,
    })
}

use EffectiveRole::{Active, Standby};

#[test]
fn first_step_sends_a_heartbeat_with_the_nodes_state() {
    let mut a = Node::new(pair_configs().remove(0), None, Millis(0)).expect("create the node");
    let out = a.step(Millis(0), Input::Tick);
    assert_eq!(
        out,
        vec![Output::Send {
            to: Destination::All,
            message: Message::Heartbeat(Heartbeat {
                priority: 200,
                configured_role: ConfiguredRole::Primary,
                role: Standby,
                groups: vec![(GroupId(0), Standby)],
                healthy: true,
                preempt: PreemptState::Ready,
                version: String::new(),
                fencing: Vec::new(),
            }),
        }]
    );
}

#[test]
fn a_node_alone_waits_one_hold_time_then_takes_over() {
    let mut a = node(pair_configs().remove(0));
    assert_eq!(actions(&a.step(Millis(599), Input::Tick)), vec![]);
    assert_eq!(
        actions(&a.step(Millis(600), Input::Tick)),
        vec![
            Output::ClaimVip { group: GroupId(0) },
            Output::StartService,
            role_changed(Standby, Active, Reason::Elected),
        ]
    );
}

#[test]
fn a_standby_never_claims_while_the_active_is_heard() {
    let mut b = node(pair_configs().remove(1));
    b.step(Millis(0), hb("a", 1, 200, ConfiguredRole::Primary, Active));
    for (i, t) in (200..=2000).step_by(200).enumerate() {
        let out = b.step(
            Millis(t),
            hb("a", i as u64 + 2, 200, ConfiguredRole::Primary, Active),
        );
        assert_eq!(actions(&out), vec![], "at {t} ms");
    }
}

#[test]
fn crash_detected_by_connection_close_means_takeover_at_once() {
    let mut b = node(pair_configs().remove(1));
    b.step(Millis(0), hb("a", 1, 200, ConfiguredRole::Primary, Active));
    let out = b.step(
        Millis(10),
        Input::PeerConnectionClosed {
            peer: "a".to_owned(),
        },
    );
    assert_eq!(
        actions(&out),
        vec![
            Output::Event(Event::PeerLost {
                peer: "a".into(),
                cause: LossCause::ConnectionClosed,
            }),
            Output::ClaimVip { group: GroupId(0) },
            Output::StartService,
            role_changed(Standby, Active, Reason::PeerLost { peer: "a".into() }),
        ]
    );
}

/// Issue 6: a standby still catching up on data would serve with mail
/// missing; it reports `syncing` and stays out, even when the active crashes,
/// and takes over as soon as it is in step again.
#[test]
fn a_standby_out_of_data_sync_does_not_take_over_until_in_sync() {
    let mut b = node(pair_configs().remove(1));
    b.step(Millis(0), hb("a", 1, 200, ConfiguredRole::Primary, Active));
    let out = b.step(Millis(5), Input::DataSync { in_sync: false });
    assert_eq!(
        actions(&out),
        vec![role_changed(
            Standby,
            EffectiveRole::Syncing,
            Reason::DataSync { in_sync: false }
        )]
    );
    let out = b.step(
        Millis(10),
        Input::PeerConnectionClosed {
            peer: "a".to_owned(),
        },
    );
    assert_eq!(
        actions(&out),
        vec![Output::Event(Event::PeerLost {
            peer: "a".into(),
            cause: LossCause::ConnectionClosed,
        })]
    );
    assert_eq!(b.effective_role(Millis(10)), EffectiveRole::Syncing);
    assert_eq!(
        actions(&b.step(Millis(20), Input::Command(Command::FailoverActive))),
        vec![Output::Refused {
            command: Command::FailoverActive,
            reason: Refusal::DataNotInSync,
        }]
    );
    let out = b.step(Millis(30), Input::DataSync { in_sync: true });
    assert_eq!(
        actions(&out),
        vec![
            Output::ClaimVip { group: GroupId(0) },
            Output::StartService,
            // The takeover's cause is still the lost active.
            role_changed(
                EffectiveRole::Syncing,
                Active,
                Reason::PeerLost { peer: "a".into() }
            ),
        ]
    );
}

/// The active's data is the reference: a stale report never demotes it.
#[test]
fn data_sync_state_does_not_affect_the_active() {
    let mut a = node(pair_configs().remove(0));
    let out = a.step(Millis(5_000), Input::Tick);
    assert!(a.is_active(GroupId(0)), "{out:?}");
    let out = a.step(Millis(5_010), Input::DataSync { in_sync: false });
    assert_eq!(actions(&out), vec![]);
    assert_eq!(a.effective_role(Millis(5_010)), Active);
}

#[test]
fn a_peer_is_dead_only_when_every_link_is_silent() {
    let mut cfg = pair_configs().remove(1);
    cfg.links = vec!["hb0".into(), "hb1".into()];
    let mut b = node(cfg);
    b.step(Millis(0), hb("a", 1, 200, ConfiguredRole::Primary, Active));
    let mut on_link1 = hb("a", 2, 200, ConfiguredRole::Primary, Active);
    if let Input::Received { link, .. } = &mut on_link1 {
        *link = LinkId(1);
    }
    b.step(Millis(500), on_link1);
    // hb0 silent for 700 ms, hb1 heard 200 ms ago: the peer is alive.
    assert_eq!(actions(&b.step(Millis(700), Input::Tick)), vec![]);
    let links = &b.status(Millis(700)).peers[0].links;
    assert_eq!(
        (links[0].up, links[0].last_heard_ms_ago),
        (false, Some(700))
    );
    assert_eq!((links[1].up, links[1].last_heard_ms_ago), (true, Some(200)));
    // Hold time is 3 × 200 ms: dead after more than 600 ms of silence on both.
    assert_eq!(actions(&b.step(Millis(1100), Input::Tick)), vec![]);
    assert_eq!(
        actions(&b.step(Millis(1101), Input::Tick)),
        vec![
            Output::Event(Event::PeerLost {
                peer: "a".into(),
                cause: LossCause::Timeout,
            }),
            Output::ClaimVip { group: GroupId(0) },
            Output::StartService,
            role_changed(Standby, Active, Reason::PeerLost { peer: "a".into() }),
        ]
    );
}

#[test]
fn a_peer_whose_service_answers_stays_alive_without_heartbeats() {
    // remote_as_heartbeat: link 1 stands for the peer's service port.
    let mut cfg = pair_configs().remove(1);
    cfg.links = vec!["hb0".into(), "service".into()];
    let mut b = node(cfg);
    let answered = || Input::ServiceAnswered {
        peer: "a".into(),
        link: LinkId(1),
    };
    // A probe cannot introduce a peer that was never heard.
    b.step(Millis(10), answered());
    assert!(!b.status(Millis(10)).peers[0].alive);
    b.step(Millis(20), hb("a", 1, 200, ConfiguredRole::Primary, Active));
    // Heartbeats stop; the service keeps answering every 200 ms.
    for t in (200..=2000).step_by(200) {
        b.step(Millis(t), answered());
        assert_eq!(
            actions(&b.step(Millis(t + 1), Input::Tick)),
            vec![],
            "at {t} ms"
        );
    }
    assert!(b.status(Millis(2001)).peers[0].alive);
    // The service stops answering too: dead one hold time later.
    assert_eq!(actions(&b.step(Millis(2600), Input::Tick)), vec![]);
    let out = actions(&b.step(Millis(2601), Input::Tick));
    assert!(
        out.contains(&Output::ClaimVip { group: GroupId(0) }),
        "{out:?}"
    );
}

#[test]
fn split_brain_on_heal_the_worse_ranked_steps_down_at_once() {
    // b never heard a: after its start-up wait it serves alone.
    let mut b = node(pair_configs().remove(1));
    b.step(Millis(600), Input::Tick);
    assert!(b.is_active(GroupId(0)));
    // The partition heals: a is active too.
    let out = b.step(
        Millis(1000),
        hb("a", 1, 200, ConfiguredRole::Primary, Active),
    );
    assert_eq!(
        actions(&out),
        vec![
            Output::Event(Event::PeerFound { peer: "a".into() }),
            Output::Event(Event::SplitBrain {
                group: Some(GroupId(0)),
                peer: "a".into(),
            }),
            Output::ReleaseVip { group: GroupId(0) },
            Output::StopService,
            role_changed(Active, Standby, Reason::SplitBrain { peer: "a".into() }),
        ]
    );
    assert_eq!(b.status(Millis(1000)).counters.split_brain_events, 1);

    // a, the better-ranked, keeps the role and counts the event too.
    let mut a = node(pair_configs().remove(0));
    a.step(Millis(600), Input::Tick);
    let out = a.step(
        Millis(1000),
        hb("b", 1, 100, ConfiguredRole::Secondary, Active),
    );
    assert_eq!(
        actions(&out),
        vec![
            Output::Event(Event::PeerFound { peer: "b".into() }),
            Output::Event(Event::SplitBrain {
                group: Some(GroupId(0)),
                peer: "b".into(),
            }),
        ]
    );
    assert!(a.is_active(GroupId(0)));
}

#[test]
fn messages_from_unknown_nodes_are_counted_and_ignored() {
    let mut b = node(pair_configs().remove(1));
    let out = b.step(
        Millis(10),
        hb("mallory", 1, 255, ConfiguredRole::Primary, Active),
    );
    assert_eq!(actions(&out), vec![]);
    let rejected = b.status(Millis(10)).counters.rejected;
    assert_eq!(rejected.get(&wire::RejectReason::UnknownPeer), Some(&1));
}

#[test]
fn a_stale_heartbeat_after_goodbye_does_not_bring_the_peer_back() {
    let mut b = node(pair_configs().remove(1));
    b.step(Millis(0), hb("a", 1, 200, ConfiguredRole::Primary, Active));
    let bye = Input::Received {
        link: LinkId(0),
        envelope: Envelope {
            version: 2,
            sender: "a".into(),
            epoch: 1,
            seq: 2,
            message: Message::Goodbye,
        },
    };
    b.step(Millis(5), bye);
    assert!(b.is_active(GroupId(0)));
    // A heartbeat of the same run, delayed on another path.
    let out = b.step(Millis(6), hb("a", 3, 200, ConfiguredRole::Primary, Active));
    assert_eq!(actions(&out), vec![]);
    assert!(b.is_active(GroupId(0)));
}

#[test]
fn holdoff_longer_than_the_maximum_is_refused() {
    let mut a = node(pair_configs().remove(0));
    let out = a.step(
        Millis(10),
        Input::Command(Command::HaHoldoff(std::time::Duration::from_secs(900))),
    );
    assert_eq!(
        out,
        vec![Output::Refused {
            command: Command::HaHoldoff(std::time::Duration::from_secs(900)),
            reason: Refusal::HoldoffTooLong {
                requested: std::time::Duration::from_secs(900),
                max: std::time::Duration::from_secs(300),
            },
        }]
    );
}

#[test]
fn invalid_configurations_are_refused() {
    let mut c = pair_configs().remove(0);
    c.mode = Mode::ActiveActive;
    assert!(matches!(
        Node::new(c, None, Millis(0)),
        Err(Error::InvalidConfig(_))
    ));
    let mut c = pair_configs().remove(0);
    c.peers.push("a".into());
    assert!(matches!(
        Node::new(c, None, Millis(0)),
        Err(Error::InvalidConfig(_))
    ));
    let mut c = pair_configs().remove(0);
    c.lost_threshold = 0;
    assert!(c.validate().is_err());
}

#[test]
fn persisted_state_survives_a_restart() {
    let mut a = node(pair_configs().remove(0));
    let out = a.step(Millis(10), Input::Command(Command::HaPreempt(false)));
    let persisted = out.iter().find_map(|o| match o {
        Output::Persist(p) => Some(*p),
        _ => None,
    });
    assert_eq!(
        persisted,
        Some(PersistentState {
            preempt: false,
            ha_stopped: false
        })
    );
    let a2 = Node::new(pair_configs().remove(0), persisted, Millis(0)).expect("restore the node");
    assert!(!a2.status(Millis(0)).preempt);
}

#[test]
fn status_serializes_to_json() {
    let mut b = node(pair_configs().remove(1));
    b.step(Millis(0), hb("a", 1, 200, ConfiguredRole::Primary, Active));
    let v = serde_json::to_value(b.status(Millis(150))).expect("serialize the status");
    assert_eq!(v["effective_role"], "standby");
    assert_eq!(v["peers"][0]["name"], "a");
    assert_eq!(v["peers"][0]["links"][0]["last_heard_ms_ago"], 150);
    assert_eq!(v["groups"][0]["holder"], "a");
    assert_eq!(v["counters"]["split_brain_events"], 0);
}

#[test]
fn a_new_version_is_carried_by_the_next_heartbeat() {
    let mut a = node(pair_configs().remove(0));
    a.set_version("6.2.5").expect("set the version");
    assert!(a.set_version(&"9".repeat(65)).is_err());
    let out = a.step(Millis(200), Input::Tick);
    let carried = out.iter().any(|o| matches!(o, Output::Send { message: Message::Heartbeat(h), .. } if h.version == "6.2.5"));
    assert!(carried, "{out:?}");
    assert_eq!(a.status(Millis(200)).version, "6.2.5");
}
