//! The wire between lem-coord and lem-worker (both halves live here, and lem-coord
//! uses this module, so the two can never disagree): tarpc messages as JSON in length-delimited frames over TCP, with a frame
//! limit so a peer cannot make either side buffer without bound.

use lem_common::rpc::{CoordinatorClient, CoordinatorRequest, CoordinatorResponse};
use tarpc::serde_transport::Transport;
use tarpc::{ClientMessage, Response};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

pub use crate::frame::MAX_FRAME_BYTES;
use crate::frame::{length_codec as codec, ClientFormat, ServerFormat};

pub type ServerTransport = Transport<
    TcpStream,
    ClientMessage<CoordinatorRequest>,
    Response<CoordinatorResponse>,
    ServerFormat,
>;

pub fn server_transport(stream: TcpStream) -> ServerTransport {
    tarpc::serde_transport::new(Framed::new(stream, codec()), ServerFormat::default())
}

/// Connects to a coordinator; the error says which address failed and what to check.
pub async fn connect(addr: &str) -> anyhow::Result<CoordinatorClient> {
    let stream = tokio::time::timeout(std::time::Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("cannot reach the coordinator at {addr}: connection timed out (is `lem-coord start` running there? set --coordinator or LEM_COORDINATOR)"))?
        .map_err(|e| anyhow::anyhow!("cannot reach the coordinator at {addr}: {e} (is `lem-coord start` running there? set --coordinator or LEM_COORDINATOR)"))?;
    let _ = stream.set_nodelay(true);
    let transport =
        tarpc::serde_transport::new(Framed::new(stream, codec()), ClientFormat::default());
    Ok(CoordinatorClient::new(tarpc::client::Config::default(), transport).spawn())
}
