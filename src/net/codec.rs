//! The wire framing of Persist's protocols: one length-prefixed `postcard`
//! message each way per stream, at most [`MAX_MESSAGE_BYTES`].

use std::io;
use std::marker::PhantomData;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response;
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use super::MAX_MESSAGE_BYTES;

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

pub(crate) async fn read_message<T, M>(io: &mut T) -> io::Result<M>
where
    T: AsyncRead + Unpin + Send,
    M: for<'de> Deserialize<'de>,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("sync message of {len} bytes exceeds {MAX_MESSAGE_BYTES}"),
        ));
    }
    // Grown as bytes arrive: a peer announcing a large message and sending
    // little costs little memory.
    let mut bytes = Vec::with_capacity(len.min(64 << 10));
    (&mut *io).take(len as u64).read_to_end(&mut bytes).await?;
    if bytes.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "sync message shorter than its length",
        ));
    }
    postcard::from_bytes(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A message with its length prefix, ready to write at once (one
/// encrypted transport frame for a small message).
pub(crate) fn frame<M: Serialize>(message: &M) -> io::Result<Vec<u8>> {
    let bytes =
        postcard::to_stdvec(message).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "sync message too large",
        ));
    }
    let mut framed = Vec::with_capacity(4 + bytes.len());
    framed.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    framed.extend_from_slice(&bytes);
    Ok(framed)
}

pub(crate) async fn write_message<T, M>(io: &mut T, message: &M) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
    M: Serialize,
{
    io.write_all(&frame(message)?).await?;
    io.close().await
}

impl<Req, Resp> request_response::Codec for Codec<Req, Resp>
where
    Req: Serialize + for<'de> Deserialize<'de> + Send + Sync + 'static,
    Resp: Serialize + for<'de> Deserialize<'de> + Send + Sync + 'static,
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
