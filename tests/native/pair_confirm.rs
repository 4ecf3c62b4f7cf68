//! The host's checks around pairing: a code made with confirmation gives
//! the joiner nothing until the user accepts it (label and fingerprint
//! shown), a refused or failed source waits before its next attempt, and
//! its attempt then burns no code.

use std::time::Duration;

use futures::StreamExt;
use persist::net::{pairing, CodeOptions, P2p, P2pEvent, P2pOptions};

use crate::p2p::{dial_addr, memory_store, wrong_code};

/// The next pairing request `events` report.
async fn request(
    events: &mut futures::channel::mpsc::Receiver<P2pEvent>,
) -> (libp2p::PeerId, String, String) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(P2pEvent::PairingRequest {
                peer,
                label,
                nameplate,
            }) = events.next().await
            {
                return (peer, label, nameplate);
            }
        }
    })
    .await
    .expect("a pairing request in 10 s")
}

async fn node(name: &str) -> (persist::Store, P2p) {
    let store = memory_store(name).await;
    let node = store
        .enable_p2p(P2pOptions::loopback())
        .await
        .expect("node");
    (store, node)
}

/// `node` pairs with `code` at `addr`, in a task of its own.
fn join_in_background(
    node: &P2p,
    code: &str,
    addr: &libp2p::Multiaddr,
) -> tokio::task::JoinHandle<persist::Result<libp2p::PeerId>> {
    let (node, code, addr) = (node.clone(), code.to_owned(), addr.clone());
    tokio::spawn(async move { node.pair(&code, Some(addr)).await })
}

fn confirmed() -> CodeOptions {
    CodeOptions {
        confirm: true,
        ..CodeOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_code_welcomes_only_the_device_the_user_accepts() {
    let (_a, host) = node("laptop").await;
    let (_b, phone) = node("phone").await;
    let (_c, stranger) = node("stranger").await;
    let addr = dial_addr(&host).await;
    let mut events = host.events();

    // Accepted: the user saw the joiner's label and fingerprint.
    let pending = host
        .create_pairing_code_with(confirmed())
        .await
        .expect("code");
    let code = pending.code().to_string();
    let joining = join_in_background(&phone, &code, &addr);
    let (peer, label, nameplate) = request(&mut events).await;
    assert_eq!(peer, phone.peer_id());
    assert_eq!(label, "phone");
    assert_eq!(nameplate, code[..4]);
    assert_eq!(pairing::fingerprint(&peer), phone.fingerprint());
    // Nothing of the store reached the joiner yet.
    assert!(!joining.is_finished());
    assert!(!host
        .trusted_peers()
        .expect("members")
        .contains(&phone.peer_id()));
    host.confirm_pairing(peer, true).await.expect("accepted");
    let joined = tokio::time::timeout(Duration::from_secs(10), joining)
        .await
        .expect("joined in 10 s")
        .expect("task");
    assert_eq!(joined.expect("joined"), host.peer_id());
    assert_eq!(pending.paired().await.expect("hosted"), phone.peer_id());

    // Refused: a device that had the right code (typed over someone's
    // shoulder) gets nothing, and the user's refusal is final for a while.
    let pending = host
        .create_pairing_code_with(confirmed())
        .await
        .expect("code");
    let joining = join_in_background(&stranger, pending.code(), &addr);
    let (peer, label, _) = request(&mut events).await;
    assert_eq!((peer, label.as_str()), (stranger.peer_id(), "stranger"));
    host.confirm_pairing(peer, false).await.expect("refused");
    let refused = joining.await.expect("task").expect_err("refused");
    assert_eq!(refused.code(), "PAIRING_FAILED");
    assert!(refused.to_string().contains("refused"), "{refused}");
    assert_eq!(
        pending.paired().await.expect_err("not paired").code(),
        "PAIRING_FAILED"
    );
    assert!(!host
        .trusted_peers()
        .expect("members")
        .contains(&stranger.peer_id()));
    // No one waits now.
    assert_eq!(
        host.confirm_pairing(peer, true)
            .await
            .expect_err("nobody")
            .code(),
        "PAIRING_FAILED"
    );

    // The refused device tries the next code at once: refused without
    // burning it, so the user's device still pairs with it.
    let pending = host.create_pairing_code().await.expect("code");
    let code = pending.code().to_string();
    let again = stranger.pair(&code, Some(addr.clone())).await;
    let again = again.expect_err("cooling down");
    assert_eq!(again.code(), "PAIRING_FAILED");
    assert!(again.to_string().contains("try again"), "{again}");
    let (_d, tablet) = node("tablet").await;
    let (joined, hosted) = tokio::join!(tablet.pair(&code, Some(addr)), pending.paired());
    assert_eq!(joined.expect("the code survived"), host.peer_id());
    assert_eq!(hosted.expect("hosted"), tablet.peer_id());
    for node in [host, phone, stranger, tablet] {
        node.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_guess_makes_its_source_wait_and_burns_no_later_code() {
    let (_a, host) = node("laptop").await;
    let (_b, guesser) = node("guesser").await;
    let addr = dial_addr(&host).await;
    let pending = host.create_pairing_code().await.expect("code");
    let wrong = wrong_code(pending.code());
    let first = guesser.pair(&wrong, Some(addr.clone())).await;
    assert_eq!(first.expect_err("wrong").code(), "PAIRING_CODE_INVALID");
    assert_eq!(
        pending.paired().await.expect_err("burnt").code(),
        "PAIRING_CODE_INVALID"
    );
    // The host's gate closes the guesser's connection once no code is
    // offered (on its next tick); the race below starts after that, not on
    // a connection about to close (the joiner would only see it close).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while guesser
        .connected_peers()
        .await
        .expect("peers")
        .contains(&host.peer_id())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the gate kept the guesser"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The user makes a new code; the guesser races it with the right
    // nameplate: refused, and the code still works.
    let pending = host.create_pairing_code().await.expect("code");
    let good = pending.code().to_string();
    let race = wrong_code(&good);
    let raced = guesser.pair(&race, Some(addr.clone())).await;
    let raced = raced.expect_err("cooling");
    assert_eq!(raced.code(), "PAIRING_FAILED", "{raced}");
    let (_c, phone) = node("phone").await;
    let (joined, hosted) = tokio::join!(phone.pair(&good, Some(addr)), pending.paired());
    assert_eq!(joined.expect("joined"), host.peer_id());
    assert_eq!(hosted.expect("hosted"), phone.peer_id());
    for node in [host, guesser, phone] {
        node.shutdown();
    }
}
