//! The wire between lem-coord and lem-worker (both halves live here, and lem-coord
//! uses this module, so the two can never disagree): tarpc messages as JSON in
//! length-delimited frames (a 4-byte big-endian length, then the payload), over TCP
//! or TLS over TCP.
//!
//! Frames have a length limit so a peer cannot make either side buffer without
//! bound, and [`FrameDeadline`] closes a connection whose frame does not arrive
//! whole in time, so a peer that trickles bytes (a slowloris) cannot hold it open.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use lem_common::rpc::{CoordinatorClient, CoordinatorRequest, CoordinatorResponse};
use rustls::pki_types::ServerName;
use tarpc::serde_transport::Transport;
use tarpc::{ClientMessage, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::tls;

pub use crate::frame::MAX_FRAME_BYTES;
use crate::frame::{ClientFormat, ServerFormat};
/// How long a client waits for TCP, then for the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn codec(max_frame: usize) -> tokio_util::codec::LengthDelimitedCodec {
    crate::frame::length_codec_with(max_frame)
}

pub type ServerTransport<S> =
    Transport<S, ClientMessage<CoordinatorRequest>, Response<CoordinatorResponse>, ServerFormat>;

/// The server's side of one connection, with frames of at most `max_frame` bytes.
pub fn server_transport<S: AsyncRead + AsyncWrite>(
    stream: S,
    max_frame: usize,
) -> ServerTransport<S> {
    tarpc::serde_transport::new(
        Framed::new(stream, codec(max_frame)),
        ServerFormat::default(),
    )
}

/// How a client reaches the coordinator.
#[derive(Clone)]
pub enum Security {
    /// Plain TCP: only a coordinator listening on loopback (or started with
    /// `--insecure`) answers it.
    Plain,
    /// TLS with this configuration (mutual TLS when it carries a credential).
    Tls(Arc<rustls::ClientConfig>),
}

/// A coordinator's address and how to speak to it.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: String,
    pub security: Security,
    /// Where the credential came from, for error messages (`--data-dir DIR`, a file).
    pub credential: Option<String>,
}

impl Endpoint {
    pub fn plain(addr: &str) -> Endpoint {
        Endpoint {
            addr: addr.to_string(),
            security: Security::Plain,
            credential: None,
        }
    }

    /// Mutual TLS with the credential in `creds`.
    pub fn with_credentials(addr: &str, creds: &tls::Credentials) -> anyhow::Result<Endpoint> {
        Ok(Endpoint {
            addr: addr.to_string(),
            security: Security::Tls(tls::client_config(creds)?),
            credential: Some(creds.path.display().to_string()),
        })
    }
}

/// Why a client could not connect.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing answered (wrong address, coordinator down): worth retrying.
    #[error("cannot reach the coordinator at {addr}: {reason} (is `lem-coord start` running there? set --coordinator or LEM_COORDINATOR)")]
    Unreachable { addr: String, reason: String },
    /// Something answered but the TLS handshake failed: retrying will not help.
    #[error("TLS handshake with the coordinator at {addr} failed: {reason}{hint}")]
    Handshake {
        addr: String,
        reason: String,
        hint: String,
    },
}

impl ConnectError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ConnectError::Unreachable { .. })
    }
}

/// Connects to a coordinator; the error says which address failed and what to check.
pub async fn connect(ep: &Endpoint) -> Result<CoordinatorClient, ConnectError> {
    let addr = &ep.addr;
    let unreachable = |reason: String| ConnectError::Unreachable {
        addr: addr.clone(),
        reason,
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| unreachable("connection timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let config = tarpc::client::Config::default();
    match &ep.security {
        Security::Plain => {
            let transport = tarpc::serde_transport::new(
                Framed::new(stream, codec(MAX_FRAME_BYTES)),
                ClientFormat::default(),
            );
            Ok(CoordinatorClient::new(config, transport).spawn())
        }
        Security::Tls(tls_config) => {
            let connector = tokio_rustls::TlsConnector::from(tls_config.clone());
            let name = ServerName::try_from(tls::SERVER_NAME).expect("a valid DNS name");
            let handshake = |reason: String| ConnectError::Handshake {
                addr: addr.clone(),
                hint: handshake_hint(&reason, ep.credential.as_deref()),
                reason,
            };
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream))
                .await
                .map_err(|_| handshake("no answer within 10 s".into()))?
                .map_err(|e| handshake(e.to_string()))?;
            let transport = tarpc::serde_transport::new(
                Framed::new(stream, codec(MAX_FRAME_BYTES)),
                ClientFormat::default(),
            );
            Ok(CoordinatorClient::new(config, transport).spawn())
        }
    }
}

/// What to check after a failed handshake, from its reason.
fn handshake_hint(reason: &str, credential: Option<&str>) -> String {
    let Some(c) = credential else {
        return String::new();
    };
    if reason.contains("UnknownIssuer") || reason.contains("BadSignature") {
        format!(" (the coordinator's certificate is not from the CA in {c}: that file is a credential of another coordinator)")
    } else if reason.contains("eof") || reason.contains("reset") {
        format!(" (the coordinator closed the connection: one without TLS, such as `lem-coord run`'s, answers only plain clients; drop {c} there)")
    } else {
        format!(" (is {c} a credential of this coordinator?)")
    }
}

/// Where a reader is in a stream of length-prefixed frames. Pure: fed the bytes
/// as they arrive, it says whether a frame has begun and not yet ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrameTracker {
    header: [u8; 4],
    header_len: usize,
    payload_left: u64,
}

impl FrameTracker {
    /// Takes the next bytes of the stream; returns how many frames they completed.
    pub fn feed(&mut self, mut bytes: &[u8]) -> usize {
        let mut completed = 0;
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = (self.payload_left.min(bytes.len() as u64)) as usize;
                self.payload_left -= n as u64;
                bytes = &bytes[n..];
                completed += (self.payload_left == 0) as usize;
                continue;
            }
            self.header[self.header_len] = bytes[0];
            self.header_len += 1;
            bytes = &bytes[1..];
            if self.header_len == 4 {
                self.payload_left = u32::from_be_bytes(self.header) as u64;
                self.header_len = 0;
                completed += (self.payload_left == 0) as usize;
            }
        }
        completed
    }

    /// Whether a frame has begun (some of its header or payload arrived) and not ended.
    pub fn mid_frame(&self) -> bool {
        self.header_len > 0 || self.payload_left > 0
    }
}

/// A stream whose reads fail with `TimedOut` when a frame that has begun does not
/// end within `limit` of its first byte. Between frames there is no limit: a
/// worker may hold a connection quietly for as long as it likes.
pub struct FrameDeadline<S> {
    inner: S,
    limit: Duration,
    frames: FrameTracker,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> FrameDeadline<S> {
    pub fn new(inner: S, limit: Duration) -> Self {
        FrameDeadline {
            inner,
            limit,
            frames: FrameTracker::default(),
            deadline: None,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let completed = this.frames.feed(&buf.filled()[before..]);
                if !this.frames.mid_frame() {
                    this.deadline = None;
                } else if completed > 0 || this.deadline.is_none() {
                    // A frame began in this read (perhaps right after others ended).
                    this.deadline = Some(Box::pin(tokio::time::sleep(this.limit)));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if let Some(d) = this.deadline.as_mut() {
                    if d.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "a frame did not arrive whole within {} s of its first byte",
                                this.limit.as_secs()
                            ),
                        )));
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_tracker_follows_frames_split_anywhere() {
        let mut stream = Vec::new();
        for payload in [&b"abc"[..], b"", b"0123456789"] {
            stream.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            stream.extend_from_slice(payload);
        }
        // Fed whole, byte by byte, and in every two-piece split: ends between frames.
        let mut t = FrameTracker::default();
        assert_eq!(t.feed(&stream), 3);
        assert!(!t.mid_frame());
        let mut t = FrameTracker::default();
        let mut mids = 0;
        for b in &stream {
            t.feed(std::slice::from_ref(b));
            mids += t.mid_frame() as usize;
        }
        assert!(!t.mid_frame());
        // After "abc"'s frame and the empty frame, it is between frames twice.
        assert_eq!(mids, stream.len() - 3);
        for cut in 0..stream.len() {
            let mut t = FrameTracker::default();
            t.feed(&stream[..cut]);
            let boundary = [0, 7, 11, stream.len()].contains(&cut);
            assert_eq!(t.mid_frame(), !boundary, "cut at {cut}");
            t.feed(&stream[cut..]);
            assert!(!t.mid_frame());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_frame_times_out_and_an_idle_connection_does_not() {
        let (client, server) = tokio::io::duplex(1024);
        let mut server = FrameDeadline::new(server, Duration::from_secs(30));
        let (mut _client_r, mut client_w) = tokio::io::split(client);
        // A whole frame, then a long quiet spell: fine.
        client_w.write_all(&[0, 0, 0, 2, b'h', b'i']).await.unwrap();
        let mut buf = [0u8; 6];
        server.read_exact(&mut buf).await.unwrap();
        let quiet = tokio::time::timeout(Duration::from_secs(3600), server.read(&mut buf)).await;
        assert!(quiet.is_err(), "no frame began, so no deadline");
        // Half a header, then one byte every 10 s: cut at 30 s after the first byte.
        client_w.write_all(&[0, 0]).await.unwrap();
        let start = tokio::time::Instant::now();
        let trickle = tokio::spawn(async move {
            for b in [0u8, 50, 1, 2, 3, 4, 5] {
                tokio::time::sleep(Duration::from_secs(10)).await;
                if client_w.write_all(&[b]).await.is_err() {
                    break;
                }
            }
            client_w
        });
        let err = loop {
            match server.read(&mut buf).await {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        trickle.abort();
    }
}
