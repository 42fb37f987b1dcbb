//! The upstream login: SCRAM-SHA-256 (or md5 when the server asks) with
//! the current credential, answered message by message until
//! AuthenticationOk. An upstream refusal keeps only its SQLSTATE.

use bytes::BytesMut;
use postgres_protocol::{
    authentication::{md5_hash, sasl},
    message::{backend::Message, frontend},
};
use tokio::io::AsyncWriteExt;
use zeroize::Zeroizing;

use super::{
    Failure, Io,
    wire::{read_frame, sqlstate},
};

/// Answers the upstream's authentication requests until AuthenticationOk.
pub(super) async fn authenticate(
    upstream: &mut dyn Io,
    user: &str,
    password: &str,
) -> Result<(), Failure> {
    let mut scram: Option<sasl::ScramSha256> = None;
    loop {
        let (tag, frame) = read_frame(upstream).await?;
        if tag == b'E' {
            // Class 28 (invalid authorization specification): the
            // credential or the server's host rules refused it. Anything
            // else (too many clients, starting up) is not the credential's
            // fault and is no auth failure.
            let code = sqlstate(&frame[5..]);
            return Err(if code.starts_with("28") {
                Failure::AuthRejected(code)
            } else {
                Failure::Refused(code)
            });
        }
        let mut bytes = BytesMut::from(&frame[..]);
        let message =
            Message::parse(&mut bytes)?.ok_or_else(|| Failure::Protocol("short message".into()))?;
        let mut reply = BytesMut::new();
        match message {
            Message::AuthenticationOk => return Ok(()),
            Message::AuthenticationMd5Password(body) => {
                let hash =
                    Zeroizing::new(md5_hash(user.as_bytes(), password.as_bytes(), body.salt()));
                frontend::password_message(hash.as_bytes(), &mut reply)?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let mut scram_offered = false;
                while let Some(mechanism) = fallible_next(&mut mechanisms)? {
                    scram_offered |= mechanism == sasl::SCRAM_SHA_256;
                }
                if !scram_offered {
                    return Err(Failure::Unsupported(
                        "a SASL mechanism other than SCRAM-SHA-256",
                    ));
                }
                // Channel binding would tie SCRAM to the TLS session; the
                // server accepts SCRAM without it unless told to require it.
                let state = sasl::ScramSha256::new(
                    password.as_bytes(),
                    sasl::ChannelBinding::unsupported(),
                );
                frontend::sasl_initial_response(sasl::SCRAM_SHA_256, state.message(), &mut reply)?;
                scram = Some(state);
            }
            Message::AuthenticationSaslContinue(body) => {
                let state = scram
                    .as_mut()
                    .ok_or_else(|| Failure::Protocol("SASL continue before start".into()))?;
                state
                    .update(body.data())
                    .map_err(|_| Failure::AuthRejected("SCRAM".into()))?;
                frontend::sasl_response(state.message(), &mut reply)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let state = scram
                    .as_mut()
                    .ok_or_else(|| Failure::Protocol("SASL final before start".into()))?;
                // A server that cannot prove it knows the password is not
                // the one the credential is for.
                state
                    .finish(body.data())
                    .map_err(|_| Failure::AuthRejected("SCRAM server signature".into()))?;
            }
            Message::AuthenticationCleartextPassword => {
                return Err(Failure::Unsupported("a cleartext password"));
            }
            Message::AuthenticationGss
            | Message::AuthenticationSspi
            | Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential => {
                return Err(Failure::Unsupported("GSS, SSPI or Kerberos"));
            }
            Message::NoticeResponse(_) => {}
            _ => {
                return Err(Failure::Protocol(format!(
                    "unexpected message {:?}",
                    tag as char
                )));
            }
        }
        if !reply.is_empty() {
            upstream.write_all(&reply).await?;
        }
    }
}

fn fallible_next<'a>(
    it: &mut postgres_protocol::message::backend::SaslMechanisms<'a>,
) -> std::io::Result<Option<&'a str>> {
    fallible_iterator::FallibleIterator::next(it)
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::proxy::postgres::wire::error_response;

    /// The server's first answer is an ErrorResponse with `code`. A real
    /// server refuses before the login only when it is full or starting,
    /// which the shared test cluster cannot be made to be: the frame is
    /// written here.
    async fn refused_with(code: &str) -> Failure {
        let (mut proxy_end, mut server_end) = tokio::io::duplex(4096);
        let frame = error_response(code, "sorry, too many clients already");
        let server = tokio::spawn(async move {
            server_end.write_all(&frame).await.unwrap();
            let mut rest = Vec::new();
            let _ = server_end.read_to_end(&mut rest).await;
        });
        let failure = authenticate(&mut proxy_end, "u", "p").await.unwrap_err();
        drop(proxy_end);
        server.await.unwrap();
        failure
    }

    #[tokio::test]
    async fn only_an_authorization_error_counts_as_the_credential_refused() {
        assert!(matches!(refused_with("28P01").await, Failure::AuthRejected(c) if c == "28P01"));
        assert!(matches!(
            refused_with("28000").await,
            Failure::AuthRejected(_)
        ));
        assert!(matches!(refused_with("53300").await, Failure::Refused(c) if c == "53300"));
        assert!(matches!(refused_with("57P03").await, Failure::Refused(_)));
    }
}
