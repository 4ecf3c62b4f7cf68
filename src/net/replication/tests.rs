//! The replication core on its own: the decisions, without storage.

use super::*;
use crate::identity::DeviceIdentity;

const STORE: StoreId = StoreId::from_bytes([1; 16]);

#[test]
fn a_member_is_pulled_on_connect_and_a_stranger_is_not() {
    let mut core: Replication<u8> = Replication::new();
    assert!(matches!(
        core.connected(1, true)[..],
        [Action::Pull { peer: 1 }]
    ));
    assert!(core.connected(2, false).is_empty());
}

#[test]
fn a_stranger_is_refused_and_another_store_too() {
    let mut core: Replication<u8> = Replication::new();
    core.connected(1, false);
    let pull = |store| Incoming::Pull {
        store,
        have: vec![],
        limit: 10,
        members: [0; 32],
        reply: 7,
    };
    let refused = |actions: Vec<Action<u8>>| match &actions[..] {
        [Action::Reply {
            token: 7,
            response: SyncResponse::Refused(code),
        }] => code.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        refused(core.handle(1, false, STORE, pull(STORE))),
        "NOT_TRUSTED"
    );
    let other = StoreId::from_bytes([2; 16]);
    assert_eq!(
        refused(core.handle(1, true, STORE, pull(other))),
        "WRONG_STORE"
    );
}

#[test]
fn pushes_wait_for_the_peers_pull_and_never_overlap() {
    let mut core: Replication<u8> = Replication::new();
    core.connected(1, true);
    // Not heard yet: nothing to push.
    assert!(core.on_local_commits(|_| true).is_empty());
    let author = DeviceIdentity::from_secret(&[3; 32]).device_id();
    let actions = core.handle(
        1,
        true,
        STORE,
        Incoming::Pull {
            store: STORE,
            have: vec![(author, 4)],
            limit: 10_000,
            members: [9; 32],
            reply: 1,
        },
    );
    // The answer is read (the limit capped), and it was pulled already.
    match &actions[..] {
        [Action::Read {
            have,
            limit,
            purpose: Purpose::Answer { reply: 1, .. },
            theirs: Some(theirs),
            ..
        }] => {
            assert_eq!(have, &vec![(author, 4)]);
            assert_eq!(*limit, PULL_LIMIT as usize);
            assert_eq!(theirs, &[9; 32]);
        }
        other => panic!("{other:?}"),
    }
    // Two local commits while one push is read: one read, then one more.
    assert_eq!(core.on_local_commits(|_| true).len(), 1);
    assert!(core.on_local_commits(|_| true).is_empty());
    let again = core.read_done(1, Purpose::Push, vec![], 0, None, [9; 32]);
    assert!(matches!(
        again[..],
        [Action::Read {
            purpose: Purpose::Push,
            ..
        }]
    ));
}

#[test]
fn pulled_pages_continue_while_they_make_progress() {
    let mut core: Replication<u8> = Replication::new();
    core.connected(1, true);
    let arrival = Arrival::Pulled {
        more: true,
        remaining: 5,
    };
    let progress = Ingested {
        applied: 3,
        ..Ingested::default()
    };
    let actions = core.ingested(1, arrival, progress);
    assert!(matches!(
        actions[..],
        [
            Action::Synced { remaining: 5, .. },
            Action::Pull { peer: 1 }
        ]
    ));
    // A page that stored nothing new stops the paging (no loop).
    let stuck = Ingested {
        rejected: 3,
        ..Ingested::default()
    };
    let actions = core.ingested(1, arrival, stuck);
    assert!(matches!(actions[..], [Action::Synced { .. }]));
}

#[test]
fn a_refused_push_answers_with_the_version_vector() {
    let mut core: Replication<u8> = Replication::new();
    core.connected(1, true);
    let author = DeviceIdentity::from_secret(&[3; 32]).device_id();
    let outcome = Ingested {
        rejected: 1,
        gap: true,
        have: Some(vec![(author, 2)]),
        ..Ingested::default()
    };
    let live = core.ingested(1, Arrival::Pushed { reply: None }, outcome.clone());
    assert!(matches!(
        &live[..],
        [
            Action::Synced { .. },
            Action::Pull { .. },
            Action::Have { .. }
        ]
    ));
    let request = core.ingested(1, Arrival::Pushed { reply: Some(4) }, outcome);
    assert!(matches!(
        &request[..],
        [
            Action::Synced { .. },
            Action::Pull { .. },
            Action::Reply {
                token: 4,
                response: SyncResponse::Ack { have: Some(_), .. }
            }
        ]
    ));
}
