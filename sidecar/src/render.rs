//! Turning a secret into a file's bytes.

use coffer::SecretData;
use serde::Deserialize;
use zeroize::Zeroizing;

/// How a secret becomes a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Format {
    /// The value's bytes as they are (needs a single value or `path#key`).
    #[default]
    Raw,
    /// A JSON object of every key (values must be UTF-8).
    Json,
}

/// Why a value cannot be rendered. Never includes the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    #[error("the secret is a map of keys; select one with `path#key` or choose a format")]
    NeedsSingleValue,
    #[error("key {0:?} is not valid UTF-8, which this format requires")]
    NotUtf8(String),
}

/// Renders `data` in `format`.
pub fn render(data: &SecretData, format: Format) -> Result<Zeroizing<Vec<u8>>, RenderError> {
    match format {
        Format::Raw => match data {
            SecretData::Bytes(b) => Ok(Zeroizing::new(b.expose().to_vec())),
            SecretData::Map(_) => Err(RenderError::NeedsSingleValue),
        },
        Format::Json => {
            let map = utf8_map(data)?;
            // Sized up front so the buffer does not reallocate and leave a copy.
            let mut out = Zeroizing::new(Vec::with_capacity(data.size() * 6 + 64));
            // Writing JSON into a Vec cannot fail.
            let _ = serde_json::to_writer_pretty(&mut *out, &map);
            out.push(b'\n');
            Ok(out)
        }
    }
}

fn utf8_map(data: &SecretData) -> Result<std::collections::BTreeMap<&str, &str>, RenderError> {
    match data {
        SecretData::Bytes(b) => Ok([(
            "value",
            std::str::from_utf8(b.expose()).map_err(|_| RenderError::NotUtf8("value".into()))?,
        )]
        .into()),
        SecretData::Map(map) => map
            .iter()
            .map(|(k, v)| {
                std::str::from_utf8(v.expose())
                    .map(|v| (k.as_str(), v))
                    .map_err(|_| RenderError::NotUtf8(k.clone()))
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer::SecretBytes;

    #[test]
    fn raw_passes_bytes_through_and_refuses_maps() {
        let bytes = SecretData::Bytes(SecretBytes::from(&b"\x00\xffbin"[..]));
        assert_eq!(&**render(&bytes, Format::Raw).unwrap(), b"\x00\xffbin");
        let map = SecretData::Map([("a".to_string(), SecretBytes::from(&b"1"[..]))].into());
        assert_eq!(
            render(&map, Format::Raw),
            Err(RenderError::NeedsSingleValue)
        );
    }

    #[test]
    fn json_escapes_quotes_and_newlines() {
        let map = SecretData::Map([("pw".to_string(), SecretBytes::from(&b"a\"b\nc"[..]))].into());
        assert_eq!(
            &**render(&map, Format::Json).unwrap(),
            b"{\n  \"pw\": \"a\\\"b\\nc\"\n}\n"
        );
    }
}
