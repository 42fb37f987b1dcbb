//! The few PostgreSQL messages the proxy reads or writes itself: backend
//! frames before ReadyForQuery, the startup packet's parameters, and the
//! FATAL ErrorResponse it tells the app.

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncReadExt;

use super::{Failure, Io, MAX_STARTUP_MESSAGE};

/// Reads one backend message: its tag and its whole frame (tag and length included).
pub(super) async fn read_frame(upstream: &mut dyn Io) -> Result<(u8, Vec<u8>), Failure> {
    let mut header = [0u8; 5];
    upstream.read_exact(&mut header).await?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if !(4..=MAX_STARTUP_MESSAGE).contains(&len) {
        return Err(Failure::Protocol(format!("message of {len} bytes")));
    }
    let mut frame = Vec::with_capacity(len + 1);
    frame.extend_from_slice(&header);
    frame.resize(len + 1, 0);
    upstream.read_exact(&mut frame[5..]).await?;
    Ok((header[0], frame))
}

/// The `C` field of an ErrorResponse body: the SQLSTATE, never the message.
pub(super) fn sqlstate(body: &[u8]) -> String {
    body.split(|b| *b == 0)
        .find_map(|field| field.strip_prefix(b"C"))
        .map(|code| String::from_utf8_lossy(code).into_owned())
        .unwrap_or_default()
}

/// Whether `code` has the shape of a SQLSTATE (five digits or capitals),
/// so an upstream's code may be passed on as one.
pub(super) fn is_sqlstate(code: &str) -> bool {
    code.len() == 5
        && code
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}

/// The startup packet's `name\0value\0...\0` parameters.
pub(super) fn parse_params(body: &[u8]) -> Result<Vec<(String, String)>, Failure> {
    let mut fields = body.split(|b| *b == 0);
    let mut params = Vec::new();
    while let Some(name) = fields.next() {
        if name.is_empty() {
            break;
        }
        let value = fields
            .next()
            .ok_or_else(|| Failure::Protocol("a parameter without a value".into()))?;
        let text = |b: &[u8]| {
            String::from_utf8(b.to_vec())
                .map_err(|_| Failure::Protocol("parameter not UTF-8".into()))
        };
        params.push((text(name)?, text(value)?));
    }
    Ok(params)
}

/// A FATAL ErrorResponse.
pub(super) fn error_response(code: &str, message: &str) -> Vec<u8> {
    let mut body = BytesMut::new();
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        body.put_u8(field);
        body.put_slice(value.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(b'E');
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

pub(super) fn is_disconnect(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        UnexpectedEof | ConnectionReset | BrokenPipe | ConnectionAborted
    )
}

#[cfg(test)]
mod tests {
    use postgres_protocol::message::backend::Message;

    use super::*;

    #[test]
    fn the_startup_parameters_are_read_in_order() {
        let params = parse_params(b"user\0app\0database\0shop\0\0").unwrap();
        assert_eq!(
            params,
            vec![
                ("user".to_string(), "app".to_string()),
                ("database".to_string(), "shop".to_string())
            ]
        );
        assert!(parse_params(b"user").is_err());
    }

    #[test]
    fn only_the_sqlstate_of_an_upstream_error_is_kept() {
        let body = b"SFATAL\0C28P01\0Mpassword authentication failed for user \"v-x\"\0\0";
        assert_eq!(sqlstate(body), "28P01");
    }

    #[test]
    fn only_a_sqlstate_shaped_code_is_passed_on() {
        assert!(is_sqlstate("53300") && is_sqlstate("57P03"));
        for bad in ["", "5330", "533000", "53 00", "x\u{0}yzw", "57p03"] {
            assert!(!is_sqlstate(bad), "{bad:?}");
        }
    }

    #[test]
    fn an_error_response_is_a_framed_fatal() {
        let frame = error_response("08004", "coffer: no credential for shop/db yet");
        assert_eq!(frame[0], b'E');
        let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        assert_eq!(len + 1, frame.len());
        let mut bytes = BytesMut::from(&frame[..]);
        assert!(matches!(
            Message::parse(&mut bytes).unwrap(),
            Some(Message::ErrorResponse(_))
        ));
    }
}
