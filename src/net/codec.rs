//! The wire framing of Persist's protocols: one length-prefixed `postcard`
//! message each way per stream, at most what its kind of message can need
//! ([`Bounded`]) and never more than [`MAX_MESSAGE_BYTES`]. The limit is
//! checked on the length prefix and the message's first byte (its
//! variant), before the body is read.

use std::io;
use std::marker::PhantomData;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response;
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use super::MAX_MESSAGE_BYTES;

/// A message whose encoding is capped per variant.
pub trait Bounded {
    /// The largest encoding of a message whose first byte (`postcard`'s
    /// variant index) is `tag`; 0 for a tag that is no variant.
    fn max_bytes(tag: u8) -> usize;

    /// Checks the first bytes of a message (up to 64) as soon
    /// as they arrive, before the rest is read: a kind that carries a
    /// commit list refuses a list longer than a page on its declared
    /// length (`page_after`), so a flood costs a few bytes, not its body.
    fn check_head(_head: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// How many bytes of a message [`Bounded::check_head`] sees, at most.
pub(crate) const HEAD_BYTES: usize = 64;

/// Refuses a message of variant `tag` whose fields before its commit list
/// decode as `Before` and whose list declares more than a page. A head too
/// short to hold the length passes: the whole message is checked again as
/// it is decoded.
pub(crate) fn page_after<Before>(head: &[u8], tag: u32) -> Result<(), String>
where
    Before: for<'de> Deserialize<'de>,
{
    let Ok(((variant, _, declared), _)) = postcard::take_from_bytes::<(u32, Before, usize)>(head)
    else {
        return Ok(());
    };
    if variant == tag {
        check_page(declared)?;
    }
    Ok(())
}

/// Refuses a commit list declaring more than a page ([`PULL_LIMIT`]).
///
/// [`PULL_LIMIT`]: super::PULL_LIMIT
fn check_page(declared: usize) -> Result<(), String> {
    let limit = super::PULL_LIMIT as usize;
    if declared > limit {
        return Err(format!(
            "{declared} commits in one message (at most {limit})"
        ));
    }
    Ok(())
}

/// Reads the commits of a message: at most a page ([`PULL_LIMIT`]), as
/// its sender pages them. A longer list is refused on its declared length,
/// before any commit is decoded.
///
/// [`PULL_LIMIT`]: super::PULL_LIMIT
pub(crate) fn at_most_a_page<'de, D>(
    deserializer: D,
) -> Result<Vec<crate::change::SignedCommit>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Page;
    impl<'de> serde::de::Visitor<'de> for Page {
        type Value = Vec<crate::change::SignedCommit>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "at most {} commits", super::PULL_LIMIT)
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let limit = super::PULL_LIMIT as usize;
            let declared = seq.size_hint().unwrap_or(0);
            check_page(declared).map_err(serde::de::Error::custom)?;
            let mut commits = Vec::with_capacity(declared);
            while let Some(commit) = seq.next_element()? {
                if commits.len() == limit {
                    return Err(serde::de::Error::custom(format!(
                        "more than {limit} commits in one message"
                    )));
                }
                commits.push(commit);
            }
            Ok(commits)
        }
    }
    deserializer.deserialize_seq(Page)
}

/// Length-prefixed `postcard` messages, bounded.
/// (`Req` and `Resp`: the protocol's request and response types.)
pub struct Codec<Req, Resp>(PhantomData<fn() -> (Req, Resp)>);

impl<Req, Resp> Default for Codec<Req, Resp> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

impl<Req, Resp> Clone for Codec<Req, Resp> {
    fn clone(&self) -> Self {
        Codec(PhantomData)
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

pub(crate) async fn read_message<T, M>(io: &mut T) -> io::Result<M>
where
    T: AsyncRead + Unpin + Send,
    M: for<'de> Deserialize<'de> + Bounded,
{
    let mut first = [0u8; 1];
    io.read_exact(&mut first).await?;
    read_message_from(first[0], io).await
}

/// Reads the rest of a message whose first byte was `first` (a reader
/// that waits for messages without a deadline, then reads each within
/// one).
pub(crate) async fn read_message_from<T, M>(first: u8, io: &mut T) -> io::Result<M>
where
    T: AsyncRead + Unpin + Send,
    M: for<'de> Deserialize<'de> + Bounded,
{
    let mut head = [first, 0, 0, 0, 0];
    io.read_exact(&mut head[1..4]).await?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len == 0 || len > MAX_MESSAGE_BYTES {
        return Err(invalid(format!(
            "a message of {len} bytes (at most {MAX_MESSAGE_BYTES})"
        )));
    }
    io.read_exact(&mut head[4..]).await?;
    let limit = M::max_bytes(head[4]).min(MAX_MESSAGE_BYTES);
    if len > limit {
        return Err(invalid(format!(
            "a message of kind {} and {len} bytes (at most {limit})",
            head[4]
        )));
    }
    // Grown as bytes arrive: a peer announcing a large message and sending
    // little costs little memory.
    let mut bytes = Vec::with_capacity(len.min(64 << 10));
    bytes.push(head[4]);
    let head_len = len.min(HEAD_BYTES);
    (&mut *io)
        .take(head_len as u64 - 1)
        .read_to_end(&mut bytes)
        .await?;
    if bytes.len() == head_len {
        M::check_head(&bytes).map_err(invalid)?;
    }
    (&mut *io)
        .take((len - bytes.len()) as u64)
        .read_to_end(&mut bytes)
        .await?;
    if bytes.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "sync message shorter than its length",
        ));
    }
    match postcard::take_from_bytes(&bytes) {
        Ok((message, [])) => Ok(message),
        Ok((_, rest)) => Err(invalid(format!(
            "{} bytes after the end of a message",
            rest.len()
        ))),
        Err(e) => Err(invalid(e.to_string())),
    }
}

/// Decodes one framed message (length prefix and body) as a node reads it
/// from a stream: the same limits, the same refusals. Bytes after the
/// frame are an error.
pub fn decode<M>(framed: &[u8]) -> io::Result<M>
where
    M: for<'de> Deserialize<'de> + Bounded,
{
    let mut input = futures::io::Cursor::new(framed);
    // A cursor never waits: the future is ready when first polled.
    let message = futures::executor::block_on(read_message(&mut input))?;
    if input.position() != framed.len() as u64 {
        return Err(invalid("bytes after the end of a frame".into()));
    }
    Ok(message)
}

/// A message with its length prefix, ready to write at once (one
/// encrypted transport frame for a small message). A message over its
/// kind's limit is refused here too: the peer would refuse it.
pub(crate) fn frame<M: Serialize + Bounded>(message: &M) -> io::Result<Vec<u8>> {
    let bytes = postcard::to_stdvec(message).map_err(|e| invalid(e.to_string()))?;
    let limit = bytes
        .first()
        .map_or(0, |tag| M::max_bytes(*tag).min(MAX_MESSAGE_BYTES));
    if bytes.len() > limit {
        return Err(invalid(format!(
            "a message of {} bytes (at most {limit})",
            bytes.len()
        )));
    }
    let mut framed = Vec::with_capacity(4 + bytes.len());
    framed.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    framed.extend_from_slice(&bytes);
    Ok(framed)
}

pub(crate) async fn write_message<T, M>(io: &mut T, message: &M) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
    M: Serialize + Bounded,
{
    io.write_all(&frame(message)?).await?;
    io.close().await
}

impl<Req, Resp> request_response::Codec for Codec<Req, Resp>
where
    Req: Serialize + for<'de> Deserialize<'de> + Bounded + Send + Sync + 'static,
    Resp: Serialize + for<'de> Deserialize<'de> + Bounded + Send + Sync + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_message(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_message(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Req,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_message(io, &request).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_message(io, &response).await
    }
}
