//! The wire format: both protocol versions, every rejection, and proptest
//! over arbitrary bytes.

use proptest::prelude::*;
use std::time::Duration;
use tandem_core::wire::{self, Header, RejectReason, ReplayGuard, ReplayVerdict};
use tandem_core::*;

const KEY: &[u8] = b"correct horse battery staple";

fn header(version: u8, seq: u64) -> Header<'static> {
    Header {
        version,
        cluster: "mail",
        sender: "a",
        epoch: 7,
        seq,
    }
}

fn heartbeat() -> Message {
    Message::Heartbeat(Heartbeat {
        priority: 200,
        configured_role: ConfiguredRole::Primary,
        role: EffectiveRole::Active,
        groups: vec![(GroupId(0), EffectiveRole::Active)],
        healthy: true,
        preempt: PreemptState::Ready,
        version: "6.2.5".into(),
    })
}

#[test]
fn v2_round_trip_of_every_kind() {
    let msgs = [
        heartbeat(),
        Message::Holdoff {
            duration: Duration::from_millis(120_500),
        },
        Message::Goodbye,
        Message::Takeover { group: GroupId(2) },
        Message::Handover {
            group: GroupId(1),
            to: "b".into(),
            cause: HandoverCause::Restore,
        },
        Message::Command {
            id: 9,
            command: Command::FailoverGroup {
                group: GroupId(1),
                active: false,
            },
        },
    ];
    for (i, m) in msgs.into_iter().enumerate() {
        let bytes = wire::encode(KEY, &header(2, i as u64), &m).unwrap();
        let env = wire::decode(KEY, "mail", &bytes).unwrap();
        assert_eq!(
            (env.version, env.sender.as_str(), env.epoch, env.seq),
            (2, "a", 7, i as u64)
        );
        assert_eq!(env.message, m);
    }
}

#[test]
fn v1_heartbeat_decodes_as_group_zero_without_the_v2_fields() {
    let bytes = wire::encode(KEY, &header(1, 1), &heartbeat()).unwrap();
    assert_eq!(bytes[4], 1, "version byte");
    let env = wire::decode(KEY, "mail", &bytes).unwrap();
    assert_eq!(env.version, 1);
    assert_eq!(
        env.message,
        Message::Heartbeat(Heartbeat {
            priority: 200,
            configured_role: ConfiguredRole::Primary,
            role: EffectiveRole::Active,
            groups: vec![(GroupId(0), EffectiveRole::Active)],
            healthy: true,
            preempt: PreemptState::Disabled,
            version: String::new(),
        })
    );
}

#[test]
fn v1_holdoff_is_in_whole_seconds_rounded_up() {
    let m = Message::Holdoff {
        duration: Duration::from_millis(1500),
    };
    let env = wire::decode(KEY, "mail", &wire::encode(KEY, &header(1, 1), &m).unwrap()).unwrap();
    assert_eq!(
        env.message,
        Message::Holdoff {
            duration: Duration::from_secs(2)
        }
    );
}

#[test]
fn v1_cannot_carry_what_it_did_not_know() {
    for m in [
        Message::Takeover { group: GroupId(0) },
        Message::Command {
            id: 1,
            command: Command::HaRestore,
        },
        Message::Heartbeat(Heartbeat {
            groups: vec![
                (GroupId(1), EffectiveRole::Active),
                (GroupId(2), EffectiveRole::Standby),
            ],
            ..match heartbeat() {
                Message::Heartbeat(h) => h,
                _ => unreachable!(),
            }
        }),
    ] {
        assert!(matches!(
            wire::encode(KEY, &header(1, 1), &m),
            Err(Error::NotEncodable { version: 1, .. })
        ));
    }
}

#[test]
fn a_node_answers_an_old_peer_in_the_old_version() {
    let mut old = Codec::new(KEY, "mail", "old", 1);
    let mut new = Codec::new(KEY, "mail", "new", 1);
    assert_eq!(new.version_for("old"), wire::PROTOCOL_VERSION);
    let from_old = old.seal(&heartbeat(), 1).unwrap();
    assert_eq!(new.open(&from_old).unwrap().version, 1);
    let reply = new.seal_for("old", &heartbeat()).unwrap();
    assert_eq!(reply[4], 1);
    assert_eq!(old.open(&reply).unwrap().version, 1);
}

#[test]
fn rejections_say_why() {
    let good = wire::encode(KEY, &header(2, 1), &heartbeat()).unwrap();
    let e = wire::decode(b"another key", "mail", &good).unwrap_err();
    assert_eq!(
        e,
        Error::BadMac {
            claimed_sender: "a".into()
        }
    );
    assert!(e.to_string().contains("key mismatch?"));
    assert_eq!(e.reject_reason(), Some(RejectReason::BadMac));

    let e = wire::decode(KEY, "web", &good).unwrap_err();
    assert_eq!(e.reject_reason(), Some(RejectReason::ForeignCluster));

    let mut flipped = good.clone();
    let last_body_byte = flipped.len() - 33;
    flipped[last_body_byte] ^= 1;
    assert_eq!(
        wire::decode(KEY, "mail", &flipped)
            .unwrap_err()
            .reject_reason(),
        Some(RejectReason::BadMac)
    );

    let mut future = good.clone();
    future[4] = 3;
    assert_eq!(
        wire::decode(KEY, "mail", &future).unwrap_err(),
        Error::UnsupportedVersion(3)
    );

    assert!(matches!(
        wire::decode(KEY, "mail", b"GET / HTTP/1.1"),
        Err(Error::Malformed(_))
    ));
    for n in 0..good.len() {
        assert!(
            wire::decode(KEY, "mail", &good[..n]).is_err(),
            "prefix of {n} bytes"
        );
    }
}

#[test]
fn replays_and_old_epochs_are_rejected() {
    let mut a = Codec::new(KEY, "mail", "a", 5);
    let mut b = Codec::new(KEY, "mail", "b", 1);
    let d1 = a.seal(&heartbeat(), 2).unwrap();
    let d2 = a.seal(&heartbeat(), 2).unwrap();
    // Links reorder: d2 first, then d1 — both accepted, once each.
    assert!(b.open(&d2).is_ok());
    assert!(b.open(&d1).is_ok());
    let e = b.open(&d1).unwrap_err();
    assert!(matches!(e, Error::Replay { ref sender, epoch: 5, seq: 1 } if sender == "a"));
    assert_eq!(e.reject_reason(), Some(RejectReason::Replay));
    // a restarts with a new epoch: accepted; then the old run's datagrams are not.
    let mut a2 = Codec::new(KEY, "mail", "a", 6);
    assert!(b.open(&a2.seal(&heartbeat(), 2).unwrap()).is_ok());
    let late = a.seal(&heartbeat(), 2).unwrap();
    assert!(matches!(b.open(&late), Err(Error::Replay { epoch: 5, .. })));
}

#[test]
fn replay_window() {
    let mut g = ReplayGuard::new();
    assert_eq!(g.check(1, 100), Ok(()));
    assert_eq!(g.check(1, 100), Err(ReplayVerdict::Duplicate));
    assert_eq!(g.check(1, 99), Ok(()));
    assert_eq!(g.check(1, 37), Ok(()));
    assert_eq!(g.check(1, 36), Err(ReplayVerdict::TooOld));
    assert_eq!(g.check(1, 300), Ok(()));
    assert_eq!(g.check(1, 99), Err(ReplayVerdict::TooOld));
    assert_eq!(g.check(0, 500), Err(ReplayVerdict::OldEpoch));
    assert_eq!(g.check(2, 1), Ok(()));
}

fn role() -> impl Strategy<Value = EffectiveRole> {
    prop::sample::select(vec![
        EffectiveRole::Active,
        EffectiveRole::Standby,
        EffectiveRole::HeldOff,
        EffectiveRole::Failed,
        EffectiveRole::Off,
        EffectiveRole::Syncing,
        EffectiveRole::Disconnected,
    ])
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        Just(Command::FailoverActive),
        Just(Command::FailoverStandby),
        (any::<u8>(), any::<bool>()).prop_map(|(g, active)| Command::FailoverGroup {
            group: GroupId(g),
            active
        }),
        Just(Command::HaRestore),
        Just(Command::HaRestart),
        any::<bool>().prop_map(Command::HaPreempt),
        any::<u32>().prop_map(|ms| Command::HaHoldoff(Duration::from_millis(u64::from(ms)))),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    let hb = (
        any::<u8>(),
        prop::sample::select(vec![
            ConfiguredRole::Primary,
            ConfiguredRole::Secondary,
            ConfiguredRole::ConfigOnly,
            ConfiguredRole::Off,
        ]),
        role(),
        prop::collection::vec((any::<u8>().prop_map(GroupId), role()), 0..6),
        any::<bool>(),
        prop::sample::select(vec![
            PreemptState::Disabled,
            PreemptState::Delaying,
            PreemptState::Ready,
        ]),
        "[a-z0-9.()-]{0,64}",
    )
        .prop_map(
            |(priority, configured_role, role, groups, healthy, preempt, version)| {
                Message::Heartbeat(Heartbeat {
                    priority,
                    configured_role,
                    role,
                    groups,
                    healthy,
                    preempt,
                    version,
                })
            },
        );
    prop_oneof![
        hb,
        any::<u32>().prop_map(|ms| Message::Holdoff {
            duration: Duration::from_millis(u64::from(ms))
        }),
        Just(Message::Goodbye),
        any::<u8>().prop_map(|g| Message::Takeover { group: GroupId(g) }),
        (
            any::<u8>(),
            "[a-z]{1,64}",
            prop::sample::select(vec![
                HandoverCause::Operator,
                HandoverCause::Preemption,
                HandoverCause::Restore
            ])
        )
            .prop_map(|(g, to, cause)| Message::Handover {
                group: GroupId(g),
                to,
                cause
            }),
        (any::<u32>(), command()).prop_map(|(id, command)| Message::Command { id, command }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = wire::decode(KEY, "mail", &bytes);
        let mut c = Codec::new(KEY, "mail", "b", 1);
        let _ = c.open(&bytes);
    }

    #[test]
    fn decode_never_panics_on_a_mutated_datagram(
        m in message(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cut in any::<usize>(),
    ) {
        let mut bytes = wire::encode(KEY, &header(2, 1), &m).unwrap();
        for (at, v) in edits {
            let i = at % bytes.len();
            bytes[i] = v;
        }
        bytes.truncate(cut % (bytes.len() + 1));
        // Authenticated garbage is impossible: anything that decodes is the
        // original message.
        if let Ok(env) = wire::decode(KEY, "mail", &bytes) {
            prop_assert_eq!(env.message, m);
        }
    }

    #[test]
    fn encode_then_decode_is_identity(m in message(), epoch in any::<u64>(), seq in any::<u64>()) {
        let h = Header { version: 2, cluster: "mail", sender: "node-1", epoch, seq };
        let env = wire::decode(KEY, "mail", &wire::encode(KEY, &h, &m).unwrap()).unwrap();
        prop_assert_eq!((env.version, env.sender.as_str(), env.epoch, env.seq), (2, "node-1", epoch, seq));
        prop_assert_eq!(env.message, m);
    }

    #[test]
    fn every_datagram_is_accepted_once(order in Just((0u64..40).collect::<Vec<_>>()).prop_shuffle()) {
        let mut a = Codec::new(KEY, "mail", "a", 1);
        let sealed: Vec<Vec<u8>> = (0..40).map(|_| a.seal(&Message::Goodbye, 2).unwrap()).collect();
        let mut b = Codec::new(KEY, "mail", "b", 1);
        for &i in &order {
            prop_assert!(b.open(&sealed[i as usize]).is_ok());
        }
        for &i in &order {
            let replayed = matches!(b.open(&sealed[i as usize]), Err(Error::Replay { .. }));
            prop_assert!(replayed);
        }
    }
}
