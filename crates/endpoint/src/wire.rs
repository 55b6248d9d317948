//! Framing of PostgreSQL's protocol on a byte stream, both ways: the client's side (we are its
//! server) and the servers' side (we are their client). The messages themselves are `pgwire`'s
//! types; rows and descriptions pass through unchanged.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use pgwire::messages::{
    DecodeContext, PgWireBackendMessage, PgWireFrontendMessage, ProtocolVersion,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::error::EndpointError;

/// A connection's byte stream: plain TCP, or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Buffered reading and writing of whole messages. Writes are buffered until `flush`, so a
/// batch of messages leaves in one packet.
pub struct Framed<S> {
    stream: S,
    read: BytesMut,
    write: BytesMut,
    context: DecodeContext,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    /// For the client's side: starts awaiting an SSL request or a startup message.
    pub fn client_side(stream: S) -> Self {
        let mut context = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
        context.awaiting_ssl = true;
        context.awaiting_startup = true;
        Framed {
            stream,
            read: BytesMut::with_capacity(8192),
            write: BytesMut::with_capacity(8192),
            context,
        }
    }

    /// For a server's side: we send the startup message ourselves.
    pub fn server_side(stream: S) -> Self {
        let mut context = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
        context.awaiting_ssl = false;
        context.awaiting_startup = false;
        Framed {
            stream,
            read: BytesMut::with_capacity(8192),
            write: BytesMut::with_capacity(8192),
            context,
        }
    }

    pub fn context_mut(&mut self) -> &mut DecodeContext {
        &mut self.context
    }

    pub fn into_inner(self) -> S {
        self.stream
    }

    async fn fill(&mut self) -> Result<bool, EndpointError> {
        let read = self.stream.read_buf(&mut self.read).await?;
        Ok(read > 0)
    }

    /// The next message from a client; `None` when it closed the connection.
    pub async fn read_frontend(&mut self) -> Result<Option<PgWireFrontendMessage>, EndpointError> {
        loop {
            if let Some(message) = PgWireFrontendMessage::decode(&mut self.read, &self.context)? {
                return Ok(Some(message));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// The next message from a server; an error when it closed the connection.
    pub async fn read_backend(&mut self) -> Result<PgWireBackendMessage, EndpointError> {
        loop {
            if let Some(message) = PgWireBackendMessage::decode(&mut self.read, &self.context)? {
                return Ok(message);
            }
            if !self.fill().await? {
                return Err(EndpointError::Closed);
            }
        }
    }

    /// One byte, for the answer to an SSL request.
    pub async fn read_byte(&mut self) -> Result<u8, EndpointError> {
        while self.read.is_empty() {
            if !self.fill().await? {
                return Err(EndpointError::Closed);
            }
        }
        Ok(self.read.get_u8())
    }

    pub fn has_buffered_input(&self) -> bool {
        !self.read.is_empty()
    }

    pub fn queue_frontend(&mut self, message: &PgWireFrontendMessage) -> Result<(), EndpointError> {
        message.encode(&mut self.write)?;
        Ok(())
    }

    pub fn queue_backend(&mut self, message: &PgWireBackendMessage) -> Result<(), EndpointError> {
        message.encode(&mut self.write)?;
        Ok(())
    }

    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.write.extend_from_slice(bytes);
    }

    pub fn pending_output(&self) -> usize {
        self.write.len()
    }

    pub async fn flush(&mut self) -> Result<(), EndpointError> {
        if !self.write.is_empty() {
            self.stream.write_all(&self.write).await?;
            self.write.clear();
        }
        self.stream.flush().await?;
        Ok(())
    }
}
