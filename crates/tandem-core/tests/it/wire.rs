//! The wire format: both protocol versions, every rejection, and proptest
//! over arbitrary bytes.

use proptest::prelude::*;
use std::time::Duration;
use tandem_core::wire::{self, Header, RejectReason, ReplayGuard, ReplayVerdict};
use tandem_core::*;

const KEY: &[u8] = b"correct horse battery staple";
/// The receiver's wall clock (Unix ms) in these tests.
const NOW: u64 = 1_700_000_000_000;

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
        fencing: Vec::new(),
    })
}

#[test]
fn v3_carries_fencing_epochs_and_v2_refuses_them() {
    let Message::Heartbeat(plain) = heartbeat() else {
        unreachable!("heartbeat() builds a heartbeat")
    };
    let fenced = Message::Heartbeat(Heartbeat {
        fencing: vec![(GroupId(0), 7), (GroupId(3), u64::MAX)],
        ..plain.clone()
    });
    let bytes = wire::encode(KEY, &header(3, 1), &fenced).expect("encode in v3");
    let env = wire::decode(KEY, "mail", &bytes).expect("decode the datagram");
    assert_eq!(env.message, fenced);
    assert!(matches!(
        wire::encode(KEY, &header(2, 1), &fenced),
        Err(tandem_core::Error::NotEncodable { version: 2, .. })
    ));
    // Without epochs a v2 heartbeat still goes out, and decodes with none.
    let v2 =
        wire::encode(KEY, &header(2, 1), &Message::Heartbeat(plain.clone())).expect("encode in v2");
    let env = wire::decode(KEY, "mail", &v2).expect("decode the v2 datagram");
    assert_eq!(env.message, Message::Heartbeat(plain));
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
        let bytes = wire::encode(KEY, &header(2, i as u64), &m).expect("encode the message");
        let env = wire::decode(KEY, "mail", &bytes).expect("decode the datagram");
        assert_eq!(
            (env.version, env.sender.as_str(), env.epoch, env.seq),
            (2, "a", 7, i as u64)
        );
        assert_eq!(env.message, m);
    }
}

#[test]
fn v1_heartbeat_decodes_as_group_zero_without_the_v2_fields() {
    let bytes = wire::encode(KEY, &header(1, 1), &heartbeat()).expect("encode the message");
    assert_eq!(bytes[4], 1, "version byte");
    let env = wire::decode(KEY, "mail", &bytes).expect("decode the datagram");
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
            fencing: Vec::new(),
        })
    );
}

#[test]
fn v1_holdoff_is_in_whole_seconds_rounded_up() {
    let m = Message::Holdoff {
        duration: Duration::from_millis(1500),
    };
    let env = wire::decode(
        KEY,
        "mail",
        &wire::encode(KEY, &header(1, 1), &m).expect("encode the message"),
    )
    .expect("decode the datagram");
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
    let from_old = old.seal(&heartbeat(), 1).expect("seal the message");
    assert_eq!(
        new.open(&from_old, NOW).expect("open the datagram").version,
        1
    );
    let reply = new.seal_for("old", &heartbeat()).expect("seal the message");
    assert_eq!(reply[4], 1);
    assert_eq!(old.open(&reply, NOW).expect("open the datagram").version, 1);
}

#[test]
fn rejections_say_why() {
    let good = wire::encode(KEY, &header(2, 1), &heartbeat()).expect("encode the message");
    let e = wire::decode(b"another key", "mail", &good).expect_err("decode with another key");
    assert_eq!(
        e,
        Error::BadMac {
            claimed_sender: "a".into()
        }
    );
    assert!(e.to_string().contains("key mismatch?"));
    assert_eq!(e.reject_reason(), Some(RejectReason::BadMac));

    let e = wire::decode(KEY, "web", &good).expect_err("decode for another cluster");
    assert_eq!(e.reject_reason(), Some(RejectReason::ForeignCluster));

    let mut flipped = good.clone();
    let last_body_byte = flipped.len() - 33;
    flipped[last_body_byte] ^= 1;
    assert_eq!(
        wire::decode(KEY, "mail", &flipped)
            .expect_err("decode a flipped byte")
            .reject_reason(),
        Some(RejectReason::BadMac)
    );

    let mut future = good.clone();
    future[4] = wire::PROTOCOL_VERSION + 1;
    assert_eq!(
        wire::decode(KEY, "mail", &future).expect_err("decode a future version"),
        Error::UnsupportedVersion(wire::PROTOCOL_VERSION + 1)
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
    let d1 = a.seal(&heartbeat(), 2).expect("seal the message");
    let d2 = a.seal(&heartbeat(), 2).expect("seal the message");
    // Links reorder: d2 first, then d1 — both accepted, once each.
    assert!(b.open(&d2, NOW).is_ok());
    assert!(b.open(&d1, NOW).is_ok());
    let e = b.open(&d1, NOW).expect_err("open a replayed datagram");
    assert!(matches!(e, Error::Replay { ref sender, epoch: 5, seq: 1 } if sender == "a"));
    assert_eq!(e.reject_reason(), Some(RejectReason::Replay));
    // a restarts with a new epoch: accepted. The previous run stays live
    // (the guard keeps two epochs), so its replays are still refused...
    let mut a2 = Codec::new(KEY, "mail", "a", 6);
    assert!(
        b.open(&a2.seal(&heartbeat(), 2).expect("seal the message"), NOW)
            .is_ok()
    );
    assert!(matches!(
        b.open(&d2, NOW),
        Err(Error::Replay { epoch: 5, .. })
    ));
    // ...and once a restarts again, the run before last is an old epoch.
    let mut a3 = Codec::new(KEY, "mail", "a", 7);
    assert!(
        b.open(&a3.seal(&heartbeat(), 2).expect("seal the message"), NOW)
            .is_ok()
    );
    let late = a.seal(&heartbeat(), 2).expect("seal the message");
    assert!(matches!(
        b.open(&late, NOW),
        Err(Error::Replay { epoch: 5, .. })
    ));
}

/// The real peer `a` booted five minutes before `NOW`.
const REAL_EPOCH: u64 = NOW - 5 * 60 * 1000;

/// A datagram from "a" sealed with the cluster key, with any epoch and seq:
/// what a holder of the key (or a peer with a broken clock) can send.
fn forged(epoch: u64, seq: u64) -> Vec<u8> {
    let h = Header {
        version: 2,
        cluster: "mail",
        sender: "a",
        epoch,
        seq,
    };
    wire::encode(KEY, &h, &Message::Goodbye).expect("encode the message")
}

#[test]
fn a_forged_far_future_epoch_is_refused_and_the_peer_stays_accepted() {
    let mut a = Codec::new(KEY, "mail", "a", REAL_EPOCH);
    let mut b = Codec::new(KEY, "mail", "b", 1);
    assert!(
        b.open(&a.seal(&heartbeat(), 2).expect("seal the message"), NOW)
            .is_ok()
    );
    for epoch in [u64::MAX, NOW + wire::MAX_EPOCH_AHEAD + 1] {
        let e = b
            .open(&forged(epoch, 1), NOW)
            .expect_err("open a far-future epoch");
        assert!(matches!(e, Error::Replay { epoch: x, .. } if x == epoch));
        assert_eq!(e.reject_reason(), Some(RejectReason::Replay));
    }
    assert!(
        b.open(&a.seal(&heartbeat(), 2).expect("seal the message"), NOW)
            .is_ok()
    );
    // Exactly an hour ahead is still allowed (clock skew).
    assert!(b.open(&forged(NOW + wire::MAX_EPOCH_AHEAD, 1), NOW).is_ok());
    let mut g = ReplayGuard::new();
    assert_eq!(g.check(u64::MAX, 1, NOW), Err(ReplayVerdict::FutureEpoch));
    assert_eq!(g.check(REAL_EPOCH, 1, NOW), Ok(()));
}

#[test]
fn a_forged_epoch_within_the_hour_locks_neither_the_epoch_nor_the_restart_out() {
    let mut a = Codec::new(KEY, "mail", "a", REAL_EPOCH);
    let mut b = Codec::new(KEY, "mail", "b", 1);
    let d1 = a.seal(&heartbeat(), 2).expect("seal the message");
    assert!(b.open(&d1, NOW).is_ok());
    // A forged epoch 30 minutes ahead becomes the newest live epoch...
    let f1 = forged(NOW + 30 * 60 * 1000, 1);
    assert!(b.open(&f1, NOW).is_ok());
    // ...but the real epoch stays live, with its own window.
    let d2 = a.seal(&heartbeat(), 2).expect("seal the message");
    assert!(b.open(&d2, NOW).is_ok());
    assert!(matches!(b.open(&d1, NOW), Err(Error::Replay { .. })));
    assert!(matches!(b.open(&d2, NOW), Err(Error::Replay { .. })));
    assert!(matches!(b.open(&f1, NOW), Err(Error::Replay { .. })));
    // A far-future forgery on top changes nothing.
    assert!(b.open(&forged(u64::MAX, 1), NOW).is_err());
    assert!(
        b.open(&a.seal(&heartbeat(), 2).expect("seal the message"), NOW)
            .is_ok()
    );
    // The real peer restarts (a larger epoch, still below the forged one):
    // accepted, replacing the previous run as the older live epoch.
    let mut a2 = Codec::new(KEY, "mail", "a", NOW);
    let r1 = a2.seal(&heartbeat(), 2).expect("seal the message");
    assert!(b.open(&r1, NOW).is_ok());
    assert!(
        b.open(&a2.seal(&heartbeat(), 2).expect("seal the message"), NOW)
            .is_ok()
    );
    assert!(matches!(b.open(&r1, NOW), Err(Error::Replay { .. })));
    let late = a.seal(&heartbeat(), 2).expect("seal the message");
    assert!(matches!(
        b.open(&late, NOW),
        Err(Error::Replay {
            epoch: REAL_EPOCH,
            ..
        })
    ));
}

#[test]
fn a_restart_after_a_refused_far_future_epoch_is_accepted() {
    let mut a = Codec::new(KEY, "mail", "a", REAL_EPOCH);
    let mut b = Codec::new(KEY, "mail", "b", 1);
    assert!(
        b.open(&a.seal(&heartbeat(), 2).expect("seal the message"), NOW)
            .is_ok()
    );
    assert!(b.open(&forged(u64::MAX, 7), NOW).is_err());
    let mut a2 = Codec::new(KEY, "mail", "a", NOW + 1);
    assert!(
        b.open(&a2.seal(&heartbeat(), 2).expect("seal the message"), NOW)
            .is_ok()
    );
    assert!(
        b.open(&a2.seal(&heartbeat(), 2).expect("seal the message"), NOW)
            .is_ok()
    );
}

/// One step of [`no_single_forged_epoch_locks_a_real_epoch_out`].
#[derive(Debug, Clone)]
enum Step {
    /// A forged datagram (valid MAC) with this epoch (never the real one) and seq.
    Forged(u64, u64),
    /// The real peer's next datagram (a fresh sequence number).
    Real,
}

fn step() -> impl Strategy<Value = Step> {
    let epoch = prop_oneof![
        any::<u64>(),
        Just(u64::MAX),
        (REAL_EPOCH - 1000)..(REAL_EPOCH + 1000),
        (REAL_EPOCH + 1)..=(NOW + wire::MAX_EPOCH_AHEAD + 1000),
    ]
    .prop_map(|e| if e == REAL_EPOCH { e + 1 } else { e });
    prop_oneof![
        (epoch, 0u64..200).prop_map(|(e, seq)| Step::Forged(e, seq)),
        Just(Step::Real),
    ]
}

#[test]
fn replay_window() {
    let mut g = ReplayGuard::new();
    assert_eq!(g.check(1, 100, NOW), Ok(()));
    assert_eq!(g.check(1, 100, NOW), Err(ReplayVerdict::Duplicate));
    assert_eq!(g.check(1, 99, NOW), Ok(()));
    assert_eq!(g.check(1, 37, NOW), Ok(()));
    assert_eq!(g.check(1, 36, NOW), Err(ReplayVerdict::TooOld));
    assert_eq!(g.check(1, 300, NOW), Ok(()));
    assert_eq!(g.check(1, 99, NOW), Err(ReplayVerdict::TooOld));
    assert_eq!(g.check(0, 500, NOW), Err(ReplayVerdict::OldEpoch));
    assert_eq!(g.check(2, 1, NOW), Ok(()));
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
        prop::collection::vec((any::<u8>().prop_map(GroupId), any::<u64>()), 0..4),
    )
        .prop_map(
            |(priority, configured_role, role, groups, healthy, preempt, version, fencing)| {
                Message::Heartbeat(Heartbeat {
                    priority,
                    configured_role,
                    role,
                    groups,
                    healthy,
                    preempt,
                    version,
                    fencing,
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
        let _ = c.open(&bytes, NOW);
    }

    #[test]
    fn decode_never_panics_on_a_mutated_datagram(
        m in message(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cut in any::<usize>(),
    ) {
        let mut bytes = wire::encode(KEY, &header(3, 1), &m).expect("encode the message");
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
        let h = Header { version: 3, cluster: "mail", sender: "node-1", epoch, seq };
        let env = wire::decode(KEY, "mail", &wire::encode(KEY, &h, &m).expect("encode the message")).expect("decode the datagram");
        prop_assert_eq!((env.version, env.sender.as_str(), env.epoch, env.seq), (3, "node-1", epoch, seq));
        prop_assert_eq!(env.message, m);
    }

    /// Property: the real peer's epoch E = `REAL_EPOCH` was accepted; then,
    /// among up to 12 steps, forged datagrams (valid MAC, arbitrary epoch
    /// other than E, arbitrary seq) interleave with the real peer's next
    /// datagrams (fresh, increasing seq in E). Every real datagram is
    /// accepted unless, before it, at least two distinct forged epochs
    /// greater than E had been accepted (and then it is refused only as a
    /// replay). No forged epoch more than `MAX_EPOCH_AHEAD` past `NOW` is
    /// ever accepted.
    #[test]
    fn no_single_forged_epoch_locks_a_real_epoch_out(steps in prop::collection::vec(step(), 0..=12)) {
        let mut a = Codec::new(KEY, "mail", "a", REAL_EPOCH);
        let mut b = Codec::new(KEY, "mail", "b", 1);
        prop_assert!(b.open(&a.seal(&heartbeat(), 2).expect("seal the message"), NOW).is_ok());
        let mut newer_forged = std::collections::BTreeSet::new();
        for s in steps.into_iter().chain([Step::Real]) {
            match s {
                Step::Forged(epoch, seq) => {
                    let accepted = b.open(&forged(epoch, seq), NOW).is_ok();
                    prop_assert!(!accepted || epoch <= NOW + wire::MAX_EPOCH_AHEAD);
                    if accepted && epoch > REAL_EPOCH {
                        newer_forged.insert(epoch);
                    }
                }
                Step::Real => match b.open(&a.seal(&heartbeat(), 2).expect("seal the message"), NOW) {
                    Ok(_) => {}
                    Err(e) => {
                        prop_assert!(newer_forged.len() >= 2, "refused: {e}, forged: {newer_forged:?}");
                        let replay = matches!(e, Error::Replay { .. });
                        prop_assert!(replay);
                    }
                },
            }
        }
    }

    #[test]
    fn every_datagram_is_accepted_once(order in Just((0u64..40).collect::<Vec<_>>()).prop_shuffle()) {
        let mut a = Codec::new(KEY, "mail", "a", 1);
        let sealed: Vec<Vec<u8>> = (0..40).map(|_| a.seal(&Message::Goodbye, 2).expect("seal the message")).collect();
        let mut b = Codec::new(KEY, "mail", "b", 1);
        for &i in &order {
            prop_assert!(b.open(&sealed[i as usize], NOW).is_ok());
        }
        for &i in &order {
            let replayed = matches!(b.open(&sealed[i as usize], NOW), Err(Error::Replay { .. }));
            prop_assert!(replayed);
        }
    }
}
