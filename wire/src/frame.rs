//! The wire's framing and encoding as pure functions: bytes in, messages out, through
//! the very codec and JSON format [`crate::transport`] puts on a socket.
//!
//! A peer controls every byte it sends, so the decoder is where the wire meets
//! untrusted input. The fuzz targets in `fuzz/` drive it from memory: an in-memory
//! `Cursor` stands in for the socket and the same `tarpc::serde_transport::Transport`
//! reads it, with no runtime and no socket.

use std::io;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::{Sink, SinkExt, Stream, StreamExt};
use lem_common::rpc::{CoordinatorRequest, CoordinatorResponse};
use tarpc::{ClientMessage, Request, Response};
use tokio_serde::formats::Json;
use tokio_serde::{Deserializer, Serializer};
use tokio_util::bytes::{Bytes, BytesMut};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// Largest frame either side accepts (a study text or a result with its metrics).
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// Messages a decoder stops after, so a flood of empty frames still ends.
pub const MAX_DECODED_MESSAGES: usize = 4096;

/// The length-delimited framing both sides use: a 4-byte big-endian length, then
/// that many bytes of JSON, at most [`MAX_FRAME_BYTES`].
pub fn length_codec() -> LengthDelimitedCodec {
    length_codec_with(MAX_FRAME_BYTES)
}

/// The same framing with a smaller limit (the coordinator allows unauthenticated
/// peers much less than [`MAX_FRAME_BYTES`]).
pub fn length_codec_with(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(max_frame)
        .new_codec()
}

/// Farthest request deadline the coordinator accepts: far past any real one (a long
/// poll waits a minute) and far inside what an `Instant` can hold.
pub const MAX_REQUEST_DEADLINE: Duration = Duration::from_secs(365 * 24 * 3600);

/// The coordinator's side of the format: tokio-serde's JSON, writing responses, and
/// reading requests through a mirror of tarpc's wire shape that refuses a deadline
/// past [`MAX_REQUEST_DEADLINE`].
///
/// tarpc's own `Deserialize` turns the deadline on the wire (a duration from now)
/// into `Instant::now() + deadline` as it parses, which panics when the sum
/// overflows: one frame with `"deadline": {"secs": 9223372036854775807, ...}` made
/// the coordinator's connection task panic (found by the bounded fuzz pass in
/// `fuzz/`). Checking the JSON beforehand is not enough, since tarpc reaches the
/// deadline before it finds a syntax error later in the frame.
#[derive(Debug, Default)]
pub struct ServerFormat {
    json: Json<ClientMessage<CoordinatorRequest>, Response<CoordinatorResponse>>,
}

impl Deserializer<ClientMessage<CoordinatorRequest>> for ServerFormat {
    type Error = io::Error;

    fn deserialize(
        self: Pin<&mut Self>,
        src: &BytesMut,
    ) -> Result<ClientMessage<CoordinatorRequest>, io::Error> {
        let wire: WireMessage = serde_json::from_slice(src)?;
        wire.into_message()
    }
}

impl Serializer<Response<CoordinatorResponse>> for ServerFormat {
    type Error = serde_json::Error;

    fn serialize(
        self: Pin<&mut Self>,
        item: &Response<CoordinatorResponse>,
    ) -> Result<Bytes, serde_json::Error> {
        Pin::new(&mut self.get_mut().json).serialize(item)
    }
}

/// `tarpc::ClientMessage` as its serde derive writes it, with the deadline kept as
/// the duration it is on the wire.
#[derive(serde::Deserialize)]
enum WireMessage {
    Request(Box<WireRequest>),
    Cancel {
        #[serde(default)]
        trace_context: tarpc::trace::Context,
        request_id: u64,
    },
}

#[derive(serde::Deserialize)]
struct WireRequest {
    context: WireContext,
    id: u64,
    message: CoordinatorRequest,
}

#[derive(serde::Deserialize)]
struct WireContext {
    /// tarpc's default when absent: ten seconds from now.
    #[serde(default = "ten_seconds")]
    deadline: Duration,
    trace_context: tarpc::trace::Context,
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

impl WireMessage {
    fn into_message(self) -> io::Result<ClientMessage<CoordinatorRequest>> {
        match self {
            WireMessage::Request(r) => {
                let deadline = r.context.deadline;
                if deadline > MAX_REQUEST_DEADLINE {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "request {} has a deadline {} s away, more than the limit of {} s",
                            r.id,
                            deadline.as_secs(),
                            MAX_REQUEST_DEADLINE.as_secs()
                        ),
                    ));
                }
                let mut context = tarpc::context::current();
                context.deadline = Instant::now() + deadline;
                context.trace_context = r.context.trace_context;
                Ok(ClientMessage::Request(Request {
                    context,
                    id: r.id,
                    message: r.message,
                }))
            }
            WireMessage::Cancel {
                trace_context,
                request_id,
            } => Ok(ClientMessage::Cancel {
                trace_context,
                request_id,
            }),
        }
    }
}

/// A worker's or the CLI's side: reads responses, writes requests.
pub type ClientFormat = Json<Response<CoordinatorResponse>, ClientMessage<CoordinatorRequest>>;

/// Decodes what a client sent, as the coordinator's transport does: every message up
/// to and including the first error (after which the transport closes).
pub fn decode_requests(bytes: &[u8]) -> Vec<io::Result<ClientMessage<CoordinatorRequest>>> {
    decode(bytes, ServerFormat::default())
}

/// Decodes what the coordinator sent, as a client's transport does.
pub fn decode_responses(bytes: &[u8]) -> Vec<io::Result<Response<CoordinatorResponse>>> {
    decode(bytes, ClientFormat::default())
}

/// The bytes a client's transport writes for `messages`, frame after frame.
pub fn encode_requests(messages: Vec<ClientMessage<CoordinatorRequest>>) -> io::Result<Vec<u8>> {
    encode(messages, ClientFormat::default())
}

/// The bytes the coordinator's transport writes for `messages`.
pub fn encode_responses(messages: Vec<Response<CoordinatorResponse>>) -> io::Result<Vec<u8>> {
    encode(messages, ServerFormat::default())
}

/// The production transport over bytes in memory instead of a socket.
type MemoryTransport<Item, SinkItem, Format> =
    tarpc::serde_transport::Transport<io::Cursor<Vec<u8>>, Item, SinkItem, Format>;

fn memory_transport<Item, SinkItem, Format>(
    bytes: Vec<u8>,
    format: Format,
) -> MemoryTransport<Item, SinkItem, Format>
where
    Item: for<'de> serde::Deserialize<'de>,
    SinkItem: serde::Serialize,
    Format: Serializer<SinkItem> + Deserializer<Item>,
{
    tarpc::serde_transport::new(Framed::new(io::Cursor::new(bytes), length_codec()), format)
}

fn decode<Item, SinkItem, Format>(bytes: &[u8], format: Format) -> Vec<io::Result<Item>>
where
    Item: for<'de> serde::Deserialize<'de>,
    SinkItem: serde::Serialize,
    Format: Serializer<SinkItem> + Deserializer<Item>,
    MemoryTransport<Item, SinkItem, Format>: Stream<Item = io::Result<Item>> + Unpin,
{
    let mut transport = memory_transport::<Item, SinkItem, Format>(bytes.to_vec(), format);
    futures::executor::block_on(async {
        let mut out = Vec::new();
        while let Some(item) = transport.next().await {
            let failed = item.is_err();
            out.push(item);
            if failed || out.len() >= MAX_DECODED_MESSAGES {
                break;
            }
        }
        out
    })
}

fn encode<Item, SinkItem, Format>(messages: Vec<SinkItem>, format: Format) -> io::Result<Vec<u8>>
where
    Item: for<'de> serde::Deserialize<'de>,
    SinkItem: serde::Serialize,
    Format: Serializer<SinkItem> + Deserializer<Item>,
    MemoryTransport<Item, SinkItem, Format>: Sink<SinkItem, Error = io::Error> + Unpin,
{
    let mut transport = memory_transport::<Item, SinkItem, Format>(Vec::new(), format);
    futures::executor::block_on(async {
        for m in messages {
            transport.feed(m).await?;
        }
        transport.flush().await
    })?;
    Ok(transport.get_ref().get_ref().clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lem_common::types::CampaignId;

    fn status_request(deadline: Duration) -> ClientMessage<CoordinatorRequest> {
        let mut context = tarpc::context::current();
        context.deadline = std::time::Instant::now() + deadline;
        ClientMessage::Request(Request {
            context,
            id: 9,
            message: CoordinatorRequest::Status {
                campaign: CampaignId(4),
            },
        })
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn requests_and_responses_come_back_as_sent() {
        let bytes = encode_requests(vec![
            status_request(Duration::from_secs(10)),
            status_request(Duration::from_secs(20)),
        ])
        .unwrap();
        let decoded = decode_requests(&bytes);
        assert_eq!(decoded.len(), 2);
        for d in decoded {
            match d.unwrap() {
                ClientMessage::Request(r) => {
                    assert_eq!(r.id, 9);
                    assert!(matches!(
                        r.message,
                        CoordinatorRequest::Status {
                            campaign: CampaignId(4)
                        }
                    ));
                }
                other => panic!("decoded {other:?}"),
            }
        }
        let bytes = encode_responses(vec![Response {
            request_id: 9,
            message: Ok(CoordinatorResponse::Fail(Ok(()))),
        }])
        .unwrap();
        let decoded = decode_responses(&bytes);
        assert_eq!(decoded.len(), 1);
        assert_eq!(decoded[0].as_ref().unwrap().request_id, 9);
    }

    // Found by the bounded fuzz pass: tarpc computed `Instant::now() + deadline` and
    // panicked on overflow.
    #[test]
    fn a_deadline_no_clock_can_hold_is_refused_not_a_panic() {
        let payload = br#"{"Request":{"context":{"deadline":{"secs":9223372036854775807,"nanos":0},"trace_context":{"trace_id":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],"span_id":0,"sampling_decision":"Unsampled"}},"id":1,"message":{"Campaigns":{}}}}"#;
        let decoded = decode_requests(&frame(payload));
        assert_eq!(decoded.len(), 1);
        let err = decoded[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("request 1 has a deadline 9223372036854775807 s away, more than the limit of 31536000 s"), "{err}");
        // A year is still accepted.
        let bytes = encode_requests(vec![status_request(MAX_REQUEST_DEADLINE)]).unwrap();
        assert!(decode_requests(&bytes)[0].is_ok());
    }

    #[test]
    fn bad_frames_are_errors() {
        // A length past the limit.
        let mut too_long = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes().to_vec();
        too_long.extend_from_slice(b"{}");
        let decoded = decode_requests(&too_long);
        assert!(decoded.len() == 1 && decoded[0].is_err());
        // A frame cut short, and JSON that is not a message.
        assert!(decode_requests(&frame(b"{\"Request\":")[..6])[0].is_err());
        assert!(decode_responses(&frame(b"[1, 2]"))[0].is_err());
        // Nothing at all is no message.
        assert!(decode_requests(&[]).is_empty());
    }
}
