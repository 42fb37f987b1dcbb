//! What a server sends on a `WatchSecrets` stream: a message, or its wire
//! bytes encoded once and shared by every stream of a fan-out.
//!
//! A rotation reaches thousands of streams with the same update. Encoding it
//! once and handing each stream a reference to the bytes leaves each stream
//! only what truly differs (its decision and its audit record). The bytes on
//! the wire are exactly those of the [`v1::WatchSecretsResponse`]; clients
//! decode that message as usual. Only the generated *server* code sends this
//! type (see `build.rs`).

use std::{fmt, sync::Arc};

use prost::{
    DecodeError, Message,
    bytes::{Buf, BufMut},
    encoding::{DecodeContext, WireType},
};
use zeroize::Zeroizing;

use crate::v1;

/// One message of a `WatchSecrets` stream, as the server sends it.
///
/// Cloning an encoded reply copies a reference, not the bytes. The bytes
/// carry secret values: they are wiped when the last clone is dropped, and
/// `Debug` prints only their length.
#[derive(Clone)]
pub struct WatchReply(Repr);

#[derive(Clone)]
enum Repr {
    Message(v1::WatchSecretsResponse),
    Encoded(Arc<Zeroizing<Vec<u8>>>),
}

impl WatchReply {
    /// Encodes `message` once; every clone of the result shares the bytes.
    pub fn encoded(message: &v1::WatchSecretsResponse) -> Self {
        let mut bytes = Zeroizing::new(Vec::with_capacity(message.encoded_len()));
        message.encode_raw(&mut *bytes);
        Self(Repr::Encoded(Arc::new(bytes)))
    }

    /// The message itself (decoded again if this reply is encoded): for
    /// tests and in-process callers, never on the serving path.
    pub fn into_message(self) -> Result<v1::WatchSecretsResponse, DecodeError> {
        match self.0 {
            Repr::Message(message) => Ok(message),
            Repr::Encoded(bytes) => v1::WatchSecretsResponse::decode(bytes.as_slice()),
        }
    }
}

impl From<v1::WatchSecretsResponse> for WatchReply {
    fn from(message: v1::WatchSecretsResponse) -> Self {
        Self(Repr::Message(message))
    }
}

impl Default for WatchReply {
    fn default() -> Self {
        Self(Repr::Message(v1::WatchSecretsResponse::default()))
    }
}

impl fmt::Debug for WatchReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            // The message's own Debug redacts its values.
            Repr::Message(message) => message.fmt(f),
            Repr::Encoded(bytes) => write!(f, "WatchReply(encoded, {} bytes)", bytes.len()),
        }
    }
}

impl Message for WatchReply {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match &self.0 {
            Repr::Message(message) => message.encode_raw(buf),
            Repr::Encoded(bytes) => buf.put_slice(bytes),
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // Servers never decode what they send; should anything decode into
        // an encoded reply, it becomes a message first.
        if let Repr::Encoded(bytes) = &self.0 {
            let message = v1::WatchSecretsResponse::decode(bytes.as_slice())?;
            self.0 = Repr::Message(message);
        }
        match &mut self.0 {
            Repr::Message(message) => message.merge_field(tag, wire_type, buf, ctx),
            Repr::Encoded(_) => Ok(()),
        }
    }

    fn encoded_len(&self) -> usize {
        match &self.0 {
            Repr::Message(message) => message.encoded_len(),
            Repr::Encoded(bytes) => bytes.len(),
        }
    }

    fn clear(&mut self) {
        self.0 = Repr::Message(v1::WatchSecretsResponse::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Secret, SecretValue, WatchEventKind, secret_value::Kind};

    fn update() -> v1::WatchSecretsResponse {
        v1::WatchSecretsResponse {
            kind: WatchEventKind::Update as i32,
            secrets: vec![Secret {
                path: "shop/db".into(),
                version: 7,
                content_type: "text/plain".into(),
                value: Some(SecretValue {
                    kind: Some(Kind::Data(b"canary-wire".to_vec())),
                }),
                metadata: None,
            }],
        }
    }

    #[test]
    fn an_encoded_reply_puts_the_same_bytes_on_the_wire_as_the_message() {
        let message = update();
        let encoded = WatchReply::encoded(&message);
        assert_eq!(encoded.encoded_len(), message.encoded_len());
        assert_eq!(encoded.encode_to_vec(), message.encode_to_vec());
        assert_eq!(
            WatchReply::from(message.clone()).encode_to_vec(),
            message.encode_to_vec()
        );
        let back = encoded.into_message().unwrap();
        assert_eq!(back.secrets[0].version, 7);
        assert_eq!(back.encode_to_vec(), message.encode_to_vec());
    }

    #[test]
    fn debug_never_prints_the_value() {
        let encoded = WatchReply::encoded(&update());
        let printed = format!("{encoded:?} {:?}", WatchReply::from(update()));
        assert!(!printed.contains("canary"), "{printed}");
        assert!(printed.contains("encoded"));
    }

    #[test]
    fn decoding_into_an_encoded_reply_yields_the_message() {
        let bytes = update().encode_to_vec();
        let mut reply = WatchReply::encoded(&update());
        reply.clear();
        reply.merge(bytes.as_slice()).unwrap();
        assert_eq!(reply.into_message().unwrap().secrets[0].version, 7);
    }
}
