//! Pairing codes and the PAKE exchange behind them (`/persist/pair/2`).
//!
//! A code looks like `ABCD-7KQ2`: Crockford base32, the first four
//! characters a public **nameplate** (which pending code a request is for),
//! the last four the **secret** (20 bits). The whole code is the SPAKE2
//! password, with both PeerIds as the SPAKE2 identities:
//!
//! ```text
//! joiner -> host  Start { nameplate, pake: SPAKE2 B message, label }
//! host   -> joiner Challenge { pake: SPAKE2 A message, confirm: MAC_A }
//! joiner -> host  Finish { confirm: MAC_B }            (or Abort)
//! host   -> joiner Welcome { sealed: AES-GCM(store id, membership, keyring) }
//! ```
//!
//! `K = SPAKE2(code, host PeerId, joiner PeerId)`; HKDF-SHA256 of K with
//! the nameplate, both PeerIds and a hash of both SPAKE2 messages gives the
//! two confirmation MACs and the welcome key. The host burns the code when
//! the first `Start` arrives, so each code allows one guess; a wrong guess
//! fails both confirmations and both sides report `PAIRING_CODE_INVALID`.
//!
//! No offline guessing: the SPAKE2 messages are group elements blinded by
//! the password, which a guess cannot be tested against without the other
//! side's secret exponent (that is what a PAKE is for), and the MACs are
//! keyed by K, which a wrong guess does not give. Nothing derived from the
//! code is ever logged or stored; the transcript also travels inside the
//! Noise channel of the two PeerIds.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use spake2::{Ed25519Group, Identity, Password, Spake2};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Crockford's base32 alphabet: no I, L, O or U.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters in each half of a code.
const HALF: usize = 4;
/// Bits of secret in a code (4 characters of 32 symbols).
pub const SECRET_BITS: u32 = 20;
/// Characters of secret in an invite's code (130 bits).
const LONG_SECRET: usize = 26;
/// How an invite's text starts.
pub const INVITE_PREFIX: &str = "persist-invite-v1-";
/// How long a code stays valid by default.
pub const DEFAULT_CODE_TTL_MS: u64 = 10 * 60 * 1000;

/// A pairing code: a public nameplate and a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct PairingCode {
    nameplate: String,
    secret: Zeroizing<String>,
}

impl std::fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PairingCode({}-****)", self.nameplate)
    }
}

impl PairingCode {
    /// A new random code.
    pub fn generate() -> Result<PairingCode> {
        let mut random = Zeroizing::new([0u8; 2 * HALF]);
        crate::platform::fill_random(random.as_mut())?;
        let text: String = random
            .iter()
            .map(|b| ALPHABET[usize::from(b & 31)] as char)
            .collect();
        Ok(PairingCode {
            nameplate: text[..HALF].to_string(),
            secret: Zeroizing::new(text[HALF..].to_string()),
        })
    }

    /// A code with a 130-bit secret, for invites (copied, not typed).
    pub fn generate_long() -> Result<PairingCode> {
        let mut random = Zeroizing::new([0u8; HALF + LONG_SECRET]);
        crate::platform::fill_random(random.as_mut())?;
        let text: Zeroizing<String> = Zeroizing::new(
            random
                .iter()
                .map(|b| ALPHABET[usize::from(b & 31)] as char)
                .collect(),
        );
        Ok(PairingCode {
            nameplate: text[..HALF].to_string(),
            secret: Zeroizing::new(text[HALF..].to_string()),
        })
    }

    /// Reads a typed code: case and the dash do not matter, and the letters
    /// people confuse with digits (O, I, L) read as those digits.
    pub fn parse(text: &str) -> Result<PairingCode> {
        let mut clean = Zeroizing::new(String::with_capacity(2 * HALF));
        for c in text.chars() {
            let c = match c.to_ascii_uppercase() {
                '-' | ' ' => continue,
                'O' => '0',
                'I' | 'L' => '1',
                c if c.is_ascii() && ALPHABET.contains(&(c as u8)) => c,
                _ => {
                    return Err(Error::PairingCodeInvalid(
                        "a pairing code has 8 letters and digits, like ABCD-7KQ2".into(),
                    ))
                }
            };
            clean.push(c);
        }
        if clean.len() != 2 * HALF {
            return Err(Error::PairingCodeInvalid(
                "a pairing code has 8 letters and digits, like ABCD-7KQ2".into(),
            ));
        }
        Ok(PairingCode {
            nameplate: clean[..HALF].to_string(),
            secret: Zeroizing::new(clean[HALF..].to_string()),
        })
    }

    /// The public half (safe to log: it finds the code, it proves nothing).
    pub fn nameplate(&self) -> &str {
        &self.nameplate
    }

    /// The code as people type it.
    pub fn text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{}-{}", self.nameplate, &*self.secret))
    }

    fn password(&self) -> Password {
        Password::new(format!(
            "persist pair v1\0{}-{}",
            self.nameplate, &*self.secret
        ))
    }
}

/// An invite: a pairing code with a long secret, the store it joins, and
/// where to find the device that made it. Whoever holds the text can join
/// the store once, until it expires: send it only over a private channel.
#[derive(Clone)]
pub struct Invite {
    /// The code run through the pairing exchange.
    pub code: PairingCode,
    /// The store the invite joins.
    pub store: crate::change::StoreId,
    /// The inviting device.
    pub host: libp2p::PeerId,
    /// Its addresses when the invite was made.
    pub addrs: Vec<libp2p::Multiaddr>,
}

#[derive(Serialize, Deserialize)]
struct InviteWire {
    store: crate::change::StoreId,
    host: Vec<u8>,
    addrs: Vec<Vec<u8>>,
    nameplate: String,
    secret: String,
}

impl std::fmt::Debug for Invite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invite")
            .field("store", &self.store)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl Invite {
    /// The invite as text (`persist-invite-v1-...`).
    pub fn to_text(&self) -> Result<Zeroizing<String>> {
        let wire = InviteWire {
            store: self.store,
            host: self.host.to_bytes(),
            addrs: self.addrs.iter().map(|a| a.to_vec()).collect(),
            nameplate: self.code.nameplate.clone(),
            secret: self.code.secret.to_string(),
        };
        let bytes = Zeroizing::new(
            postcard::to_stdvec(&wire)
                .map_err(|e| Error::InvalidOptions(format!("cannot encode the invite: {e}")))?,
        );
        Ok(Zeroizing::new(format!(
            "{INVITE_PREFIX}{}",
            data_encoding::BASE32_NOPAD
                .encode(&bytes)
                .to_ascii_lowercase()
        )))
    }

    /// Reads an invite's text.
    pub fn parse(text: &str) -> Result<Invite> {
        let invalid = |why: &str| Error::PairingCodeInvalid(format!("not a Persist invite: {why}"));
        let body = text
            .trim()
            .strip_prefix(INVITE_PREFIX)
            .ok_or_else(|| invalid("it does not start with persist-invite-v1-"))?;
        let bytes = Zeroizing::new(
            data_encoding::BASE32_NOPAD
                .decode(body.to_ascii_uppercase().as_bytes())
                .map_err(|_| invalid("damaged text"))?,
        );
        let wire: InviteWire = postcard::from_bytes(&bytes).map_err(|_| invalid("damaged text"))?;
        let host = libp2p::PeerId::from_bytes(&wire.host).map_err(|_| invalid("bad peer id"))?;
        let addrs = wire
            .addrs
            .into_iter()
            .map(|a| libp2p::Multiaddr::try_from(a).map_err(|_| invalid("bad address")))
            .collect::<Result<Vec<_>>>()?;
        if wire.nameplate.len() != HALF
            || wire.secret.len() != LONG_SECRET
            || !(wire.nameplate.bytes().chain(wire.secret.bytes())).all(|b| ALPHABET.contains(&b))
        {
            return Err(invalid("bad code"));
        }
        Ok(Invite {
            code: PairingCode {
                nameplate: wire.nameplate,
                secret: Zeroizing::new(wire.secret),
            },
            store: wire.store,
            host,
            addrs,
        })
    }
}

/// A device's fingerprint, `XXXX-XXXX`: 40 bits of a hash of its peer id
/// in the code alphabet, for a person to compare on two screens before
/// accepting a joining device.
pub fn fingerprint(peer: &libp2p::PeerId) -> String {
    let digest = Sha256::new()
        .chain_update(b"persist/fingerprint/v1\0")
        .chain_update(peer.to_bytes())
        .finalize();
    let bits = digest[..5]
        .iter()
        .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte));
    let chars: String = (0..8)
        .map(|i| char::from(ALPHABET[((bits >> (35 - 5 * i)) & 31) as usize]))
        .collect();
    format!("{}-{}", &chars[..4], &chars[4..])
}

/// A request of `/persist/pair/2`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PairRequest {
    /// The joiner's first move.
    Start {
        /// The code's public half.
        nameplate: String,
        /// SPAKE2 message (side B).
        pake: Vec<u8>,
        /// A name for the joining device.
        label: String,
    },
    /// The joiner proves it derived the same key.
    Finish {
        /// MAC_B.
        confirm: [u8; 32],
    },
    /// The joiner gives up (the host's proof did not check).
    Abort,
}

/// A response of `/persist/pair/2`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PairResponse {
    /// The host's move and proof.
    Challenge {
        /// SPAKE2 message (side A).
        pake: Vec<u8>,
        /// MAC_A.
        confirm: [u8; 32],
    },
    /// What the joiner needs, sealed under the welcome key.
    Welcome {
        /// The sealed [`crate::store::Welcome`].
        sealed: Vec<u8>,
    },
    /// Refused, with the error code the joiner reports.
    Refused {
        /// A stable error code (`PAIRING_CODE_INVALID`, ...).
        code: String,
        /// For people.
        reason: String,
    },
    /// Acknowledges an abort.
    Aborted,
}

/// Every move of the joiner is small: a stranger cannot make the host
/// read more than a few KiB.
impl crate::net::codec::Bounded for PairRequest {
    fn max_bytes(tag: u8) -> usize {
        match tag {
            0..=2 => crate::net::MAX_SMALL_MESSAGE_BYTES, // Start, Finish, Abort
            _ => 0,
        }
    }
}

/// The welcome carries the store's membership log and keys; the joiner
/// reads it only from the host it chose, after both proved the code.
impl crate::net::codec::Bounded for PairResponse {
    fn max_bytes(tag: u8) -> usize {
        match tag {
            1 => crate::net::MAX_MESSAGE_BYTES,               // Welcome
            0 | 2 | 3 => crate::net::MAX_SMALL_MESSAGE_BYTES, // Challenge, Refused, Aborted
            _ => 0,
        }
    }
}

/// Keys both sides derive from the SPAKE2 key.
struct PairKeys {
    confirm_host: [u8; 32],
    confirm_joiner: [u8; 32],
    welcome: Zeroizing<[u8; 32]>,
}

fn derive(
    key: &[u8],
    nameplate: &str,
    host: &[u8],
    joiner: &[u8],
    host_msg: &[u8],
    joiner_msg: &[u8],
) -> Result<PairKeys> {
    let transcript = Sha256::new()
        .chain_update((host_msg.len() as u32).to_be_bytes())
        .chain_update(host_msg)
        .chain_update(joiner_msg)
        .finalize();
    let mut out = Zeroizing::new([0u8; 96]);
    let info = [
        b"persist pair v1\0".as_slice(),
        nameplate.as_bytes(),
        &[0],
        host,
        &[0],
        joiner,
    ]
    .concat();
    crate::crypto::expand(Some(&transcript), key, &info, out.as_mut())?;
    let mut keys = PairKeys {
        confirm_host: [0; 32],
        confirm_joiner: [0; 32],
        welcome: Zeroizing::new([0; 32]),
    };
    keys.confirm_host.copy_from_slice(&out[..32]);
    keys.confirm_joiner.copy_from_slice(&out[32..64]);
    keys.welcome.copy_from_slice(&out[64..]);
    Ok(keys)
}

/// Associated data of the sealed welcome.
pub fn welcome_context(host: &[u8], joiner: &[u8]) -> Vec<u8> {
    crate::crypto::envelope::context(&[b"pair welcome", host, joiner])
}

/// The host's side after it answered a `Start`.
pub struct HostSession {
    keys: PairKeys,
}

impl HostSession {
    /// Answers a joiner's `Start` for `code`: the host's SPAKE2 message and
    /// proof. `host` and `joiner` are the two PeerIds' bytes.
    pub fn respond(
        code: &PairingCode,
        host: &[u8],
        joiner: &[u8],
        joiner_msg: &[u8],
    ) -> Result<(HostSession, Vec<u8>, [u8; 32])> {
        let (state, host_msg) = Spake2::<Ed25519Group>::start_a(
            &code.password(),
            &Identity::new(host),
            &Identity::new(joiner),
        );
        let key = Zeroizing::new(
            state
                .finish(joiner_msg)
                .map_err(|_| Error::PairingCodeInvalid("malformed pairing message".into()))?,
        );
        let keys = derive(&key, code.nameplate(), host, joiner, &host_msg, joiner_msg)?;
        let confirm = keys.confirm_host;
        Ok((HostSession { keys }, host_msg, confirm))
    }

    /// Checks the joiner's proof; the welcome key when it holds.
    pub fn finish(self, confirm: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>> {
        if bool::from(self.keys.confirm_joiner.ct_eq(confirm)) {
            Ok(self.keys.welcome)
        } else {
            Err(Error::PairingCodeInvalid(
                "the other device typed another code".into(),
            ))
        }
    }
}

/// The joiner's side after its `Start`.
pub struct JoinerSession {
    state: Spake2<Ed25519Group>,
    code: PairingCode,
    host: Vec<u8>,
    joiner: Vec<u8>,
    joiner_msg: Vec<u8>,
}

impl JoinerSession {
    /// Starts pairing with `code` towards `host`.
    pub fn start(code: PairingCode, host: &[u8], joiner: &[u8]) -> (JoinerSession, PairRequest) {
        let (state, joiner_msg) = Spake2::<Ed25519Group>::start_b(
            &code.password(),
            &Identity::new(host),
            &Identity::new(joiner),
        );
        let request = PairRequest::Start {
            nameplate: code.nameplate().to_string(),
            pake: joiner_msg.clone(),
            label: String::new(),
        };
        let session = JoinerSession {
            state,
            code,
            host: host.to_vec(),
            joiner: joiner.to_vec(),
            joiner_msg,
        };
        (session, request)
    }

    /// Checks the host's proof; the joiner's proof and the welcome key
    /// when it holds.
    pub fn confirm(
        self,
        host_msg: &[u8],
        confirm: &[u8; 32],
    ) -> Result<([u8; 32], Zeroizing<[u8; 32]>)> {
        let key = Zeroizing::new(
            self.state
                .finish(host_msg)
                .map_err(|_| Error::PairingCodeInvalid("malformed pairing message".into()))?,
        );
        let keys = derive(
            &key,
            self.code.nameplate(),
            &self.host,
            &self.joiner,
            host_msg,
            &self.joiner_msg,
        )?;
        if !bool::from(keys.confirm_host.ct_eq(confirm)) {
            return Err(Error::PairingCodeInvalid(
                "the code does not match the other device's".into(),
            ));
        }
        Ok((keys.confirm_joiner, keys.welcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &[u8] = b"host peer id";
    const JOINER: &[u8] = b"joiner peer id";

    fn run(host_code: &str, joiner_code: &str) -> Result<()> {
        let host_code = PairingCode::parse(host_code)?;
        let joiner_code = PairingCode::parse(joiner_code)?;
        let (joiner, start) = JoinerSession::start(joiner_code, HOST, JOINER);
        let PairRequest::Start { pake, .. } = start else {
            unreachable!()
        };
        let (host, host_msg, confirm) = HostSession::respond(&host_code, HOST, JOINER, &pake)?;
        let (proof, joiner_key) = joiner.confirm(&host_msg, &confirm)?;
        let host_key = host.finish(&proof)?;
        assert_eq!(*host_key, *joiner_key);
        Ok(())
    }

    #[test]
    fn the_same_code_pairs_and_agrees_on_a_key() {
        run("ABCD-7KQ2", "abcd7kq2").expect("pairs");
        // O, I and L read as 0 and 1.
        run("AB0D-1K12", "ABOD-IKL2").expect("pairs");
    }

    #[test]
    fn a_wrong_code_fails_on_both_sides() {
        let err = run("ABCD-7KQ2", "ABCD-7KQ3").expect_err("wrong secret");
        assert_eq!(err.code(), "PAIRING_CODE_INVALID");
        let err = run("ABCD-7KQ2", "ABCE-7KQ2").expect_err("wrong nameplate");
        assert_eq!(err.code(), "PAIRING_CODE_INVALID");
    }

    #[test]
    fn a_session_bound_to_other_peers_fails() {
        let code = PairingCode::parse("ABCD-7KQ2").expect("code");
        let (joiner, start) = JoinerSession::start(code.clone(), HOST, JOINER);
        let PairRequest::Start { pake, .. } = start else {
            unreachable!()
        };
        // A host that thinks it talks to someone else (a splice).
        let (_, host_msg, confirm) =
            HostSession::respond(&code, HOST, b"someone else", &pake).expect("respond");
        assert!(joiner.confirm(&host_msg, &confirm).is_err());
        // A reflected message (the joiner's own) is refused by SPAKE2.
        let (joiner, start) = JoinerSession::start(code, HOST, JOINER);
        let PairRequest::Start { pake, .. } = start else {
            unreachable!()
        };
        assert!(joiner.confirm(&pake, &[0; 32]).is_err());
    }

    #[test]
    fn invites_round_trip_and_refuse_damage() {
        let invite = Invite {
            code: PairingCode::generate_long().expect("code"),
            store: crate::change::StoreId::from_bytes([3; 16]),
            host: libp2p::PeerId::random(),
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".parse().expect("addr")],
        };
        let text = invite.to_text().expect("encodes");
        assert!(text.starts_with(INVITE_PREFIX));
        let read = Invite::parse(&text).expect("parse");
        assert_eq!(read.code, invite.code);
        assert_eq!(
            (read.store, read.host, read.addrs.clone()),
            (invite.store, invite.host, invite.addrs.clone())
        );
        assert_eq!(read.code.secret.len() * 5, 130);
        for bad in [
            "",
            "persist-invite-v1-",
            "persist-invite-v1-!!",
            &text[..text.len() - 5],
        ] {
            assert!(Invite::parse(bad).is_err(), "{bad}");
        }
        // A long code pairs like a short one.
        let code = invite.code.text();
        assert!(
            PairingCode::parse(&code).is_err(),
            "invites are not typed codes"
        );
    }

    #[test]
    fn codes_have_the_documented_shape_and_entropy() {
        let code = PairingCode::generate().expect("code");
        let text = code.text();
        assert_eq!(text.len(), 9);
        assert_eq!(&text[4..5], "-");
        assert_eq!(PairingCode::parse(&text).expect("parse"), code);
        assert_eq!(SECRET_BITS, (HALF as u32) * 5);
        for bad in ["", "ABCD", "ABCD-7KQ2X", "ABCD-7KQ!", "ÄBCD-7KQ2"] {
            assert!(PairingCode::parse(bad).is_err(), "{bad}");
        }
        // Debug output never shows the secret.
        assert!(!format!("{code:?}").contains(&text[5..]));
    }
}
